"""The transform benchmark's smoke mode, so that bench/transform.py keeps working: real SeaweedFS, a real endpoint,
the capacity's closed loop and the transform, apart and shared; it reads only what its own run wrote."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support import bench_module, run_bench_smoke

pytestmark = pytest.mark.integration


def test_transform_bench_smoke_compares_the_transform_with_the_warm_capacity(tmp_path: Path) -> None:
    output = tmp_path / "BENCHMARKS.md"
    output.write_text("# Benchmarks\n")
    run_bench_smoke("transform", output, results_dir=tmp_path)
    results = json.loads((tmp_path / "transform_smoke.json").read_text())
    setups = ["apart", "shared"] if len(os.sched_getaffinity(0)) > 1 else ["shared"]
    assert results["goal_setup"] == setups[0] and results["output_lines_checked"] == results["sizes"]["rows"]
    for setup in setups:
        compared = results[setup]
        for transform in compared["transform"]:
            assert transform["ok"] and transform["records"] == results["sizes"]["objects"] * results["sizes"]["rows"]
            assert transform["records_per_second"] > 0 and transform["concurrency"] >= 2
        assert all(row["records_per_second"] > 0 and row["errors"] == 0 for row in compared["capacity"])
        assert compared["ratio"] == pytest.approx(
            compared["transform_records_per_second"] / compared["capacity_records_per_second"]
        )
    # The section, its goals marked as this run's numbers decide.
    bench = bench_module("transform")
    text = output.read_text()
    assert text.count(bench.START) == text.count(bench.END) == 1
    for goal, measured, met in bench.goals(results):
        assert f"| {goal} | {measured} | {'✅' if met else '❌'} |" in text
