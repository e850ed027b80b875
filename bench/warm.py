"""Warm path: one-row CSV requests to a loaded model through the front, straight to MMS's own
``/predictions`` for the same model and handler, and the in-process floor (``Booster.inplace_predict``).

Closed loop: ``concurrency`` clients, each sending its next request as soon as its last one returns, for a
fixed time or request cap. The load generator is the same asyncio client for both targets, so its own cost
is the same on both sides of each ratio.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import numpy as np
import xgboost

from harness import Endpoint, invoke_headers, percentile, post
from openmme.endpoint.cache import mms_model_name

__all__ = ["CONCURRENCIES", "run_warm"]

CONCURRENCIES = (1, 8)


async def closed_loop(
    url: str, headers: dict[str, str], body: bytes, concurrency: int, seconds: float, cap: int
) -> dict[str, float]:
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
    endpoint: Endpoint,
    target: str,
    booster: xgboost.Booster,
    row: np.ndarray,
    body: bytes,
    seconds: float,
    cap: int,
    floor_count: int,
) -> dict[str, Any]:
    status, _ = post(endpoint.url + "/invocations", body, invoke_headers(target))
    assert status == 200, status
    mms_url = f"{endpoint.mms_inference_url()}/predictions/{mms_model_name(target)}"
    warm: dict[str, Any] = {}
    for concurrency in CONCURRENCIES:
        # Alternating targets at each concurrency keeps slow drift of the machine out of the ratio.
        for name, url, headers in (
            ("openmme", endpoint.url + "/invocations", invoke_headers(target)),
            ("mms_direct", mms_url, {"Content-Type": "text/csv"}),
        ):
            warm[f"{name}_c{concurrency}"] = asyncio.run(closed_loop(url, headers, body, concurrency, seconds, cap))
    warm["in_process_floor"] = in_process_floor(booster, row, floor_count)
    return warm
