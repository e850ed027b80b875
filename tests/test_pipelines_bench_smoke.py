"""The pipelines benchmark's smoke mode, so that bench/pipelines.py keeps working: real SeaweedFS, a real endpoint
serving a three-step pipeline (two script models and a dense booster), real wrk; it reads only what its own run
wrote (the results JSON and the Markdown file, in its tmp_path)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import bench_module, needs_tool, run_bench_smoke

pytestmark = pytest.mark.integration


@needs_tool("wrk")
def test_pipelines_bench_smoke_compares_the_pipeline_with_its_steps_one_by_one(tmp_path: Path) -> None:
    bench = bench_module("pipelines")
    output = tmp_path / "BENCHMARKS.md"
    output.write_text(f"# Benchmarks\n\n{bench.START}\nstale table\n{bench.END}\n\n## after\n")
    run_bench_smoke("pipelines", output, results_dir=tmp_path)
    results = json.loads((tmp_path / "pipelines_smoke.json").read_text())

    # What each step answered inside the pipeline: six numeric columns, a probability, a label (the pipeline's).
    features, score, labels = results["answers"]["steps"]
    assert len([float(value) for value in features.split(",")]) == 6
    assert 0.0 <= float(score) <= 1.0
    assert json.loads(labels)["labels"] == ["churn" if float(score) >= 0.5 else "stay"]
    assert results["answers"]["content_type"].startswith("application/json")

    for name in bench.TARGETS:
        for key, row in results["wrk"][name].items():
            assert row["requests"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"], (name, key)
            assert row["cpu_ms_per_request"]["total"] > 0, (name, key)
    for key in ("c1", "c8"):
        # The pipeline went through both hostings: the scripts' MMS (its JVM) and the booster's dense shard.
        cpu = results["wrk"]["pipeline"][key]["cpu_ms_per_request"]
        assert cpu["front"] > 0 and cpu["java"] > 0 and cpu["shard_worker"] > 0, cpu
        steps = [results["wrk"][f"step{index}"][key] for index in (1, 2, 3)]
        compared = results["compare"][key]
        assert compared["steps_p50_ms"] == pytest.approx(sum(step["p50_ms"] for step in steps))
        assert compared["ratio_p50_ms"] == pytest.approx(
            results["wrk"]["pipeline"][key]["p50_ms"] / sum(step["p50_ms"] for step in steps)
        )
    # At c=1 whole chains were timed, and they are chains: one a connection at a time, their mean is the time
    # between pipelines' worth of answers (a chain of one request would be a third of it).
    one = results["wrk"]["one_by_one"]["c1"]
    assert 0 < one["chain_p50_ms"] <= one["chain_p99_ms"]
    assert 0.7 < one["chain_mean_ms"] * one["requests_per_second"] / 1000 < 1.3, one

    # The section replaced in place, its goals marked as this run's numbers decide; kept by bench/run.py.
    text = output.read_text()
    assert text.startswith("# Benchmarks\n") and text.rstrip().endswith("## after")
    assert "stale table" not in text and text.count(bench.START) == text.count(bench.END) == 1
    goals = bench.goals(results)
    assert len(goals) == 2
    for goal, measured, met in goals:
        assert f"| {goal} | {measured} | {'✅' if met else '❌'} |" in text
    assert (bench.START, bench.END) in bench_module("sections").MARKERS
