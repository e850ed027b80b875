"""openmme's stand-in for ``sagemaker_containers``, for scripts that use its inference-time pieces.

Here: ``beta.framework``'s ``encoders``, ``content_types`` and ``errors`` (also importable as ``_encoders``,
``_content_types`` and ``_errors``). Its training and serving machinery is not; see ``openmme.handlers._compat``
for why and for what importing it says.
"""

from __future__ import annotations

from typing import NoReturn

from openmme.handlers._compat import unsupported_import

from . import _content_types, _encoders, _errors, beta

__all__ = ["_content_types", "_encoders", "_errors", "beta"]


def __getattr__(name: str) -> NoReturn:
    if name.startswith("__"):
        raise AttributeError(name)
    raise unsupported_import(f"{__name__}.{name}")
