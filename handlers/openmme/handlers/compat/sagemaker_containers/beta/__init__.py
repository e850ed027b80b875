"""openmme's stand-in for ``sagemaker_containers.beta``: only ``framework``."""

from __future__ import annotations

from openmme.handlers._compat import missing_names

from . import framework

__all__ = ["framework"]


__getattr__ = missing_names(__name__)
