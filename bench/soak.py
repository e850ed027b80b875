"""Soak test: many models, little room, traffic at half the endpoint's measured warm capacity, a fault every
minute, then checks.

    .venv/bin/python bench/soak.py --minutes 10          # the full run: 200 models, room for 16, ~10 faults
    .venv/bin/python bench/soak.py --minutes 10 --markdown BENCHMARKS.md   # and write its section there
    .venv/bin/python bench/soak.py --smoke               # 12 models, room for 4, 12 s, two faults (run by tests)

It starts SeaweedFS and `openmme serve` itself (loopback only, default hosting: dense), publishes models trained
from a handful of different boosters, and then, in one run:

1. measures the warm capacity: a closed-loop burst against one loaded model from a bounded number of clients;
2. sends requests open loop (request i leaves at i / rate seconds, whatever the earlier ones are doing) at
   ``--load-fraction`` (default 0.5) of that capacity, Zipf-distributed with a small skew over many more models
   than the room, so that most requests miss and evict; at most ``in_flight`` requests are outstanding: one due
   when that many are is not sent, and is counted as such;
3. injects a fault every ``fault_every`` seconds, rotating: a dense shard's worker killed with SIGKILL, S3
   (SeaweedFS) killed and started again after ``s3_down_seconds`` (the smoke run skips it: a restart of
   SeaweedFS takes ~12 s), and a disk-full window (a filler file takes
   every free byte of the cache dir's filesystem: a tmpfs the soak mounts itself, as root; without one the fault
   is skipped with the reason, never filling a real disk);
4. samples the whole endpoint tree (``openmme serve``, the front, MMS's JVM, every worker) every few seconds: RSS,
   open file descriptors, process count; fits a slope over the samples after the warm-up.

Every 200 is checked against the booster predicting in-process. The only refusals allowed are the typed
retryable ones (429 ModelNotReady, 503 ServiceUnavailable, 507 InsufficientStorage / InsufficientMemory, 408).
Afterwards it unloads every model, compares the process count with the baseline, stops the endpoint and checks
that no process of its tree is left. Exit code 0 only when every check held (the memory and FD slopes are checked
only when the window after the warm-up lasts at least ``SLOPE_MIN_SECONDS``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import psutil
import xgboost

from harness import delete, describe_machine, list_all_models, process_kind, tree_processes
from many_models import zipf_trace
from openmme.demo import wait_for_ping
from openmme.ports import free_port
from openmme.publish.samples import make_rows, sample_archive, train_booster
from openmme.seaweed import EmbeddedS3
from sections import MARKERS, replace_section

PREFIX = "s3://soak/models/"
DISTINCT_BOOSTERS = 10
# The refusals a client may get and retry; anything else but a 200 is a failure of the soak.
RETRYABLE = {408, 429, 503, 507}
FAULT_KINDS = ("kill_shard_worker", "s3_down", "disk_full")
SLOPE_MIN_SECONDS = 300.0
START, END = MARKERS[7]


@dataclass(frozen=True)
class Plan:
    models: int
    room: int
    seconds: float
    zipf_exponent: float  # small: most requests miss
    capacity_seconds: float  # the closed-loop burst that measures the warm capacity
    capacity_clients: int
    in_flight: int  # most requests outstanding at once in the open loop
    fault_every: float
    s3_down_seconds: float
    disk_full_seconds: float
    warm_up_seconds: float  # samples before this are left out of the slopes
    sample_every: float
    client_timeout: float
    wait_budget: float | None  # --wait-budget of the endpoint (None: its default, 60 s)
    tmpfs_mb: int  # size of the tmpfs the cache dir lives on
    faults: tuple[str, ...] = FAULT_KINDS  # injected in turn
    disk_room: int = 2  # --disk-budget: this many times the room's models, extracted (the rest downloaded again)

    @classmethod
    def pick(cls, smoke: bool, minutes: float) -> Plan:
        if smoke:
            # No S3 outage: SeaweedFS takes ~12 s to start again, most of the smoke run's budget.
            return cls(12, 4, 12.0, 0.5, 2.0, 8, 64, 6.0, 2.0, 2.0, 4.0, 1.0, 30.0, 5.0, 64, faults=FAULT_KINDS[::2])
        # 1024 in flight: enough that the endpoint, not this client, decides what to refuse at the rate asked.
        return cls(200, 16, minutes * 60, 0.5, 10.0, 16, 1024, 60.0, 10.0, 10.0, 120.0, 5.0, 120.0, None, 256)


def target(model: int) -> str:
    return f"m{model:04d}.tar.gz"


# ---- the endpoint's process tree ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    seconds: float  # since the open loop started
    rss_bytes: int
    fds: int
    processes: int
    rss_by_kind: dict[str, int]  # supervisor, front, java, shard_worker, ... (harness.process_kind)


def sample_tree(pid: int, started: float) -> Sample:
    rss = fds = 0
    by_kind: Counter[str] = Counter()
    processes = tree_processes(pid)
    for process in processes:
        # A process can exit between the listing and the read (a killed worker): it holds nothing then.
        with contextlib.suppress(psutil.Error):
            held = process.memory_info().rss
            kind = process_kind(process.cmdline(), root=process.pid == pid)
            rss += held
            by_kind[kind] += held
            fds += process.num_fds()
    return Sample(time.monotonic() - started, rss, fds, len(processes), dict(by_kind))


def listen_overflows() -> int | None:
    """The machine's count of connections dropped for a full listen queue (TcpExt ListenOverflows): all of the
    machine's sockets, not only the endpoint's; None where /proc/net/netstat cannot be read."""
    try:
        lines = [
            line.split() for line in Path("/proc/net/netstat").read_text().splitlines() if line.startswith("TcpExt:")
        ]
        return int(dict(zip(lines[0], lines[1], strict=True))["ListenOverflows"])
    except (OSError, IndexError, KeyError, ValueError):
        return None


def shard_workers(pid: int) -> list[psutil.Process]:
    found = []
    for process in tree_processes(pid):
        with contextlib.suppress(psutil.Error):
            if process_kind(process.cmdline()) == "shard_worker":
                found.append(process)
    return found


def slope_per_minute(samples: list[Sample], after: float, value: Callable[[Sample], float]) -> float | None:
    """Least-squares slope of ``value`` per minute over the samples taken ``after`` seconds or later."""
    kept = [sample for sample in samples if sample.seconds >= after]
    if len(kept) < 3:
        return None
    minutes = np.array([sample.seconds / 60 for sample in kept])
    return float(np.polyfit(minutes, np.array([value(sample) for sample in kept], dtype=float), 1)[0])


# ---- faults ---------------------------------------------------------------------------------------------------


class CacheDisk:
    """The cache dir's own small filesystem: a tmpfs mounted here (root only), so that a disk-full window fills
    nothing else. ``reason`` says why there is none when the mount could not be made."""

    def __init__(self, mount_point: Path, megabytes: int) -> None:
        self.mount_point = mount_point
        self.megabytes = megabytes
        self.mounted = False
        self.reason = ""

    def __enter__(self) -> CacheDisk:
        self.mount_point.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            self.reason = "not root: cannot mount a tmpfs for the cache dir, and a real disk is never filled"
            return self
        command = ["mount", "-t", "tmpfs", "-o", f"size={self.megabytes}m,mode=0700", "tmpfs", str(self.mount_point)]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        if completed.returncode != 0:
            self.reason = f"{shlex.join(command)} failed: {completed.stderr.strip() or completed.returncode}"
        else:
            self.mounted = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.mounted:
            subprocess.run(["umount", str(self.mount_point)], capture_output=True, timeout=60, check=False)

    def fill(self, seconds: float) -> dict[str, Any]:
        """Take every free byte for ``seconds``, then give them back."""
        filler = self.mount_point / "soak-filler"
        descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            status = os.statvfs(self.mount_point)
            with contextlib.suppress(OSError):
                os.posix_fallocate(descriptor, 0, status.f_bavail * status.f_frsize)
            os.lseek(descriptor, 0, os.SEEK_END)
            chunk = b"\0" * 4096
            with contextlib.suppress(OSError):
                while os.write(descriptor, chunk):  # the bytes fallocate left, to the last page (ENOSPC)
                    pass
            status = os.statvfs(self.mount_point)
            time.sleep(seconds)
        finally:
            os.close(descriptor)
            filler.unlink()
        return {"free_bytes_during": status.f_bavail * status.f_frsize}


class Faults:
    """The faults the soak injects, each a blocking call (run in a thread) returning what it did."""

    def __init__(self, endpoint_pid: int, s3: EmbeddedS3, disk: CacheDisk, plan: Plan) -> None:
        self.endpoint_pid = endpoint_pid
        self.s3 = s3
        self.disk = disk
        self.plan = plan
        self.kills = 0

    def kill_shard_worker(self) -> dict[str, Any]:
        workers = shard_workers(self.endpoint_pid)
        if not workers:
            return {"skipped": "no dense shard worker running"}
        victim = workers[self.kills % len(workers)]
        self.kills += 1
        os.kill(victim.pid, signal.SIGKILL)
        # The front notices in its housekeeping round (~2 s) and starts the shard again.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            now = shard_workers(self.endpoint_pid)
            if len(now) >= len(workers) and victim.pid not in {process.pid for process in now}:
                return {"killed_pid": victim.pid, "replaced": True}
            time.sleep(0.2)
        return {"killed_pid": victim.pid, "replaced": False}

    def s3_down(self) -> dict[str, Any]:
        started = time.monotonic()
        # Killed (weed is slow to honour SIGTERM; its data was written long before), then started on the same ports:
        # connections are refused until it is back, which takes it ~12 s after the outage's own seconds.
        self.s3.stop(grace=0.5)
        time.sleep(max(0.0, self.plan.s3_down_seconds - (time.monotonic() - started)))
        self.s3.start(timeout=180)
        return {"down_seconds": round(time.monotonic() - started, 1)}

    def disk_full(self) -> dict[str, Any]:
        if not self.disk.mounted:
            return {"skipped": self.disk.reason}
        return self.disk.fill(self.plan.disk_full_seconds)

    def inject(self, kind: str) -> dict[str, Any]:
        action: Callable[[], dict[str, Any]] = getattr(self, kind)
        try:
            return action()
        except (OSError, RuntimeError, psutil.Error) as exc:  # recorded: the run goes on, and fails its checks
            return {"error": repr(exc)}


# ---- traffic --------------------------------------------------------------------------------------------------


async def measure_capacity(session: aiohttp.ClientSession, url: str, body: str, plan: Plan) -> dict[str, Any]:
    """Warm requests per second of one loaded model, closed loop: ``capacity_clients`` clients, each sending its
    next request when its last one is answered, for ``capacity_seconds``."""
    headers = {"X-Amzn-SageMaker-Target-Model": target(0), "Content-Type": "text/csv"}
    for _ in range(3):  # loads the model, then warms the path
        async with session.post(url, data=body, headers=headers) as response:
            await response.read()
    statuses: Counter[int] = Counter()
    deadline = time.monotonic() + plan.capacity_seconds

    async def client() -> None:
        while time.monotonic() < deadline:
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                statuses[response.status] += 1

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(plan.capacity_clients)))
    elapsed = time.monotonic() - started
    return {
        "requests_per_second": statuses[200] / elapsed,
        "clients": plan.capacity_clients,
        "seconds": round(elapsed, 1),
        "statuses": {str(code): count for code, count in sorted(statuses.items())},
    }


@dataclass
class Outcomes:
    sent_at: list[float]
    status: list[int]  # 0: no answer (connection error, client timeout)
    latency: list[float]
    wrong: int = 0
    not_sent: int = 0
    unexpected: list[dict[str, Any]] | None = None


async def drive(
    session: aiohttp.ClientSession,
    url: str,
    trace: list[int],
    rate: float,
    body: str,
    want: dict[int, list[float]],
    plan: Plan,
    started: float,
) -> Outcomes:
    outcomes = Outcomes([], [], [], unexpected=[])
    pending: set[asyncio.Task[None]] = set()

    async def one(model: int, sent: float) -> None:
        headers = {"X-Amzn-SageMaker-Target-Model": target(model), "Content-Type": "text/csv"}
        text = ""
        try:
            async with session.post(url, data=body, headers=headers) as response:
                text = await response.text()
                status = response.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            status, text = 0, repr(exc)
        if status == 200:
            try:
                answer: list[float] | None = [float(v) for v in json.loads(text)]
            except ValueError:
                answer = None
            if answer != want[model % DISTINCT_BOOSTERS]:
                outcomes.wrong += 1
                status = -1  # counted apart from the 200s
        outcomes.sent_at.append(sent - started)
        outcomes.status.append(status)
        outcomes.latency.append(time.monotonic() - sent)
        unexpected = outcomes.unexpected
        if status not in RETRYABLE and status != 200 and unexpected is not None and len(unexpected) < 20:
            outcomes.unexpected.append(
                {"sent_at_s": round(sent - started, 1), "status": status, "model": target(model), "body": text[:300]}
            )

    for index, model in enumerate(trace):
        delay = started + index / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(pending) >= plan.in_flight:
            outcomes.not_sent += 1
            continue
        task = asyncio.create_task(one(model, time.monotonic()))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.wait(pending)
    return outcomes


def status_counts(statuses: list[int]) -> dict[str, int]:
    names = {0: "no_answer", -1: "wrong_200"}
    return {names.get(code, str(code)): count for code, count in sorted(Counter(statuses).items())}


# ---- the run --------------------------------------------------------------------------------------------------


def unload_everything(front: str) -> None:
    models, _ = list_all_models(front)
    for model in models:
        if model["state"] == "ready":
            delete(f"{front}/models/{model['modelName']}")


def left_alive(processes: list[tuple[int, float]]) -> list[int]:
    """Which of the (pid, start time) still run: the same PID with the same start time."""
    left = []
    for pid, created in processes:
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            if process.create_time() == created and process.status() != psutil.STATUS_ZOMBIE:
                left.append(pid)
    return left


def extracted_bytes(archive: bytes) -> int:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return sum(member.size for member in tar.getmembers())


def serve_command(plan: Plan, port: int, cache_dir: Path, model_bytes: int) -> list[str]:
    """``--disk-budget``: room on disk for ``disk_room`` times the models loaded at once, so that most misses
    download (and S3 outages and a full disk have something to refuse)."""
    command = [
        sys.executable, "-m", "openmme.cli", "serve", "--model-prefix", PREFIX, "--endpoint-name", "soak",
        "--port", str(port), "--cache-dir", str(cache_dir), "--max-models", str(plan.room),
        "--disk-budget", str(plan.disk_room * plan.room * model_bytes),
    ]  # fmt: skip
    return command + (["--wait-budget", str(plan.wait_budget)] if plan.wait_budget is not None else [])


def progress(message: str) -> None:
    print(f"soak: {message}", file=sys.stderr, flush=True)


def run(plan: Plan, workdir: Path, load_fraction: float, seed: int = 7) -> dict[str, Any]:
    boosters = [train_booster("binary:logistic", seed=index, rounds=20) for index in range(DISTINCT_BOOSTERS)]
    rows = make_rows(2, seed=seed)
    body = "\n".join(",".join(repr(float(v)) for v in row) for row in rows)
    want = {index: [float(v) for v in b.predict(xgboost.DMatrix(rows))] for index, b in enumerate(boosters)}
    with EmbeddedS3(workdir / "s3") as s3, s3.environ(), CacheDisk(workdir / "cachefs", plan.tmpfs_mb) as disk:
        if disk.reason:
            progress(f"no disk-full fault: {disk.reason}")
        client: Any = s3.client()
        client.create_bucket(Bucket="soak")
        archives = [sample_archive(booster) for booster in boosters]
        for model in range(plan.models):
            client.put_object(Bucket="soak", Key=f"models/{target(model)}", Body=archives[model % DISTINCT_BOOSTERS])
        port = free_port()
        front = f"http://127.0.0.1:{port}"
        model_bytes = max(extracted_bytes(archive) for archive in archives)
        command = serve_command(plan, port, workdir / "cachefs" / "cache", model_bytes)
        with (workdir / "endpoint.log").open("ab") as log:
            endpoint = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
        tree: list[tuple[int, float]] = []
        try:
            wait_for_ping(front, endpoint, timeout=180)
            progress("endpoint up")
            time.sleep(3)  # let MMS settle before the baseline
            baseline = sample_tree(endpoint.pid, time.monotonic())
            faults = Faults(endpoint.pid, s3, disk, plan)

            async def soak() -> dict[str, Any]:
                timeout = aiohttp.ClientTimeout(total=plan.client_timeout)
                connector = aiohttp.TCPConnector(limit=plan.in_flight + plan.capacity_clients)
                async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
                    capacity = await measure_capacity(session, front + "/invocations", body, plan)
                    rate = capacity["requests_per_second"] * load_fraction
                    progress(f"warm capacity {capacity['requests_per_second']:.0f} req/s; open loop at {rate:.0f}")
                    trace = zipf_trace(plan.models, int(plan.seconds * rate), plan.zipf_exponent, seed)
                    started = time.monotonic()
                    samples: list[Sample] = []
                    injected: list[dict[str, Any]] = []
                    stop = asyncio.Event()

                    async def sampler() -> None:
                        while not stop.is_set():
                            samples.append(await asyncio.to_thread(sample_tree, endpoint.pid, started))
                            with contextlib.suppress(TimeoutError):
                                await asyncio.wait_for(stop.wait(), plan.sample_every)

                    async def injector() -> None:
                        at = plan.fault_every / 2
                        while at < plan.seconds:
                            await asyncio.sleep(max(0.0, started + at - time.monotonic()))
                            if time.monotonic() - started >= plan.seconds:
                                break  # a fault that outlasted its turn: none after the traffic
                            kind = plan.faults[len(injected) % len(plan.faults)]
                            began = time.monotonic() - started
                            progress(f"{began:.0f} s: fault {kind}")
                            effect = await asyncio.to_thread(faults.inject, kind)
                            injected.append(
                                {
                                    "kind": kind,
                                    "at_s": round(began, 1),
                                    "ended_s": round(time.monotonic() - started, 1),
                                    **effect,
                                }
                            )
                            at += plan.fault_every

                    background = [asyncio.create_task(sampler()), asyncio.create_task(injector())]
                    overflows = listen_overflows()
                    outcomes = await drive(session, front + "/invocations", trace, rate, body, want, plan, started)
                    overflows_after = listen_overflows()
                    # Every fault is due before the last request is: the injector ends with the one under way.
                    stop.set()
                    await asyncio.gather(*background)
                    seconds = time.monotonic() - started
                return {
                    "capacity": capacity,
                    "rate": rate,
                    "seconds": seconds,
                    "requests": len(trace),
                    "outcomes": outcomes,
                    "samples": samples,
                    "faults": injected,
                    "overflows": None if overflows is None or overflows_after is None else overflows_after - overflows,
                }

            soaked = asyncio.run(soak())
            _, snapshot = list_all_models(front)
            unload_everything(front)
            time.sleep(3)  # housekeeping round: leftover workers would be stopped by now
            after_unloading = sample_tree(endpoint.pid, time.monotonic())
            tree = [(process.pid, process.create_time()) for process in tree_processes(endpoint.pid)]
        finally:
            endpoint.terminate()
            try:
                endpoint.wait(60)
            except subprocess.TimeoutExpired:
                endpoint.kill()
                endpoint.wait(10)
        time.sleep(1)
        left = left_alive(tree)
    outcomes: Outcomes = soaked["outcomes"]
    samples: list[Sample] = soaked["samples"]
    settle = plan.fault_every / 6
    for fault in soaked["faults"]:
        during = [
            s
            for at, s in zip(outcomes.sent_at, outcomes.status, strict=True)
            if fault["at_s"] <= at <= fault["ended_s"] + settle
        ]
        fault["statuses_of_requests_sent_during"] = status_counts(during)
    warm_up = min(plan.warm_up_seconds, plan.seconds / 3)
    rss_slope = slope_per_minute(samples, warm_up, lambda sample: sample.rss_bytes / 2**20)
    fd_slope = slope_per_minute(samples, warm_up, lambda sample: sample.fds)
    counters = snapshot["counters"]
    return {
        "plan": asdict(plan),
        "command": shlex.join(command),
        "capacity": soaked["capacity"],
        "load_fraction": load_fraction,
        "rate": soaked["rate"],
        "requests": soaked["requests"],
        "sent": len(outcomes.status),
        "sent_per_second": len(outcomes.status) / soaked["seconds"],
        "not_sent_in_flight_bound": outcomes.not_sent,
        "seconds": soaked["seconds"],
        "statuses": status_counts(outcomes.status),
        "wrong_answers": outcomes.wrong,
        "unexpected": outcomes.unexpected,
        "p50_ms": float(np.percentile(outcomes.latency, 50) * 1000) if outcomes.latency else None,
        "p99_ms": float(np.percentile(outcomes.latency, 99) * 1000) if outcomes.latency else None,
        "miss_ratio": counters.get("misses", 0) / max(1, counters.get("misses", 0) + counters.get("hits", 0)),
        "evictions": snapshot["evictions"],
        "counters": counters,
        "faults": soaked["faults"],
        "memory": {
            "warm_up_seconds": warm_up,
            "tree_rss_mib": {
                "first": samples[0].rss_bytes / 2**20,
                "last": samples[-1].rss_bytes / 2**20,
                "peak": max(sample.rss_bytes for sample in samples) / 2**20,
            },
            "rss_slope_mib_per_min": rss_slope,
            # Which processes the growth is in (a killed shard worker's replacement starts small and grows back).
            "rss_slope_by_kind_mib_per_min": {
                kind: slope_per_minute(
                    samples, warm_up, lambda sample, kind=kind: sample.rss_by_kind.get(kind, 0) / 2**20
                )
                for kind in sorted({kind for sample in samples for kind in sample.rss_by_kind})
            },
            "fd_slope_per_min": fd_slope,
            "fds": {"first": samples[0].fds, "last": samples[-1].fds, "peak": max(sample.fds for sample in samples)},
            "samples": len(samples),
        },
        "processes": {
            "baseline": baseline.processes,
            "peak_during": max(sample.processes for sample in samples),
            "after_unloading_all": after_unloading.processes,
            "left_after_stop": left,
        },
        "endpoint_exit_code": endpoint.returncode,
        # Connections refused for a full listen queue while the traffic ran, on the whole machine (its other work
        # included): what a "connection reset" the client saw may come from.
        "machine_listen_overflows_during": soaked["overflows"],
    }


def verdict(result: dict[str, Any], rss_slope_goal: float) -> list[str]:
    problems = [
        f"fault {fault['kind']} at {fault['at_s']} s failed: {fault['error']}"
        for fault in result["faults"]
        if "error" in fault
    ]
    refused = {
        code: n for code, n in result["statuses"].items() if code != "200" and int_or_none(code) not in RETRYABLE
    }
    if refused:
        problems.append(f"answers other than 200 and the typed retryable refusals: {refused}")
    if result["wrong_answers"]:
        problems.append(f"{result['wrong_answers']} wrong answers")
    processes = result["processes"]
    if processes["after_unloading_all"] != processes["baseline"]:
        problems.append(f"processes after unloading every model: {processes}")
    # A killed shard worker's replacement can start before the dead one is reaped: one more, never two.
    if processes["peak_during"] > processes["baseline"] + 1:
        problems.append(f"process count grew during the run: {processes}")
    if processes["left_after_stop"]:
        problems.append(f"processes left after the endpoint stopped: {processes['left_after_stop']}")
    if result["endpoint_exit_code"] != 0:
        problems.append(f"the endpoint exited {result['endpoint_exit_code']} on SIGTERM")
    memory = result["memory"]
    if result["seconds"] - memory["warm_up_seconds"] >= SLOPE_MIN_SECONDS:
        if memory["rss_slope_mib_per_min"] is None or memory["rss_slope_mib_per_min"] >= rss_slope_goal:
            problems.append(f"endpoint tree RSS grows {memory['rss_slope_mib_per_min']} MiB/min after the warm-up")
        if memory["fd_slope_per_min"] is None or memory["fd_slope_per_min"] >= 1.0:
            problems.append(f"open file descriptors grow {memory['fd_slope_per_min']} per minute after the warm-up")
    return problems


def int_or_none(text: str) -> int | None:
    return int(text) if text.lstrip("-").isdigit() else None


# What every fault's record holds; the rest says what the fault did.
FAULT_FIELDS = ("kind", "at_s", "ended_s", "statuses_of_requests_sent_during")


def markdown(result: dict[str, Any], command: str) -> str:
    """The soak's section of BENCHMARKS.md."""
    plan, memory, processes = result["plan"], result["memory"], result["processes"]
    machine = result["machine"]
    faults = [
        f"| {fault['at_s']:.0f}-{fault['ended_s']:.0f} s | {fault['kind']} | "
        + ", ".join(f"{key} {value}" for key, value in fault.items() if key not in FAULT_FIELDS)
        + " | "
        + ", ".join(f"{code}: {count}" for code, count in fault["statuses_of_requests_sent_during"].items())
        + " |"
        for fault in result["faults"]
    ]
    rss, fd = memory["rss_slope_mib_per_min"], memory["fd_slope_per_min"]
    lines = [
        START,
        "## Soak: half the warm capacity over many models, a fault every minute",
        "",
        f"Written by `{command} --markdown BENCHMARKS.md` (bench/soak.py; wall time {result['wall_seconds'] / 60:.1f} "
        f"min), not by bench/run.py, which keeps this section. Machine: {machine['cpus']} cores "
        f"({machine['cpu_model']}), shared with other work during the run; revision {machine['openmme_revision']}. "
        f"The endpoint: `openmme serve --max-models {plan['room']}` (dense hosting, the default), {plan['models']} "
        f"models from {DISTINCT_BOOSTERS} distinct boosters, Zipf exponent {plan['zipf_exponent']} (miss ratio "
        f"{result['miss_ratio']:.0%}), two CSV rows per request, at most {plan['in_flight']} requests in flight.",
        "",
        "| measured | value |",
        "|---|---|",
        f"| warm capacity (closed loop, {result['capacity']['clients']} clients, one loaded model, "
        f"{result['capacity']['seconds']:.0f} s) | {result['capacity']['requests_per_second']:.0f} req/s |",
        f"| open-loop rate ({result['load_fraction']:.0%} of it) for {result['seconds'] / 60:.1f} min "
        f"| {result['rate']:.0f} req/s |",
        f"| requests: due / sent / not sent (in-flight bound reached) | {result['requests']} / {result['sent']} / "
        f"{result['not_sent_in_flight_bound']} ({result['sent_per_second']:.0f} sent/s) |",
        "| answers by status | " + ", ".join(f"{code}: {n}" for code, n in result["statuses"].items()) + " |",
        "| connections the machine dropped for a full listen queue meanwhile (all its sockets) | "
        f"{result.get('machine_listen_overflows_during')} |",
        f"| wrong answers (each 200 checked against the booster in-process) | {result['wrong_answers']} |",
        f"| latency p50 / p99 | {result['p50_ms']:.0f} / {result['p99_ms']:.0f} ms |",
        f"| loads, evictions | {result['counters'].get('misses', 0)} misses, "
        f"{result['evictions'].get('count', 0)} evictions |",
        f"| endpoint tree RSS: slope after {memory['warm_up_seconds']:.0f} s (goal < 1 MiB/min) | "
        + (f"{rss:+.2f} MiB/min" if rss is not None else "n/a")
        + f" (first {memory['tree_rss_mib']['first']:.0f}, last {memory['tree_rss_mib']['last']:.0f}, peak "
        f"{memory['tree_rss_mib']['peak']:.0f} MiB; {memory['samples']} samples); by process: "
        + ", ".join(
            f"{kind} {slope:+.2f}" for kind, slope in memory.get("rss_slope_by_kind_mib_per_min", {}).items() if slope
        )
        + " |",
        "| open file descriptors of the tree: slope | "
        + (f"{fd:+.2f}/min" if fd is not None else "n/a")
        + f" (first {memory['fds']['first']}, last {memory['fds']['last']}, peak {memory['fds']['peak']}) |",
        f"| processes: baseline / peak during / after unloading all / left after SIGTERM | {processes['baseline']} / "
        f"{processes['peak_during']} / {processes['after_unloading_all']} / {len(processes['left_after_stop'])} |",
        f"| problems | {'; '.join(result['problems']) or 'none'} |",
        "",
        "Faults, and the answers to the requests sent from each one's start to a few seconds after its end:",
        "",
        "| at | fault | what it did | answers |",
        "|---|---|---|---|",
        *faults,
        END,
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--load-fraction", type=float, default=0.5, help="the open-loop rate, of the warm capacity")
    parser.add_argument(
        "--rss-slope-goal", type=float, default=1.0, help="MiB/min the endpoint tree's RSS may grow after the warm-up"
    )
    parser.add_argument("--output", type=Path, default=None, help="write the result JSON here")
    parser.add_argument("--markdown", type=Path, default=None, help="write the soak's section into this file")
    args = parser.parse_args()
    plan = Plan.pick(args.smoke, args.minutes)
    command = "python bench/soak.py " + ("--smoke" if args.smoke else f"--minutes {args.minutes:g}")
    if args.load_fraction != 0.5:
        command += f" --load-fraction {args.load_fraction:g}"
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="openmme-soak-") as scratch:
        result = run(plan, Path(scratch), args.load_fraction)
    result |= {"machine": describe_machine(), "wall_seconds": time.monotonic() - started}
    result["problems"] = verdict(result, args.rss_slope_goal)
    text = json.dumps(result, indent=2)
    if args.output:
        args.output.write_text(text)
    if args.markdown:
        document = args.markdown.read_text() if args.markdown.exists() else ""
        args.markdown.write_text(replace_section(document, markdown(result, command), START, END))
    print(text)
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
