"""The XGBoost handler service, driven through MMS's own Service/Context and wire codec.

Answers must be the SageMaker XGBoost container's, byte for byte (its algorithm-mode ``default_output_fn``):
JSON ``json.dumps(predictions.tolist())``, CSV ``",".join(map(str, predictions.tolist()))``; and the values in
them exactly what the same booster predicts in-process.
"""

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
import scipy.sparse
import xgboost
from handler_harness import (
    NUM_FEATURES,
    OBJECTIVES,
    MmsWorker,
    Request,
    as_csr,
    csv_body,
    in_process,
    json_rows,
    libsvm_body,
    npy_body,
    parse_csv_predictions,
    parse_json_predictions,
    parse_predictions,
    recordio_dense_body,
    recordio_sparse_body,
    save_ubj,
    train_booster,
)
from mms.model_loader import MmsModelLoader
from tests import support

from openmme.handlers import ERROR_HEADER, XGBOOST_HANDLER, UnsupportedArchive
from openmme.handlers.xgboost_service import ModelLoadError, XGBoostService, container_csv, rows_csv

Trained = tuple[xgboost.Booster, np.ndarray, pathlib.Path]

BAD_PAYLOAD = "Unable to evaluate payload provided: "


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


def encode_input(kind: str, rows: np.ndarray) -> tuple[bytes, str]:
    if kind == "csv":
        return csv_body(rows), "text/csv"
    if kind == "libsvm":
        return libsvm_body(rows), "text/libsvm"
    if kind == "recordio-dense":
        return recordio_dense_body(rows), "application/x-recordio-protobuf"
    if kind == "recordio-sparse":
        return recordio_sparse_body(as_csr(rows)), "application/x-recordio-protobuf"
    if kind == "json":
        return json.dumps(json_rows(rows)).encode(), "application/json"
    return npy_body(rows), "application/x-npy"


def assert_error(reply: Any, status: int, *fragments: str) -> None:
    assert reply.status == status, reply.text
    assert reply.headers.get(ERROR_HEADER) == "1"
    assert reply.content_type == "text/plain"
    assert "\n" not in reply.text and "Traceback" not in reply.text
    for fragment in fragments:
        assert fragment in reply.text


# --- answers: exactly the container's bytes ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["csv", "libsvm", "recordio-dense", "recordio-sparse", "json", "npy"])
@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_the_default_answer_is_the_containers_json_of_in_process_predictions(
    trained: dict[str, Trained], objective: str, kind: str
) -> None:
    booster, rows, model_dir = trained[objective]
    body, content_type = encode_input(kind, rows)

    reply = worker_for(model_dir).invoke(body, {"Content-Type": content_type})

    assert reply.status == 200, reply.text
    assert reply.content_type == "application/json"
    assert ERROR_HEADER not in reply.headers
    want = in_process(booster, rows)
    assert reply.body == support.container_json(booster, rows)
    np.testing.assert_array_equal(parse_predictions(reply.text), want.astype(np.float64))


@pytest.mark.parametrize(
    ("accept", "content_type", "encoding"),
    [
        (None, "application/json", support.container_json),
        ("*/*", "application/json", support.container_json),
        ("application/json", "application/json", support.container_json),
        ("json", "application/json", support.container_json),
        ("Application/JSON; charset=utf-8", "application/json", support.container_json),
        ("text/csv", "text/csv", support.container_csv),
        ("csv", "text/csv", support.container_csv),
        ("text/csv; charset=utf-8", "text/csv", support.container_csv),
        ("application/xml, text/csv", "text/csv", support.container_csv),
        ("application/xml, */*", "application/json", support.container_json),
    ],
)
@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_accept_picks_the_containers_encoding(
    trained: dict[str, Trained], objective: str, accept: str | None, content_type: str, encoding: Any
) -> None:
    booster, rows, model_dir = trained[objective]
    headers = {"Content-Type": "text/csv"} | ({"Accept": accept} if accept is not None else {})
    reply = worker_for(model_dir).invoke(csv_body(rows), headers)
    assert reply.status == 200, reply.text
    assert reply.content_type == content_type
    assert reply.body == encoding(booster, rows)


def test_one_regression_row_is_a_one_element_json_array(trained: dict[str, Trained]) -> None:
    # What the SageMaker MME examples read with json.loads(body)[0].
    booster, rows, model_dir = trained["reg:squarederror"]
    reply = worker_for(model_dir).invoke(csv_body(rows[:1]), {"Content-Type": "text/csv"})
    (value,) = json.loads(reply.text)
    assert reply.text == f"[{float(in_process(booster, rows[:1])[0])!r}]"
    assert value == float(in_process(booster, rows[:1])[0])


def test_single_output_csv_is_one_comma_separated_line(binary: Trained) -> None:
    booster, rows, model_dir = binary
    reply = worker_for(model_dir).invoke(csv_body(rows[:3]), {"Content-Type": "text/csv", "Accept": "text/csv"})
    want = in_process(booster, rows[:3])
    assert reply.text == ",".join(repr(float(value)) for value in want)
    assert np.fromstring(reply.text, sep=",").tolist() == want.tolist()


def test_multi_output_csv_keeps_the_containers_one_line_of_lists(trained: dict[str, Trained]) -> None:
    # The container joins the rows' Python lists with commas: "[0.1, 0.2, 0.7],[0.3, 0.3, 0.4]".
    booster, rows, model_dir = trained["multi:softprob"]
    worker = worker_for(model_dir)
    want = in_process(booster, rows[:2])
    csv_reply = worker.invoke(csv_body(rows[:2]), {"Content-Type": "text/csv", "Accept": "text/csv"})
    json_reply = worker.invoke(csv_body(rows[:2]), {"Content-Type": "text/csv"})
    assert csv_reply.text == ",".join(str([float(value) for value in row]) for row in want)
    assert csv_reply.text.startswith("[") and "\n" not in csv_reply.text
    assert json.loads(json_reply.text) == want.tolist()
    assert [len(row) for row in json.loads(json_reply.text)] == [3, 3]


@pytest.mark.parametrize("objective", ["binary:logistic", "multi:softprob"])
def test_batch_transform_csv_is_a_line_per_row_with_a_final_newline(
    trained: dict[str, Trained], monkeypatch: pytest.MonkeyPatch, objective: str
) -> None:
    monkeypatch.setenv("SAGEMAKER_BATCH", "true")
    booster, rows, model_dir = trained[objective]
    worker = worker_for(model_dir)
    want = in_process(booster, rows[:3])
    reply = worker.invoke(csv_body(rows[:3]), {"Content-Type": "text/csv", "Accept": "text/csv"})
    assert reply.text == "".join(f"{value}\n" for value in want.tolist())
    # JSON is the same in batch transform.
    json_reply = worker.invoke(csv_body(rows[:3]), {"Content-Type": "text/csv"})
    assert json_reply.body == support.container_json(booster, rows[:3])


@pytest.mark.parametrize(
    ("default", "content_type"), [("text/csv", "text/csv"), ("application/json", "application/json")]
)
def test_the_default_accept_comes_from_the_toolkits_variable(
    binary: Trained, monkeypatch: pytest.MonkeyPatch, default: str, content_type: str
) -> None:
    monkeypatch.setenv("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", default)
    booster, rows, model_dir = binary
    worker = worker_for(model_dir)
    for headers in ({"Content-Type": "text/csv"}, {"Content-Type": "text/csv", "Accept": "*/*"}):
        reply = worker.invoke(csv_body(rows), headers)
        assert reply.content_type == content_type
        encoding = support.container_csv if content_type == "text/csv" else support.container_json
        assert reply.body == encoding(booster, rows)


def test_an_unsupported_default_accept_is_415_naming_the_variable(
    binary: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", "application/x-npy")
    reply = worker_for(binary[2]).invoke(csv_body(binary[1]), {"Content-Type": "text/csv"})
    assert_error(reply, 415, "application/x-npy", "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT")


# --- openmme's own shapes, asked for by name ------------------------------------------------------------


@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_format_rows_is_a_csv_line_per_row_that_parses_back_exactly(
    trained: dict[str, Trained], objective: str
) -> None:
    booster, rows, model_dir = trained[objective]
    reply = worker_for(model_dir).invoke(
        csv_body(rows), {"Content-Type": "text/csv", "Accept": "text/csv; format=rows"}
    )
    assert reply.status == 200, reply.text
    assert reply.content_type == "text/csv"
    want = in_process(booster, rows)
    lines = reply.text.split("\n")
    assert len(lines) == len(rows)
    assert all(len(line.split(",")) == (want.shape[1] if want.ndim > 1 else 1) for line in lines)
    np.testing.assert_array_equal(parse_csv_predictions(reply.text).reshape(want.shape), want)


@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_format_predictions_is_the_score_envelope(trained: dict[str, Trained], objective: str) -> None:
    booster, rows, model_dir = trained[objective]
    reply = worker_for(model_dir).invoke(
        csv_body(rows), {"Content-Type": "text/csv", "Accept": "Application/JSON; Format=Predictions"}
    )
    assert reply.status == 200, reply.text
    assert reply.content_type == "application/json"
    want = in_process(booster, rows)
    assert json.loads(reply.text) == {"predictions": [{"score": value} for value in want.tolist()]}
    np.testing.assert_array_equal(parse_json_predictions(reply.text).reshape(want.shape), want)


def test_format_rows_ignores_batch_transform(binary: Trained, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGEMAKER_BATCH", "1")
    booster, rows, model_dir = binary
    reply = worker_for(model_dir).invoke(csv_body(rows[:2]), {"Accept": "text/csv; format=rows"})
    assert reply.text == "\n".join(repr(float(value)) for value in in_process(booster, rows[:2]))


def test_csv_encoders_write_values_that_parse_back_to_the_exact_float32_predictions() -> None:
    predictions = np.array([0.1, 1 / 3, 2.5e-8, 123456.789, -0.0], dtype=np.float32)
    for text in (container_csv(predictions), rows_csv(predictions).replace("\n", ",")):
        parsed = [float(value) for value in text.split(",")]
        assert np.array_equal(np.array(parsed, dtype=np.float32), predictions)


@pytest.mark.parametrize(
    "accept", ["application/xml", "text/html, image/png", "application/x-npy", "text/csv; format=xml", "text/*"]
)
def test_unsupported_accept_is_415(binary: Trained, accept: str) -> None:
    reply = worker_for(binary[2]).invoke(csv_body(binary[1]), {"Content-Type": "text/csv", "Accept": accept})
    assert_error(reply, 415, f"Accept {accept} is not supported", "text/csv; format=rows")


# --- requests: the container's content types ------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "text/csv",
        "csv",
        "text/csv; charset=utf-8",
        "text/csv; label_size=1",
        "Text/CSV; Label_Size=1; Charset=UTF-8",
        'text/csv; label_size="1"',
    ],
)
def test_csv_content_types_the_container_reads(binary: Trained, content_type: str) -> None:
    booster, rows, model_dir = binary
    reply = worker_for(model_dir).invoke(csv_body(rows), {"Content-Type": content_type})
    assert reply.status == 200, reply.text
    assert reply.body == support.container_json(booster, rows)


@pytest.mark.parametrize("content_type", ["text/csv; label_size=2", "text/csv;LABEL_SIZE=0"])
def test_a_csv_label_size_other_than_1_is_415(binary: Trained, content_type: str) -> None:
    reply = worker_for(binary[2]).invoke(csv_body(binary[1]), {"Content-Type": content_type})
    assert_error(reply, 415, content_type, "label_size must be 1")


@pytest.mark.parametrize("content_type", ["text/libsvm", "text/x-libsvm", "libsvm", "Text/LibSVM; charset=utf-8"])
def test_libsvm_content_types_the_container_reads(binary: Trained, content_type: str) -> None:
    booster, rows, model_dir = binary
    reply = worker_for(model_dir).invoke(libsvm_body(rows), {"Content-Type": content_type})
    assert reply.body == support.container_json(booster, rows)


# The sniffer's preferred delimiters; others ("|") lose to the line's most frequent character, a digit, so
# the container reads them as "," (see test_decoding.py).
@pytest.mark.parametrize("delimiter", [";", "\t", " "])
def test_the_csv_delimiter_is_sniffed_from_the_first_line(binary: Trained, delimiter: str) -> None:
    booster, rows, model_dir = binary
    present = np.nan_to_num(rows)  # an empty value cannot be told from a double space-delimiter
    body = csv_body(present).replace(b",", delimiter.encode())
    reply = worker_for(model_dir).invoke(body, {"Content-Type": "text/csv"})
    assert reply.body == support.container_json(booster, present)


def test_the_csv_body_is_stripped_and_blank_lines_are_not_rows(binary: Trained) -> None:
    booster, rows, model_dir = binary
    body = b"\n  \n" + csv_body(rows[:2]).replace(b"\n", b"\r\n\n") + b"\r\n\n"
    reply = worker_for(model_dir).invoke(body, {"Content-Type": "text/csv"})
    assert reply.body == support.container_json(booster, rows[:2])


def test_libsvm_indices_are_shifted_when_every_index_is_1_or_more(binary: Trained) -> None:
    booster, rows, model_dir = binary
    one_based = b"\n".join(
        b" ".join(
            [
                b"1",
                *(f"{index + 1}:{float(value)!r}".encode() for index, value in enumerate(row) if not np.isnan(value)),
            ]
        )
        for row in rows
    )
    reply = worker_for(model_dir).invoke(one_based, {"Content-Type": "text/libsvm"})
    assert reply.body == support.container_json(booster, rows)


def test_libsvm_tokens_without_a_colon_are_ignored_wherever_they_are(binary: Trained) -> None:
    booster, _, model_dir = binary
    body = b"0 0:0.5 label 1:-1.25 3:2.0\n1 qid_less 0:1.0 2:0.0"
    reply = worker_for(model_dir).invoke(body, {"Content-Type": "text/libsvm"})
    nan = np.nan
    assert reply.body == support.container_json(booster, np.array([[0.5, -1.25, nan, 2.0], [1.0, nan, 0.0, nan]]))


def test_a_0_based_libsvm_body_that_never_uses_feature_0_is_read_as_1_based(binary: Trained) -> None:
    # The container's guess, kept: nothing in the body tells the two apart.
    booster, _, model_dir = binary
    reply = worker_for(model_dir).invoke(b"1:0.5 3:2.0", {"Content-Type": "text/libsvm"})
    assert reply.body == support.container_json(booster, np.array([[0.5, np.nan, 2.0, np.nan]]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_recordio_dense_records_of_every_sdk_dtype(binary: Trained, dtype: type) -> None:
    booster, rows, model_dir = binary
    typed = np.nan_to_num(rows * 10).astype(dtype)  # int64 is the SDK's Int32Tensor
    reply = worker_for(model_dir).invoke(
        recordio_dense_body(typed), {"Content-Type": "application/x-recordio-protobuf"}
    )
    assert reply.body == support.container_json(booster, typed)


def test_recordio_sparse_records_with_labels_and_an_empty_row(binary: Trained) -> None:
    from sagemaker.amazon.common import write_numpy_to_dense_tensor

    booster, rows, model_dir = binary
    sparse_rows = rows[:4].copy()
    sparse_rows[1] = np.nan  # a row with no stored value at all: written with its shape only
    matrix = as_csr(sparse_rows).astype(np.float32)
    labels = np.arange(4, dtype=np.float32)
    reply = worker_for(model_dir).invoke(recordio_sparse_body(matrix, labels), {"Content-Type": "recordio-protobuf"})
    assert reply.body == support.container_json(booster, matrix)
    # Dense records with labels, through the SDK's own writer.
    buffer = io.BytesIO()
    write_numpy_to_dense_tensor(buffer, np.nan_to_num(rows), labels=np.ones(len(rows)))
    dense = worker_for(model_dir).invoke(buffer.getvalue(), {"Content-Type": "application/x-recordio-protobuf"})
    assert dense.body == support.container_json(booster, np.nan_to_num(rows))


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (recordio_dense_body(np.ones((2, 4)))[:-5], "truncated"),
        (recordio_dense_body(np.ones((2, 4)))[:5], "truncated"),
        (b"1,2,3,4", "not RecordIO-protobuf"),
        (recordio_dense_body(np.ones((1, 3))), "record 1 has 3 values, the model expects 4 features"),
        (recordio_sparse_body(scipy.sparse.csr_matrix(np.ones((1, 6)))), "6 features wide, the model expects 4"),
        (
            b"\x0a\x23\xd7\xce\x08\x00\x00\x00" + b"\x0a\x06\x0a\x02ab\x12\x00",
            'record 1 has no "values" feature',
        ),
        (b"\x0a\x23\xd7\xce\x04\x00\x00\x00" + b"\x0a\xff\xff\xff", "malformed protobuf"),
    ],
    ids=["cut-in-a-record", "cut-in-a-header", "not-recordio", "narrow-dense", "wide-sparse", "no-values", "garbage"],
)
def test_unreadable_recordio_is_400(binary: Trained, body: bytes, fragment: str) -> None:
    reply = worker_for(binary[2]).invoke(body, {"Content-Type": "application/x-recordio-protobuf"})
    assert_error(reply, 400, BAD_PAYLOAD, fragment)


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
    assert reply.body == support.container_json(booster, rows)


def test_a_single_json_row_and_a_1d_npy_array_are_one_row(binary: Trained) -> None:
    booster, rows, model_dir = binary
    worker = worker_for(model_dir)
    want = support.container_json(booster, rows[:1])
    json_reply = worker.invoke(json.dumps(json_rows(rows)[0]).encode(), {"Content-Type": "application/json"})
    npy_reply = worker.invoke(npy_body(rows[0]), {"Content-Type": "application/x-npy"})
    assert json_reply.body == npy_reply.body == want


@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_npy_of_other_dtypes_predicts_like_dmatrix_of_that_array(binary: Trained, dtype: type) -> None:
    booster, rows, model_dir = binary
    typed = np.nan_to_num(rows * 10).astype(dtype)
    reply = worker_for(model_dir).invoke(npy_body(typed), {"Content-Type": "application/x-npy"})
    assert reply.body == support.container_json(booster, typed)


def test_a_request_without_content_type_is_csv(binary: Trained) -> None:
    booster, rows, model_dir = binary
    reply = worker_for(model_dir).invoke(csv_body(rows), {"ACCEPT": "*/*"})
    assert reply.body == support.container_json(booster, rows)


@pytest.mark.parametrize("kind", ["csv", "json"])
def test_bodies_mms_decoded_itself_are_served_too(binary: Trained, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    # MMS's default decode_input_request=true hands over str for text/* and parsed JSON objects.
    monkeypatch.delenv("MMS_DECODE_INPUT_REQUEST")
    booster, rows, model_dir = binary
    body, content_type = encode_input(kind, rows)
    reply = worker_for(model_dir).invoke(body, {"Content-Type": content_type})
    assert reply.body == support.container_json(booster, rows)


def test_a_batch_gets_one_response_per_request(trained: dict[str, Trained]) -> None:
    booster, rows, model_dir = trained["multi:softprob"]
    replies = worker_for(model_dir).invoke_batch(
        [
            Request(csv_body(rows[:3]), {"Content-Type": "text/csv", "Accept": "text/csv; format=rows"}),
            Request(b"x", {"Content-Type": "image/png"}),
            Request(json.dumps(json_rows(rows[3:5])).encode(), {"Content-Type": "application/json"}),
            Request(csv_body(rows[:1, :2]), {"Content-Type": "text/csv"}),
        ]
    )
    assert [reply.status for reply in replies] == [200, 415, 200, 400]
    assert [reply.content_type for reply in replies] == ["text/csv", "text/plain", "application/json", "text/plain"]
    np.testing.assert_array_equal(parse_csv_predictions(replies[0].text), in_process(booster, rows[:3]))
    assert replies[2].body == support.container_json(booster, rows[3:5])
    assert ERROR_HEADER not in replies[0].headers and ERROR_HEADER not in replies[2].headers
    assert replies[1].headers[ERROR_HEADER] == replies[3].headers[ERROR_HEADER] == "1"


@pytest.mark.parametrize("content_type", ["image/png", "application/x-parquet", "application/octet-stream"])
def test_unsupported_content_type_is_415(binary: Trained, content_type: str) -> None:
    reply = worker_for(binary[2]).invoke(b"1,2,3,4", {"Content-Type": content_type})
    assert_error(reply, 415, f"Content-Type {content_type} is not supported", "text/csv", "text/libsvm")
    assert "application/x-recordio-protobuf" in reply.text


@pytest.mark.parametrize(
    "content_type", ["text/csv", "text/libsvm", "application/x-recordio-protobuf", "application/json"]
)
def test_an_empty_body_is_400_not_an_empty_answer(binary: Trained, content_type: str) -> None:
    reply = worker_for(binary[2]).invoke(b"", {"Content-Type": content_type})
    assert_error(reply, 400, BAD_PAYLOAD + "the request body is empty")


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
    assert_error(reply, 400, BAD_PAYLOAD, f"expects {NUM_FEATURES} features")
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
        ("text/libsvm", b"0 0:1.0 4:1.0", "feature index 4 is out of range, the model expects 4 features"),
        ("text/libsvm", b"0 -1:1.0", "feature index -1 is out of range"),
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
    assert reply.text.startswith(BAD_PAYLOAD)


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
    np.testing.assert_array_equal(parse_predictions(reply.text), want.astype(np.float64))


# --- loading -------------------------------------------------------------------------------------


def test_json_and_any_suffix_load(binary: Trained, tmp_path: pathlib.Path) -> None:
    booster, rows, _ = binary
    (tmp_path / "model.bst").write_bytes(bytes(booster.save_raw("json")))
    reply = worker_for(tmp_path).invoke(csv_body(rows), {"Content-Type": "text/csv"})
    np.testing.assert_array_equal(parse_predictions(reply.text), in_process(booster, rows))


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
    np.testing.assert_array_equal(parse_predictions(reply.text), in_process(booster, rows))


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
    np.testing.assert_array_equal(parse_predictions(reply.text), in_process(booster, rows))


def test_mms_model_loader_fails_registration_when_the_model_cannot_load(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "openmme.handlers.xgboost_service")
    (tmp_path / "xgboost-model").write_bytes(b"\x00\x00\x00?garbage")
    with pytest.raises(RuntimeError, match="legacy binary"):
        MmsModelLoader().load("broken", str(tmp_path), XGBOOST_HANDLER, None, 1)
