"""The benchmark's smoke mode, so that bench/run.py keeps working: tiny sizes, real processes, every section.
Each test reads only what its own run wrote (the report and the results JSON, in its tmp_path)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import bench_module, run_bench_smoke

pytestmark = pytest.mark.integration

SECTIONS = ("## 1. Warm path", "## 2. Cold start", "## 3. Many models", "## 4. Load storm", "## 5. Density")
# The section each goal of bench/report.py belongs to, in the report's order.
GOAL_SECTIONS = ("warm", "cold", "many", "storm")


def test_bench_smoke_runs_and_reports_every_section(tmp_path: Path) -> None:
    report = tmp_path / "report.md"
    run_bench_smoke("run", report, results_dir=tmp_path)
    text = report.read_text()
    for heading in (*SECTIONS, "| openmme | 8 |", "| mms direct | 8 |", "inplace_predict", "Belady", "Machine:"):
        assert heading in text
    results = json.loads((tmp_path / "smoke.json").read_text())

    # Every section states its goals, each marked as the run's own numbers decide (either mark may be right in a
    # smoke run; the one shown must be the one computed).
    sections = text.split("\n## ")[1:]
    assert len(sections) == len(SECTIONS)
    goals = results["goals"]
    assert {goal["section"] for goal in goals} == set(GOAL_SECTIONS)
    for name, section in zip(GOAL_SECTIONS, sections[:4], strict=True):
        stated = [line for line in section.splitlines() if line.startswith("- Goal:")]
        assert stated == [
            f"- Goal: {goal['text']} — {'✅ met' if goal['met'] else '❌ not met'}"
            for goal in goals
            if goal["section"] == name
        ], section[:400]
        assert ("- What limits it:" in section) == (not all(g["met"] for g in goals if g["section"] == name))
    assert "- Goal: none set" in sections[4]

    assert results["cold_start"]["register"] > 0
    assert results["mms_alone"]["register"] > 0
    assert all(results["warm"][key]["errors"] == 0 for key in ("openmme_c1", "openmme_c8", "mms_direct_c8"))

    # Single flight under the storm: the endpoint's own counters say one download and one registration.
    storm = results["storm"]
    assert (storm["downloads"], storm["registrations"]) == (1, 1)
    assert (storm["model_downloads"], storm["model_loads"]) == (1, 1)
    assert storm["ok"] == storm["clients"] == 64
    assert all(goal["met"] for goal in goals if goal["section"] == "storm")

    many = results["many_models"]
    assert many["endpoint"]["statuses"] == {"200": many["counted_requests"]}
    assert many["belady_offline"]["hit_ratio"] >= many["lru_offline"]["hit_ratio"]

    density = results["density"]
    assert len(density["points"]) == 3 and density["per_model_mib"] > 0


def test_hosting_bench_smoke_compares_both_modes(tmp_path: Path) -> None:
    report = tmp_path / "report.md"
    run_bench_smoke("hosting", report, results_dir=tmp_path)
    text = report.read_text()
    results = json.loads((tmp_path / "hosting_smoke.json").read_text())
    assert "| measure | dense | isolated |" in text
    # The four goals, each marked as this run's numbers decide.
    goals = bench_module("hosting").goals(results)
    assert len(goals) == 4
    for goal, measured, met in goals:
        assert f"| {goal} | {measured} | {'✅' if met else '❌'} |" in text
    assert text.count("✅") + text.count("❌") == 4
    for mode in ("dense", "isolated"):
        row = results["modes"][mode]
        assert row["warm_c8"]["errors"] == 0
        assert set(row["zipf"]["statuses"]) == {"200"}
        assert row["density"]["models"] == results["sizes"][f"density_{mode}"]
    # The claim dense hosting rests on, even at smoke sizes: a load is no process start.
    dense, isolated = results["modes"]["dense"]["cold"], results["modes"]["isolated"]["cold"]
    assert dense["load_p50_ms"] < isolated["load_p50_ms"] / 5
