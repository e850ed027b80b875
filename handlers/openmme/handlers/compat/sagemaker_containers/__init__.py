"""openmme's stand-in for ``sagemaker_containers``, for scripts that use its inference-time pieces.

Here: ``beta.framework``'s ``encoders``, ``content_types`` and ``errors`` (also importable as ``_encoders``,
``_content_types`` and ``_errors``). Its training and serving machinery is not; see ``openmme.handlers._compat``
for why and for what importing it says.
"""

from __future__ import annotations

from openmme.handlers._compat import missing_names

from . import _content_types, _encoders, _errors, beta

__all__ = ["_content_types", "_encoders", "_errors", "beta"]


__getattr__ = missing_names(__name__)
