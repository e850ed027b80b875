"""Dense hosting: a few shards, each one warm worker process holding many boosters (see dense_service).

A shard's worker is MMS's Python worker started by the front itself and fed over MMS's socket protocol, without
MMS's Java front in between (see shardworker.py); one per core by default, started with the first dense model
(or at start with ``--hosting dense``). A model has a home shard chosen by a stable hash of its TargetModel, so
the same model lands on the same shard across loads and restarts. When every shard holding a model is busy
(``HOT_IN_FLIGHT`` requests or more in it) and another shard is not, the model is loaded into that shard too: a
hot model is spread over shards instead of queueing behind one worker. Its replicas stay until it is evicted.

A shard whose worker dies is started again at once; the models it held are reloaded on their next request,
which costs a file read each. MMS's Java front dying does not touch the shards. ``DenseBackend`` is the cache's
backend for dense models (see cache/backend.py); ``ShardPool`` the shards and the requests sent to them.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openmme.endpoint.cache.backend import ModelLost, Models, Route
from openmme.endpoint.cache.entry import Entry, State
from openmme.endpoint.errors import InsufficientMemory, ModelError, ServiceUnavailable
from openmme.endpoint.logs import log_task_failure
from openmme.endpoint.mms import MmsResponse
from openmme.endpoint.settings import Settings, usable_cores
from openmme.endpoint.shardworker import ShardWorker, WorkerGone
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
    worker: ShardWorker
    in_flight: int = 0
    baseline_bytes: int = 0  # PSS of the worker when it held no model
    memory_bytes: int = 0  # PSS of the worker, last measured
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    revival: asyncio.Task[None] | None = None


class ShardPool:
    """The shards' workers, and the requests the front sends them."""

    def __init__(
        self, settings: Settings, environment: Mapping[str, str], log_path: Path, listen_dir: Path | None = None
    ) -> None:
        self.settings = settings
        count = settings.shards or usable_cores()
        # As MMS's Java front tells its workers: request bodies reach the handler as bytes, never decoded.
        environment = {**environment, "MMS_DECODE_INPUT_REQUEST": "false"}
        self.shards = []
        for index in range(count):
            name = f"{SHARD_PREFIX}{index}"
            directory = settings.models_dir / f"_{name}"  # next to the models: "_" never starts a model's name
            worker = ShardWorker(name, directory, DENSE_HANDLER, environment, log_path, settings.job_queue_size)
            if listen_dir is not None:  # edge fronts connect there (edges.py)
                worker.listen_path = str(listen_dir / f"shard-{index}.sock")
            self.shards.append(Shard(index, name, worker))

    @property
    def names(self) -> set[str]:
        return {shard.name for shard in self.shards}

    def listen_paths(self) -> dict[int, str]:
        """Where each shard's worker listens for edge fronts, by shard index (empty: nowhere)."""
        return {shard.index: shard.worker.listen_path for shard in self.shards if shard.worker.listen_path}

    async def start(self) -> None:
        """Start every shard's worker."""
        await asyncio.gather(*(self.start_worker(shard) for shard in self.shards))

    async def start_worker(self, shard: Shard) -> None:
        if shard.worker.alive():
            return  # started by an earlier try of ``start``
        shard.ready.clear()
        shard.worker.model_dir.mkdir(parents=True, exist_ok=True)
        await shard.worker.start(timeout=max(self.settings.response_timeout, 120.0))
        shard.baseline_bytes = shard.memory_bytes = await asyncio.to_thread(shard.worker.memory_bytes)
        shard.ready.set()

    async def stop(self) -> None:
        for shard in self.shards:
            shard.ready.clear()
            if shard.revival is not None:
                shard.revival.cancel()
        await asyncio.gather(*(shard.worker.stop() for shard in self.shards))

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
        try:
            return await shard.worker.call(headers, b"", "", self.settings.response_timeout, prediction=False)
        except WorkerGone:
            return None

    async def listings(self) -> dict[str, Any]:
        """What each shard's worker says it holds (``list``), by shard name; a shard that does not answer is left
        out."""
        listings = {}
        for shard in self.shards:
            response = await self.operation(shard, "list") if shard.ready.is_set() else None
            if response is not None and response.status == 200:
                listings[shard.name] = json.loads(response.body)
        return listings

    def overhead_bytes(self) -> int:
        """Memory the shards hold with no model in them: counted against the memory budget first."""
        return sum(shard.baseline_bytes for shard in self.shards)

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "name": shard.name,
                "ready": shard.ready.is_set(),
                "pid": shard.worker.pid,
                "inFlight": shard.in_flight,
                "memoryBytes": shard.memory_bytes,
                "baselineBytes": shard.baseline_bytes,
            }
            for shard in self.shards
        ]


class DenseBackend:
    """Dense models in the shards: loaded into their home shard, spread when hot, reloaded when a shard dies."""

    def __init__(
        self, settings: Settings, environment: Mapping[str, str], log_path: Path, listen_dir: Path | None = None
    ) -> None:
        self.settings = settings
        self.pool = ShardPool(settings, environment, log_path, listen_dir)
        for shard in self.pool.shards:
            shard.worker.on_exit = functools.partial(self._worker_exited, shard)
        self._models: Models | None = None
        self._started: asyncio.Task[None] | None = None
        self._spreading: dict[str, asyncio.Task[None]] = {}  # by model name: a replica loading elsewhere

    @property
    def models(self) -> Models:
        assert self._models is not None, "DenseBackend used before a cache attached it"
        return self._models

    def attach(self, models: Models) -> None:
        self._models = models

    # ---- the shards' lifetime ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the shards' workers once (at start with ``--hosting dense``, else on first need). Call it from
        the event loop's thread (see ShardWorker.start)."""
        started = self._started
        if started is None or (started.done() and (started.cancelled() or started.exception() is not None)):
            started = self._started = asyncio.create_task(self.pool.start(), name="start dense shards")
        await asyncio.shield(started)

    def started(self) -> bool:
        """Whether the shards were started (``--hosting dense``, or an archive asked for dense)."""
        return self._started is not None

    async def stop(self) -> None:
        if self._started is not None:
            self._started.cancel()
            await self.pool.stop()

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
        content_type = next((value for key, value in headers.items() if key.lower() == "content-type"), "")
        shard.in_flight += 1
        try:
            response = await shard.worker.call(
                {**headers, **route.headers}, body, content_type, self.settings.response_timeout
            )
        except WorkerGone:
            raise ModelLost(entry.target) from None
        finally:
            shard.in_flight -= 1
        if response.forgot_model:  # the request raced an eviction, or the worker is new
            self._forgotten(entry)
            raise ModelLost(entry.target)
        return response

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

    def check_shards(self) -> None:
        """Housekeeping: a shard whose worker died while idle is started again now (see ShardWorker.check)."""
        for shard in self.pool.shards:
            shard.worker.check()

    def measure_shards(self) -> None:
        """Blocking: the shards' workers' memory, measured now."""
        for shard in self.pool.shards:
            if shard.ready.is_set():
                shard.memory_bytes = shard.worker.memory_bytes()

    def _worker_exited(self, shard: Shard, worker: ShardWorker) -> None:
        """A shard's worker ended: its models go back to disk (reloaded on their next request) and, unless it was
        stopped on purpose, a new worker is started."""
        shard.ready.clear()
        for entry in self.models.models():
            if entry.replicas.pop(shard.index, None) is None:
                continue
            self.models.resized(entry, sum(entry.replicas.values()))
            if not entry.replicas:
                self.models.lost(entry)
        if worker.stopping:
            return
        log.warning("the worker of dense shard %s is gone; starting it again", shard.name)
        shard.revival = asyncio.create_task(self._revive(shard), name=f"revive {shard.name}")
        shard.revival.add_done_callback(log_task_failure)

    async def _revive(self, shard: Shard) -> None:
        delay = 1.0
        while True:
            try:
                await self.pool.start_worker(shard)
            except Exception as exc:
                log.error("starting dense shard %s again failed (%s); retrying in %.0f s", shard.name, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            return
