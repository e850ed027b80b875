"""What lets scripts written for the SageMaker XGBoost container import unchanged: openmme's stand-ins for
``sagemaker_xgboost_container`` and ``sagemaker_containers``.

Scripts for that container import from two AWS packages that openmme does not depend on, e.g.
``from sagemaker_xgboost_container import encoder as xgb_encoders`` and
``from sagemaker_containers.beta.framework import content_types, encoders``. openmme ships small packages of
those names in ``compat/`` (``COMPAT_DIR``), written on openmme's own decoders, with the pieces a script uses
while serving (``PROVIDED``). The script service appends that directory to ``sys.path``, after every other
entry, so that a real installed package wins.

Anything else those packages have (training-time ``entry_point``, ``env``, ``modules``, serving machinery
such as ``worker``) is not there: importing it fails when the script is imported, with one line naming it and
what to use instead (``unsupported_import``). ``from package import name`` reaches that line through the
packages' module ``__getattr__``; ``import package.missing`` fails with ModuleNotFoundError, which the script
service turns into the same line (``translate_missing_module``).

The errors a script may catch live here, once, and the stand-ins re-export them.
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

from sagemaker_inference.errors import UnsupportedFormatError as _ToolkitUnsupportedFormatError

from openmme.handlers._mms import HandlerError

__all__ = [
    "COMPAT_DIR",
    "PROVIDED",
    "ClientError",
    "PayloadError",
    "UnsupportedFormatError",
    "add_compat_path",
    "missing_names",
    "read_payload",
    "translate_missing_module",
    "unsupported_import",
]

COMPAT_DIR = pathlib.Path(__file__).resolve().with_name("compat")

# The stand-in packages and what each provides.
PROVIDED = {
    "sagemaker_xgboost_container": (
        "encoder (csv_to_dmatrix, libsvm_to_dmatrix, recordio_protobuf_to_dmatrix, decode)"
    ),
    "sagemaker_containers": (
        "beta.framework's encoders (encode, decode and the array_to_*/*_to_numpy functions), "
        "content_types and errors (ClientError, UnsupportedFormatError)"
    ),
}

_SERVING = "openmme calls code/inference.py's model_fn, input_fn, predict_fn and output_fn itself"
# What to use instead of the names scripts are known to import, by their last dotted part.
_INSTEAD = {
    "worker": "return (body, content_type) from output_fn or transform_fn instead of a worker.Response",
    "env": "read os.environ, and the model directory from model_fn's argument",
    "record_pb2": "decode RecordIO-protobuf with sagemaker_xgboost_container.encoder.recordio_protobuf_to_dmatrix",
    "_recordio": "decode RecordIO-protobuf with sagemaker_xgboost_container.encoder.recordio_protobuf_to_dmatrix",
    "data_utils": "decode request bodies with sagemaker_xgboost_container.encoder",
}


class ClientError(Exception):
    """A request or script data openmme cannot use (``sagemaker_containers``' error of the same name)."""


class PayloadError(HandlerError, ClientError):
    """A body a stand-in decoder cannot read: a ``ClientError`` to the script, a 400 to the client."""


class UnsupportedFormatError(_ToolkitUnsupportedFormatError):  # type: ignore[misc]  # the toolkit is untyped
    """A content type a stand-in encoder or decoder does not handle; the script service answers it with 415."""


def unsupported_import(name: str) -> ImportError:
    """The one-line ImportError for ``name`` (dotted), a part of a stand-in package that openmme does not have."""
    package = name.split(".", 1)[0]
    instead = _INSTEAD.get(name.rsplit(".", 1)[-1], f"it is training or serving machinery, and {_SERVING}")
    return ImportError(
        f"{name} is not available in openmme, whose stand-in {package} provides only {PROVIDED[package]}; {instead}",
        name=name,
    )


def missing_names(module: str) -> Callable[[str], NoReturn]:
    """The module ``__getattr__`` of a stand-in: a name it does not have fails ``from module import name`` with the
    one-line ImportError (dunder names stay AttributeErrors, as Python's own lookups expect)."""

    def __getattr__(name: str) -> NoReturn:
        if name.startswith("__"):
            raise AttributeError(name)
        raise unsupported_import(f"{module}.{name}")

    return __getattr__


T = TypeVar("T")


def read_payload(parse: Callable[[], T]) -> T:
    """``parse()`` of a body a stand-in decodes: openmme's HandlerError becomes the PayloadError scripts catch."""
    try:
        return parse()
    except HandlerError as exc:
        raise PayloadError(exc.status, exc.message) from exc


def translate_missing_module(exc: BaseException) -> BaseException:
    """``exc``, or the one-line ImportError when it is a module missing from one of openmme's stand-ins."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return exc
    package = sys.modules.get(exc.name.split(".", 1)[0])
    location = getattr(package, "__file__", None)
    if package is None or location is None or not pathlib.Path(location).resolve().is_relative_to(COMPAT_DIR):
        return exc
    return unsupported_import(exc.name)


def add_compat_path() -> None:
    """Put the stand-ins on ``sys.path``, last, so that a real installed package is imported instead."""
    if str(COMPAT_DIR) not in sys.path:
        sys.path.append(str(COMPAT_DIR))
