"""The XGBoost handler service, driven through MMS's own Service/Context and wire codec."""

from __future__ import annotations

import io
import json
import logging
import pathlib
import pickle
import sys
from typing import Any

import numpy as np
import pytest
import xgboost
from handler_harness import (
    NUM_FEATURES,
    OBJECTIVES,
    MmsWorker,
    Request,
    csv_body,
    json_rows,
    libsvm_body,
    npy_body,
    parse_csv_predictions,
    parse_json_predictions,
    save_ubj,
    train_booster,
)
from mms.model_loader import MmsModelLoader

from openmme.handlers import ERROR_HEADER, XGBOOST_HANDLER, UnsupportedArchive
from openmme.handlers.xgboost_service import ModelLoadError, XGBoostService, encode_predictions

Trained = tuple[xgboost.Booster, np.ndarray, pathlib.Path]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Trained]:
    """A model directory per objective, trained once for the module."""
    models = {}
    for objective in OBJECTIVES:
        booster, rows = train_booster(objective)
        model_dir = tmp_path_factory.mktemp(objective.replace(":", "_"))
        save_ubj(booster, model_dir / "xgboost-model")
        models[objective] = (booster, rows, model_dir)
    return models


@pytest.fixture
def binary(trained: dict[str, Trained]) -> Trained:
    return trained["binary:logistic"]


def worker_for(model_dir: pathlib.Path) -> MmsWorker:
    return MmsWorker(XGBoostService().handle, model_dir)


def expected(booster: xgboost.Booster, rows: np.ndarray) -> np.ndarray:
    """The in-process reference: booster.predict(DMatrix(rows)) with NaN as missing."""
    return booster.predict(xgboost.DMatrix(rows)).astype(np.float64)


def encode_input(kind: str, rows: np.ndarray) -> tuple[bytes, str]:
    if kind == "csv":
        return csv_body(rows), "text/csv"
    if kind == "libsvm":
        return libsvm_body(rows), "text/libsvm"
    if kind == "json":
        return json.dumps(json_rows(rows)).encode(), "application/json"
    return npy_body(rows), "application/x-npy"


def decode_output(reply_text: str, accept: str) -> np.ndarray:
    if accept == "text/csv":
        return parse_csv_predictions(reply_text)
    return parse_json_predictions(reply_text)


def assert_error(reply: Any, status: int, *fragments: str) -> None:
    assert reply.status == status, reply.text
    assert reply.headers.get(ERROR_HEADER) == "1"
    assert "\n" not in reply.text and "Traceback" not in reply.text
    for fragment in fragments:
        assert fragment in reply.text


@pytest.mark.parametrize("accept", ["text/csv", "application/json"])
@pytest.mark.parametrize("kind", ["csv", "libsvm", "json", "npy"])
@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_predictions_equal_in_process_predict(
    trained: dict[str, Trained], objective: str, kind: str, accept: str
) -> None:
    booster, rows, model_dir = trained[objective]
    body, content_type = encode_input(kind, rows)

    reply = worker_for(model_dir).invoke(body, {"Content-Type": content_type, "Accept": accept})

    assert reply.status == 200, reply.text
    assert reply.content_type == accept
    assert ERROR_HEADER not in reply.headers
    got, want = decode_output(reply.text, accept), expected(booster, rows)
    assert got.size == want.size
    np.testing.assert_array_equal(got.reshape(want.shape), want)


def test_csv_output_is_a_line_per_row_with_outputs_comma_separated(trained: dict[str, Trained]) -> None:
    _, rows, model_dir = trained["multi:softprob"]
    reply = worker_for(model_dir).invoke(csv_body(rows[:2]), {"Content-Type": "text/csv"})
    lines = reply.text.split("\n")
    assert len(lines) == 2 and all(len(line.split(",")) == 3 for line in lines)


def test_csv_output_of_single_output_models_is_one_comma_separated_line(trained: dict[str, Trained]) -> None:
    # As the SageMaker XGBoost container answers, so np.fromstring(body, sep=",") keeps working.
    booster, rows, model_dir = trained["binary:logistic"]
    reply = worker_for(model_dir).invoke(csv_body(rows[:3]), {"Content-Type": "text/csv"})
    assert "\n" not in reply.text
    assert np.fromstring(reply.text, sep=",").tolist() == expected(booster, rows[:3]).tolist()


def test_json_output_has_the_sagemaker_xgboost_shape(trained: dict[str, Trained]) -> None:
    _, rows, model_dir = trained["multi:softprob"]
    worker = worker_for(model_dir)
    multi = json.loads(worker.invoke(csv_body(rows[:2]), {"Accept": "application/json"}).text)
    assert [len(p["score"]) for p in multi["predictions"]] == [3, 3]
    binary_booster, binary_rows, binary_dir = trained["binary:logistic"]
    single = json.loads(worker_for(binary_dir).invoke(csv_body(binary_rows[:1]), {"Accept": "application/json"}).text)
    assert single == {"predictions": [{"score": float(expected(binary_booster, binary_rows[:1])[0])}]}


def test_csv_values_parse_back_to_the_exact_float32_predictions() -> None:
    predictions = np.array([0.1, 1 / 3, 2.5e-8, 123456.789, -0.0], dtype=np.float32)
    text = encode_predictions(predictions, "text/csv")
    parsed = [float(value) for value in text.split(",")]
    assert parsed == [float(value) for value in predictions]
    assert np.array_equal(np.array(parsed, dtype=np.float32), predictions)


@pytest.mark.parametrize(
    "document",
    [
        lambda rows: json_rows(rows),
        lambda rows: {"instances": json_rows(rows)},
        lambda rows: {"instances": [{"features": row} for row in json_rows(rows)]},
    ],
    ids=["rows", "instances", "instances-features"],
)
def test_json_request_shapes(binary: Trained, document: Any) -> None:
    booster, rows, model_dir = binary
    body = json.dumps(document(rows)).encode()
    reply = worker_for(model_dir).invoke(body, {"Content-Type": "application/json"})
    np.testing.assert_array_equal(parse_csv_predictions(reply.text).ravel(), expected(booster, rows))


def test_a_single_json_row_and_a_1d_npy_array_are_one_row(binary: Trained) -> None:
    booster, rows, model_dir = binary
    worker = worker_for(model_dir)
    want = expected(booster, rows[:1])
    json_reply = worker.invoke(json.dumps(json_rows(rows)[0]).encode(), {"Content-Type": "application/json"})
    npy_reply = worker.invoke(npy_body(rows[0]), {"Content-Type": "application/x-npy"})
    for reply in (json_reply, npy_reply):
        np.testing.assert_array_equal(parse_csv_predictions(reply.text).ravel(), want)


@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_npy_of_other_dtypes_predicts_like_dmatrix_of_that_array(binary: Trained, dtype: type) -> None:
    booster, rows, model_dir = binary
    typed = np.nan_to_num(rows * 10).astype(dtype)
    reply = worker_for(model_dir).invoke(npy_body(typed), {"Content-Type": "application/x-npy"})
    np.testing.assert_array_equal(parse_csv_predictions(reply.text).ravel(), expected(booster, typed))


def test_libsvm_label_token_is_optional_and_the_older_type_name_works(binary: Trained) -> None:
    booster, rows, model_dir = binary
    without_labels = b"\n".join(line.split(b" ", 1)[1] for line in libsvm_body(rows).split(b"\n"))
    reply = worker_for(model_dir).invoke(without_labels, {"Content-Type": "text/x-libsvm"})
    np.testing.assert_array_equal(parse_csv_predictions(reply.text).ravel(), expected(booster, rows))


@pytest.mark.parametrize(
    ("headers", "response_type"),
    [
        ({"content-type": "Text/CSV; charset=utf-8", "accept": "application/json; charset=utf-8"}, "application/json"),
        ({"CONTENT-TYPE": "text/csv", "ACCEPT": "*/*"}, "text/csv"),
        ({}, "text/csv"),
        ({"Accept": "application/xml, application/json"}, "application/json"),
    ],
    ids=["params-and-case", "upper-case-names-any", "absent", "first-supported"],
)
def test_header_spellings_and_defaults(binary: Trained, headers: dict[str, str], response_type: str) -> None:
    booster, rows, model_dir = binary
    reply = worker_for(model_dir).invoke(csv_body(rows), headers)
    assert reply.status == 200, reply.text
    assert reply.content_type == response_type
    np.testing.assert_array_equal(decode_output(reply.text, response_type).ravel(), expected(booster, rows))


@pytest.mark.parametrize("kind", ["csv", "json"])
def test_bodies_mms_decoded_itself_are_served_too(binary: Trained, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    # MMS's default decode_input_request=true hands over str for text/* and parsed JSON objects.
    monkeypatch.delenv("MMS_DECODE_INPUT_REQUEST")
    booster, rows, model_dir = binary
    body, content_type = encode_input(kind, rows)
    reply = worker_for(model_dir).invoke(body, {"Content-Type": content_type})
    np.testing.assert_array_equal(parse_csv_predictions(reply.text).ravel(), expected(booster, rows))


def test_a_batch_gets_one_response_per_request(trained: dict[str, Trained]) -> None:
    booster, rows, model_dir = trained["multi:softprob"]
    replies = worker_for(model_dir).invoke_batch(
        [
            Request(csv_body(rows[:3]), {"Content-Type": "text/csv"}),
            Request(b"x", {"Content-Type": "image/png"}),
            Request(
                json.dumps(json_rows(rows[3:5])).encode(),
                {"Content-Type": "application/json", "Accept": "application/json"},
            ),
            Request(csv_body(rows[:1, :2]), {"Content-Type": "text/csv"}),
        ]
    )
    assert [reply.status for reply in replies] == [200, 415, 200, 400]
    assert [reply.content_type for reply in replies] == ["text/csv", "text/plain", "application/json", "text/plain"]
    np.testing.assert_array_equal(parse_csv_predictions(replies[0].text), expected(booster, rows[:3]))
    np.testing.assert_array_equal(parse_json_predictions(replies[2].text), expected(booster, rows[3:5]))
    assert ERROR_HEADER not in replies[0].headers and ERROR_HEADER not in replies[2].headers
    assert replies[1].headers[ERROR_HEADER] == replies[3].headers[ERROR_HEADER] == "1"


def test_unsupported_content_type_is_415(binary: Trained) -> None:
    reply = worker_for(binary[2]).invoke(b"1,2,3,4", {"Content-Type": "application/x-recordio-protobuf"})
    assert_error(reply, 415, "application/x-recordio-protobuf", "text/csv")


@pytest.mark.parametrize("accept", ["application/xml", "text/html, image/png"])
def test_unsupported_accept_is_415(binary: Trained, accept: str) -> None:
    reply = worker_for(binary[2]).invoke(csv_body(binary[1]), {"Content-Type": "text/csv", "Accept": accept})
    assert_error(reply, 415, accept)


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("text/csv", b"1,2,3\n"),
        ("text/csv", b"1,2,3,4\n1,2,3,4,5"),
        ("application/json", b"[[1, 2, 3]]"),
        ("application/json", b'{"instances": [{"features": [1, 2, 3, 4, 5]}]}'),
        ("application/x-npy", npy_body(np.zeros((2, 3)))),
    ],
)
def test_wrong_feature_count_is_400_naming_expected_and_got(binary: Trained, kind: str, body: bytes) -> None:
    reply = worker_for(binary[2]).invoke(body, {"Content-Type": kind})
    assert_error(reply, 400, f"expects {NUM_FEATURES} features")
    assert " has 3 values" in reply.text or " has 5 values" in reply.text


@pytest.mark.parametrize(
    ("kind", "body", "fragment"),
    [
        ("text/csv", b"a,b,c,d", "column 1"),
        ("text/csv", b"1,2,3,4\n1,2,x,4", "row 2, column 3: 'x' is not a number"),
        ("text/csv", b"\xff\xfe,1,2,3", "not valid UTF-8"),
        ("text/csv", b"\n\n", "no rows"),
        ("text/libsvm", b"0 1:x", "is not index:value"),
        ("text/libsvm", b"0 7:1.0", "feature index 7 is out of range"),
        ("text/libsvm", b"0 1:1.0 1:2.0", "appears twice"),
        ("application/json", b"{not json", "not valid JSON"),
        ("application/json", b'{"rows": []}', '"instances"'),
        ("application/json", b'[[1, "2", 3, 4]]', '"2" is not a number'),
        ("application/json", b"[]", "no rows"),
        ("application/x-npy", b"\x93NUMPY garbage", "not a readable NPY array"),
        ("application/x-npy", npy_body(np.array(["a", "b", "c", "d"])), "not numbers"),
        ("application/x-npy", npy_body(np.zeros((1, 4, 1))), "3 dimensions"),
    ],
)
def test_undecodable_bodies_are_400(binary: Trained, kind: str, body: bytes, fragment: str) -> None:
    reply = worker_for(binary[2]).invoke(body, {"Content-Type": kind})
    assert_error(reply, 400, fragment)


def test_a_pickled_npy_body_is_refused_without_unpickling(binary: Trained, tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    np.save(buffer, np.array([_Exploit(marker)], dtype=object), allow_pickle=True)
    reply = worker_for(binary[2]).invoke(buffer.getvalue(), {"Content-Type": "application/x-npy"})
    assert_error(reply, 400, "not a readable NPY array")
    assert not marker.exists()


class _Exploit:
    """Unpickling this writes a file: proof that a body was unpickled."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (self.marker,))


def test_a_prediction_failure_is_500_with_a_one_line_message(
    binary: Trained, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = XGBoostService()
    worker = MmsWorker(service.handle, binary[2])

    def broken_predict(rows: Any) -> Any:
        raise xgboost.core.XGBoostError("device lost\nStack trace:\n  [bt] (0) libxgboost.so")

    monkeypatch.setattr(service, "predict", broken_predict)
    with caplog.at_level(logging.ERROR):
        reply = worker.invoke(csv_body(binary[1]), {"Content-Type": "text/csv"})
    assert_error(reply, 500, "XGBoostError: device lost")
    assert "Traceback" in caplog.text  # the trace goes to the log, not the body


def test_feature_named_boosters_predict_by_position(tmp_path: pathlib.Path) -> None:
    _, rows = train_booster("binary:logistic")
    named = xgboost.train(
        {"objective": "binary:logistic"},
        xgboost.DMatrix(rows, label=(rows[:, 0] > 0), feature_names=["a", "b", "c", "d"]),
        num_boost_round=5,
    )
    save_ubj(named, tmp_path / "xgboost-model")
    reply = worker_for(tmp_path).invoke(csv_body(rows), {"Content-Type": "text/csv"})
    want = named.predict(xgboost.DMatrix(rows, feature_names=["a", "b", "c", "d"]))
    np.testing.assert_array_equal(parse_csv_predictions(reply.text).ravel(), want.astype(np.float64))


# --- loading -------------------------------------------------------------------------------------


def test_json_and_any_suffix_load(binary: Trained, tmp_path: pathlib.Path) -> None:
    booster, rows, _ = binary
    (tmp_path / "model.bst").write_bytes(bytes(booster.save_raw("json")))
    reply = worker_for(tmp_path).invoke(csv_body(rows), {"Content-Type": "text/csv"})
    np.testing.assert_array_equal(parse_csv_predictions(reply.text).ravel(), expected(booster, rows))


def test_pickled_booster_is_refused_by_default(
    binary: Trained, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir, errors_dir = tmp_path / "model", tmp_path / "load-errors"
    model_dir.mkdir()
    errors_dir.mkdir()
    monkeypatch.setenv("OPENMME_LOAD_ERRORS_DIR", str(errors_dir))
    (model_dir / "xgboost-model").write_bytes(pickle.dumps(binary[0]))
    with pytest.raises(ModelLoadError, match=r"is a Python pickle.*OPENMME_ALLOW_PICKLE=1") as caught:
        MmsWorker(XGBoostService().handle, model_dir, model_name="m-17")
    assert "\n" not in str(caught.value)
    # The front reads the reason here, since MMS only answers "Failed to start workers".
    assert (errors_dir / "m-17.txt").read_text() == str(caught.value) + "\n"


def test_a_refused_pickle_is_never_unpickled(tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "pwned"
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "xgboost-model").write_bytes(pickle.dumps(_Exploit(marker)))
    with pytest.raises(ModelLoadError, match="pickle"):
        worker_for(model_dir)
    assert not marker.exists()


def test_pickled_booster_loads_when_the_operator_opts_in(
    binary: Trained, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    booster, rows, _ = binary
    (tmp_path / "xgboost-model").write_bytes(pickle.dumps(booster))
    monkeypatch.setenv("OPENMME_ALLOW_PICKLE", "1")
    reply = worker_for(tmp_path).invoke(csv_body(rows), {"Content-Type": "text/csv"})
    np.testing.assert_array_equal(parse_csv_predictions(reply.text).ravel(), expected(booster, rows))


def test_an_opted_in_pickle_of_something_else_is_refused(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "xgboost-model").write_bytes(pickle.dumps({"not": "a booster"}))
    monkeypatch.setenv("OPENMME_ALLOW_PICKLE", "1")
    with pytest.raises(ModelLoadError, match="unpickled to a dict"):
        worker_for(tmp_path)


def test_legacy_binary_format_is_refused_with_a_conversion_hint(tmp_path: pathlib.Path) -> None:
    # The legacy format starts with the "binf" magic (or, before 1.0, straight with float parameters).
    (tmp_path / "xgboost-model").write_bytes(b"binf" + bytes(200))
    with pytest.raises(ModelLoadError, match=r"legacy binary format.*cannot read.*save_model\('xgboost-model\.ubj'\)"):
        worker_for(tmp_path)


def test_the_installed_xgboost_really_cannot_read_legacy_binary() -> None:
    # Guards the message above: if a future xgboost reads it again, the refusal should be revisited.
    with pytest.raises(xgboost.core.XGBoostError):
        xgboost.Booster().load_model(bytearray(b"binf" + bytes(200)))


def test_a_corrupt_model_fails_to_load_with_one_line(tmp_path: pathlib.Path) -> None:
    (tmp_path / "model.json").write_bytes(b'{"learner": ')
    with pytest.raises(ModelLoadError, match=r"model\.json is not a valid XGBoost JSON/UBJSON model") as caught:
        worker_for(tmp_path)
    assert "\n" not in str(caught.value)


def test_no_booster_fails_to_load(tmp_path: pathlib.Path) -> None:
    with pytest.raises(UnsupportedArchive):
        worker_for(tmp_path)


def test_mms_model_loader_registers_and_serves_the_handler(
    trained: dict[str, Trained], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fresh import, as in a new worker process: MMS imports the handler by its dotted name.
    monkeypatch.delitem(sys.modules, "openmme.handlers.xgboost_service")
    booster, rows, model_dir = trained["reg:squarederror"]
    service = MmsModelLoader().load("houston", str(model_dir), XGBOOST_HANDLER, None, 1)
    reply = MmsWorker.of_service(service).invoke(csv_body(rows), {"Content-Type": "text/csv"})
    np.testing.assert_array_equal(parse_csv_predictions(reply.text).ravel(), expected(booster, rows))


def test_mms_model_loader_fails_registration_when_the_model_cannot_load(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "openmme.handlers.xgboost_service")
    (tmp_path / "xgboost-model").write_bytes(b"\x00\x00\x00?garbage")
    with pytest.raises(RuntimeError, match="legacy binary"):
        MmsModelLoader().load("broken", str(tmp_path), XGBOOST_HANDLER, None, 1)
