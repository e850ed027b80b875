"""Batch transform throughput against the endpoint's warm capacity for the same rows.

    .venv/bin/python bench/transform.py           # full run (~1 min on 2 cores): its section of BENCHMARKS.md,
                                                  # bench/results/transform.json
    .venv/bin/python bench/transform.py --smoke   # tiny sizes, checks the harness end to end

One SeaweedFS holds a 100-tree booster and the input: CSV objects of rows ``id,<6 features>``. One endpoint, as an
operator starts it (dense hosting, a shard per core). The model is loaded first (one request), then:

- **Warm capacity**: the rows exactly as the transform sends them (the first object's first batch, cut by the same
  ``payload_batches`` with the same ``MaxPayloadInMB``, its id column filtered out), posted as fast as the endpoint
  answers by bench/warm.py's closed-loop client; records/s = requests/s x rows per request. The client only
  resends bytes it holds: no S3, no splitting, no joining. A sweep over ``concurrencies`` finds the best.
- **Transform**: ``openmme.transform`` (the library call ``openmme transform`` runs), in this process, over every
  object: read from S3, split, filtered (``$[1:]``), batched (``MultiRecord``), sent, joined
  (``JoinSource=Input``, ``$[0,-1]``), written back to S3 (a fresh output path each round);
  ``MaxConcurrentTransforms`` 0, so the concurrency is what the endpoint suggests. Records/s = records / wall time,
  from the listing to the last output.

Twice. **Apart** (the goal): every thread of the endpoint's processes on the first half of the cores, everything
else (the S3 server, this process: the transform's client and the closed-loop one) on the others, as in
production, where the job's pods and S3 are not on the endpoint's machine; capacity (at the sweep's best
concurrency) and transform alternate for ``rounds`` rounds, so that the machine's drift falls on both, and their
medians are compared: the goal is the transform's records/s at least 0.8x the capacity, i.e. the transform keeps
the endpoint busy. **Shared**: the same on all cores for everyone, one round each, as on a single machine: the
transform's client and the S3 server then take their CPU from the endpoint's, which the CPU each party used says.
With a single core there is no apart run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import statistics
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import xgboost

from harness import (
    BUCKET,
    Endpoint,
    cpu_between,
    embedded_s3,
    invoke_headers,
    post,
    serve_flags,
    tree_cpu,
    tree_processes,
)
from openmme.publish.samples import make_rows, sample_archive, train_booster
from openmme.transform import DataProcessing, EndpointTarget, TransformJob, run_transform
from openmme.transform.records import filter_inputs, payload_batches, split_records
from sections import goal_table, section_main
from warm import closed_loop

START, END = "<!-- transform:start -->", "<!-- transform:end -->"
TARGET = "transform/model.tar.gz"
GOAL_RATIO = 0.8


@dataclass(frozen=True)
class Sizes:
    objects: int
    rows: int  # per object
    trees: int
    max_payload_mb: int
    concurrencies: tuple[int, ...]  # of the closed loop's sweep, which finds the best
    round_seconds: float
    rounds: int  # alternating rounds of capacity and transform, apart


FULL = Sizes(8, 60_000, 100, max_payload_mb=1, concurrencies=(2, 4, 8), round_seconds=2.0, rounds=2)
SMOKE = Sizes(2, 2_000, 10, max_payload_mb=1, concurrencies=(2,), round_seconds=0.5, rounds=1)


def object_text(index: int, rows: int) -> bytes:
    values = make_rows(rows, seed=100 + index)
    lines = (f"id-{index}-{row}," + ",".join(repr(float(value)) for value in values[row]) for row in range(rows))
    return ("\n".join(lines) + "\n").encode()


def job(sizes: Sizes, output: str = "output") -> TransformJob:
    return TransformJob(
        TARGET,
        f"s3://{BUCKET}/input/",
        f"s3://{BUCKET}/{output}/",
        content_type="text/csv",
        split_type="Line",
        batch_strategy="MultiRecord",
        max_payload_mb=sizes.max_payload_mb,
        accept="text/csv",
        assemble_with="Line",
        data_processing=DataProcessing("$[1:]", "$[0,-1]", "Input"),
    )


def first_batch(data: bytes, transform_job: TransformJob) -> tuple[bytes, int]:
    """The first request body the transform sends for ``data``, and its rows."""
    records = filter_inputs(split_records(data, "Line").items, "csv", transform_job.input_filter)
    start, end = payload_batches(records, "MultiRecord", transform_job.max_payload_bytes)[0]
    return b"\n".join(records[start:end]), end - start


def pin(processes: list[psutil.Process], cores: set[int]) -> None:
    """Every thread of ``processes`` on ``cores`` (threads they start later inherit it)."""
    for process in processes:
        with contextlib.suppress(psutil.Error):
            for thread in process.threads():
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(thread.id, cores)


@contextlib.contextmanager
def apart(endpoint: Endpoint, weed: psutil.Process) -> Iterator[dict[str, list[int]]]:
    """The endpoint's threads on the first half of the cores, the S3 server's and this process's on the rest; all
    back on every core afterwards."""
    every = sorted(os.sched_getaffinity(0))
    half = max(1, len(every) // 2)
    endpoint_cores, other_cores = set(every[:half]), set(every[half:])
    others = [weed, *weed.children(recursive=True), psutil.Process()]
    pin(tree_processes(endpoint.pid), endpoint_cores)
    pin(others, other_cores)
    try:
        yield {"endpoint": sorted(endpoint_cores), "others": sorted(other_cores)}
    finally:
        pin(tree_processes(endpoint.pid), set(every))
        pin(others, set(every))


def capacity_round(url: str, body: bytes, rows: int, concurrency: int, seconds: float) -> dict[str, Any]:
    """Records/s of the endpoint for ``body`` at ``concurrency`` (closed loop)."""
    headers = invoke_headers(TARGET) | {"Accept": "text/csv"}
    result = asyncio.run(closed_loop(url + "/invocations", headers, body, concurrency, seconds, 10**7))
    return result | {"concurrency": concurrency, "records_per_second": result["throughput_rps"] * rows}


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def transform_round(sizes: Sizes, output: str, endpoint: Endpoint, client: Any, weed: psutil.Process) -> dict[str, Any]:
    """One transform of every object into a fresh output path, and the CPU each party used meanwhile."""
    machine_before, weed_before = psutil.cpu_times(), _cpu_seconds(weed)
    endpoint_before, me_before = tree_cpu(endpoint.pid), _cpu_seconds(psutil.Process())
    summary = run_transform(job(sizes, output), EndpointTarget(endpoint.url), client=client)
    machine_after = psutil.cpu_times()
    cpu = {
        "endpoint": cpu_between(endpoint_before, tree_cpu(endpoint.pid))["total"],
        "client": _cpu_seconds(psutil.Process()) - me_before,
        "s3_server": _cpu_seconds(weed) - weed_before,
        "machine": (machine_after.user + machine_after.system) - (machine_before.user + machine_before.system),
    }
    return {
        "ok": summary.ok,
        "objects": len(summary.outcomes),
        "failed": [outcome.failure() for outcome in summary.failures],
        "records": summary.records,
        "seconds": summary.seconds,
        "records_per_second": summary.records_per_second,
        "requests": summary.requests,
        "rows_per_request": summary.records_per_request,
        "concurrency": summary.concurrency,
        "cpu_seconds": cpu,
    }


def run(sizes: Sizes, workdir: Path) -> dict[str, Any]:
    booster = train_booster("binary:logistic", seed=1, rounds=sizes.trees, rows=2000)
    results: dict[str, Any] = {"sizes": dataclasses.asdict(sizes), "job": job(sizes).to_request()}
    with embedded_s3(workdir / "s3") as s3:
        assert s3.process is not None
        weed = psutil.Process(s3.process.pid)
        client: Any = s3.client()
        client.create_bucket(Bucket=BUCKET)
        client.put_object(Bucket=BUCKET, Key=f"models/{TARGET}", Body=sample_archive(booster))
        texts = [object_text(index, sizes.rows) for index in range(sizes.objects)]
        for index, text in enumerate(texts):
            client.put_object(Bucket=BUCKET, Key=f"input/part-{index:02d}.csv", Body=text)
        results["input_bytes"] = sum(map(len, texts))
        body, rows = first_batch(texts[0], job(sizes))
        results["rows_per_request"] = rows
        with Endpoint(workdir / "endpoint") as endpoint:
            results["flags"] = " ".join(serve_flags())
            status, _ = post(endpoint.url + "/invocations", body, invoke_headers(TARGET))
            assert status == 200, status
            if len(os.sched_getaffinity(0)) > 1:
                with apart(endpoint, weed) as cores:
                    results["apart"] = {"cores": cores, **_compare(sizes, endpoint, body, rows, client, weed, "apart")}
            results["shared"] = _compare(sizes, endpoint, body, rows, client, weed, "shared", rounds=1)
        last = client.get_object(Bucket=BUCKET, Key=f"shared-0/part-{sizes.objects - 1:02d}.csv.out")["Body"].read()
        results["output_lines_checked"] = _checked(last, texts[-1], booster)
    results["goal_setup"] = "apart" if "apart" in results else "shared"
    return results


def _compare(
    sizes: Sizes,
    endpoint: Endpoint,
    body: bytes,
    rows: int,
    client: Any,
    weed: psutil.Process,
    setup: str,
    rounds: int | None = None,
) -> dict[str, Any]:
    """The sweep, then alternating rounds of capacity and transform; their medians and the ratio."""
    sweep = [capacity_round(endpoint.url, body, rows, c, sizes.round_seconds) for c in sizes.concurrencies]
    best = max(sweep, key=lambda row: row["records_per_second"])["concurrency"]
    capacity, transforms = [], []
    for number in range(rounds or sizes.rounds):
        capacity.append(capacity_round(endpoint.url, body, rows, best, sizes.round_seconds))
        transforms.append(transform_round(sizes, f"{setup}-{number}", endpoint, client, weed))
        print(f"bench: {setup} round {number + 1} done", file=sys.stderr, flush=True)
    capacity_rps = statistics.median(row["records_per_second"] for row in capacity)
    transform_rps = statistics.median(row["records_per_second"] for row in transforms)
    return {
        "sweep": sweep,
        "best_concurrency": best,
        "capacity": capacity,
        "transform": transforms,
        "capacity_records_per_second": capacity_rps,
        "transform_records_per_second": transform_rps,
        "ratio": transform_rps / capacity_rps,
    }


def _checked(output: bytes, text: bytes, booster: xgboost.Booster) -> int:
    """Lines of an output checked against the booster in-process (id and prediction); raises on a difference."""
    lines = text.decode().splitlines()
    predictions = booster.predict(xgboost.DMatrix([[float(v) for v in line.split(",")[1:]] for line in lines]))
    expected = [(line.split(",", 1)[0], float(value)) for line, value in zip(lines, predictions, strict=True)]
    written = [(line.split(",")[0], float(line.split(",")[1])) for line in output.decode().splitlines()]
    if written != expected:
        raise AssertionError("the transform's output differs from in-process xgboost")
    return len(written)


def goals(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    setup = results["goal_setup"]
    compared = results[setup]
    rounds = [row for name in ("apart", "shared") if name in results for row in results[name]["transform"]]
    failed = sum(len(row["failed"]) for row in rounds)
    return [
        (
            f"transform records/s ≥ {GOAL_RATIO}x the endpoint's warm capacity for the same rows ({setup}, medians)",
            f"{compared['transform_records_per_second']:,.0f} vs {compared['capacity_records_per_second']:,.0f} "
            f"({compared['ratio']:.2f}x)",
            compared["ratio"] >= GOAL_RATIO,
        ),
        (
            "every object transformed, outputs equal to in-process xgboost",
            f"{failed} failed in {len(rounds)} transforms; {results['output_lines_checked']:,} lines checked",
            failed == 0 and all(row["ok"] for row in rounds),
        ),
    ]


def _cpu_sentence(compared: dict[str, Any], cpus: int) -> str:
    rounds = compared["transform"]
    cpu = {part: statistics.median(row["cpu_seconds"][part] for row in rounds) for part in rounds[0]["cpu_seconds"]}
    per = 1e6 / (rounds[0]["records"] or 1)
    others = cpu["machine"] - cpu["endpoint"] - cpu["client"] - cpu["s3_server"]
    seconds = statistics.median(row["seconds"] for row in rounds)
    return (
        f"CPU per record: the endpoint {cpu['endpoint'] * per:.1f} µs, the transform's client {cpu['client'] * per:.1f}"
        f", the S3 server {cpu['s3_server'] * per:.1f}, anything else {others * per:.1f}; the machine "
        f"{cpu['machine'] / (seconds * cpus):.0%} busy"
    )


def markdown(results: dict[str, Any], command: str) -> str:
    machine, sizes = results["machine"], results["sizes"]
    lines = [
        START,
        "## Batch transform: records/s against the endpoint's warm capacity",
        "",
        f"`{command}` — {sizes['objects']} CSV objects of {sizes['rows']:,} rows (`id` + 6 features, "
        f"{results['input_bytes'] / 2**20:.0f} MiB), {sizes['trees']}-tree booster; `MultiRecord`, "
        f"`MaxPayloadInMB` {sizes['max_payload_mb']} ({results['rows_per_request']:,} rows per request), `$[1:]` "
        f"in, `JoinSource=Input`, `$[0,-1]` out; endpoint `{results['flags']}`; {machine['cpus']} CPUs "
        f"({machine['cpu_model']}), {machine['memory_gib']} GiB; openmme {machine['openmme_revision']}; "
        f"{results['wall_seconds']:.0f} s.",
        "",
        "| setup | run | concurrency | records/s |",
        "|---|---|--:|--:|",
    ]
    notes = []
    for setup in ("apart", "shared"):
        if setup not in results:
            continue
        compared = results[setup]
        label = (
            f"apart (endpoint on cores {compared['cores']['endpoint']}, the rest on {compared['cores']['others']})"
            if setup == "apart"
            else "shared (every core for everyone)"
        )
        sweep = ", ".join(f"c={row['concurrency']} {row['records_per_second']:,.0f}" for row in compared["sweep"])
        lines.append(f"| {label} | warm capacity sweep | | {sweep} |")
        for number, (capacity, transform) in enumerate(
            zip(compared["capacity"], compared["transform"], strict=True), start=1
        ):
            lines.append(
                f"| | round {number}: warm capacity | {capacity['concurrency']} | "
                f"{capacity['records_per_second']:,.0f} |"
            )
            lines.append(
                f"| | round {number}: **transform** ({transform['requests']} requests, {transform['seconds']:.1f} s)"
                f" | {transform['concurrency']} | **{transform['records_per_second']:,.0f}** |"
            )
        lines.append(f"| | **ratio of the medians** | | **{compared['ratio']:.2f}x** |")
        notes.append(f"{setup.capitalize()}: {_cpu_sentence(compared, machine['cpus'])}.")
    lines += [
        "",
        " ".join(notes)
        + " The transform's concurrency is what the endpoint suggested (`MaxConcurrentTransforms` 0: two requests "
        "per dense shard). Apart says whether the transform keeps the endpoint as busy as a client that only "
        "resends bytes it holds; shared is one machine for all, where the transform's own work and the S3 server's "
        "come out of the endpoint's cores.",
        "",
        *goal_table(goals(results)),
    ]
    lines.append(END)
    return "\n".join(lines) + "\n"


def main() -> int:
    return section_main("transform", __doc__ or "", (FULL, SMOKE), run, markdown, (START, END))


if __name__ == "__main__":
    sys.exit(main())
