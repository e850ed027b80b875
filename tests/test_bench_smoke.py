"""The benchmark's smoke mode, so that bench/run.py keeps working: tiny sizes, real processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.integration


def test_bench_smoke_runs_and_reports_every_table(tmp_path: Path) -> None:
    report = tmp_path / "report.md"
    completed = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--output", str(report)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    text = report.read_text()
    for heading in ("## Cold start", "## Warm path", "| openmme | 8 |", "| mms direct | 8 |", "inplace_predict"):
        assert heading in text
    results = json.loads((ROOT / "bench" / "results" / "smoke.json").read_text())
    assert results["cold_start"]["register"] > 0
    assert all(results["warm"][key]["errors"] == 0 for key in ("openmme_c1", "openmme_c8", "mms_direct_c8"))
