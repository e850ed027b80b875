"""Many models: a seeded Zipf trace over a large catalogue, replayed against an endpoint with room for few.

The endpoint's hit ratio (from its own ``counters``) is set beside three offline replays of exactly the same
requests and cache size: LRU, the policy openmme implements by default, LRU behind TinyLFU admission (its
``--admission tinylfu``), and Belady's optimum. The gap endpoint-vs-LRU is the implementation (concurrent
clients reorder requests a little, and a request for a model that is still loading counts as a miss); the gap
LRU-vs-Belady is the policy, and the share of it TinyLFU closes is what the frequency-aware option buys.

Hit ratios count the requests after a warm-up prefix (the same prefix is skipped in all three): the first
requests fill an empty cache and say nothing about the policy. The endpoint replays the prefix, then its
counters are read, then it replays the rest.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np

from belady import belady_hits, hit_ratio, lru_hits, tinylfu_hits
from harness import counters, invoke_headers, list_all_models, percentile

__all__ = ["ManyModelsSizes", "run_many_models", "target_model", "zipf_trace"]


@dataclass(frozen=True)
class ManyModelsSizes:
    catalogue: int  # models in the prefix
    capacity: int  # --max-models
    length: int  # requests in the trace, warm-up included
    warm_up: int  # leading requests not counted
    clients: int  # concurrent closed-loop clients replaying the trace
    exponent: float = 1.0
    seed: int = 2024


def target_model(rank: int) -> str:
    return f"zipf/m{rank:04d}/model.tar.gz"


def zipf_trace(catalogue: int, length: int, exponent: float, seed: int) -> list[int]:
    """Model ranks drawn with probability proportional to 1 / rank**exponent (rank 0 is the most popular)."""
    weights = 1.0 / np.arange(1, catalogue + 1, dtype=float) ** exponent
    generator = np.random.default_rng(seed)
    return [int(rank) for rank in generator.choice(catalogue, size=length, p=weights / weights.sum())]


async def replay(fronts: Sequence[str], targets: Sequence[str], body: bytes, clients: int) -> dict[str, Any]:
    """Send ``targets`` in order through ``clients`` closed-loop clients; request i goes to ``fronts[i % len]``.
    Latencies and statuses."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue = iter(enumerate(targets))  # shared: each client takes the next request when its last one returns
    connector = aiohttp.TCPConnector(limit=clients)
    # A miss waits for a model load that can queue behind other loads: allow far more than a warm request.
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client() -> None:
            for index, target in queue:
                front = fronts[index % len(fronts)]
                started = time.perf_counter()
                async with session.post(front + "/invocations", data=body, headers=invoke_headers(target)) as response:
                    await response.read()
                latencies.append(time.perf_counter() - started)
                statuses[response.status] = statuses.get(response.status, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return {"latencies": latencies, "statuses": statuses, "seconds": elapsed}


def run_many_models(front: str, body: bytes, sizes: ManyModelsSizes) -> dict[str, Any]:
    ranks = zipf_trace(sizes.catalogue, sizes.length, sizes.exponent, sizes.seed)
    targets = [target_model(rank) for rank in ranks]

    warm_up = asyncio.run(replay([front], targets[: sizes.warm_up], body, sizes.clients))
    before = counters(front)
    measured = asyncio.run(replay([front], targets[sizes.warm_up :], body, sizes.clients))
    after = counters(front)
    delta = {key: after[key] - before[key] for key in after}
    _, snapshot = list_all_models(front)

    lru = lru_hits(ranks, sizes.capacity)
    tinylfu = tinylfu_hits(ranks, sizes.capacity)
    optimal = belady_hits(ranks, sizes.capacity)
    counted = sizes.length - sizes.warm_up
    latencies = measured["latencies"]
    # The offline curves are cheap: they show where the benchmark's one cache size sits.
    step = max(1, sizes.capacity // 5)
    capacities = sorted({*range(step, 4 * sizes.capacity + 1, step), sizes.capacity})
    return {
        "sizes": sizes.__dict__,
        "distinct_models_in_trace": len(set(ranks)),
        "counted_requests": counted,
        "endpoint": {
            "hit_ratio": delta["hits"] / max(1, delta["hits"] + delta["misses"]),
            # One registration per miss that reached MMS: concurrent requests for a loading model share one.
            "load_ratio": delta["registrations"] / counted,
            "counters": delta,
            "throughput_rps": counted / measured["seconds"],
            "p50_ms": percentile(latencies, 50) * 1000,
            "p99_ms": percentile(latencies, 99) * 1000,
            "statuses": measured["statuses"],
            "seconds": measured["seconds"],
            "warm_up_seconds": warm_up["seconds"],
            "warm_up_statuses": warm_up["statuses"],
            "evictions": snapshot["evictions"],
            "loaded_at_end": snapshot["loadedModels"],
        },
        "lru_offline": {"hit_ratio": hit_ratio(lru, sizes.warm_up), "misses": counted - sum(lru[sizes.warm_up :])},
        "tinylfu_offline": {
            "hit_ratio": hit_ratio(tinylfu, sizes.warm_up),
            "misses": counted - sum(tinylfu[sizes.warm_up :]),
        },
        "belady_offline": {
            "hit_ratio": hit_ratio(optimal, sizes.warm_up),
            "misses": counted - sum(optimal[sizes.warm_up :]),
        },
        "curve": [
            {
                "capacity": capacity,
                "lru": hit_ratio(lru_hits(ranks, capacity), sizes.warm_up),
                "tinylfu": hit_ratio(tinylfu_hits(ranks, capacity), sizes.warm_up),
                "belady": hit_ratio(belady_hits(ranks, capacity), sizes.warm_up),
            }
            for capacity in capacities
        ],
    }
