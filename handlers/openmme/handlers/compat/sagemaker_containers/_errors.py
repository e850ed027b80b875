"""openmme's stand-in for ``sagemaker_containers._errors`` (``beta.framework.errors``): the errors scripts catch.

``ClientError`` is what the stand-in decoders raise for a body they cannot read (as ``PayloadError``, which
openmme answers with 400); ``UnsupportedFormatError`` is raised for a content type they do not handle (415).
"""

from __future__ import annotations

from typing import NoReturn

from openmme.handlers._compat import ClientError, PayloadError, UnsupportedFormatError, unsupported_import

__all__ = ["ClientError", "PayloadError", "UnsupportedFormatError"]


def __getattr__(name: str) -> NoReturn:
    if name.startswith("__"):
        raise AttributeError(name)
    raise unsupported_import(f"{__name__}.{name}")
