"""Dense vs isolated hosting, side by side in one run: cold start, density, warm path, and a Zipf trace.

    .venv/bin/python bench/hosting.py           # full run (~6 min on 2 cores): its section of BENCHMARKS.md,
                                                # bench/results/hosting.json
    .venv/bin/python bench/hosting.py --smoke   # tiny sizes, checks the harness end to end (run in CI)

One SeaweedFS holds one archive (a 100-tree booster) under every name. Each mode gets fresh endpoints, started
as an operator starts them (``openmme serve --hosting dense|isolated``), one after the other, so that the two
never compete for the 2 cores:

- **cold start from disk**: every model is loaded once, unloaded (``DELETE /models/{name}``, so it stays on
  disk), then timed on its next request: the load itself plus a first prediction, without the download;
- **cold start from S3**: the first request for a model never seen (download + extract + load + predict);
- **density**: models loaded one after the other into an endpoint with no budget, then the proportional set
  size (PSS) of the MMS worker processes and of the whole endpoint (front + JVM + workers) is read; dense
  loads ``density_dense`` models (the goal is about 1,000), isolated a few (each is a process: the slope is
  what matters);
- **warm path**: closed-loop one-row CSV requests to one loaded model at concurrency 8, both modes' endpoints
  up at once and measured in alternating rounds (the median round of each is reported);
- **Zipf trace**: the same seeded trace over ``catalogue`` models against each mode with the same
  ``--memory-budget``, 8 clients; throughput and hit ratio after a warm-up prefix.
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import (
    BUCKET,
    Endpoint,
    counters,
    delete,
    embedded_s3,
    get_json,
    invoke_headers,
    percentile,
    post,
    serve_flags,
    tree_pss_bytes,
)
from many_models import replay, zipf_trace
from openmme.publish.samples import make_rows, sample_archive, train_booster
from sections import MARKERS, goal_table, section_main
from warm import closed_loop

MIB = 2**20
START, END = MARKERS[1]
MODES = ("dense", "isolated")


@dataclass(frozen=True)
class Sizes:
    trees: int
    cold_models: int
    density_dense: int
    density_isolated: int
    warm_seconds: float
    catalogue: int
    trace: int
    warm_up: int
    memory_budget: str


FULL = Sizes(
    trees=100,
    cold_models=20,
    density_dense=1000,
    density_isolated=12,
    warm_seconds=10.0,
    catalogue=1000,
    trace=1500,
    warm_up=300,
    memory_budget="1GiB",
)
SMOKE = Sizes(
    trees=10,
    cold_models=2,
    density_dense=4,
    density_isolated=2,
    warm_seconds=2.0,
    catalogue=8,
    trace=30,
    warm_up=10,
    memory_budget="1GiB",
)


def target(group: str, index: int) -> str:
    return f"{group}/m{index:04d}/model.tar.gz"


def invoke(front: str, name: str, body: bytes) -> float:
    status, seconds = post(front + "/invocations", body, invoke_headers(name))
    assert status == 200, (name, status)
    return seconds


def cold_starts(front: str, names: Sequence[str], body: bytes) -> dict[str, Any]:
    from_s3 = [invoke(front, name, body) for name in names]
    for name in names:
        assert delete(f"{front}/models/{name}") == 200
    from_disk = [invoke(front, name, body) for name in names]
    loads = [get_json(f"{front}/models/{name}")["timingsMs"]["register"] for name in names]
    return {
        "from_disk_p50_ms": statistics.median(from_disk) * 1000,
        "from_disk_p99_ms": percentile(from_disk, 99) * 1000,
        "from_s3_p50_ms": statistics.median(from_s3) * 1000,
        "load_p50_ms": statistics.median(loads),
    }


def density(endpoint: Endpoint, names: Sequence[str], body: bytes) -> dict[str, Any]:
    before_workers, before_tree = tree_pss_bytes(endpoint.pid, workers_only=True), tree_pss_bytes(endpoint.pid)
    started = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda name: invoke(endpoint.url, name, body), names))
    seconds = time.perf_counter() - started
    snapshot = get_json(endpoint.url + "/models?limit=1")
    assert snapshot["loadedModels"] == len(names), snapshot["loadedModels"]
    workers, tree = tree_pss_bytes(endpoint.pid, workers_only=True), tree_pss_bytes(endpoint.pid)
    return {
        "models": len(names),
        "load_all_seconds": seconds,
        "worker_pss_mib": workers / MIB,
        "tree_pss_mib": tree / MIB,
        "worker_mib_per_model": workers / len(names) / MIB,
        "tree_mib_per_model": tree / len(names) / MIB,
        "marginal_worker_mib_per_model": (workers - before_workers) / len(names) / MIB,
        "marginal_tree_mib_per_model": (tree - before_tree) / len(names) / MIB,
        "accounted_mib": snapshot["memoryBytes"] / MIB,
    }


def zipf(front: str, sizes: Sizes, body: bytes) -> dict[str, Any]:
    names = [target("zipf", rank) for rank in zipf_trace(sizes.catalogue, sizes.trace, 1.0, 2024)]
    asyncio.run(replay([front], names[: sizes.warm_up], body, 8))
    before = counters(front)
    measured = asyncio.run(replay([front], names[sizes.warm_up :], body, 8))
    after = counters(front)
    hits, misses = after["hits"] - before["hits"], after["misses"] - before["misses"]
    snapshot = get_json(front + "/models?limit=1")
    return {
        "throughput_rps": (sizes.trace - sizes.warm_up) / measured["seconds"],
        "hit_ratio": hits / max(1, hits + misses),
        "p50_ms": percentile(measured["latencies"], 50) * 1000,
        "p99_ms": percentile(measured["latencies"], 99) * 1000,
        "statuses": measured["statuses"],
        "loaded_at_end": snapshot["loadedModels"],
        "memory_mib_at_end": snapshot["memoryBytes"] / MIB,
        "evictions": snapshot["evictions"],
    }


def run(sizes: Sizes, workdir: Path) -> dict[str, Any]:
    booster = train_booster("binary:logistic", seed=1, rounds=sizes.trees, rows=2000)
    archive = sample_archive(booster)
    body = ",".join(repr(float(value)) for value in make_rows(1, seed=3)[0]).encode()
    results: dict[str, Any] = {"sizes": dataclasses.asdict(sizes), "archive_bytes": len(archive), "modes": {}}
    groups = {
        "cold": sizes.cold_models,
        "density": max(sizes.density_dense, sizes.density_isolated),
        "warm": 1,
        "zipf": sizes.catalogue,
    }
    with embedded_s3(workdir / "s3") as s3:
        client: Any = s3.client()
        client.create_bucket(Bucket=BUCKET)
        keys = [f"models/{target(group, index)}" for group, count in groups.items() for index in range(count)]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda key: client.put_object(Bucket=BUCKET, Key=key, Body=archive), keys))
        for mode in MODES:
            flags = ["--hosting", mode]
            row: dict[str, Any] = {"flags": " ".join(serve_flags(flags))}
            with Endpoint(workdir / f"{mode}-main", flags) as endpoint:
                row["cold"] = cold_starts(endpoint.url, [target("cold", i) for i in range(sizes.cold_models)], body)
            count = sizes.density_dense if mode == "dense" else sizes.density_isolated
            with Endpoint(workdir / f"{mode}-density", flags) as endpoint:
                row["density"] = density(endpoint, [target("density", i) for i in range(count)], body)
            zipf_flags = [*flags, "--memory-budget", sizes.memory_budget]
            with Endpoint(workdir / f"{mode}-zipf", zipf_flags) as endpoint:
                row["zipf"] = zipf(endpoint.url, sizes, body)
            results["modes"][mode] = row
            print(f"bench: {mode} done", file=sys.stderr, flush=True)
        with (
            Endpoint(workdir / "dense-warm", ["--hosting", "dense"]) as dense,
            Endpoint(workdir / "isolated-warm", ["--hosting", "isolated"]) as isolated,
        ):
            warm = warm_path({"dense": dense.url, "isolated": isolated.url}, body, sizes.warm_seconds)
        for mode, measured in warm.items():
            results["modes"][mode]["warm_c8"] = measured
    return results


WARM_ROUNDS = 4


def warm_path(fronts: dict[str, str], body: bytes, seconds: float) -> dict[str, dict[str, float]]:
    """Both endpoints up at once (an idle one costs no CPU), measured in alternating rounds, so that the
    machine's drift falls on both; per mode, the median round."""
    headers = invoke_headers(target("warm", 0))
    for front in fronts.values():
        invoke(front, target("warm", 0), body)
    rounds: dict[str, list[dict[str, float]]] = {mode: [] for mode in fronts}
    for _ in range(WARM_ROUNDS):
        for mode, front in fronts.items():
            measured = closed_loop(front + "/invocations", headers, body, 8, seconds / WARM_ROUNDS, 10**6)
            rounds[mode].append(asyncio.run(measured))
    return {
        mode: {
            key: statistics.median(measured[key] for measured in results)
            for key in ("throughput_rps", "p50_ms", "p99_ms")
        }
        | {"errors": sum(measured["errors"] for measured in results), "rounds": len(results)}
        for mode, results in rounds.items()
    }


def goals(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    dense, isolated = results["modes"]["dense"], results["modes"]["isolated"]
    cold, cold_iso = dense["cold"]["from_disk_p50_ms"], isolated["cold"]["from_disk_p50_ms"]
    per_model = dense["density"]["tree_mib_per_model"]
    warm, warm_iso = dense["warm_c8"], isolated["warm_c8"]
    warm_ratio, p99_ratio = warm["throughput_rps"] / warm_iso["throughput_rps"], warm["p99_ms"] / warm_iso["p99_ms"]
    zipf_ratio = dense["zipf"]["throughput_rps"] / isolated["zipf"]["throughput_rps"]
    return [
        (
            "cold start from disk ≤ 50 ms p50 and ≤ 0.1x isolated",
            f"{cold:.1f} ms vs {cold_iso:.1f} ms ({cold / cold_iso:.3f}x)",
            cold <= 50 and cold <= 0.1 * cold_iso,
        ),
        (
            "≥ 1,000 resident 100-tree models, ≤ 8 MB each all overheads included",
            f"{dense['density']['models']} models, {per_model * MIB / 1e6:.2f} MB each (whole endpoint)",
            dense["density"]["models"] >= 1000 and per_model * MIB <= 8e6,
        ),
        (
            "warm throughput at c=8 ≥ 0.9x isolated; p99 ≤ 1.5x",
            f"{warm_ratio:.2f}x, p99 {p99_ratio:.2f}x",
            warm_ratio >= 0.9 and p99_ratio <= 1.5,
        ),
        ("Zipf trace throughput ≥ 5x isolated at the same memory budget", f"{zipf_ratio:.1f}x", zipf_ratio >= 5),
    ]


def markdown(results: dict[str, Any], command: str) -> str:
    sizes, machine = results["sizes"], results["machine"]
    dense, isolated = results["modes"]["dense"], results["modes"]["isolated"]

    def both(path: Sequence[str], fmt: str) -> str:
        values = []
        for row in (dense, isolated):
            value: Any = row
            for key in path:
                value = value[key]
            values.append(format(value, fmt))
        return " | ".join(values)

    lines = [
        START,
        "## Hosting: dense shards vs isolated workers, side by side",
        "",
        f"`{command}` — {sizes['trees']}-tree booster ({results['archive_bytes'] / 1024:.0f} KiB archive) under every "
        f"name; {machine['cpus']} CPUs ({machine['cpu_model']}), {machine['memory_gib']} GiB; "
        f"openmme {machine['openmme_revision']}; {results['wall_seconds'] / 60:.1f} min.",
        "",
        "| measure | dense | isolated |",
        "|---|---:|---:|",
        f"| cold start from disk, p50 (ms) | {both(('cold', 'from_disk_p50_ms'), '.1f')} |",
        f"| cold start from disk, p99 (ms) | {both(('cold', 'from_disk_p99_ms'), '.1f')} |",
        f"| of which the load, p50 (ms) | {both(('cold', 'load_p50_ms'), '.1f')} |",
        f"| cold start from S3, p50 (ms) | {both(('cold', 'from_s3_p50_ms'), '.1f')} |",
        f"| density: models loaded | {both(('density', 'models'), 'd')} |",
        f"| density: worker PSS per model (MiB) | {both(('density', 'worker_mib_per_model'), '.2f')} |",
        f"| density: whole endpoint PSS per model (MiB) | {both(('density', 'tree_mib_per_model'), '.2f')} |",
        f"| density: marginal worker PSS per model (MiB) | "
        f"{both(('density', 'marginal_worker_mib_per_model'), '.2f')} |",
        f"| density: memory openmme accounts (MiB) | {both(('density', 'accounted_mib'), '.1f')} |",
        f"| density: seconds to load them all (4 clients) | {both(('density', 'load_all_seconds'), '.1f')} |",
        f"| warm c=8: throughput (req/s) | {both(('warm_c8', 'throughput_rps'), '.0f')} |",
        f"| warm c=8: p50 / p99 (ms) | {dense['warm_c8']['p50_ms']:.2f} / {dense['warm_c8']['p99_ms']:.2f} | "
        f"{isolated['warm_c8']['p50_ms']:.2f} / {isolated['warm_c8']['p99_ms']:.2f} |",
        f"| Zipf ({sizes['catalogue']} models, --memory-budget {sizes['memory_budget']}): throughput (req/s) | "
        f"{both(('zipf', 'throughput_rps'), '.1f')} |",
        f"| Zipf: hit ratio | {both(('zipf', 'hit_ratio'), '.3f')} |",
        f"| Zipf: p50 / p99 (ms) | {dense['zipf']['p50_ms']:.1f} / {dense['zipf']['p99_ms']:.1f} | "
        f"{isolated['zipf']['p50_ms']:.1f} / {isolated['zipf']['p99_ms']:.1f} |",
        f"| Zipf: models loaded at the end | {both(('zipf', 'loaded_at_end'), 'd')} |",
        "",
        *goal_table(goals(results)),
    ]
    lines += [
        "",
        f"Zipf: {sizes['trace']} requests, the first {sizes['warm_up']} not counted, 8 closed-loop clients. "
        "Worker PSS is the MMS worker processes' (dense: the shards; isolated: one process per model); the whole "
        "endpoint adds the front and MMS's JVM. Dense memory openmme accounts is each booster's heap bytes as "
        "its shard measured them, plus nothing for the shards' empty interpreters (counted against the budget "
        "first).",
        END,
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    return section_main("hosting", __doc__ or "", (FULL, SMOKE), run, markdown, (START, END))


if __name__ == "__main__":
    sys.exit(main())
