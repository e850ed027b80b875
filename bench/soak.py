"""Soak test: many models, little room, Zipf traffic at a steady rate for a bounded time, then checks.

    .venv/bin/python bench/soak.py --minutes 10          # the full run: 200 models, room for 20, 5 requests/s
    .venv/bin/python bench/soak.py --smoke               # 20 models, room for 4, 20 s (run by the test suite)

It starts SeaweedFS and `openmme serve` itself (loopback only), publishes models trained from a handful of
different boosters, sends requests at a fixed rate from a bounded pool, and checks every answer against the
booster predicting in-process. Afterwards it unloads every model and compares the endpoint's process count and
memory with the baseline taken before the traffic. Exit code 0 only when there was no 5xx, no wrong answer, no
leaked process, and memory came back within the tolerance.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import psutil
import xgboost

from harness import tree_processes
from openmme.demo import wait_for_ping
from openmme.ports import free_port
from openmme.publish.samples import make_rows, sample_archive, train_booster
from openmme.seaweed import EmbeddedS3

PREFIX = "s3://soak/models/"
DISTINCT_BOOSTERS = 10


@dataclass(frozen=True)
class Plan:
    models: int
    room: int
    seconds: float
    rate: float
    concurrency: int = 16

    @classmethod
    def pick(cls, smoke: bool, minutes: float) -> Plan:
        return cls(12, 4, 15.0, 4.0) if smoke else cls(200, 20, minutes * 60, 5.0)


def zipf_trace(models: int, count: int, seed: int) -> list[int]:
    """Model indices drawn with probability proportional to 1 / rank (Zipf, exponent 1)."""
    weights = 1.0 / np.arange(1, models + 1)
    return list(np.random.default_rng(seed).choice(models, size=count, p=weights / weights.sum()))


def tree_rss(pid: int) -> int:
    total = 0
    for process in tree_processes(pid):
        with contextlib.suppress(psutil.Error):
            total += process.memory_info().rss
    return total


def front_and_mms_rss(pid: int) -> int:
    """RSS of the front and MMS's Java process: what must not grow (workers come and go with models)."""
    root = psutil.Process(pid)
    java = [child for child in root.children() if "java" in child.name()]
    return sum(process.memory_info().rss for process in [root, *java])


async def drive(url: str, trace: list[int], body: str, want: dict[int, list[float]], plan: Plan) -> dict[str, Any]:
    statuses: Counter[int] = Counter()
    wrong = 0
    latencies: list[float] = []
    semaphore = asyncio.Semaphore(plan.concurrency)
    started = time.monotonic()

    async def one(session: aiohttp.ClientSession, index: int) -> None:
        nonlocal wrong
        model = trace[index]
        headers = {"X-Amzn-SageMaker-Target-Model": f"m{model:04d}.tar.gz", "Content-Type": "text/csv"}
        async with semaphore:
            sent = time.monotonic()
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    text = await response.text()
                    statuses[response.status] += 1
                    answer = [float(v) for v in json.loads(text)] if response.status == 200 else None
                    if answer is not None and answer != want[model % DISTINCT_BOOSTERS]:
                        wrong += 1
            except (TimeoutError, aiohttp.ClientError):
                statuses[0] += 1
            latencies.append(time.monotonic() - sent)

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        tasks = []
        for index in range(len(trace)):
            # A steady rate: request i leaves at i / rate seconds, whatever the earlier ones are doing.
            delay = started + index / plan.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(session, index)))
        await asyncio.gather(*tasks)
    return {
        "statuses": {str(code): count for code, count in sorted(statuses.items())},
        "wrong_answers": wrong,
        "p50_ms": float(np.percentile(latencies, 50) * 1000),
        "p99_ms": float(np.percentile(latencies, 99) * 1000),
        "seconds": time.monotonic() - started,
    }


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


def unload_everything(front: str) -> None:
    token = None
    names = []
    while True:
        page = get_json(front + "/models?limit=500" + (f"&next_page_token={token}" if token else ""))
        names += [model["modelName"] for model in page["models"] if model["state"] == "ready"]
        token = page.get("nextPageToken")
        if not token:
            break
    for name in names:
        urllib.request.urlopen(urllib.request.Request(f"{front}/models/{name}", method="DELETE"), timeout=60).read()


def run(plan: Plan, workdir: Path, seed: int = 7) -> dict[str, Any]:
    boosters = [train_booster("binary:logistic", seed=index, rounds=20) for index in range(DISTINCT_BOOSTERS)]
    rows = make_rows(2, seed=seed)
    body = "\n".join(",".join(repr(float(v)) for v in row) for row in rows)
    want = {index: [float(v) for v in b.predict(xgboost.DMatrix(rows))] for index, b in enumerate(boosters)}
    trace = zipf_trace(plan.models, int(plan.seconds * plan.rate), seed)
    with EmbeddedS3(workdir / "s3") as s3, s3.environ():
        client = s3.client()
        client.create_bucket(Bucket="soak")  # type: ignore[attr-defined]
        archives = [sample_archive(booster) for booster in boosters]
        for model in range(plan.models):
            client.put_object(
                Bucket="soak", Key=f"models/m{model:04d}.tar.gz", Body=archives[model % DISTINCT_BOOSTERS]
            )  # type: ignore[attr-defined]
        port = free_port()
        front = f"http://127.0.0.1:{port}"
        command = [
            sys.executable, "-m", "openmme.cli", "serve", "--model-prefix", PREFIX, "--endpoint-name", "soak",
            "--port", str(port), "--cache-dir", str(workdir / "cache"), "--max-models", str(plan.room),
        ]  # fmt: skip
        with (workdir / "endpoint.log").open("ab") as log:
            endpoint = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
        try:
            wait_for_ping(front, endpoint, timeout=180)
            time.sleep(3)  # let MMS settle before the baseline
            baseline_processes = len(tree_processes(endpoint.pid))
            baseline_rss = front_and_mms_rss(endpoint.pid)
            peak = {"tree_rss": tree_rss(endpoint.pid)}

            async def sample_memory(stop: asyncio.Event) -> None:
                while not stop.is_set():
                    peak["tree_rss"] = max(peak["tree_rss"], await asyncio.to_thread(tree_rss, endpoint.pid))
                    await asyncio.sleep(1.0)

            async def traffic() -> dict[str, Any]:
                stop = asyncio.Event()
                sampler = asyncio.create_task(sample_memory(stop))
                try:
                    return await drive(front + "/invocations", trace, body, want, plan)
                finally:
                    stop.set()
                    await sampler

            outcome = asyncio.run(traffic())
            listing = get_json(front + "/models?limit=1")
            unload_everything(front)
            time.sleep(3)  # housekeeping round: leftover workers would be stopped by now
            final_processes = len(tree_processes(endpoint.pid))
            final_rss = front_and_mms_rss(endpoint.pid)
        finally:
            endpoint.terminate()
            endpoint.wait(60)
    return {
        "plan": asdict(plan),
        "requests": len(trace),
        **outcome,
        "evictions": listing["evictions"],
        "counters": listing["counters"],
        "processes": {"baseline": baseline_processes, "after_unloading_all": final_processes},
        "front_and_mms_rss_mb": {"baseline": baseline_rss / 2**20, "final": final_rss / 2**20},
        "peak_tree_rss_mb": peak["tree_rss"] / 2**20,
    }


def verdict(result: dict[str, Any], rss_tolerance_mb: float) -> list[str]:
    problems = []
    server_errors = {code: n for code, n in result["statuses"].items() if code.startswith("5") or code == "0"}
    if server_errors:
        problems.append(f"5xx or failed requests: {server_errors}")
    if result["wrong_answers"]:
        problems.append(f"{result['wrong_answers']} wrong answers")
    if result["processes"]["after_unloading_all"] != result["processes"]["baseline"]:
        problems.append(f"processes: {result['processes']}")
    rss = result["front_and_mms_rss_mb"]
    if rss["final"] > rss["baseline"] + rss_tolerance_mb:
        problems.append(f"front + MMS memory grew from {rss['baseline']:.0f} to {rss['final']:.0f} MB")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rss-tolerance-mb", type=float, default=200.0,
                        help="growth of front + MMS RSS allowed (the JVM heap grows to its -Xmx)")  # fmt: skip
    parser.add_argument("--output", type=Path, default=None, help="write the result JSON here")
    args = parser.parse_args()
    plan = Plan.pick(args.smoke, args.minutes)
    with tempfile.TemporaryDirectory(prefix="openmme-soak-") as scratch:
        result = run(plan, Path(scratch))
    problems = verdict(result, args.rss_tolerance_mb)
    result["problems"] = problems
    text = json.dumps(result, indent=2)
    if args.output:
        args.output.write_text(text)
    print(text)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
