"""openmme's stand-in for ``sagemaker_containers._errors`` (``beta.framework.errors``): the errors scripts catch.

``ClientError`` is what the stand-in decoders raise for a body they cannot read (as ``PayloadError``, which
openmme answers with 400); ``UnsupportedFormatError`` is raised for a content type they do not handle (415).
"""

from __future__ import annotations

from openmme.handlers._compat import ClientError, PayloadError, UnsupportedFormatError, missing_names

__all__ = ["ClientError", "PayloadError", "UnsupportedFormatError"]


__getattr__ = missing_names(__name__)
