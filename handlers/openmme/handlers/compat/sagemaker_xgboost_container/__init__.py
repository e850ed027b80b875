"""openmme's stand-in for the SageMaker XGBoost container's package, for scripts that import its ``encoder``.

Only ``encoder`` is here; see ``openmme.handlers._compat`` for why and for what importing anything else says.
"""

from __future__ import annotations

from openmme.handlers._compat import missing_names

from . import encoder

__all__ = ["encoder"]


__getattr__ = missing_names(__name__)
