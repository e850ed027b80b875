"""Drive openmme's handler services the way an MMS 1.1.11 worker process does, without the Java front.

A plain module (not conftest) so tests can import it; its name is unique because test directories
here are not packages.

``MmsWorker`` builds the worker's ``mms.service.Service`` (which owns the real ``Context``), initialises
the handler as ``MmsModelLoader.load`` does (``handle(None, context)``), and for each batch encodes the
requests in MMS's wire format, decodes them with MMS's own ``otf_message_handler.retrieve_msg`` (so the
body arrives as bytes, str or parsed JSON exactly as ``decode_input_request`` decides), runs
``Service.predict`` (which builds the ``RequestProcessor`` list) and parses the response frame it returns.
"""

from __future__ import annotations

import io
import json
import pathlib
import socket
import struct
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse
import xgboost
from mms.protocol import otf_message_handler
from mms.service import Service

from openmme.publish.check import MmsReply
from openmme.publish.check import parse_predict_response as parse_mms_frame

Handle = Callable[[Any, Any], Any]

# Tiny models for every objective the handlers promise to serve exactly.
OBJECTIVES: dict[str, dict[str, Any]] = {
    "binary:logistic": {},
    "multi:softmax": {"num_class": 3},
    "multi:softprob": {"num_class": 3},
    "reg:squarederror": {},
}
NUM_ROWS, NUM_FEATURES = 20, 4


@dataclass(frozen=True)
class Reply(MmsReply):
    """One response of a batch, as MMS's Java front would receive it (``openmme.publish.check``'s parse)."""

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


@dataclass
class Request:
    body: bytes
    headers: Mapping[str, str]


class MmsWorker:
    """The Python half of one MMS model worker, fed through MMS's own codec."""

    def __init__(self, handle: Handle, model_dir: pathlib.Path, model_name: str = "model") -> None:
        # Service(model_name, model_dir, manifest, entry_point, gpu, batch_size), as MmsModelLoader builds it.
        self.service = Service(model_name, str(model_dir), None, handle, None, 1)
        handle(None, self.service.context)

    @classmethod
    def of_service(cls, service: Service) -> MmsWorker:
        """A worker around a Service MMS's own loader already built and initialised."""
        worker = cls.__new__(cls)
        worker.service = service
        return worker

    def invoke(self, body: bytes, headers: Mapping[str, str] | None = None) -> Reply:
        (reply,) = self.invoke_batch([Request(body, headers or {})])
        return reply

    def invoke_batch(self, requests: Sequence[Request]) -> list[Reply]:
        return parse_predict_response(self.service.predict(decode_on_worker(requests)))


def decode_on_worker(requests: Sequence[Request]) -> list[dict[str, Any]]:
    """Encode a batch as the Java front sends it and decode it with the worker's own codec."""
    frame = bytearray(b"I")
    for number, request in enumerate(requests):
        frame += _sized(f"request-{number}".encode())
        for name, value in request.headers.items():
            frame += _sized(name.encode()) + _sized(value.encode())
        frame += struct.pack("!i", -1)
        # The Java front names a raw body "body" and records its mime type without parameters.
        content_type = next((v for k, v in request.headers.items() if k.lower() == "content-type"), "")
        frame += _sized(b"body") + _sized(content_type.split(";")[0].strip().encode()) + _sized(request.body)
        frame += struct.pack("!i", -1)
    frame += struct.pack("!i", -1)
    sender, receiver = socket.socketpair()
    with sender, receiver:
        # A writer thread, so a body larger than the socket buffer cannot deadlock the test.
        writer = threading.Thread(target=sender.sendall, args=(bytes(frame),))
        writer.start()
        command, batch = otf_message_handler.retrieve_msg(receiver)
        writer.join()
    assert command == b"I"
    return list(batch)


def _sized(data: bytes) -> bytes:
    return struct.pack("!i", len(data)) + data


def parse_predict_response(frame: bytes) -> list[Reply]:
    """Parse the bytes of ``otf_message_handler.create_predict_response``, with the pre-publish check's parser
    (which raises when MMS failed the whole batch)."""
    return [Reply(**vars(reply)) for reply in parse_mms_frame(frame)]


def train_booster(objective: str, seed: int = 0) -> tuple[xgboost.Booster, np.ndarray]:
    """A 5-tree booster on 20 rows x 4 features, and rows (with a missing value and a zero) to score."""
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(NUM_ROWS, NUM_FEATURES))
    rows[3, 2] = np.nan
    rows[5, 1] = 0.0
    if objective.startswith("binary:"):
        labels = (rows[:, 0] > 0).astype(float)
    elif objective.startswith("multi:"):
        labels = np.digitize(rows[:, 0], [-0.5, 0.5]).astype(float)
    else:
        labels = rows[:, 0] * 2.0 - rows[:, 1]
    params = {"objective": objective, "max_depth": 3, **OBJECTIVES[objective]}
    booster = xgboost.train(params, xgboost.DMatrix(rows, label=labels), num_boost_round=5)
    return booster, rows


def in_process(booster: xgboost.Booster, rows: Any) -> np.ndarray:
    """The in-process reference: booster.predict(DMatrix(rows)) with NaN as missing."""
    return booster.predict(xgboost.DMatrix(rows))


def save_ubj(booster: xgboost.Booster, path: pathlib.Path) -> pathlib.Path:
    """Write a booster as UBJSON without the extension-guessing warning of save_model."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(booster.save_raw("ubj")))
    return path


def csv_body(rows: np.ndarray) -> bytes:
    """Rows as CSV, NaN as an empty value, every float written so it parses back exactly."""
    lines = (",".join("" if np.isnan(value) else repr(float(value)) for value in row) for row in rows)
    return "\n".join(lines).encode()


def libsvm_body(rows: np.ndarray) -> bytes:
    """Rows as LIBSVM with a label token, NaN left out (explicit zeros stay in)."""
    lines = []
    for row in rows:
        pairs = [f"{index}:{float(value)!r}" for index, value in enumerate(row) if not np.isnan(value)]
        lines.append(" ".join(["0", *pairs]))
    return "\n".join(lines).encode()


def json_rows(rows: np.ndarray) -> list[list[float | None]]:
    return [[None if np.isnan(value) else float(value) for value in row] for row in rows]


def npy_body(rows: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, rows, allow_pickle=False)
    return buffer.getvalue()


def recordio_dense_body(rows: np.ndarray) -> bytes:
    """Rows as the SageMaker SDK's RecordSerializer sends them (one dense Record per row)."""
    from sagemaker.serializers import RecordSerializer

    return bytes(RecordSerializer().serialize(rows).getvalue())


def recordio_sparse_body(matrix: scipy.sparse.csr_matrix, labels: np.ndarray | None = None) -> bytes:
    """A sparse matrix as the SageMaker SDK writes it (one sparse Record per row, keys and shape)."""
    from sagemaker.amazon.common import write_spmatrix_to_sparse_tensor

    buffer = io.BytesIO()
    write_spmatrix_to_sparse_tensor(buffer, matrix, labels)
    return buffer.getvalue()


def as_csr(rows: np.ndarray) -> scipy.sparse.csr_matrix:
    """Rows as CSR with NaN left out (missing) and explicit zeros kept, as XGBoost reads a dense NaN row."""
    present = ~np.isnan(rows)
    row_index, column_index = np.nonzero(present)
    return scipy.sparse.csr_matrix((rows[present], (row_index, column_index)), shape=rows.shape)


def parse_predictions(text: str) -> np.ndarray:
    """The predictions of a JSON answer (the default): the bare array the SageMaker XGBoost container writes."""
    return np.array(json.loads(text), dtype=np.float64)


def parse_csv_predictions(text: str) -> np.ndarray:
    """The predictions of a ``text/csv; format=rows`` answer: a line per row."""
    return np.array([[float(value) for value in line.split(",")] for line in text.split("\n")])


def parse_json_predictions(text: str) -> np.ndarray:
    """The predictions of an ``application/json; format=predictions`` answer."""
    document = json.loads(text)
    return np.array([prediction["score"] for prediction in document["predictions"]], dtype=np.float64)
