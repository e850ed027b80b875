"""openmme's benchmark: cold start split by phase, and the warm path through the front vs MMS direct.

    .venv/bin/python bench/run.py                 # full run, writes bench/results/latest.json + BENCHMARKS.md
    .venv/bin/python bench/run.py --smoke         # tiny sizes, checks the harness end to end (run in CI)

Everything runs on this machine, side by side in one run: SeaweedFS, the endpoint (front + MMS) as its own
process, and the load generator here (an asyncio HTTP client, so its cost is the same for both targets).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import xgboost

from openmme.demo import wait_for_ping
from openmme.endpoint.cache import mms_model_name
from openmme.ports import free_port
from openmme.publish import publish_archive
from openmme.publish.samples import make_rows, sample_archive, train_booster
from openmme.seaweed import EmbeddedS3

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "s3://bench/models/"


@dataclass(frozen=True)
class Sizes:
    trees: int
    cold_models: int
    warm_seconds: float
    warm_requests: int

    @classmethod
    def pick(cls, smoke: bool) -> Sizes:
        return cls(trees=10, cold_models=2, warm_seconds=1.0, warm_requests=50) if smoke else cls(100, 8, 10.0, 20_000)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q)) if values else float("nan")


async def load(
    url: str, headers: dict[str, str], body: bytes, concurrency: int, seconds: float, cap: int
) -> dict[str, float]:
    """Closed-loop load: ``concurrency`` clients each sending the next request as soon as one returns."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        # Warm-up: connections and the model's first request are not what this measures.
        for _ in range(20):
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()

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


def in_process_floor(booster: xgboost.Booster, row: np.ndarray, count: int) -> dict[str, float]:
    booster.set_param({"nthread": 1})
    timings = []
    for _ in range(count):
        started = time.perf_counter()
        booster.inplace_predict(row)
        timings.append(time.perf_counter() - started)
    return {"p50_ms": percentile(timings, 50) * 1000, "p99_ms": percentile(timings, 99) * 1000}


def mms_inference_url(cache_dir: Path) -> str:
    properties = (cache_dir / "mms" / "config.properties").read_text()
    return next(line.split("=", 1)[1] for line in properties.splitlines() if line.startswith("inference_address"))


def get_json(url: str) -> Any:
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, float]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, headers=headers)
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    return status, time.perf_counter() - started


def run(smoke: bool, workdir: Path) -> dict[str, Any]:
    sizes = Sizes.pick(smoke)
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "xgboost": xgboost.__version__,
            "platform": platform.platform(),
        },
        "sizes": sizes.__dict__,
        "smoke": smoke,
    }
    booster = train_booster("binary:logistic", seed=1, rounds=sizes.trees, rows=2000)
    archive = sample_archive(booster)
    row = make_rows(1, seed=3)
    body = ",".join(repr(float(v)) for v in row[0]).encode()
    with EmbeddedS3(workdir / "s3") as s3, s3.environ():
        s3.client().create_bucket(Bucket="bench")  # type: ignore[attr-defined]
        targets = [f"model-{index}/model.tar.gz" for index in range(sizes.cold_models + 1)]
        for target in targets:
            publish_archive(archive, PREFIX, target)
        port = free_port()
        cache_dir = workdir / "cache"
        command = [
            sys.executable, "-m", "openmme.cli", "serve", "--model-prefix", PREFIX, "--endpoint-name", "bench",
            "--port", str(port), "--cache-dir", str(cache_dir), "--max-models", str(sizes.cold_models + 1),
        ]  # fmt: skip
        with (workdir / "endpoint.log").open("ab") as log:
            endpoint = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
        try:
            front = f"http://127.0.0.1:{port}"
            wait_for_ping(front, endpoint, timeout=180)
            results["cold_start"] = cold_start(front, targets[1:], body)
            results["reload_from_disk"] = reload_from_disk(front, targets[1], body)
            loaded = [model for model in get_json(front + "/models")["models"] if model["state"] == "ready"]
            results["memory_per_model_mb"] = statistics.median(model["memoryBytes"] for model in loaded) / 2**20
            warm_target = targets[0]
            status, _ = post(front + "/invocations", body, invoke_headers(warm_target))
            assert status == 200, status
            mms_url = f"{mms_inference_url(cache_dir)}/predictions/{mms_model_name(warm_target)}"
            warm: dict[str, Any] = {}
            for concurrency in (1, 8):
                for name, url, headers in (
                    ("openmme", front + "/invocations", invoke_headers(warm_target)),
                    ("mms_direct", mms_url, {"Content-Type": "text/csv"}),
                ):
                    warm[f"{name}_c{concurrency}"] = asyncio.run(
                        load(url, headers, body, concurrency, sizes.warm_seconds, sizes.warm_requests)
                    )
            warm["in_process_floor"] = in_process_floor(booster, row, 2000 if not smoke else 50)
            results["warm"] = warm
        finally:
            endpoint.terminate()
            endpoint.wait(60)
    return results


def invoke_headers(target: str) -> dict[str, str]:
    return {"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": target}


def cold_start(front: str, targets: list[str], body: bytes) -> dict[str, Any]:
    """First request for models not yet on the endpoint: total, and the phases the endpoint recorded."""
    samples = []
    for target in targets:
        status, total = post(
            front + "/invocations", body, {"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": target}
        )
        assert status == 200, status
        timings = get_json(f"{front}/models/{target}")["timingsMs"]
        phases = {key: timings.get(key, 0.0) for key in ("download", "extract", "register")}
        phases["total"] = total * 1000
        phases["other"] = phases["total"] - sum(phases[key] for key in ("download", "extract", "register"))
        samples.append(phases)
    return {key: statistics.median(sample[key] for sample in samples) for key in samples[0]} | {"n": len(samples)}


def reload_from_disk(front: str, target: str, body: bytes) -> dict[str, float]:
    """Unload a model (DELETE /models/{name}) and time the request that loads it back from disk."""
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"{front}/models/{target}", method="DELETE"), timeout=60).read()
    status, total = post(
        front + "/invocations", body, {"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": target}
    )
    assert status == 200, status
    timings = get_json(f"{front}/models/{target}")["timingsMs"]
    return {"total": total * 1000, "register": timings["register"]}


def markdown(results: dict[str, Any], command: str) -> str:
    cold, reload, warm = results["cold_start"], results["reload_from_disk"], results["warm"]
    machine = results["machine"]
    lines = [
        "# openmme benchmarks",
        "",
        f"Command: `{command}` — machine: {machine['cpus']} CPUs, {machine['platform']}, Python {machine['python']}, "
        f"xgboost {machine['xgboost']}. Model: binary:logistic, {results['sizes']['trees']} trees, 6 features; "
        "requests: one CSV row. SeaweedFS, the endpoint and the load generator all share this machine.",
        "",
        f"## Cold start (first request for a model not on the endpoint; median of {cold['n']} models)",
        "",
        "| phase | ms |",
        "|---|---:|",
        *(f"| {phase} | {cold[phase]:.1f} |" for phase in ("download", "extract", "register", "other", "total")),
        f"| reload of an unloaded model still on disk (total / MMS register) | {reload['total']:.1f} / "
        f"{reload['register']:.1f} |",
        "",
        f"Memory of one loaded model (PSS of its MMS worker processes, median): "
        f"{results['memory_per_model_mb']:.0f} MiB.",
        "",
        "`register` is MMS starting a worker process that imports xgboost and loads the booster; `other` is the "
        "first prediction plus the front's bookkeeping and the HTTP round trip.",
        "",
        "## Warm path (closed loop, one-row CSV)",
        "",
        "| target | concurrency | requests | throughput (req/s) | p50 (ms) | p99 (ms) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for concurrency in (1, 8):
        for name in ("openmme", "mms_direct"):
            row = warm[f"{name}_c{concurrency}"]
            lines.append(
                f"| {name.replace('_', ' ')} | {concurrency} | {row['requests']} | {row['throughput_rps']:.0f} | "
                f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f} |"
            )
    floor = warm["in_process_floor"]
    lines += [
        f"| in-process `Booster.inplace_predict` | 1 | — | — | {floor['p50_ms']:.3f} | {floor['p99_ms']:.3f} |",
        "",
        "| ratio (openmme / MMS direct) | concurrency 1 | concurrency 8 |",
        "|---|---:|---:|",
    ]
    for metric, label in (("p50_ms", "p50 latency"), ("throughput_rps", "throughput")):
        ratios = [warm[f"openmme_c{c}"][metric] / warm[f"mms_direct_c{c}"][metric] for c in (1, 8)]
        lines.append(f"| {label} | {ratios[0]:.2f} | {ratios[1]:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; checks the harness, measures nothing")
    parser.add_argument("--output", type=Path, default=None, help="where to write the Markdown report")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="openmme-bench-") as scratch:
        results = run(args.smoke, Path(scratch))
    command = "python bench/run.py" + (" --smoke" if args.smoke else "")
    report = markdown(results, command)
    output = args.output or (None if args.smoke else ROOT / "BENCHMARKS.md")
    results_dir = ROOT / "bench" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / ("smoke.json" if args.smoke else "latest.json")).write_text(json.dumps(results, indent=2))
    if output is not None:
        output.write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
