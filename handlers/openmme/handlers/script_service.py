"""MMS handler service for archives with ``code/inference.py`` (SageMaker script mode).

The user's module supplies ``model_fn(model_dir)`` and either ``transform_fn`` or any of ``input_fn``,
``predict_fn`` and ``output_fn``; the sagemaker-inference toolkit's ``Transformer`` calls them. The ones a
script leaves out behave as in the SageMaker XGBoost container's script mode (``SafeInferenceHandler``):
``input_fn`` reads CSV, LIBSVM and RecordIO-protobuf into an ``xgboost.DMatrix`` (JSON and NPY, openmme's
additions, into arrays), ``predict_fn`` calls ``model.predict`` (with a DMatrix and
``validate_features=False`` for a Booster), and ``output_fn`` encodes JSON, CSV or NPY by Accept, with the
toolkit's encoder; no Accept (or ``*/*``) means ``$SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT``, by default JSON.

Scripts written for that container import ``sagemaker_xgboost_container.encoder`` and ``sagemaker_containers``:
openmme's stand-ins for their inference-time pieces go on ``sys.path`` last (see ``openmme.handlers._compat``).

Where the toolkit (1.10.1) falls short, this module steps in:

- ``DefaultHandlerService.initialize`` only edits the PYTHONPATH variable, which a running worker never
  re-reads, so ``code/inference.py`` would not be found. Here ``<model_dir>/code`` goes on ``sys.path``
  and ``inference.py`` is imported from its file under a name unique to the model directory, so two
  models in one process each get their own module instead of sharing ``inference``.
- The toolkit's default NPY decoder unpickles request bodies: the default ``input_fn`` here never does.
- The toolkit answers errors with the traceback in the body, reads the headers of a batch's first
  request for every request, and sets status and content type on the first response only. Here every
  request is handled with its own headers, and every failure answers with a status (a
  ``BaseInferenceToolkitError`` keeps its own), ``ERROR_HEADER`` and a one-line body; the traceback
  goes to the log.

The Content-Type handed to ``input_fn``/``transform_fn`` is the bare media type (``text/csv``, never
``text/csv; charset=utf-8``); bodies of ``text/csv`` and ``application/json`` arrive as ``str``, others as
``bytes``, as with the toolkit. A script that cannot load the model raises ``ScriptLoadError`` (reported like
the XGBoost service's load failures).

``code/requirements.txt`` is installed by the front, before it registers the model, into an environment of
that model's requirements (``openmme.endpoint.environments``); here the environment's packages are appended to
``sys.path`` before ``inference.py`` is imported: after openmme's own (numpy, xgboost and the toolkit are
imported already, and the environment was built against exactly those versions), before the stand-ins of
``_compat`` (so that a real ``sagemaker_containers`` a model asks for wins). Outside ``openmme serve`` (no
``OPENMME_ENVIRONMENTS_DIR``, e.g. ``openmme publish``'s check) nothing is installed and a warning says so.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import pathlib
import site
import sys
import traceback
import types
from typing import Any

import numpy as np
import xgboost
from sagemaker_inference import content_types, encoder
from sagemaker_inference.default_inference_handler import DefaultInferenceHandler
from sagemaker_inference.errors import (
    BaseInferenceToolkitError,
    GenericInferenceToolkitError,
    UnsupportedFormatError,
)
from sagemaker_inference.transformer import Transformer

from openmme.handlers._compat import add_compat_path, translate_missing_module
from openmme.handlers._decoding import (
    CSV,
    JSON,
    LIBSVM,
    NPY,
    RECORDIO,
    body_bytes,
    body_text,
    parse_json,
    parse_npy,
    parse_rows,
    request_kind,
)
from openmme.handlers._mms import (
    HandlerError,
    HandlerService,
    LoadError,
    MmsContext,
    accepted_types,
    full_media_type,
    one_line,
    reject,
    request_body,
    request_content_type,
    request_header,
)
from openmme.handlers.requirements import ENVIRONMENTS_VARIABLE, environment_site, read_requirements, requirements_key

__all__ = [
    "ScriptLoadError",
    "ScriptService",
    "add_model_environment",
    "handle",
    "load_user_module",
    "user_module_name",
]

logger = logging.getLogger(__name__)

# What a request without a Content-Type is taken to be (RFC 9110: unknown bytes).
DEFAULT_CONTENT_TYPE = "application/octet-stream"

REQUIREMENTS_WARNING = (
    "code/requirements.txt is installed only by openmme serve (into an environment of the model's own); here its"
    " packages must already be importable"
)

_USER_FUNCTIONS = ("input_fn", "predict_fn", "output_fn")


class ScriptLoadError(LoadError):
    """``code/inference.py`` cannot serve the model; the one-line message says why."""


def user_module_name(model_dir: pathlib.Path) -> str:
    """The module name ``<model_dir>/code/inference.py`` is imported under: unique per model directory."""
    digest = hashlib.sha256(str(pathlib.Path(model_dir).resolve()).encode("utf-8")).hexdigest()
    return f"openmme_user_{digest[:16]}"


def load_user_module(model_dir: pathlib.Path) -> types.ModuleType:
    """Import ``<model_dir>/code/inference.py`` under ``user_module_name(model_dir)``.

    ``<model_dir>/code`` goes first on ``sys.path`` so that the script's own helper modules import (as
    SageMaker's PYTHONPATH would make them). Those keep their plain names: two models whose helpers share
    a name would still collide in one process, which MMS (a process per model) never does.
    """
    code_dir = pathlib.Path(model_dir) / "code"
    script = code_dir / "inference.py"
    if not script.is_file():
        raise ScriptLoadError("the model archive has no code/inference.py")
    if str(code_dir) not in sys.path:
        sys.path.insert(0, str(code_dir))
    add_compat_path()
    name = user_module_name(model_dir)
    spec = importlib.util.spec_from_file_location(name, script)
    if spec is None or spec.loader is None:
        raise ScriptLoadError("code/inference.py cannot be imported")
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs, as a normal import would be (dataclasses and pickle look it up there).
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        reason = translate_missing_module(exc)
        raise ScriptLoadError(
            f"code/inference.py failed to import: {type(reason).__name__}: {one_line(str(reason))}"
        ) from exc
    return module


def add_model_environment(model_dir: pathlib.Path) -> pathlib.Path | None:
    """Append the packages built for ``<model_dir>/code/requirements.txt`` to ``sys.path`` (their ``.pth`` files
    processed, as for any site directory) and return their directory; None when the model names no requirements,
    or outside ``openmme serve`` (then with a warning). Raises ScriptLoadError when the front has not built them."""
    lines = read_requirements(model_dir)
    if not lines:
        return None
    environments = os.environ.get(ENVIRONMENTS_VARIABLE)
    if not environments:
        logger.warning(REQUIREMENTS_WARNING)
        return None
    key = requirements_key(lines)
    site_dir = environment_site(pathlib.Path(environments), key)
    if not site_dir.is_dir():
        raise ScriptLoadError(f"the environment of code/requirements.txt ({key}) is not built in {environments}")
    site.addsitedir(str(site_dir))
    return site_dir


def _as_toolkit_error(exc: Exception) -> BaseInferenceToolkitError:
    """Any failure as the toolkit's error type, which carries the HTTP status to answer with."""
    if isinstance(exc, BaseInferenceToolkitError):
        return exc
    if isinstance(exc, HandlerError):
        return GenericInferenceToolkitError(exc.status, exc.message)
    if isinstance(exc, UnsupportedFormatError):
        return GenericInferenceToolkitError(415, one_line(str(exc)))
    return GenericInferenceToolkitError(500, f"{type(exc).__name__}: {one_line(str(exc))}")


def _status_of(error: BaseInferenceToolkitError) -> int:
    status = error.status_code
    return status if isinstance(status, int) and 100 <= status <= 599 else 500


# The Accept values the default output_fn encodes (``json`` and ``csv`` also by their bare names).
_OUTPUT_TYPES = (content_types.JSON, content_types.CSV, content_types.NPY)


class SafeInferenceHandler(DefaultInferenceHandler):  # type: ignore[misc]  # the toolkit is untyped
    """Defaults for the functions ``code/inference.py`` leaves out, as the SageMaker XGBoost container's script
    mode has them; none of them unpickles."""

    def default_input_fn(self, input_data: Any, content_type: str, context: Any = None) -> Any:
        """CSV, LIBSVM and RecordIO-protobuf to an ``xgboost.DMatrix`` (read as the XGBoost service reads them,
        a missing value being missing); JSON to ``np.array`` and NPY to a 2-D array, openmme's additions."""
        kind = request_kind(content_type)
        if kind in (CSV, LIBSVM, RECORDIO):
            return xgboost.DMatrix(parse_rows(input_data, kind), missing=np.nan)
        if kind == JSON:
            try:
                return np.array(parse_json(body_text(input_data)))
            except ValueError as exc:
                raise HandlerError(400, f"the JSON body is not an array: {exc}") from exc
        if kind == NPY:
            return parse_npy(body_bytes(input_data))
        raise HandlerError(
            415,
            f"Content-Type {content_type} is not supported by the default input_fn (text/csv, text/libsvm, "
            "application/x-recordio-protobuf, application/json, application/x-npy); define input_fn in "
            "code/inference.py",
        )

    def default_predict_fn(self, data: Any, model: Any, context: Any = None) -> Any:
        """``model.predict``, as the SageMaker XGBoost container calls it for the model ``model_fn`` returns.

        A Booster predicts on a DMatrix (an array is wrapped into one) with ``validate_features=False``. An
        xgboost scikit-learn model (anything with ``get_booster``, e.g. XGBClassifier) cannot take a DMatrix:
        it gets the DMatrix's rows as a CSR matrix (a missing value stays missing), so that its own
        ``predict`` (class labels for a classifier) answers. Any other model gets ``data`` as it is.
        """
        if isinstance(model, xgboost.Booster):
            matrix = data if isinstance(data, xgboost.DMatrix) else xgboost.DMatrix(data, missing=np.nan)
            return model.predict(matrix, validate_features=False)
        predict = getattr(model, "predict", None)
        if not callable(predict):
            raise GenericInferenceToolkitError(
                500,
                f"the model from model_fn (a {type(model).__name__}) has no predict method; "
                "define predict_fn or transform_fn in code/inference.py",
            )
        if isinstance(data, xgboost.DMatrix) and callable(getattr(model, "get_booster", None)):
            return predict(data.get_data(), validate_features=False)
        return predict(data)

    def default_output_fn(self, prediction: Any, accept: str, context: Any = None) -> Any:
        """The first of the Accept header's types the toolkit's encoder writes: JSON, CSV or NPY."""
        for mime in accepted_types(accept):
            response_type = full_media_type(mime)
            if response_type in _OUTPUT_TYPES:
                return encoder.encode(prediction, response_type), response_type
        raise HandlerError(
            415,
            f"Accept {accept} is not supported by the default output_fn (application/json, text/csv, "
            "application/x-npy); define output_fn in code/inference.py",
        )


class ScriptTransformer(Transformer):  # type: ignore[misc]  # the toolkit is untyped
    """The toolkit's Transformer, bound to one imported user module and answering per request."""

    def __init__(self, user_module: types.ModuleType) -> None:
        super().__init__(default_inference_handler=SafeInferenceHandler())
        self._user_module = user_module

    def _validate_user_module_and_set_functions(self) -> None:
        # The toolkit's version imports the module named by SAGEMAKER_PROGRAM ("inference"); this one
        # takes the functions from the module this transformer was given.
        module = self._user_module
        handler = self._default_inference_handler
        model_fn = getattr(module, "model_fn", None)
        if not callable(model_fn):
            raise ScriptLoadError("code/inference.py defines no model_fn(model_dir), so the model cannot load")
        transform_fn = getattr(module, "transform_fn", None)
        input_fn, predict_fn, output_fn = (getattr(module, name, None) for name in _USER_FUNCTIONS)
        if transform_fn is not None and (input_fn or predict_fn or output_fn):
            raise ScriptLoadError(
                "code/inference.py defines transform_fn together with input_fn/predict_fn/output_fn; "
                "define either transform_fn or the others"
            )
        self._model_fn = model_fn
        self._transform_fn = transform_fn or self._default_transform_fn
        self._input_fn = input_fn or handler.default_input_fn
        self._predict_fn = predict_fn or handler.default_predict_fn
        self._output_fn = output_fn or handler.default_output_fn
        self._pre_model_fn = getattr(module, "pre_model_fn", None)
        self._model_warmup_fn = getattr(module, "model_warmup_fn", None)

    def transform(self, data: list[dict[str, Any]], context: MmsContext) -> list[Any]:
        """One response per request of the batch, each with its own headers, status and content type."""
        responses: list[Any] = []
        for idx, request in enumerate(data):
            try:
                responses.append(self._transform_one(idx, request, context))
            except Exception as exc:
                responses.extend(self.handle_error(context, _as_toolkit_error(exc), traceback.format_exc(), idx))
        return responses

    def _transform_one(self, idx: int, request: dict[str, Any], context: MmsContext) -> Any:
        content_type = request_content_type(context, idx) or DEFAULT_CONTENT_TYPE
        accept = request_header(context, idx, "Accept")
        if not accept or accept.strip() == content_types.ANY:
            accept = self._environment.default_accept
        body = request_body(request)
        # As the toolkit does: text for the UTF-8 types, bytes for the rest.
        input_data = body_text(body) if content_type in content_types.UTF8_TYPES else body_bytes(body)
        result = self._run_handler_function(self._transform_fn, self._model, input_data, content_type, accept)
        response, response_type = result if isinstance(result, tuple) else (result, accept)
        if response_type:
            context.set_response_content_type(idx, response_type)
        return _serialisable(response)

    @staticmethod
    def handle_error(
        context: MmsContext, inference_exception: BaseInferenceToolkitError, trace: str, idx: int = 0
    ) -> list[str]:
        """Answer request ``idx`` with the error's status, ERROR_HEADER and a one-line body; log the trace."""
        message = one_line(str(inference_exception.message)) or type(inference_exception).__name__
        status = _status_of(inference_exception)
        # A client's bad input is not the operator's problem: its trace is only worth a debug line.
        level = logging.ERROR if status >= 500 else logging.DEBUG
        logger.log(level, "request %d of the script model failed: %s\n%s", idx, message, trace)
        return [reject(context, idx, status, message)]


def _serialisable(response: Any) -> Any:
    """What MMS can send: bytes and str as they are, anything else as JSON (arrays as lists)."""
    if isinstance(response, (bytes, bytearray, str)):
        return response
    try:
        return json.dumps(response, default=_to_list)
    except (TypeError, ValueError) as exc:
        raise GenericInferenceToolkitError(
            500, f"output_fn returned a {type(response).__name__}, which is not bytes, str or JSON-serialisable"
        ) from exc


def _to_list(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class ScriptService(HandlerService):
    """One user-script model: its imported ``inference.py`` and the transformer that calls it."""

    def __init__(self) -> None:
        self._transformer: ScriptTransformer | None = None
        self.user_module: types.ModuleType | None = None

    def initialize(self, context: MmsContext) -> None:
        """Import ``code/inference.py`` and run its ``model_fn``; raises (failing registration) if either fails."""
        model_dir = pathlib.Path(context.system_properties["model_dir"])
        add_model_environment(model_dir)  # before the import: the script's own imports need it
        module = load_user_module(model_dir)
        transformer = ScriptTransformer(module)
        try:
            transformer.validate_and_initialize(model_dir=str(model_dir), context=context)
        except ScriptLoadError:
            raise
        except Exception as exc:
            raise ScriptLoadError(
                f"loading the model with code/inference.py failed: {type(exc).__name__}: {one_line(str(exc))}"
            ) from exc
        self.user_module = module
        self._transformer = transformer
        logger.info("loaded script model %s as module %s", model_dir, module.__name__)

    def is_loaded(self) -> bool:
        return self._transformer is not None

    def serve(self, data: list[dict[str, Any]], context: MmsContext) -> list[Any]:
        return self._loaded().transform(data, context)

    def _loaded(self) -> ScriptTransformer:
        if self._transformer is None:
            raise RuntimeError("the script service has not loaded a model yet")
        return self._transformer


_service = ScriptService()


def handle(data: list[dict[str, Any]] | None, context: MmsContext) -> list[Any] | None:
    """MMS's entry point for this worker process's model."""
    return _service.handle(data, context)
