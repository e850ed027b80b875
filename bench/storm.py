"""Load storm: many concurrent first requests for one model the endpoint has never seen.

Single flight means they all wait on one download and one MMS registration. The endpoint's own counters are
read before and after, so the counts are what the endpoint did, not what this client assumes; the model's
own ``downloads`` and ``loads`` say the same from its entry.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from harness import counters, get_json, invoke_headers, percentile

__all__ = ["run_storm"]


async def _fire(front: str, target: str, body: bytes, clients: int) -> list[tuple[int, float]]:
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # Open every connection first (with a request that loads nothing), so that the storm's requests
        # leave together instead of trickling out behind TCP handshakes.
        async def open_connection() -> None:
            async with session.get(front + "/ping") as response:
                await response.read()

        await asyncio.gather(*(open_connection() for _ in range(clients)))
        start = asyncio.Event()

        async def one() -> tuple[int, float]:
            await start.wait()
            started = time.perf_counter()
            async with session.post(front + "/invocations", data=body, headers=invoke_headers(target)) as response:
                await response.read()
            return response.status, time.perf_counter() - started

        tasks = [asyncio.create_task(one()) for _ in range(clients)]
        await asyncio.sleep(0)  # every task is now waiting on the event
        start.set()
        return await asyncio.gather(*tasks)


def run_storm(front: str, target: str, body: bytes, clients: int) -> dict[str, Any]:
    before = counters(front)
    results = asyncio.run(_fire(front, target, body, clients))
    after = counters(front)
    latencies = [seconds for _, seconds in results]
    model = get_json(f"{front}/models/{target}")
    return {
        "clients": clients,
        "ok": sum(status == 200 for status, _ in results),
        "downloads": after["downloads"] - before["downloads"],
        "registrations": after["registrations"] - before["registrations"],
        "model_downloads": model["downloads"],
        "model_loads": model["loads"],
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "max_ms": max(latencies) * 1000,
        "min_ms": min(latencies) * 1000,
        "latencies_ms": sorted(seconds * 1000 for seconds in latencies),
        "timings_ms": model["timingsMs"],
    }
