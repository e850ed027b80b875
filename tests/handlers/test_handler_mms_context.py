"""The request-context helpers, on real mms.context objects shaped as MMS's Service builds them."""

from __future__ import annotations

from typing import Any

import pytest
from mms.context import Context, RequestProcessor

from openmme.handlers import ERROR_HEADER
from openmme.handlers._mms import accepted_types, one_line, reject, request_content_type, request_header


def context_with(*request_headers: dict[str, Any]) -> Context:
    context = Context("model", "/models/model", None, len(request_headers), None, "1.1.11")
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
