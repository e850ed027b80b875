"""The warm path with and without data capture, in one run: what capturing every invocation costs a request, and
what an S3 outage during capture costs (nothing, is the claim).

    .venv/bin/python bench/capture.py           # full run (~1 min on 2 cores): its section of BENCHMARKS.md,
                                                # bench/results/capture.json
    .venv/bin/python bench/capture.py --smoke   # tiny sizes, checks the harness end to end

One SeaweedFS holds one 100-tree booster. Two endpoints are up at once (an idle one costs no CPU), as an operator
starts them: ``off`` without capture, ``on`` with ``--capture-sampling-percentage 100`` (every invocation
captured, the worst case) and a one-second flush interval. Both are warmed up, then measured in alternating
rounds of closed-loop one-row CSV requests (bench/warm.py's client) at concurrency 1 and 8; per endpoint and
concurrency, the median round is reported. Then SeaweedFS is stopped (S3 down: connections refused) and the same
rounds are run again: ``on`` now drops every capture, ``off`` is measured again beside it. The capture counters
are read from ``/metrics`` after each phase.
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from harness import BUCKET, Endpoint, embedded_s3, get_json, invoke_headers, post, serve_flags
from openmme.publish.samples import make_rows, sample_archive, train_booster
from sections import MARKERS, goal_table, section_main
from warm import closed_loop

START, END = MARKERS[3]
TARGET = "capture/model.tar.gz"
CONCURRENCIES = (1, 8)
CAPTURE_FLAGS = (
    "--capture-destination", f"s3://{BUCKET}/data-capture",
    "--capture-sampling-percentage", "100",
    "--capture-flush-interval", "1",
)  # fmt: skip


@dataclass(frozen=True)
class Sizes:
    trees: int
    rounds: int
    round_seconds: float


FULL = Sizes(trees=100, rounds=2, round_seconds=1.5)
SMOKE = Sizes(trees=10, rounds=1, round_seconds=0.3)


def capture_counts(front: str) -> dict[str, float]:
    """The capture series of the endpoint's /metrics."""
    with urllib.request.urlopen(front + "/metrics", timeout=10) as response:
        text = response.read().decode()
    counts = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "openmme_capture_records_total":
                counts[sample.labels["outcome"]] = sample.value
            elif sample.name == "openmme_capture_buffer_records":
                counts["buffered"] = sample.value
    return counts


def settled_counts(front: str, timeout: float = 30.0) -> dict[str, float]:
    """The capture counts once nothing is buffered and they stopped moving (a flush may be under way)."""
    deadline = time.monotonic() + timeout
    last = capture_counts(front)
    while time.monotonic() < deadline:
        time.sleep(1.5)
        now = capture_counts(front)
        if now == last and now["buffered"] == 0:
            break
        last = now
    return last


def measure(fronts: dict[str, str], body: bytes, sizes: Sizes) -> dict[str, dict[str, float]]:
    """Alternating rounds of every endpoint at each concurrency (the order flipped every round, so that the
    machine's drift falls on both); per endpoint and concurrency, the median round."""
    headers = invoke_headers(TARGET)
    rounds: dict[str, list[dict[str, float]]] = {}
    for round_index in range(sizes.rounds):
        order = list(fronts.items()) if round_index % 2 == 0 else list(reversed(fronts.items()))
        for concurrency in CONCURRENCIES:
            for name, front in order:
                loop = closed_loop(front + "/invocations", headers, body, concurrency, sizes.round_seconds, 10**7)
                rounds.setdefault(f"{name}_c{concurrency}", []).append(asyncio.run(loop))
    summary = {}
    for key, results in rounds.items():
        summary[key] = {
            measure: statistics.median(result[measure] for result in results)
            for measure in ("throughput_rps", "p50_ms", "p99_ms")
        }
        summary[key]["errors"] = sum(result["errors"] for result in results)
        summary[key]["requests"] = sum(result["requests"] for result in results)
    return summary


def run(sizes: Sizes, workdir: Path) -> dict[str, Any]:
    booster = train_booster("binary:logistic", seed=1, rounds=sizes.trees, rows=2000)
    body = ",".join(repr(float(value)) for value in make_rows(1, seed=3)[0]).encode()
    results: dict[str, Any] = {"sizes": dataclasses.asdict(sizes), "capture_flags": " ".join(CAPTURE_FLAGS)}
    with embedded_s3(workdir / "s3") as s3:
        client: Any = s3.client()
        client.create_bucket(Bucket=BUCKET)
        client.put_object(Bucket=BUCKET, Key=f"models/{TARGET}", Body=sample_archive(booster))
        with Endpoint(workdir / "off") as off, Endpoint(workdir / "on", CAPTURE_FLAGS) as on:
            fronts = {"off": off.url, "on": on.url}
            for front in fronts.values():
                status, _ = post(front + "/invocations", body, invoke_headers(TARGET))
                assert status == 200, status
            results["flags"] = {"off": " ".join(serve_flags()), "on": " ".join(serve_flags(CAPTURE_FLAGS))}
            results["s3_up"] = measure(fronts, body, sizes)
            results["s3_up_capture"] = settled_counts(on.url)
            print("bench: S3 up done; stopping SeaweedFS", file=sys.stderr, flush=True)
            s3.stop(grace=0.5)  # S3 down for both; the model is loaded in each, so only capture needs it
            results["s3_down"] = measure(fronts, body, sizes)
            results["s3_down_capture"] = settled_counts(on.url)
            results["on_loaded"] = get_json(on.url + "/models?limit=1")["loadedModels"]
    return results


def goals(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    up, down = results["s3_up"], results["s3_down"]
    rows = []
    for concurrency in CONCURRENCIES:
        on, off = up[f"on_c{concurrency}"], up[f"off_c{concurrency}"]
        ratio = on["p99_ms"] / off["p99_ms"]
        rows.append(
            (
                f"capture of every invocation, c={concurrency}: p99 ≤ 1.2x without capture",
                f"{on['p99_ms']:.2f} vs {off['p99_ms']:.2f} ms ({ratio:.2f}x)",
                ratio <= 1.2,
            )
        )
    errors = sum(row["errors"] for row in down.values())
    worst = max(down[f"on_c{c}"]["p99_ms"] / down[f"off_c{c}"]["p99_ms"] for c in CONCURRENCIES)
    dropped = results["s3_down_capture"]["dropped"] - results["s3_up_capture"]["dropped"]
    rows.append(
        (
            "S3 down: no failed invocation, p99 ≤ 1.2x without capture, every capture dropped and counted",
            f"{errors} errors, p99 {worst:.2f}x, {dropped:.0f} dropped",
            errors == 0 and worst <= 1.2 and dropped > 0,
        )
    )
    return rows


def markdown(results: dict[str, Any], command: str) -> str:
    machine, sizes = results["machine"], results["sizes"]
    lines = [
        START,
        "## Data capture: the warm path with and without it, and during an S3 outage",
        "",
        f"`{command}` — {sizes['trees']}-tree booster, one-row CSV; `on`: `{results['capture_flags']}`; "
        f"{sizes['rounds']} alternating rounds of {sizes['round_seconds']} s per endpoint and concurrency, median "
        f"round; {machine['cpus']} CPUs ({machine['cpu_model']}), {machine['memory_gib']} GiB; openmme "
        f"{machine['openmme_revision']}; {results['wall_seconds']:.0f} s.",
        "",
        "| S3 | capture | c | req/s | p50 (ms) | p99 (ms) | errors |",
        "|---|---|--:|--:|--:|--:|--:|",
    ]
    for phase in ("s3_up", "s3_down"):
        for concurrency in CONCURRENCIES:
            for name in ("off", "on"):
                row = results[phase][f"{name}_c{concurrency}"]
                lines.append(
                    f"| {phase.removeprefix('s3_')} | {name} | {concurrency} | {row['throughput_rps']:.0f} | "
                    f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['errors']} |"
                )
    up, down = results["s3_up_capture"], results["s3_down_capture"]
    lines += [
        "",
        f"Captures of `on`: {up['written']:.0f} written and {up['dropped']:.0f} dropped while S3 was up; "
        f"{down['written'] - up['written']:.0f} written and {down['dropped'] - up['dropped']:.0f} dropped while it "
        "was down.",
        "",
        *goal_table(goals(results)),
    ]
    lines.append(END)
    return "\n".join(lines) + "\n"


def main() -> int:
    return section_main("capture", __doc__ or "", (FULL, SMOKE), run, markdown, (START, END))


if __name__ == "__main__":
    sys.exit(main())
