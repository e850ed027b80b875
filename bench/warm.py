"""Warm path: one-row CSV requests to a loaded model, driven by wrk (a C load generator, keep-alive connections)
side by side in one run against three targets, with the server's CPU per request by process kind; and the
in-process floor (``Booster.inplace_predict``).

The targets:

- ``mms_direct``: MMS answering its own ``/predictions`` for the model with one worker: the server openmme is
  built on, the yardstick of every ratio;
- ``dense``: openmme with ``--hosting dense --fronts 2``: two front processes share the port (the owner of model
  state and one edge, see container/openmme/endpoint/edges.py), each feeding the dense shards' workers (MMS's
  Python worker, one per core) over MMS's socket protocol itself, without MMS's Java front;
- ``isolated``: openmme with ``--hosting isolated``: the front, MMS's JVM and the model's own MMS worker.

Two endpoints are started for this section alone, holding only this model: one dense, one isolated. MMS direct is
the isolated endpoint's MMS, reached at its inference address: the same JVM and worker that openmme isolated goes
through, so the two differ by the front alone.

CPU is attributed by reading every process of both endpoints (``harness.tree_cpu``) before and after each wrk
run. A target's server CPU is what the processes that served it used: for ``dense`` and ``isolated`` their
endpoint's whole tree (front, JVM, workers); for ``mms_direct`` the isolated endpoint's JVM and MMS workers, its
front left out (no request of that round passes through it). What the other processes used meanwhile (the idle
endpoint, the idle front) is kept as ``bystander`` CPU per request: what the attribution left out, near zero on
a quiet machine.

A round runs wrk for every target at each concurrency, the targets' order rotated by one place per round, so
that the machine's drift falls on all of them; per target and concurrency, the median round of each of req/s,
p50 and p99 is reported, and the CPU of the round whose total server CPU is the median (so that its kinds add up
to its total).

The front's ceiling: one front process can answer at most ``1000 / front CPU ms per request`` requests a second,
whatever the machine (the front CPU of all its front processes, per request: what one process spends on one);
on ``CORES`` cores, a server can answer at most ``CORES * 1000 / total server CPU ms per request`` (every process
of it, the fronts included, shares the cores). openmme's projection is the lower of the two, the front's ceiling
times the front processes it runs on ``CORES`` cores: for dense, ``--fronts``'s default there (one per two
cores), every front answering warm dense invocations itself; for isolated, one (an edge forwards an isolated
model's invocations to the owner). MMS direct's is the second alone.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import psutil
import xgboost

from harness import (
    KINDS,
    Endpoint,
    all_up,
    count_kind,
    cpu_between,
    invoke_headers,
    percentile,
    serve_flags,
    tree_cpu,
    tree_processes,
    wrk,
    wrk_script,
    wrk_version,
)
from openmme.endpoint.cache import mms_model_name

__all__ = ["CONCURRENCIES", "CORES", "TARGETS", "WarmSizes", "ceilings", "closed_loop", "run_warm"]

CONCURRENCIES = (1, 8)
TARGETS = ("mms_direct", "dense", "isolated")
# The machine the ceilings are projected onto.
CORES = 16
# Front processes of the dense endpoint measured here (--fronts): the owner and one edge.
FRONTS = 2
MEASURES = ("requests_per_second", "p50_ms", "p99_ms")
# The process kinds whose CPU is a target's server CPU (the rest of both endpoints' processes are bystanders).
SERVED_KINDS = {
    "mms_direct": ("java", "mms_worker"),
    "dense": KINDS,
    "isolated": KINDS,
}


@dataclass(frozen=True)
class WarmSizes:
    rounds: int
    seconds: int  # per wrk run (wrk takes whole seconds)
    warm_up_seconds: int  # one wrk run per target before the rounds, not counted
    floor_requests: int


@dataclass(frozen=True)
class Target:
    name: str
    url: str  # what wrk posts to
    script: Path  # wrk's Lua script: the body and this target's headers
    endpoint: Endpoint  # the endpoint whose processes serve it


def measure(target: Target, endpoints: Sequence[Endpoint], concurrency: int, seconds: int) -> dict[str, Any]:
    """One wrk run against ``target``, with the CPU of the processes that served it and of the rest."""
    before = {endpoint.pid: tree_cpu(endpoint.pid) for endpoint in endpoints}
    result = wrk(target.url, target.script, concurrency, seconds)
    used = {endpoint.pid: cpu_between(before[endpoint.pid], tree_cpu(endpoint.pid)) for endpoint in endpoints}
    served = used[target.endpoint.pid]
    cpu = {kind: served[kind] if kind in SERVED_KINDS[target.name] else 0.0 for kind in KINDS}
    cpu["total"] = sum(cpu.values())
    bystander = sum(seconds["total"] for seconds in used.values()) - cpu["total"]
    requests = max(1, result["requests"])
    return result | {
        "cpu_seconds": cpu,
        "cpu_ms_per_request": {kind: value * 1000 / requests for kind, value in cpu.items()},
        "bystander_cpu_ms_per_request": bystander * 1000 / requests,
        "client_cpu_ms_per_request": result["client_cpu_seconds"] * 1000 / requests,
    }


def summary(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The median round of each measure; the CPU of the median round by total server CPU; failures summed."""
    medians = {key: statistics.median(measured[key] for measured in rounds) for key in MEASURES}
    by_cpu = sorted(rounds, key=lambda measured: measured["cpu_ms_per_request"]["total"])
    middle = by_cpu[(len(by_cpu) - 1) // 2]
    return medians | {
        "cpu_ms_per_request": middle["cpu_ms_per_request"],
        "bystander_cpu_ms_per_request": middle["bystander_cpu_ms_per_request"],
        "client_cpu_ms_per_request": statistics.median(measured["client_cpu_ms_per_request"] for measured in rounds),
        "requests": sum(measured["requests"] for measured in rounds),
        "non_2xx": sum(measured["non_2xx"] for measured in rounds),
        "socket_errors": sum(measured["socket_errors"] for measured in rounds),
        "rounds": list(rounds),
    }


def ceilings(targets: dict[str, dict[str, Any]], front_processes: dict[str, int], cores: int = CORES) -> dict[str, Any]:
    """Per target, from its CPU per request at the highest concurrency: the front's ceiling (openmme's targets),
    the ceiling of ``cores`` cores, and the projection, the lower of the two."""
    concurrency = f"c{max(CONCURRENCIES)}"
    found: dict[str, Any] = {"cores": cores, "concurrency": max(CONCURRENCIES)}
    for name, rows in targets.items():
        cpu = rows[concurrency]["cpu_ms_per_request"]
        cores_ceiling = cores * 1000 / cpu["total"]
        row: dict[str, Any] = {"cpu_ms_per_request": cpu["total"], "cores_ceiling_rps": cores_ceiling}
        if name in front_processes:
            per_process = 1000 / cpu["front"]
            row |= {
                "front_cpu_ms_per_request": cpu["front"],
                "front_ceiling_rps_per_process": per_process,
                "front_processes": front_processes[name],
                "front_ceiling_rps": per_process * front_processes[name],
            }
        row["projected_rps"] = min(cores_ceiling, row.get("front_ceiling_rps", cores_ceiling))
        found[name] = row
    return found


def mms_workers(pid: int) -> int:
    """MMS workers in the tree: each is a listener and the process it forked, on one socket."""
    sockets = set()
    for process in tree_processes(pid):
        try:
            cmdline = process.cmdline()
        except psutil.Error:
            continue
        if "--sock-name" in cmdline:
            sockets.add(cmdline[cmdline.index("--sock-name") + 1])
    return len(sockets)


def answer(url: str, headers: dict[str, str], body: bytes) -> bytes:
    request = urllib.request.Request(url, data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=120) as response:
        data: bytes = response.read()
        return data


def in_process_floor(booster: xgboost.Booster, row: np.ndarray, count: int) -> dict[str, float]:
    # MMS workers run with OMP_NUM_THREADS=1; the floor uses one thread too, or it would not be a floor of them.
    booster.set_param({"nthread": 1})
    timings = []
    for _ in range(count):
        started = time.perf_counter()
        booster.inplace_predict(row)
        timings.append(time.perf_counter() - started)
    return {"p50_ms": percentile(timings, 50) * 1000, "p99_ms": percentile(timings, 99) * 1000}


def run_warm(
    workdir: Path, target_model: str, booster: xgboost.Booster, row: np.ndarray, body: bytes, sizes: WarmSizes
) -> dict[str, Any]:
    """The section: both endpoints started, the model loaded in each, the targets warmed up, then measured."""
    flags = {"dense": ["--hosting", "dense", "--fronts", str(FRONTS)], "isolated": ["--hosting", "isolated"]}
    endpoints = {mode: Endpoint(workdir / f"warm-{mode}", mode_flags) for mode, mode_flags in flags.items()}
    openmme_script = wrk_script(workdir / "warm-openmme.lua", body, invoke_headers(target_model))
    direct_headers = {"Content-Type": "text/csv"}
    direct_script = wrk_script(workdir / "warm-mms-direct.lua", body, direct_headers)
    warm: dict[str, Any] = {
        "settings": {
            "rounds": sizes.rounds,
            "seconds": sizes.seconds,
            "warm_up_seconds": sizes.warm_up_seconds,
            "concurrencies": list(CONCURRENCIES),
            "wrk": wrk_version(),
            "wrk_command": "wrk -t1 -c<concurrency> -d<seconds>s --latency -s <POST script> <url>",
        },
        "endpoints": {mode: " ".join(serve_flags(mode_flags)) for mode, mode_flags in flags.items()},
    }
    with all_up(list(endpoints.values())):
        isolated = endpoints["isolated"]
        invocations = {mode: endpoint.url + "/invocations" for mode, endpoint in endpoints.items()}
        # Loads the model in each endpoint; MMS direct's answer comes from the isolated endpoint's loaded model.
        answers = {mode: answer(url, invoke_headers(target_model), body) for mode, url in invocations.items()}
        direct_url = f"{isolated.mms_inference_url()}/predictions/{mms_model_name(target_model)}"
        answers["mms_direct"] = answer(direct_url, direct_headers, body)
        warm["answers"] = {name: data.decode(errors="replace") for name, data in answers.items()}
        warm["same_answer"] = len(set(answers.values())) == 1
        targets = [
            Target("mms_direct", direct_url, direct_script, isolated),
            Target("dense", invocations["dense"], openmme_script, endpoints["dense"]),
            Target("isolated", invocations["isolated"], openmme_script, isolated),
        ]
        # Connections, first requests' one-off costs, and dense hosting spreading the hot model to a second shard.
        for target in targets:
            wrk(target.url, target.script, max(CONCURRENCIES), sizes.warm_up_seconds)
        rounds: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for index in range(sizes.rounds):
            order = targets[index % len(targets) :] + targets[: index % len(targets)]
            for concurrency in CONCURRENCIES:
                for target in order:
                    measured = measure(target, list(endpoints.values()), concurrency, sizes.seconds)
                    rounds.setdefault((target.name, concurrency), []).append(measured)
            print(f"bench: warm round {index + 1} of {sizes.rounds} done", file=sys.stderr, flush=True)
        warm["workers"] = {
            "mms_direct": mms_workers(isolated.pid),
            "dense": count_kind(endpoints["dense"].pid, "shard_worker"),
            "isolated": mms_workers(isolated.pid),
        }
        warm["front_processes"] = {mode: count_kind(endpoint.pid, "front") for mode, endpoint in endpoints.items()}
    # On CORES cores: --fronts's default for dense (every front answers warm dense invocations); one for isolated.
    front_processes = {"dense": max(1, CORES // 2), "isolated": 1}
    warm["targets"] = {
        target.name: {f"c{c}": summary(rounds[(target.name, c)]) for c in CONCURRENCIES} for target in targets
    }
    warm["ceiling"] = ceilings(warm["targets"], front_processes)
    warm["in_process_floor"] = in_process_floor(booster, row, sizes.floor_requests)
    return warm


async def closed_loop(
    url: str, headers: dict[str, str], body: bytes, concurrency: int, seconds: float, cap: int
) -> dict[str, float]:
    """The asyncio load generator bench/hosting.py and bench/capture.py measure with: ``concurrency`` clients,
    each sending its next request as soon as its last one returns, for ``seconds`` or ``cap`` requests."""
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        # Warm-up: opening connections and the first requests' one-off costs are not what this measures.
        for _ in range(20):
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()

        # The measured time starts after the warm-up, however long that took.
        deadline = time.perf_counter() + seconds

        async def client() -> None:
            nonlocal errors
            while time.perf_counter() < deadline and len(latencies) < cap:
                started = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "errors": errors,
        "throughput_rps": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
    }
