"""The soak test's smoke mode, so that bench/soak.py keeps working: small, real processes, faults injected, all
checks on; and its section of BENCHMARKS.md, which bench/run.py keeps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import bench_module, run_bench_smoke

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.integration


def test_soak_smoke_passes_its_own_checks(tmp_path: Path) -> None:
    output = tmp_path / "soak.json"
    run_bench_smoke("soak", output)
    result = json.loads(output.read_text())
    assert result["problems"] == []
    # Every request sent was answered: a 200, or one of the typed refusals a client retries; never a 5xx other
    # than those, never a wrong answer, never no answer at all.
    statuses = result["statuses"]
    assert set(statuses) <= {"200", "408", "429", "503", "507"}, statuses
    assert sum(statuses.values()) == result["sent"] == result["requests"] - result["not_sent_in_flight_bound"]
    assert statuses.get("200", 0) > 0
    assert result["wrong_answers"] == 0
    # The rate was half the warm capacity measured in the same run, and most of the due requests were sent.
    assert result["capacity"]["requests_per_second"] > 0
    assert result["rate"] == pytest.approx(result["capacity"]["requests_per_second"] * 0.5)
    assert result["sent"] >= result["requests"] / 2
    assert result["evictions"].get("count", 0) > 0  # the run did exercise eviction
    # Each planned fault happened (a shard worker killed and replaced; the disk filled, or skipped with a reason).
    faults = {fault["kind"]: fault for fault in result["faults"]}
    assert set(faults) == set(result["plan"]["faults"])
    assert faults["kill_shard_worker"]["replaced"] is True
    assert faults["disk_full"].get("free_bytes_during", 0) == 0 or faults["disk_full"]["skipped"]
    processes = result["processes"]
    assert processes["after_unloading_all"] == processes["baseline"]
    assert processes["peak_during"] <= processes["baseline"] + 1
    assert processes["left_after_stop"] == []
    assert result["memory"]["samples"] >= 3


def test_the_soak_section_is_replaced_in_place_and_kept_by_bench_run() -> None:
    soak, sections = bench_module("soak"), bench_module("sections")
    result = {
        "plan": {"models": 200, "room": 16, "zipf_exponent": 0.5, "in_flight": 256},
        "machine": {"cpus": 2, "cpu_model": "cpu", "openmme_revision": "abc1234"},
        "wall_seconds": 720.0,
        "miss_ratio": 0.9,
        "capacity": {"requests_per_second": 2000.0, "clients": 16, "seconds": 10.0},
        "load_fraction": 0.5,
        "rate": 1000.0,
        "seconds": 600.0,
        "requests": 600000,
        "sent": 590000,
        "sent_per_second": 983.3,
        "not_sent_in_flight_bound": 10000,
        "statuses": {"200": 580000, "503": 10000},
        "wrong_answers": 0,
        "p50_ms": 20.0,
        "p99_ms": 900.0,
        "counters": {"misses": 500000},
        "evictions": {"count": 499000},
        "memory": {
            "warm_up_seconds": 120.0,
            "rss_slope_mib_per_min": 0.25,
            "fd_slope_per_min": 0.0,
            "tree_rss_mib": {"first": 400.0, "last": 401.0, "peak": 420.0},
            "fds": {"first": 90, "last": 90, "peak": 120},
            "samples": 120,
        },
        "processes": {"baseline": 5, "peak_during": 6, "after_unloading_all": 5, "left_after_stop": []},
        "problems": [],
        "faults": [
            {
                "kind": "s3_down",
                "at_s": 90.0,
                "ended_s": 113.0,
                "down_seconds": 23.0,
                "statuses_of_requests_sent_during": {"200": 9000, "503": 1000},
            },
        ],
    }
    section = soak.markdown(result, "python bench/soak.py --minutes 10")
    assert "`python bench/soak.py --minutes 10 --markdown BENCHMARKS.md`" in section
    assert "| 600000 / 590000 / 10000 (983 sent/s) |" in section
    assert "| 90-113 s | s3_down | down_seconds 23.0 | 200: 9000, 503: 1000 |" in section
    document = "# Benchmarks\n\n" + soak.START + "\nold\n" + soak.END + "\n\n## Container images\n"
    updated = sections.replace_section(document, section, soak.START, soak.END)
    assert "old" not in updated and updated.count(soak.START) == 1 and updated.endswith("## Container images\n")

    # bench/run.py rewrites BENCHMARKS.md from scratch: the soak's section and the hand-written one survive it.
    benchmarks = (ROOT / "BENCHMARKS.md").read_text()
    rewritten = sections.keep_sections(benchmarks, "# Rewritten\n")
    assert soak.START in rewritten and soak.END in rewritten
    assert "## Container images (measured by hand, not by bench/run.py)" in rewritten
    assert rewritten.rstrip().endswith("<!-- container-images:end -->")
