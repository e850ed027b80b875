"""The revisions benchmark's smoke mode, so that bench/revisions.py keeps working: the last commit from its own git
worktree against the working tree, real endpoints in both hosting modes, real wrk. The test reads only what its
own run wrote (the results JSON and the Markdown file, in its tmp_path)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT, bench_module, needs_tool


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout


@pytest.mark.integration
@needs_tool("wrk")
def test_revisions_bench_smoke_compares_the_last_commit_with_the_working_tree(tmp_path: Path) -> None:
    bench = bench_module("revisions")
    output, markdown = tmp_path / "revisions.json", tmp_path / "BENCHMARKS.md"
    markdown.write_text(f"# Benchmarks\n\n{bench.START}\nstale table\n{bench.END}\n\n## after\n")
    checkout_benchmarks = (ROOT / "BENCHMARKS.md").read_bytes()
    command = [sys.executable, str(ROOT / "bench" / "revisions.py"), "--smoke", "--output", str(output)]
    completed = subprocess.run(
        [*command, "--markdown", str(markdown)], capture_output=True, text=True, timeout=240, check=False
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    results = json.loads(output.read_text())
    assert (results["settings"]["rounds"], results["settings"]["seconds"]) == (1, 1)
    assert results["base"]["commit"] == git("rev-parse", "HEAD").strip()

    # Each side served its own code: the base from its worktree (now removed), the working tree from this checkout.
    worktree = Path(results["worktree"])
    assert all(Path(file).is_relative_to(worktree) for file in results["imports"]["base"].values())
    assert all(Path(file).is_relative_to(ROOT) for file in results["imports"]["after"].values())
    assert not worktree.exists()
    assert str(worktree) not in git("worktree", "list", "--porcelain")

    for mode in ("dense", "isolated"):
        row = results["modes"][mode]
        assert row["base_processes_checked"] >= 2, mode  # the front and at least the model's worker
        for side in ("base", "after"):
            assert len(json.loads(row["answers"][side])) == 1, (mode, side)
            assert len(row[side]["rounds"]) == 1
            summary = row[side]["summary"]
            assert summary["requests"] > 0 and summary["non_2xx"] == summary["socket_errors"] == 0, (mode, side)
            assert 0 < summary["p50_ms"] <= summary["p99_ms"], (mode, side)
            assert summary["cpu_ms_per_request"] > 0, (mode, side)
        base, after = row["base"]["summary"], row["after"]["summary"]
        for key, ratio in row["ratios"].items():
            assert ratio == pytest.approx(after[key] / base[key]), (mode, key)

    # The section replaced in place, its goals marked as this run's numbers decide; BENCHMARKS.md left alone.
    text = markdown.read_text()
    assert text.startswith("# Benchmarks\n") and text.rstrip().endswith("## after")
    assert "stale table" not in text and text.count(bench.START) == text.count(bench.END) == 1
    for mode in ("dense", "isolated"):
        assert f"| {mode} | working tree |" in text and f"| {mode} | **ratio working tree / base** |" in text
    goals = bench.goals(results)
    assert len(goals) == 2
    for goal, measured, met in goals:
        assert f"| {goal} | {measured} | {'✅' if met else '❌'} |" in text
    assert text.count("✅") + text.count("❌") == len(goals)
    assert (ROOT / "BENCHMARKS.md").read_bytes() == checkout_benchmarks
