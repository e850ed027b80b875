"""openmme's stand-in for the SageMaker XGBoost container's package, for scripts that import its ``encoder``.

Only ``encoder`` is here; see ``openmme.handlers._compat`` for why and for what importing anything else says.
"""

from __future__ import annotations

from typing import NoReturn

from openmme.handlers._compat import unsupported_import

from . import encoder

__all__ = ["encoder"]


def __getattr__(name: str) -> NoReturn:
    if name.startswith("__"):
        raise AttributeError(name)
    raise unsupported_import(f"{__name__}.{name}")
