"""The benchmark's smoke mode, so that bench/run.py keeps working: tiny sizes, real processes (and real wrk),
every section. Each test reads only what its own run wrote (the report and the results JSON, in its tmp_path)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openmme.endpoint.settings import usable_cores
from tests.support import bench_module, needs_tool, run_bench_smoke

pytestmark = pytest.mark.integration

SECTIONS = ("## 1. Warm path", "## 2. Cold start", "## 3. Many models", "## 4. Load storm", "## 5. Density")
# The section each goal of bench/report.py belongs to, in the report's order.
GOAL_SECTIONS = ("warm", "cold", "many", "storm")


@needs_tool("wrk")
def test_bench_smoke_runs_and_reports_every_section(tmp_path: Path) -> None:
    report = tmp_path / "report.md"
    run_bench_smoke("run", report, results_dir=tmp_path)
    text = report.read_text()
    rows = ("| MMS direct | 8 |", "| openmme dense | 8 |", "| openmme isolated | 8 |", "projected on 16 cores")
    for heading in (*SECTIONS, *rows, "inplace_predict", "Belady", "Machine:"):
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

    # The warm path: every target answered, the same bytes, and its CPU was found where its requests went.
    warm, kinds = results["warm"], bench_module("harness").KINDS
    assert warm["same_answer"], warm["answers"]
    assert warm["workers"] == {"mms_direct": 1, "dense": usable_cores(), "isolated": 1}
    assert len([goal for goal in goals if goal["section"] == "warm"]) == 5
    for name, target in warm["targets"].items():
        for concurrency, row in target.items():
            assert row["requests"] > 0 and row["non_2xx"] == row["socket_errors"] == 0, (name, concurrency)
            assert 0 < row["p50_ms"] <= row["p99_ms"], (name, concurrency)
            cpu = row["cpu_ms_per_request"]
            assert cpu["total"] == pytest.approx(sum(cpu[kind] for kind in kinds)) and cpu["total"] > 0
    dense, isolated, direct = (
        warm["targets"][name]["c8"]["cpu_ms_per_request"] for name in ("dense", "isolated", "mms_direct")
    )
    assert dense["front"] > 0 and dense["shard_worker"] > 0 and dense["mms_worker"] == 0
    assert isolated["front"] > 0 and isolated["java"] > 0 and isolated["mms_worker"] > 0
    assert isolated["shard_worker"] == 0
    assert direct["front"] == 0 and direct["java"] > 0 and direct["mms_worker"] > 0  # served without the front
    ceiling = warm["ceiling"]
    for name in warm["targets"]:
        assert ceiling[name]["cores_ceiling_rps"] == pytest.approx(16_000 / ceiling[name]["cpu_ms_per_request"])
    # Measured with the owner and one edge for dense; projected with --fronts's default on 16 cores for dense.
    assert warm["front_processes"] == {"dense": 2, "isolated": 1}
    for name, fronts in (("dense", 8), ("isolated", 1)):
        row = ceiling[name]
        assert row["front_processes"] == fronts
        assert row["front_ceiling_rps"] == pytest.approx(fronts * 1000 / row["front_cpu_ms_per_request"])
        assert row["projected_rps"] == min(row["front_ceiling_rps"], row["cores_ceiling_rps"])
    assert ceiling["mms_direct"]["projected_rps"] == ceiling["mms_direct"]["cores_ceiling_rps"]

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
    # Both modes measured a cold load; how they compare is the benchmark's to say (BENCHMARKS.md), not a test's.
    for mode in ("dense", "isolated"):
        assert results["modes"][mode]["cold"]["load_p50_ms"] > 0
