"""MMS handler service for bare XGBoost boosters (SageMaker XGBoost's ``xgboost-model`` and friends).

MMS runs one model per worker process: it imports this module, calls ``handle(None, context)`` once to
load the model, then ``handle(batch, context)`` for every batch of requests. The per-model state lives in
an ``XGBoostService`` so that tests (or any other host) can run several side by side; ``handle`` delegates
to this process's instance.

Model files: JSON and UBJSON load; XGBoost's legacy binary format does not (xgboost 3.x cannot read it);
a Python pickle is refused unless the worker's environment has ``OPENMME_ALLOW_PICKLE=1``, because
unpickling runs whatever code the file names. A model that cannot load raises, so MMS fails its
registration, and the one-line reason goes to ``$OPENMME_LOAD_ERRORS_DIR/<model name>.txt`` for the front.

Requests: ``text/csv`` (the default), ``text/libsvm``, ``application/json`` and ``application/x-npy``
in; ``text/csv`` (the default) or ``application/json`` (``{"predictions": [{"score": ...}]}``) out.
Predictions are exactly ``booster.predict(xgboost.DMatrix(rows))``, missing values being NaN.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import pickle
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse
import xgboost

from openmme.handlers import find_booster
from openmme.handlers._decoding import (
    body_bytes,
    body_text,
    check_width,
    parse_csv,
    parse_json,
    parse_json_rows,
    parse_libsvm,
    parse_npy,
)
from openmme.handlers._mms import (
    HandlerError,
    HandlerService,
    LoadError,
    MmsContext,
    accepted_types,
    one_line,
    reject,
    request_body,
    request_content_type,
    request_header,
)

__all__ = [
    "ALLOW_PICKLE_ENV",
    "ModelLoadError",
    "XGBoostService",
    "encode_predictions",
    "handle",
    "load_booster",
]

logger = logging.getLogger(__name__)

ALLOW_PICKLE_ENV = "OPENMME_ALLOW_PICKLE"

CSV = "text/csv"
LIBSVM = "text/libsvm"
JSON = "application/json"
NPY = "application/x-npy"
# The SageMaker XGBoost container also takes libsvm under this older name.
_LIBSVM_ALIASES = (LIBSVM, "text/x-libsvm")
_REQUEST_TYPES = (CSV, LIBSVM, JSON, NPY)
_RESPONSE_TYPES = (CSV, JSON)

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

    def predict(self, rows: npt.NDArray[Any] | scipy.sparse.csr_matrix) -> npt.NDArray[np.float32]:
        """Exactly what ``booster.predict(xgboost.DMatrix(rows))`` returns in-process."""
        matrix = xgboost.DMatrix(rows, missing=np.nan)
        # Boosters trained on a DataFrame carry feature names that positional rows lack; like the
        # SageMaker XGBoost container, predict by position.
        return self.booster.predict(matrix, validate_features=False)

    def respond(self, idx: int, request: dict[str, Any], context: MmsContext) -> str:
        """Request ``idx`` of a batch: its predictions encoded, or a rejection (see ``reject``)."""
        try:
            response_type = _response_type(request_header(context, idx, "Accept"))
            rows = self._decode(request_body(request), request_content_type(context, idx) or CSV)
            predictions = self.predict(rows)
        except HandlerError as exc:
            return reject(context, idx, exc.status, exc.message)
        except Exception as exc:
            logger.exception("prediction failed for request %d", idx)
            return reject(context, idx, 500, f"prediction failed: {type(exc).__name__}: {one_line(str(exc))}")
        context.set_response_content_type(idx, response_type)
        return encode_predictions(predictions, response_type)

    def _decode(self, body: Any, content_type: str) -> npt.NDArray[Any] | scipy.sparse.csr_matrix:
        num_features = self.booster.num_features()
        if content_type == CSV:
            return parse_csv(body_text(body), num_features)
        if content_type in _LIBSVM_ALIASES:
            return parse_libsvm(body_text(body), num_features)
        if content_type == JSON:
            # MMS may have parsed the JSON already (decode_input_request=true).
            document = body if isinstance(body, (list, dict)) else parse_json(body_text(body))
            return parse_json_rows(document, num_features)
        if content_type == NPY:
            array = parse_npy(body_bytes(body))
            check_width(array.shape[1], num_features, "the NPY array")
            # DMatrix reads float32/float64 as they are; anything else widens to float64 exactly.
            if array.dtype not in (np.float32, np.float64):
                array = array.astype(np.float64)
            return array
        raise HandlerError(415, f"Content-Type {content_type} is not supported; use {', '.join(_REQUEST_TYPES)}")


def _response_type(accept: str | None) -> str:
    """The response media type for an Accept header: text/csv unless JSON is asked for; 415 if neither."""
    wanted = accepted_types(accept)
    if not wanted:
        return CSV
    for mime in wanted:
        if mime == "*/*":
            return CSV
        if mime in _RESPONSE_TYPES:
            return mime
    raise HandlerError(415, f"Accept {accept} is not supported; use {' or '.join(_RESPONSE_TYPES)}")


def encode_predictions(predictions: npt.NDArray[np.float32], response_type: str) -> str:
    """CSV as the SageMaker XGBoost container writes it, or its JSON shape.

    CSV: one output per row (binary, regression, softmax) is ONE line of comma-separated values, one per
    row, so that clients written for SageMaker (``np.fromstring(body, sep=",")``) work unchanged; several
    outputs per row (softprob, multi-target) are a line per row.

    Values are written as ``repr(float(value))``: parsing them gives back exactly the float32 predictions.
    """
    # tolist() widens float32 to Python floats exactly; repr is the shortest text that parses back.
    values = predictions.tolist()
    if response_type == JSON:
        return json.dumps({"predictions": [{"score": value} for value in values]})
    if predictions.ndim == 1:
        return ",".join(map(repr, values))
    return "\n".join(",".join(map(repr, row)) for row in values)


_service = XGBoostService()


def handle(data: list[dict[str, Any]] | None, context: MmsContext) -> list[str] | None:
    """MMS's entry point for this worker process's model."""
    return _service.handle(data, context)
