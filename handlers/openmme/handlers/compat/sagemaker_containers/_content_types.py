"""openmme's stand-in for ``sagemaker_containers._content_types`` (``beta.framework.content_types``)."""

from __future__ import annotations

from sagemaker_inference import content_types
from sagemaker_inference.content_types import ANY, CSV, JSON, NPY, OCTET_STREAM  # the same values

from openmme.handlers._compat import missing_names

__all__ = ["ANY", "CSV", "JSON", "NPY", "OCTET_STREAM", "UTF8_TYPES"]

# The types whose bodies a script's input_fn receives as text (a copy: a script that edits it edits only its own).
UTF8_TYPES = list(content_types.UTF8_TYPES)

__getattr__ = missing_names(__name__)
