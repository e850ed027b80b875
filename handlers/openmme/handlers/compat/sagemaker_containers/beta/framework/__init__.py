"""openmme's stand-in for ``sagemaker_containers.beta.framework``: ``encoders``, ``content_types`` and ``errors``.

``env``, ``modules``, ``worker``, ``transformer``, ``entry_point`` and the rest of the real module are training or
serving machinery, which openmme does not provide: importing them fails with one line saying what to use.
"""

from __future__ import annotations

from openmme.handlers._compat import missing_names

from ... import _content_types as content_types
from ... import _encoders as encoders
from ... import _errors as errors

__all__ = ["content_types", "encoders", "errors"]


__getattr__ = missing_names(__name__)
