"""MMS handler service for bare XGBoost boosters (SageMaker XGBoost's ``xgboost-model`` and friends).

MMS runs one model per worker process: it imports this module, calls ``handle(None, context)`` once to
load the model, then ``handle(batch, context)`` for every batch of requests. The per-model state lives in
an ``XGBoostService`` so that tests (or any other host) can run several side by side; ``handle`` delegates
to this process's instance.

Model files: JSON and UBJSON load; XGBoost's legacy binary format does not (xgboost 3.x cannot read it);
a Python pickle is refused unless the worker's environment has ``OPENMME_ALLOW_PICKLE=1``, because
unpickling runs whatever code the file names. A model that cannot load raises, so MMS fails its
registration, and the one-line reason goes to ``$OPENMME_LOAD_ERRORS_DIR/<model name>.txt`` for the front.

Requests and answers are byte for byte those of the SageMaker XGBoost container in multi-model mode (its
algorithm-mode handler service):

- in: ``text/csv`` (also ``csv``; ``label_size``, if given, must be 1), ``text/libsvm`` (also
  ``text/x-libsvm``, ``libsvm``) and ``application/x-recordio-protobuf``; openmme adds ``application/json``
  and ``application/x-npy`` (never unpickled). A request without a Content-Type is CSV.
- out, by Accept: no Accept or ``*/*`` means ``$SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT`` (default
  ``application/json``). ``application/json`` (or ``json``) is ``json.dumps(predictions.tolist())``: a bare
  array, a list per row for several outputs per row. ``text/csv`` (or ``csv``) is the container's one line,
  ``",".join(map(str, predictions.tolist()))``, or with ``$SAGEMAKER_BATCH`` set one line per row and a
  final newline. openmme's other shapes are asked for by name with the ``format`` parameter (``FORMAT``):
  ``application/json; format=predictions`` (``{"predictions": [{"score": ...}]}``) and
  ``text/csv; format=rows`` (a line per row, its outputs comma-separated).
- errors: 415 for a Content-Type or Accept no one reads, 400 ("Unable to evaluate payload provided: ...")
  for a body that cannot be read (an empty one included), 500 when predicting fails.

Predictions are exactly ``booster.predict(xgboost.DMatrix(rows), validate_features=False)``, missing
values being NaN.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import xgboost

from openmme.handlers import DEFAULT_ACCEPT_VARIABLE, find_booster
from openmme.handlers._decoding import CSV, REQUEST_KINDS, Rows, parse_rows, request_kind
from openmme.handlers._mms import (
    HandlerError,
    HandlerService,
    LoadError,
    MmsContext,
    full_media_type,
    media_parameters,
    media_type,
    one_line,
    reject,
    request_body,
    request_content_type_header,
    request_header,
)

__all__ = [
    "ALLOW_PICKLE_ENV",
    "BAD_PAYLOAD",
    "BATCH_ENV",
    "DEFAULT_ACCEPT_ENV",
    "FORMAT",
    "SUPPORTED_ACCEPTS",
    "ModelLoadError",
    "ResponseFormat",
    "XGBoostService",
    "batch_csv",
    "container_csv",
    "container_json",
    "handle",
    "load_booster",
    "predictions_json",
    "request_kind_of",
    "response_format",
    "rows_csv",
]

logger = logging.getLogger(__name__)

ALLOW_PICKLE_ENV = "OPENMME_ALLOW_PICKLE"
# The sagemaker-inference toolkit's: the Accept of a request that names none (or */*).
DEFAULT_ACCEPT_ENV = DEFAULT_ACCEPT_VARIABLE
# Set (to anything) by SageMaker batch transform: CSV answers become a line per row.
BATCH_ENV = "SAGEMAKER_BATCH"
# The Accept parameter that names one of openmme's own answer shapes.
FORMAT = "format"

JSON_TYPE = "application/json"
CSV_TYPE = "text/csv"

# The prefix of the container's message for a body it cannot read.
BAD_PAYLOAD = "Unable to evaluate payload provided: "

# Protocol 2+ pickles start with the PROTO opcode; protocol 0 pickles of old containers with a GLOBAL.
_PICKLE_PREFIXES = (b"\x80", b"ccopy_reg\n", b"cxgboost")


class ModelLoadError(LoadError):
    """The booster file cannot be served; the one-line message says why and what to do."""


def load_booster(path: pathlib.Path, *, allow_pickle: bool = False) -> xgboost.Booster:
    """Load the booster in ``path``: JSON or UBJSON, or a pickle when ``allow_pickle`` is true."""
    raw = path.read_bytes()
    if raw.startswith(_PICKLE_PREFIXES):
        return _unpickle_booster(raw, path.name, allow_pickle=allow_pickle)
    # Both JSON and UBJSON models are a top-level object, so they start with "{".
    if not raw.lstrip().startswith(b"{"):
        raise ModelLoadError(
            f"{path.name} is neither JSON nor UBJSON; it looks like XGBoost's legacy binary format, which "
            f"xgboost {xgboost.__version__} cannot read: convert it with an xgboost 2.x release, e.g. "
            f"xgboost.Booster(model_file='{path.name}').save_model('xgboost-model.ubj')"
        )
    booster = xgboost.Booster()
    try:
        booster.load_model(bytearray(raw))
    except xgboost.core.XGBoostError as exc:
        raise ModelLoadError(f"{path.name} is not a valid XGBoost JSON/UBJSON model: {one_line(str(exc))}") from exc
    return booster


def _unpickle_booster(raw: bytes, name: str, *, allow_pickle: bool) -> xgboost.Booster:
    if not allow_pickle:
        raise ModelLoadError(
            f"{name} is a Python pickle, which openmme does not load because unpickling runs arbitrary code: "
            f"re-save it with booster.save_model('xgboost-model.ubj'), or set {ALLOW_PICKLE_ENV}=1 if the "
            "model prefix is trusted"
        )
    try:
        # The operator opted in for a trusted prefix (checked above).
        loaded = pickle.loads(raw)
    except Exception as exc:
        raise ModelLoadError(f"{name} could not be unpickled: {type(exc).__name__}: {one_line(str(exc))}") from exc
    if isinstance(loaded, xgboost.Booster):
        return loaded
    raise ModelLoadError(f"{name} unpickled to a {type(loaded).__name__}, not an XGBoost Booster")


class XGBoostService(HandlerService):
    """One loaded booster, and how its requests are decoded, predicted and encoded."""

    def __init__(self) -> None:
        self._booster: xgboost.Booster | None = None

    @property
    def booster(self) -> xgboost.Booster:
        if self._booster is None:
            raise RuntimeError("the XGBoost service has not loaded a model yet")
        return self._booster

    @classmethod
    def from_directory(cls, model_dir: pathlib.Path) -> XGBoostService:
        """A service with the booster of an extracted archive loaded (see ``load_directory``)."""
        service = cls()
        service.load_directory(model_dir)
        return service

    def load_directory(self, model_dir: pathlib.Path) -> None:
        """Load the booster of ``model_dir``; raises UnsupportedArchive or ModelLoadError if it can't."""
        path = find_booster(model_dir)
        # Read in the worker, at load time: the operator's opt-in is part of the worker's environment.
        allow_pickle = os.environ.get(ALLOW_PICKLE_ENV) == "1"
        booster = load_booster(path, allow_pickle=allow_pickle)
        self._booster = booster
        logger.info("loaded XGBoost model %s (%d features)", path, booster.num_features())

    def initialize(self, context: MmsContext) -> None:
        """Load the booster of the model directory MMS gives; raises (failing registration) if it can't."""
        self.load_directory(pathlib.Path(context.system_properties["model_dir"]))

    def is_loaded(self) -> bool:
        return self._booster is not None

    def serve(self, data: list[dict[str, Any]], context: MmsContext) -> list[Any]:
        return [self.respond(idx, request, context) for idx, request in enumerate(data)]

    def predict(self, rows: Rows) -> npt.NDArray[np.float32]:
        """Exactly what ``booster.predict(xgboost.DMatrix(rows))`` returns in-process (the container's call),
        computed without building a DMatrix: ``inplace_predict`` reads the rows where they are, the same trees
        over the same float32 values, and saves a quarter of a warm request's time in the worker."""
        # Boosters trained on a DataFrame carry feature names that positional rows lack; like the
        # SageMaker XGBoost container, predict by position.
        predictions: npt.NDArray[np.float32] = self.booster.inplace_predict(
            rows, missing=np.nan, validate_features=False
        )
        return predictions

    def respond(self, idx: int, request: dict[str, Any], context: MmsContext) -> str:
        """Request ``idx`` of a batch: its predictions encoded, or a rejection (see ``reject``)."""
        try:
            answer = response_format(
                request_header(context, idx, "Accept"),
                default_accept=os.environ.get(DEFAULT_ACCEPT_ENV) or JSON_TYPE,
                batch=bool(os.environ.get(BATCH_ENV)),
            )
            kind = request_kind_of(request_content_type_header(context, idx))
            rows = self._decode(request_body(request), kind)
            predictions = self.predict(rows)
        except HandlerError as exc:
            message = BAD_PAYLOAD + exc.message if exc.status == 400 else exc.message
            return reject(context, idx, exc.status, message)
        except Exception as exc:
            logger.exception("prediction failed for request %d", idx)
            return reject(context, idx, 500, f"prediction failed: {type(exc).__name__}: {one_line(str(exc))}")
        context.set_response_content_type(idx, answer.content_type)
        return answer.encode(predictions)

    def _decode(self, body: Any, kind: str) -> Rows:
        # The container answers an empty body with 204 and no content, which reads as a successful empty
        # prediction; a client is better told what went wrong.
        if isinstance(body, (bytes, bytearray, str)) and not body:
            raise HandlerError(400, "the request body is empty")
        return parse_rows(body, kind, self.booster.num_features())


def request_kind_of(content_type: str | None) -> str:
    """The kind of body a request's Content-Type header names (CSV when there is none); 415 if unsupported."""
    if content_type is None:
        return CSV
    kind = request_kind(content_type)
    if kind is None:
        supported = ", ".join(REQUEST_KINDS)
        raise HandlerError(415, f"Content-Type {content_type} is not supported; use one of {supported}")
    if kind == CSV and media_parameters(content_type).get("label_size") not in (None, "1"):
        raise HandlerError(
            415, f"Content-Type {content_type} is not supported: its optional parameter label_size must be 1"
        )
    return kind


@dataclass(frozen=True)
class ResponseFormat:
    """How predictions are answered: the response's Content-Type and the encoder of its body."""

    content_type: str
    encode: Callable[[npt.NDArray[np.float32]], str]


def container_json(predictions: npt.NDArray[np.float32]) -> str:
    """The container's JSON: the bare array of predictions (a list per row for several outputs per row)."""
    # tolist() widens float32 to Python floats exactly; json writes their shortest repr.
    return json.dumps(predictions.tolist())


def container_csv(predictions: npt.NDArray[np.float32]) -> str:
    """The container's CSV: ONE line, the rows joined by commas, no final newline.

    Several outputs per row come out as ``[0.1, 0.9],[0.8, 0.2]``: not CSV, and kept by the container for
    its old clients, so kept here too.
    """
    return ",".join(map(str, predictions.tolist()))


def batch_csv(predictions: npt.NDArray[np.float32]) -> str:
    """The container's CSV under batch transform (``$SAGEMAKER_BATCH``): a line per row, a final newline."""
    return "\n".join(map(str, predictions.tolist())) + "\n"


def predictions_json(predictions: npt.NDArray[np.float32]) -> str:
    """openmme's ``format=predictions``: ``{"predictions": [{"score": ...}, ...]}``, a score per row."""
    return json.dumps({"predictions": [{"score": value} for value in predictions.tolist()]})


def rows_csv(predictions: npt.NDArray[np.float32]) -> str:
    """openmme's ``format=rows``: real CSV, a line per row with its outputs comma-separated, no final newline.

    Values are ``repr(float(value))``, which parses back to exactly the float32 prediction.
    """
    return "\n".join(",".join(map(repr, row)) if isinstance(row, list) else repr(row) for row in predictions.tolist())


# (media type, format parameter) -> the answer; None is the container's own shape.
_FORMATS: dict[tuple[str, str | None], ResponseFormat] = {
    (JSON_TYPE, None): ResponseFormat(JSON_TYPE, container_json),
    (CSV_TYPE, None): ResponseFormat(CSV_TYPE, container_csv),
    (JSON_TYPE, "predictions"): ResponseFormat(JSON_TYPE, predictions_json),
    (CSV_TYPE, "rows"): ResponseFormat(CSV_TYPE, rows_csv),
}
_BATCH_CSV = ResponseFormat(CSV_TYPE, batch_csv)
SUPPORTED_ACCEPTS = (JSON_TYPE, CSV_TYPE, f"{JSON_TYPE}; {FORMAT}=predictions", f"{CSV_TYPE}; {FORMAT}=rows")


def response_format(accept: str | None, *, default_accept: str, batch: bool = False) -> ResponseFormat:
    """The answer to a request with ``accept``: the first type it lists that is supported; 415 if none is.

    No Accept, or ``*/*``, means ``default_accept`` (``$SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT``). Parameters
    other than ``format`` (``charset``, ``q`` ...) are ignored.
    """
    if not accept or not accept.strip():
        return _format_of(default_accept, batch, f" (the default, from {DEFAULT_ACCEPT_ENV})")
    return _format_of(accept, batch, "", default_accept)


def _format_of(accept: str, batch: bool, source: str, default_accept: str | None = None) -> ResponseFormat:
    for part in accept.split(","):
        mime = media_type(part)
        if mime == "*/*" and default_accept is not None:
            return _format_of(default_accept, batch, f" (the default, from {DEFAULT_ACCEPT_ENV})")
        # The container reads exactly these two types, and their bare names.
        key = (full_media_type(mime or ""), media_parameters(part).get(FORMAT))
        if key == (CSV_TYPE, None) and batch:
            return _BATCH_CSV
        if key in _FORMATS:
            return _FORMATS[key]
    raise HandlerError(415, f"Accept {accept}{source} is not supported; use one of: {', '.join(SUPPORTED_ACCEPTS)}")


_service = XGBoostService()


def handle(data: list[dict[str, Any]] | None, context: MmsContext) -> list[str] | None:
    """MMS's entry point for this worker process's model."""
    return _service.handle(data, context)
