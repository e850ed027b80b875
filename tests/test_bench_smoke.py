"""The benchmark's smoke mode, so that bench/run.py keeps working: tiny sizes, real processes, every section."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import run_bench_smoke

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.integration

SECTIONS = ("## 1. Warm path", "## 2. Cold start", "## 3. Many models", "## 4. Load storm", "## 5. Density")


def test_bench_smoke_runs_and_reports_every_section(tmp_path: Path) -> None:
    report = tmp_path / "report.md"
    run_bench_smoke("run", report)
    text = report.read_text()
    for heading in (*SECTIONS, "| openmme | 8 |", "| mms direct | 8 |", "inplace_predict", "Belady", "Machine:"):
        assert heading in text
    # Every section states its goal and whether it was met (computed, so either mark may appear in a smoke run).
    sections = text.split("\n## ")[1:]
    assert len(sections) == len(SECTIONS)
    for section in sections[:4]:
        assert "- Goal:" in section and ("✅" in section or "❌" in section), section[:200]
    assert "- Goal: none set" in sections[4]

    results = json.loads((ROOT / "bench" / "results" / "smoke.json").read_text())
    assert results["cold_start"]["register"] > 0
    assert results["mms_alone"]["register"] > 0
    assert all(results["warm"][key]["errors"] == 0 for key in ("openmme_c1", "openmme_c8", "mms_direct_c8"))

    # Single flight under the storm: the endpoint's own counters say one download and one registration.
    storm = results["storm"]
    assert (storm["downloads"], storm["registrations"]) == (1, 1)
    assert (storm["model_downloads"], storm["model_loads"]) == (1, 1)
    assert storm["ok"] == storm["clients"] == 64
    assert all(goal["met"] for goal in results["goals"] if goal["section"] == "storm")

    many = results["many_models"]
    assert many["endpoint"]["statuses"] == {"200": many["counted_requests"]}
    assert many["belady_offline"]["hit_ratio"] >= many["lru_offline"]["hit_ratio"]

    density = results["density"]
    assert len(density["points"]) == 3 and density["per_model_mib"] > 0


def test_hosting_bench_smoke_compares_both_modes(tmp_path: Path) -> None:
    report = tmp_path / "report.md"
    run_bench_smoke("hosting", report)
    text = report.read_text()
    assert "| measure | dense | isolated |" in text and text.count("✅") + text.count("❌") == 4
    results = json.loads((ROOT / "bench" / "results" / "hosting_smoke.json").read_text())
    for mode in ("dense", "isolated"):
        row = results["modes"][mode]
        assert row["warm_c8"]["errors"] == 0
        assert set(row["zipf"]["statuses"]) == {"200"}
        assert row["density"]["models"] == results["sizes"][f"density_{mode}"]
    # The claim dense hosting rests on, even at smoke sizes: a load is no process start.
    dense, isolated = results["modes"]["dense"]["cold"], results["modes"]["isolated"]["cold"]
    assert dense["load_p50_ms"] < isolated["load_p50_ms"] / 5
