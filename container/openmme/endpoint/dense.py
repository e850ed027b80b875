"""Dense hosting: a few MMS "shard" models, each one warm worker holding many boosters (see dense_service).

The shards are registered when MMS starts (and again after it restarts), one per core by default. A model
has a home shard chosen by a stable hash of its TargetModel, so the same model lands on the same shard
across loads and restarts. When every shard holding a model is busy (``HOT_IN_FLIGHT`` requests or more in
it) and another shard is not, the model is loaded into that shard too: a hot model is spread over shards
instead of queueing behind one worker. Its replicas stay until the model is evicted.

A shard whose worker dies is registered again (MMS 1.1 does not restart it in useful time); the models it
held are reloaded on their next request, which costs a file read each. ``DenseBackend`` is the cache's
backend for dense models (see cache/backend.py); ``ShardPool`` the shards and the requests sent to them.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil

from openmme.endpoint.cache.backend import ModelLost, Models, Route
from openmme.endpoint.cache.entry import Entry, State
from openmme.endpoint.errors import InsufficientMemory, ModelError, ServiceUnavailable
from openmme.endpoint.logs import log_task_failure
from openmme.endpoint.mms import MmsClient, MmsProcess, MmsResponse, memory_of, tracked_call, tracked_prediction
from openmme.endpoint.settings import Settings
from openmme.handlers import DENSE, DENSE_HANDLER, ERROR_HEADER, MODEL_HEADER, OP_HEADER

__all__ = ["HOT_IN_FLIGHT", "SHARD_PREFIX", "DenseBackend", "Shard", "ShardPool"]

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
        response = await self.mms.register(shard.name, shard.directory, DENSE_HANDLER, 1, timeout=timeout)
        if response.status not in (200, 409):
            raise RuntimeError(f"MMS could not start dense shard {shard.name}: {response.message}")
        shard.ready.set()

    async def unregister(self, shard: Shard) -> None:
        shard.ready.clear()
        try:
            await self.mms.unregister(shard.name, timeout=60.0)
        except ServiceUnavailable as exc:
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
        request = self.mms.predict(shard.name, b"", headers, self.settings.response_timeout, prediction=False)
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


class DenseBackend:
    """Dense models in the shards: loaded into their home shard, spread when hot, reloaded when a shard dies."""

    def __init__(self, settings: Settings, mms: MmsClient, process: MmsProcess) -> None:
        self.settings = settings
        self.mms = mms
        self.process = process
        self.pool = ShardPool(settings, mms)
        self._models: Models | None = None
        self._started: asyncio.Task[None] | None = None
        self._spreading: dict[str, asyncio.Task[None]] = {}  # by MMS model name: a replica loading elsewhere

    @property
    def models(self) -> Models:
        assert self._models is not None, "DenseBackend used before a cache attached it"
        return self._models

    def attach(self, models: Models) -> None:
        self._models = models

    # ---- the shards' lifetime ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Register the shards with MMS once (at start with ``--hosting dense``, else on first need)."""
        started = self._started
        if started is None or (started.done() and (started.cancelled() or started.exception() is not None)):
            started = self._started = asyncio.create_task(self._start(), name="start dense shards")
        await asyncio.shield(started)

    def started(self) -> bool:
        """Whether the shards were started (``--hosting dense``, or an archive asked for dense)."""
        return self._started is not None

    async def _start(self) -> None:
        await self.pool.start()
        await self._measure_baselines(self.pool.shards)

    async def _measure_baselines(self, shards: Sequence[Shard]) -> None:
        workers = await asyncio.to_thread(self.process.worker_processes)
        for shard in shards:
            shard.baseline_bytes = await asyncio.to_thread(memory_of, workers.get(shard.name, []))
            shard.memory_bytes = shard.baseline_bytes
            shard.registered_at = time.monotonic()

    def host_lost(self) -> None:
        """MMS died: no shard holds anything, and requests in them are sent again."""
        for entry in self.models.models():
            entry.replicas.clear()
        for shard in self.pool.shards:
            shard.ready.clear()
            for call in list(shard.calls):
                call.cancel()

    async def host_back(self) -> None:
        """MMS was restarted: the shards are registered again, if they ran."""
        if self._started is None:
            return
        self._started = None
        try:
            await self.start()
        except Exception:
            # Not fatal: the next dense load starts them again (start retries a failed start).
            log.exception("the dense shards did not start again after MMS restarted")

    # ---- the cache's side of the Backend protocol --------------------------------------------------

    async def load(self, entry: Entry) -> None:
        """Load ``entry`` into its home shard's worker (a file read, no process start)."""
        await self.start()
        shard = self.pool.home(entry.target)
        for _attempt in range(3):
            try:
                await asyncio.wait_for(shard.ready.wait(), timeout=max(self.settings.response_timeout, 120.0))
            except TimeoutError as exc:
                raise ServiceUnavailable(f"dense shard {shard.name} is not back yet; retry") from exc
            response = await self.pool.operation(shard, "load", entry.name)
            if response is None:
                continue  # the shard's worker died during the load: wait for its replacement
            if response.status == 200:
                entry.replicas[shard.index] = int(json.loads(response.body)["memoryBytes"])
                return
            if response.headers.get(ERROR_HEADER):
                raise ModelError(f"model {entry.target!r} failed to load: {response.message}", original_status=500)
            if response.status == 507:
                raise InsufficientMemory(f"not enough memory to load model {entry.target!r}: {response.message}")
            raise ServiceUnavailable(f"dense shard {shard.name} could not load {entry.target!r}: {response.message}")
        raise ServiceUnavailable(f"dense shard {shard.name} kept restarting while loading {entry.target!r}; retry")

    async def measure(self, entry: Entry) -> int:
        return sum(entry.replicas.values())  # the shards report the heap bytes of each booster

    async def unload(self, entry: Entry) -> None:
        try:
            for index in list(entry.replicas):
                response = await self.pool.operation(self.pool.shards[index], "unload", entry.name)
                if response is not None and response.status != 200:
                    log.warning("dense shard %d refused to unload %s: %s", index, entry.target, response.message)
        finally:
            entry.replicas.clear()

    def overhead_bytes(self) -> int:
        return self.pool.overhead_bytes()

    def describe(self) -> list[dict[str, Any]]:
        return self.pool.describe() if self.started() else []

    # ---- the request path ------------------------------------------------------------------------------

    def route(self, entry: Entry) -> Route:
        """The least busy shard holding ``entry``; a model whose shards are all busy is spread to another."""
        if not entry.replicas:
            raise ModelLost(entry.target)  # its shard died just now: loaded again on the next attempt
        spread_to = self.pool.spread_to(entry.replicas)
        if spread_to is not None and entry.name not in self._spreading and entry.state is State.READY:
            task = asyncio.create_task(self._spread(entry, spread_to), name=f"spread {entry.target}")
            self._spreading[entry.name] = task
            task.add_done_callback(functools.partial(self._spread_done, entry.name))
        shard = self.pool.pick(entry.replicas)
        return Route(shard.name, {MODEL_HEADER: entry.name}, shard.index)

    async def call(self, entry: Entry, route: Route, body: bytes, headers: Mapping[str, str]) -> MmsResponse:
        assert route.shard is not None
        shard = self.pool.shards[route.shard]
        request = self.mms.predict(route.model, body, {**headers, **route.headers}, self.settings.response_timeout)
        shard.in_flight += 1
        try:
            return await tracked_prediction(request, shard.calls, entry, self._forgotten)
        finally:
            shard.in_flight -= 1

    def _forgotten(self, entry: Entry) -> None:
        if self.models.lost(entry):
            for index in entry.replicas:  # any other shard that still holds it lets go
                task = asyncio.create_task(self.pool.operation(self.pool.shards[index], "unload", entry.name))
                task.add_done_callback(lambda done: done.cancelled() or done.exception())
            entry.replicas.clear()

    def _spread_done(self, name: str, task: asyncio.Task[None]) -> None:
        self._spreading.pop(name, None)
        log_task_failure(task)

    async def _spread(self, entry: Entry, shard: Shard) -> None:
        """Load a hot ``entry`` into one more shard, so its requests stop queueing behind one worker."""
        response = await self.pool.operation(shard, "load", entry.name)
        if response is None or response.status != 200:
            return
        if entry.state is State.READY and entry.hosting == DENSE:
            entry.replicas[shard.index] = int(json.loads(response.body)["memoryBytes"])
            self.models.resized(entry, sum(entry.replicas.values()))
            self.models.recheck()
        else:  # evicted meanwhile
            await self.pool.operation(shard, "unload", entry.name)

    # ---- housekeeping ----------------------------------------------------------------------------------

    def check(self, workers: Mapping[str, list[psutil.Process]], sizes: Mapping[str, int] | None, since: float) -> None:
        """After a scan of MMS's workers at ``since``: the shards' memory, and a shard whose worker died started
        again."""
        if sizes is not None:
            for shard in self.pool.shards:
                shard.memory_bytes = sizes.get(shard.name, 0)
        for shard in self.pool.shards:
            if shard.ready.is_set() and shard.registered_at < since and shard.name not in workers:
                self._shard_lost(shard)

    def _shard_lost(self, shard: Shard) -> None:
        """A shard's worker died: its models go back to disk (reloaded on their next request), requests in it
        are sent again, and the shard is registered anew."""
        log.warning("the worker of dense shard %s is gone; starting it again", shard.name)
        shard.ready.clear()
        for call in list(shard.calls):
            call.cancel()
        for entry in self.models.models():
            if entry.replicas.pop(shard.index, None) is None:
                continue
            self.models.resized(entry, sum(entry.replicas.values()))
            if not entry.replicas:
                self.models.lost(entry)
        shard.revival = asyncio.create_task(self._revive(shard), name=f"revive {shard.name}")
        shard.revival.add_done_callback(log_task_failure)

    async def _revive(self, shard: Shard) -> None:
        delay = 1.0
        while True:
            await self.pool.unregister(shard)
            await asyncio.to_thread(self.process.kill_workers, shard.name)
            try:
                await self.pool.register(shard)
            except Exception as exc:
                log.error("starting dense shard %s again failed (%s); retrying in %.0f s", shard.name, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            await self._measure_baselines([shard])
            return
