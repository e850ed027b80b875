"""Fixtures shared by the handler tests: the worker environment openmme's MMS config gives."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

IMPORTED_PER_TEST = ("openmme_user_", "openmme_test_helper_", "sagemaker_containers", "sagemaker_xgboost_container")


@pytest.fixture(autouse=True)
def _mms_worker_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """What openmme's MMS config gives workers (raw bytes bodies, no opt-ins, no SageMaker overrides); no leaks of
    sys.path/modules."""
    monkeypatch.setenv("MMS_DECODE_INPUT_REQUEST", "false")
    monkeypatch.delenv("OPENMME_ALLOW_PICKLE", raising=False)
    monkeypatch.delenv("OPENMME_LOAD_ERRORS_DIR", raising=False)
    monkeypatch.delenv("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", raising=False)
    monkeypatch.delenv("SAGEMAKER_BATCH", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    # User scripts and their test helpers, imported by the script service under these prefixes, and the
    # stand-in packages scripts import (so that a test can put a "real" one first on sys.path).
    for name in set(sys.modules) - before:
        if name.startswith(IMPORTED_PER_TEST):
            del sys.modules[name]
