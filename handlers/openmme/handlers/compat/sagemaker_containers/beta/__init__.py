"""openmme's stand-in for ``sagemaker_containers.beta``: only ``framework``."""

from __future__ import annotations

from typing import NoReturn

from openmme.handlers._compat import unsupported_import

from . import framework

__all__ = ["framework"]


def __getattr__(name: str) -> NoReturn:
    if name.startswith("__"):
        raise AttributeError(name)
    raise unsupported_import(f"{__name__}.{name}")
