"""The request-context helpers, on real mms.context objects shaped as MMS's Service builds them."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
from mms.context import Context, RequestProcessor

from openmme.handlers import ERROR_HEADER, UnsupportedArchive
from openmme.handlers._mms import (
    LoadError,
    accepted_types,
    media_parameters,
    one_line,
    record_load_error,
    reject,
    request_content_type,
    request_content_type_header,
    request_header,
)


def context_with(*request_headers: dict[str, Any], model_name: str = "model") -> Context:
    context = Context(model_name, "/models/model", None, len(request_headers), None, "1.1.11")
    context.request_processor = [RequestProcessor(headers) for headers in request_headers]
    return context


def test_header_names_match_whatever_their_case() -> None:
    context = context_with({"body": {"content-type": "text/csv"}, "aCCepT": "application/json"})
    assert request_header(context, 0, "Accept") == "application/json"
    # The "body" entry is MMS's record of the body part, not a header.
    assert request_header(context, 0, "body") is None


def test_content_type_falls_back_to_the_type_mms_recorded_for_the_body() -> None:
    context = context_with(
        {"body": {"content-type": "text/libsvm"}, "Content-Type": "Application/JSON; charset=UTF-8"},
        {"body": {"content-type": "text/libsvm"}},
        {"body": {"content-type": ""}},
    )
    assert [request_content_type(context, idx) for idx in range(3)] == ["application/json", "text/libsvm", None]


def test_the_content_type_header_keeps_its_parameters() -> None:
    context = context_with(
        {"body": {"content-type": "text/csv"}, "content-type": "text/csv; label_size=1"},
        {"body": {"content-type": "text/libsvm"}, "Content-Type": "  "},
    )
    assert request_content_type_header(context, 0) == "text/csv; label_size=1"
    assert request_content_type_header(context, 1) == "text/libsvm"


@pytest.mark.parametrize(
    ("value", "parameters"),
    [
        (None, {}),
        ("text/csv", {}),
        ("Text/CSV; Label_Size=1; charset=UTF-8", {"label_size": "1", "charset": "utf-8"}),
        ('application/json ; format="Predictions"', {"format": "predictions"}),
        ("text/csv; flag; =x; q=0.5", {"q": "0.5"}),
    ],
)
def test_media_parameters_are_read_case_insensitively(value: str | None, parameters: dict[str, str]) -> None:
    assert media_parameters(value) == parameters


@pytest.mark.parametrize(
    ("accept", "types"),
    [
        (None, []),
        ("", []),
        ("text/csv", ["text/csv"]),
        ("Application/JSON;q=0.9, text/csv , */*", ["application/json", "text/csv", "*/*"]),
    ],
)
def test_accepted_types(accept: str | None, types: list[str]) -> None:
    assert accepted_types(accept) == types


def test_one_line_keeps_the_first_non_blank_line_and_caps_it() -> None:
    assert one_line("\n\n  Please provide a model_fn.\n  See the docs\n") == "Please provide a model_fn."
    assert len(one_line("x" * 5000)) == 1000


def test_reject_sets_status_header_and_type_of_only_its_request() -> None:
    context = context_with({}, {})
    body = reject(context, 1, 415, "Accept image/png is not supported\nsecond line")
    assert body == "Accept image/png is not supported"
    assert context.get_response_status(1) == (415, "Unsupported Media Type")
    assert context.get_response_headers(1) == {ERROR_HEADER: "1", "content-type": "text/plain"}
    assert context.get_response_status(0) == (200, None)
    assert context.get_response_headers(0) == {}


@pytest.mark.parametrize(
    ("error", "recorded"),
    [
        (LoadError("xgboost-model is a Python pickle\nmore"), "xgboost-model is a Python pickle"),
        (UnsupportedArchive("no XGBoost model file"), "no XGBoost model file"),
        (KeyError("model_dir"), "KeyError: 'model_dir'"),
        (MemoryError(), "MemoryError"),
    ],
)
def test_load_errors_are_recorded_for_the_front_as_one_line(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, error: BaseException, recorded: str
) -> None:
    monkeypatch.setenv("OPENMME_LOAD_ERRORS_DIR", str(tmp_path))
    record_load_error(context_with(model_name="m-17"), error)
    assert (tmp_path / "m-17.txt").read_text() == recorded + "\n"


@pytest.mark.parametrize("model_name", ["../escape", "a/b", "..", ""])
def test_load_errors_are_never_written_outside_the_directory(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, model_name: str
) -> None:
    errors_dir = tmp_path / "errors"
    errors_dir.mkdir()
    monkeypatch.setenv("OPENMME_LOAD_ERRORS_DIR", str(errors_dir))
    record_load_error(context_with(model_name=model_name), LoadError("nope"))
    assert list(tmp_path.rglob("*.txt")) == []


def test_without_the_directory_setting_nothing_is_recorded(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENMME_LOAD_ERRORS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    record_load_error(context_with(), LoadError("nope"))
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_directory_does_not_hide_the_load_error(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENMME_LOAD_ERRORS_DIR", str(tmp_path / "absent"))
    record_load_error(context_with(), LoadError("nope"))  # logs, does not raise
