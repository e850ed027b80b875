"""openmme's stand-in for ``sagemaker_containers.beta.framework``: ``encoders``, ``content_types`` and ``errors``.

``env``, ``modules``, ``worker``, ``transformer``, ``entry_point`` and the rest of the real module are training or
serving machinery, which openmme does not provide: importing them fails with one line saying what to use.
"""

from __future__ import annotations

from typing import NoReturn

from openmme.handlers._compat import unsupported_import

from ... import _content_types as content_types
from ... import _encoders as encoders
from ... import _errors as errors

__all__ = ["content_types", "encoders", "errors"]


def __getattr__(name: str) -> NoReturn:
    if name.startswith("__"):
        raise AttributeError(name)
    raise unsupported_import(f"{__name__}.{name}")
