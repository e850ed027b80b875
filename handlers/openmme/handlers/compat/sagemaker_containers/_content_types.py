"""openmme's stand-in for ``sagemaker_containers._content_types`` (``beta.framework.content_types``)."""

from __future__ import annotations

from typing import NoReturn

from openmme.handlers._compat import unsupported_import

__all__ = ["ANY", "CSV", "JSON", "NPY", "OCTET_STREAM", "UTF8_TYPES"]

JSON = "application/json"
CSV = "text/csv"
OCTET_STREAM = "application/octet-stream"
ANY = "*/*"
NPY = "application/x-npy"
# The types whose bodies a script's input_fn receives as text.
UTF8_TYPES = [JSON, CSV]


def __getattr__(name: str) -> NoReturn:
    if name.startswith("__"):
        raise AttributeError(name)
    raise unsupported_import(f"{__name__}.{name}")
