"""Dense hosting: a few MMS "shard" models, each one warm worker holding many boosters (see dense_service).

The shards are registered when MMS starts (and again after it restarts), one per core by default. A model
has a home shard chosen by a stable hash of its TargetModel, so the same model lands on the same shard
across loads and restarts. When every shard holding a model is busy (``HOT_IN_FLIGHT`` requests or more in
it) and another shard is not, the model is loaded into that shard too: a hot model is spread over shards
instead of queueing behind one worker. Its replicas stay until the model is evicted.

A shard whose worker dies is registered again (MMS 1.1 does not restart it in useful time); the models it
held are reloaded on their next request, which costs a file read each.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from openmme.endpoint.errors import ServiceUnavailable
from openmme.endpoint.mms import MmsClient, MmsResponse, tracked_call
from openmme.endpoint.settings import Settings
from openmme.handlers import DENSE_HANDLER, MODEL_HEADER, OP_HEADER

__all__ = ["HOT_IN_FLIGHT", "SHARD_PREFIX", "Shard", "ShardPool"]

log = logging.getLogger(__name__)

SHARD_PREFIX = "openmme-shard-"
# Requests in one shard at which a model held only by busy shards is spread to a quieter one.
HOT_IN_FLIGHT = 2


@dataclass(eq=False)
class Shard:
    index: int
    name: str
    in_flight: int = 0
    baseline_bytes: int = 0  # PSS of the worker when it held no model
    memory_bytes: int = 0  # PSS of the worker, last measured
    registered_at: float = 0.0  # monotonic
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    calls: set[asyncio.Future[Any]] = field(default_factory=set)  # requests in the worker right now
    revival: asyncio.Task[None] | None = None

    @property
    def directory(self) -> str:
        # Under the model store, next to the models; "_" never starts a model's directory name.
        return f"_{self.name}"


class ShardPool:
    """The shards of one MMS instance, and the requests the front sends them."""

    def __init__(self, settings: Settings, mms: MmsClient) -> None:
        self.settings = settings
        self.mms = mms
        count = settings.shards or os.cpu_count() or 1
        self.shards = [Shard(index, f"{SHARD_PREFIX}{index}") for index in range(count)]

    @property
    def names(self) -> set[str]:
        return {shard.name for shard in self.shards}

    async def start(self) -> None:
        """Register every shard with MMS (at start, and after MMS restarted)."""
        for shard in self.shards:
            shard.ready.clear()
        await asyncio.gather(*(self.register(shard) for shard in self.shards))

    async def register(self, shard: Shard) -> None:
        (self.settings.models_dir / shard.directory).mkdir(parents=True, exist_ok=True)
        timeout = max(self.settings.response_timeout, 120.0)
        try:
            response = await self.mms.register(shard.name, shard.directory, DENSE_HANDLER, 1, timeout=timeout)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise ServiceUnavailable(f"the model server is not reachable ({exc})") from exc
        if response.status not in (200, 409):
            raise RuntimeError(f"MMS could not start dense shard {shard.name}: {response.message}")
        shard.ready.set()

    async def unregister(self, shard: Shard) -> None:
        shard.ready.clear()
        try:
            await self.mms.unregister(shard.name, timeout=60.0)
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.warning("could not unregister dense shard %s: %s", shard.name, exc)

    def home(self, target: str) -> Shard:
        """The shard a model goes to first: stable across loads and restarts."""
        digest = hashlib.sha256(target.encode()).digest()
        return self.shards[int.from_bytes(digest[:8], "big") % len(self.shards)]

    def pick(self, holding: Mapping[int, int]) -> Shard:
        """The least busy of the shards holding a model (``holding``: shard index → bytes)."""
        return min((self.shards[index] for index in holding), key=lambda shard: shard.in_flight)

    def spread_to(self, holding: Mapping[int, int]) -> Shard | None:
        """A quieter shard to load a hot model into, if every shard holding it is busy and one is not."""
        if min(self.shards[index].in_flight for index in holding) < HOT_IN_FLIGHT:
            return None
        others = [shard for shard in self.shards if shard.index not in holding and shard.ready.is_set()]
        quietest = min(others, key=lambda shard: shard.in_flight, default=None)
        if quietest is None or quietest.in_flight >= HOT_IN_FLIGHT:
            return None
        return quietest

    async def operation(self, shard: Shard, op: str, model: str = "") -> MmsResponse | None:
        """Ask ``shard`` to ``load``, ``unload`` or ``list``; None when its worker died meanwhile."""
        headers = {OP_HEADER: op, MODEL_HEADER: model}
        request = self.mms.predict(shard.name, b"", headers, timeout=self.settings.response_timeout)
        return await tracked_call(request, shard.calls)

    def overhead_bytes(self) -> int:
        """Memory the shards hold with no model in them: counted against the memory budget first."""
        return sum(shard.baseline_bytes for shard in self.shards)

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "name": shard.name,
                "ready": shard.ready.is_set(),
                "inFlight": shard.in_flight,
                "memoryBytes": shard.memory_bytes,
                "baselineBytes": shard.baseline_bytes,
            }
            for shard in self.shards
        ]
