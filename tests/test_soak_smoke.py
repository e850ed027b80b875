"""The soak test's smoke mode, so that bench/soak.py keeps working: small, real processes, all checks on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import run_bench_smoke

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.integration


def test_soak_smoke_passes_its_own_checks(tmp_path: Path) -> None:
    output = tmp_path / "soak.json"
    run_bench_smoke("soak", output)
    result = json.loads(output.read_text())
    assert result["problems"] == []
    assert result["statuses"] == {"200": result["requests"]}
    assert result["wrong_answers"] == 0
    assert result["evictions"].get("count", 0) > 0  # the run did exercise eviction
    assert result["processes"]["after_unloading_all"] == result["processes"]["baseline"]
