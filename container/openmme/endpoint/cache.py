"""The model cache: which models are on disk and loaded in MMS, and the policy that moves them.

A model's life: ``remote`` (only in S3) → ``downloading`` → ``on_disk`` → ``loading`` → ``ready``, and back
through ``unloading`` → ``on_disk`` when evicted from memory, or removed when evicted from disk. Each model has
at most one transition task at a time (single flight): however many requests miss on a model at once, it is
downloaded once and registered once, and they all wait on the same task. Requests wait through
``asyncio.shield``, so a client that gives up never cancels a load that the next request will use.

A loaded model is hosted one of two ways (``entry.hosting``): ``isolated``, registered in MMS as a model of
its own with its own worker processes, or ``dense``, held by one or more of a few shared shard workers (see
dense.py). Which one is decided per archive when it loads (``choose_hosting``); everything else here is the
same for both.

Eviction is least-recently-used under three budgets: the count of loaded models, the memory they hold
(measured, not declared: an isolated model's worker processes, a dense model's heap bytes in its shards,
whose own empty-worker memory counts against the budget first), and the bytes of extracted models on disk.
A model with requests in flight (or waiting for it) is never evicted, and a new model is admitted before the
old ones leave only when nothing idle can make room. Everything here runs on one event loop; bookkeeping
between two awaits is atomic, so no lock guards it, and blocking work (S3, tar, process scans) runs in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import json
import logging
import re
import shutil
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import psutil

from openmme.endpoint.dense import Shard, ShardPool
from openmme.endpoint.errors import (
    Conflict,
    InsufficientMemory,
    ModelError,
    ModelNotReady,
    ServiceUnavailable,
    ValidationError,
)
from openmme.endpoint.extract import ArchiveRefused, ExtractLimits, extract_archive
from openmme.endpoint.mms import MmsClient, MmsProcess, kill_processes, tracked_call
from openmme.endpoint.policy import Slot, disk_victims, memory_victims
from openmme.endpoint.s3 import ModelSource
from openmme.endpoint.settings import Settings
from openmme.handlers import DENSE, ERROR_HEADER, MODEL_HEADER, UnsupportedArchive, choose_handler, choose_hosting

__all__ = ["Budgets", "CacheEvents", "Entry", "ModelCache", "Route", "State", "mms_model_name"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class State(enum.Enum):
    REMOTE = "remote"
    DOWNLOADING = "downloading"
    ON_DISK = "on_disk"
    LOADING = "loading"
    READY = "ready"
    UNLOADING = "unloading"


_LOADED = {State.LOADING, State.READY}


def mms_model_name(target: str) -> str:
    """An MMS-safe, collision-free model name for a TargetModel: readable stem plus a hash of the whole."""
    digest = hashlib.sha256(target.encode()).hexdigest()[:12]
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", target.removesuffix(".tar.gz")).strip("_")[:48]
    return f"{stem}-{digest}" if stem else f"m-{digest}"


class CacheEvents:
    """What the cache reports as it works; metrics and the event log subclass it (all no-ops here)."""

    def lookup(self, entry: Entry, hit: bool) -> None: ...

    def waited(self, entry: Entry, seconds: float) -> None: ...

    def fetched(self, entry: Entry) -> None: ...

    def loaded(self, entry: Entry) -> None: ...

    def load_failed(self, entry: Entry, error: BaseException) -> None: ...

    def unloaded(self, entry: Entry, reason: str | None) -> None: ...

    def removed(self, entry: Entry) -> None: ...


@dataclass(frozen=True)
class Budgets:
    """Limits the cache keeps to; 0 turns one off."""

    max_models: int
    memory_bytes: int
    disk_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Budgets:
        memory = settings.memory_budget or int(psutil.virtual_memory().total * 0.6)
        settings.cache_dir.mkdir(parents=True, exist_ok=True)
        disk = settings.disk_budget or int(shutil.disk_usage(settings.cache_dir).free * 0.8)
        return cls(settings.max_models, memory, disk)


@dataclass(eq=False)
class Entry:
    """One model the endpoint knows, in whatever state."""

    target: str
    name: str
    path: Path
    managed: bool = True  # False: the directory was handed over by SageMaker (POST /models) and is not ours.
    # modelUrl: where the model comes from. POST /models: its url exactly as SageMaker sent it (SageMaker compares
    # them); from the prefix: the archive's s3:// URI (the cache path is an internal detail, shown as "path").
    url: str = ""
    state: State = State.REMOTE
    handler: str = ""
    hosting: str = ""  # dense or isolated, decided when it loads
    replicas: dict[int, int] = field(default_factory=dict)  # dense: shard index → bytes held there
    disk_bytes: int = 0
    memory_bytes: int = 0
    in_flight: int = 0
    last_used: float = 0.0
    downloads: int = 0
    loads: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    ready_at: float = 0.0  # monotonic time of the last load
    calls: set[asyncio.Future[Any]] = field(default_factory=set)  # requests in MMS right now
    transition: asyncio.Task[None] | None = None
    spreading: asyncio.Task[None] | None = None  # dense: a replica loading into another shard

    def describe(self) -> dict[str, Any]:
        return {
            "modelName": self.target,
            "modelUrl": self.url or str(self.path),
            "path": str(self.path),
            "state": self.state.value,
            "handler": self.handler.partition(":")[0].rpartition(".")[2] or None,
            "hosting": self.hosting or None,
            "shards": sorted(self.replicas),
            "diskBytes": self.disk_bytes,
            "memoryBytes": self.memory_bytes,
            "inFlight": self.in_flight,
            "lastUsed": self.last_used or None,
            "downloads": self.downloads,
            "loads": self.loads,
            "timingsMs": {key: round(value * 1000, 1) for key, value in self.timings.items()},
        }


@dataclass(frozen=True)
class Route:
    """Where one request to a loaded model goes: the MMS model, extra headers, and the shard if dense."""

    model: str
    headers: Mapping[str, str]
    shard: Shard | None = None


class ModelCache:
    """Single-flight loading and LRU eviction of models in one MMS instance."""

    def __init__(
        self,
        settings: Settings,
        budgets: Budgets,
        mms: MmsClient,
        process: MmsProcess,
        source: ModelSource | None,
        events: Sequence[CacheEvents] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.budgets = budgets
        self.mms = mms
        self.process = process
        self.source = source
        self.events = tuple(events)
        self.clock = clock
        self.entries: OrderedDict[str, Entry] = OrderedDict()  # least recently used first
        self.evictions: Counter[str] = Counter()  # by reason: count, memory, disk
        self.counters: Counter[str] = Counter()  # hits, misses, downloads, registrations
        self.shards = ShardPool(settings, mms)
        self._shards_started: asyncio.Task[None] | None = None
        self._limits = ExtractLimits(
            settings.max_archive_bytes, settings.max_archive_members, settings.max_archive_ratio
        )

    # ---- the request path -------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def use(self, target: str, wait: float | None = None) -> AsyncIterator[Entry]:
        """Hold ``target`` loaded for the duration of a request; loads it on a miss."""
        entry = self.entries.get(target)
        if entry is None:
            if self.source is None:
                raise ModelError(f"model {target!r} is not loaded", original_status=404)
            name = mms_model_name(target)
            entry = Entry(target, name, self.settings.models_dir / name, url=str(self.source.prefix.child(target)))
            self.entries[target] = entry
        self.entries.move_to_end(target)
        hit = entry.state is State.READY
        self.counters["hits" if hit else "misses"] += 1
        for events in self.events:
            events.lookup(entry, hit)
        entry.in_flight += 1
        try:
            if not hit:
                started = time.perf_counter()
                try:
                    await self._wait_ready(entry, self.settings.wait_budget if wait is None else wait)
                finally:
                    for events in self.events:
                        events.waited(entry, time.perf_counter() - started)
            yield entry
        finally:
            entry.in_flight -= 1
            entry.last_used = self.clock()
            if entry.in_flight == 0:
                self._forget_if_remote(entry)
                self._enforce_budgets_soon()

    async def _wait_ready(self, entry: Entry, wait: float) -> None:
        deadline = asyncio.get_running_loop().time() + wait
        while entry.state is not State.READY:
            if entry.transition is None or entry.transition.done():
                entry.transition = asyncio.create_task(self._bring_up(entry), name=f"load {entry.target}")
                entry.transition.add_done_callback(_log_failure)
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                await asyncio.wait_for(asyncio.shield(entry.transition), max(remaining, 0.001))
            except TimeoutError as exc:
                raise ModelNotReady(
                    f"model {entry.target!r} is still loading ({entry.state.value}); retry shortly"
                ) from exc

    def route(self, entry: Entry) -> Route | None:
        """Where a request to the loaded ``entry`` goes now; None when it lost its last shard meanwhile (the
        request should be sent again). A dense model whose shards are all busy is spread to another."""
        if entry.hosting != DENSE:
            return Route(entry.name, {})
        if not entry.replicas:
            return None
        spread_to = self.shards.spread_to(entry.replicas)
        idle = entry.spreading is None or entry.spreading.done()
        if spread_to is not None and idle and entry.state is State.READY:
            entry.spreading = asyncio.create_task(self._spread(entry, spread_to), name=f"spread {entry.target}")
            entry.spreading.add_done_callback(_log_failure)
        shard = self.shards.pick(entry.replicas)
        return Route(shard.name, {MODEL_HEADER: entry.name}, shard)

    async def call(self, entry: Entry, request: Awaitable[T], shard: Shard | None = None) -> T | None:
        """Run a request to ``entry`` in MMS (in ``shard`` if dense); None when the worker died meanwhile and the
        request should be sent again (see ``tracked_call``)."""
        if shard is None:
            return await tracked_call(request, entry.calls)
        shard.in_flight += 1
        try:
            return await tracked_call(request, entry.calls, shard.calls)
        finally:
            shard.in_flight -= 1

    def reset(self, entry: Entry) -> None:
        """MMS (or a shard) no longer has ``entry`` (it answered 404): the next request loads it again."""
        if entry.state is State.READY:
            entry.state = State.ON_DISK
            entry.memory_bytes = 0
            for index in entry.replicas:  # any other shard that still holds it lets go
                task = asyncio.create_task(self.shards.operation(self.shards.shards[index], "unload", entry.name))
                task.add_done_callback(lambda done: done.cancelled() or done.exception())
            entry.replicas.clear()

    # ---- transitions ----------------------------------------------------------------------------------

    async def _bring_up(self, entry: Entry) -> None:
        try:
            if entry.state is State.ON_DISK and entry.managed and not await asyncio.to_thread(entry.path.is_dir):
                # Deleted under the running endpoint (by hand, by a cleaner of /tmp): fetched again, not a failure.
                log.warning("the extracted files of %s are gone from %s; fetching it again", entry.target, entry.path)
                entry.disk_bytes = 0
                entry.state = State.REMOTE
            if entry.state is State.REMOTE:
                await self._fetch(entry)
            if entry.state is State.ON_DISK:
                await self._load(entry)
        except Exception as exc:
            for events in self.events:
                events.load_failed(entry, exc)
            raise

    async def _fetch(self, entry: Entry) -> None:
        assert self.source is not None
        source = self.source
        entry.state = State.DOWNLOADING
        try:
            size = await asyncio.to_thread(source.size, entry.target)
            await self._make_disk_room(size, keep=entry)
            staging = self.settings.staging_dir / f"{entry.name}-{uuid.uuid4().hex[:8]}"
            entry.disk_bytes = await asyncio.to_thread(self._download_and_extract, entry, staging)
            entry.downloads += 1
            self.counters["downloads"] += 1
            entry.state = State.ON_DISK
        except BaseException:
            entry.state = State.REMOTE
            raise
        for events in self.events:
            events.fetched(entry)
        await self._make_disk_room(0, keep=entry)

    def _download_and_extract(self, entry: Entry, staging: Path) -> int:
        """Blocking: archive → staging dir → one rename into the model store. Leaves nothing on failure."""
        assert self.source is not None
        archive = staging.with_suffix(".tar.gz")
        staging.parent.mkdir(parents=True, exist_ok=True)
        try:
            started = time.perf_counter()
            self.source.download(entry.target, archive, self.settings.max_archive_bytes)
            entry.timings["download"] = time.perf_counter() - started
            started = time.perf_counter()
            try:
                size = extract_archive(archive, staging, self._limits)
            except ArchiveRefused as exc:
                raise ModelError(f"model {entry.target!r} refused: {exc}", original_status=400) from exc
            entry.timings["extract"] = time.perf_counter() - started
            if entry.path.exists():
                shutil.rmtree(entry.path)
            entry.path.parent.mkdir(parents=True, exist_ok=True)  # the whole store may have been deleted
            staging.rename(entry.path)
            return size
        finally:
            archive.unlink(missing_ok=True)
            shutil.rmtree(staging, ignore_errors=True)

    async def _load(self, entry: Entry) -> None:
        entry.state = State.LOADING
        try:
            try:
                entry.handler, entry.hosting = await asyncio.to_thread(self._inspect, entry.path)
            except UnsupportedArchive as exc:
                raise ModelError(f"model {entry.target!r} cannot be served: {exc}", original_status=400) from exc
            await self._make_memory_room(keep=entry)
            started = time.perf_counter()
            if entry.hosting == DENSE:
                await self._load_into_shard(entry, self.shards.home(entry.target))
            else:
                await self._register(entry)
            entry.timings["register"] = time.perf_counter() - started
            entry.loads += 1
            entry.state = State.READY
            entry.ready_at = time.monotonic()
        except BaseException:
            entry.state = State.ON_DISK
            raise
        if entry.hosting != DENSE:
            entry.memory_bytes = await asyncio.to_thread(self._measure_one, entry.name)
        for events in self.events:
            events.loaded(entry)
        await self._make_memory_room(keep=entry)

    def _inspect(self, path: Path) -> tuple[str, str]:
        """Blocking: the handler and the hosting of the extracted model at ``path``."""
        handler = choose_handler(path)
        return handler, choose_hosting(path, handler, self.settings.hosting)

    async def _register(self, entry: Entry) -> None:
        """Isolated: register ``entry`` as an MMS model of its own; its workers start before this returns."""
        error_file = self.process.load_errors_dir / f"{entry.name}.txt"
        error_file.unlink(missing_ok=True)
        try:
            response = await self.mms.register(
                entry.name,
                entry.path.name,
                entry.handler,
                self.settings.workers_per_model,
                timeout=max(self.settings.response_timeout, 120.0),
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise ServiceUnavailable(f"the model server is not reachable ({exc}); retry") from exc
        self.counters["registrations"] += 1
        if response.status == 409:  # MMS has it already (a register raced a restart): use it.
            log.warning("MMS already had %s registered", entry.target)
        elif response.status != 200:
            await asyncio.to_thread(self._reap_workers, entry.name)
            reason = _read_text(error_file) or response.message
            if response.status == 507:
                raise InsufficientMemory(f"not enough memory to load model {entry.target!r}: {reason}")
            raise ModelError(f"model {entry.target!r} failed to load: {reason}", original_status=500)

    async def _load_into_shard(self, entry: Entry, shard: Shard) -> None:
        """Dense: load ``entry`` into ``shard``'s worker (a file read, no process start)."""
        await self.start_shards()
        for _attempt in range(3):
            try:
                await asyncio.wait_for(shard.ready.wait(), timeout=max(self.settings.response_timeout, 120.0))
            except TimeoutError as exc:
                raise ServiceUnavailable(f"dense shard {shard.name} is not back yet; retry") from exc
            try:
                response = await self.shards.operation(shard, "load", entry.name)
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise ServiceUnavailable(f"the model server is not reachable ({exc}); retry") from exc
            if response is None:
                continue  # the shard's worker died during the load: wait for its replacement
            self.counters["registrations"] += 1
            if response.status == 200:
                entry.replicas[shard.index] = int(json.loads(response.body)["memoryBytes"])
                entry.memory_bytes = sum(entry.replicas.values())
                return
            if response.headers.get(ERROR_HEADER):
                raise ModelError(f"model {entry.target!r} failed to load: {response.message}", original_status=500)
            if response.status == 507:
                raise InsufficientMemory(f"not enough memory to load model {entry.target!r}: {response.message}")
            raise ServiceUnavailable(f"dense shard {shard.name} could not load {entry.target!r}: {response.message}")
        raise ServiceUnavailable(f"dense shard {shard.name} kept restarting while loading {entry.target!r}; retry")

    async def _spread(self, entry: Entry, shard: Shard) -> None:
        """Dense: load a hot ``entry`` into one more shard, so its requests stop queueing behind one worker."""
        response = await self.shards.operation(shard, "load", entry.name)
        if response is None or response.status != 200:
            return
        if entry.state is State.READY and entry.hosting == DENSE:
            entry.replicas[shard.index] = int(json.loads(response.body)["memoryBytes"])
            entry.memory_bytes = sum(entry.replicas.values())
            self._enforce_budgets_soon()
        else:  # evicted meanwhile
            await self.shards.operation(shard, "unload", entry.name)

    async def start_shards(self) -> None:
        """Register the dense shards with MMS once (at start with ``--hosting dense``, else on first need)."""
        started = self._shards_started
        if started is None or (started.done() and (started.cancelled() or started.exception() is not None)):
            started = self._shards_started = asyncio.create_task(self._start_shards(), name="start dense shards")
        await asyncio.shield(started)

    def shards_started(self) -> bool:
        """Whether the dense shards were started (``--hosting dense``, or an archive asked for dense)."""
        return self._shards_started is not None

    async def _start_shards(self) -> None:
        await self.shards.start()
        await self._measure_shard_baselines()

    async def _measure_shard_baselines(self, shards: Sequence[Shard] | None = None) -> None:
        workers = await asyncio.to_thread(self.process.worker_processes)
        for shard in shards or self.shards.shards:
            shard.baseline_bytes = await asyncio.to_thread(_memory_of, workers.get(shard.name, []))
            shard.memory_bytes = shard.baseline_bytes
            shard.registered_at = time.monotonic()

    async def _unload(self, entry: Entry, reason: str | None) -> None:
        """Unregister from MMS and make sure its workers are gone; ``reason`` is counted as an eviction."""
        started = time.perf_counter()
        try:
            if entry.hosting == DENSE:
                await self._unload_from_shards(entry)
            else:
                response = await self.mms.unregister(entry.name, timeout=60.0)
                if response.status not in (200, 404):
                    log.warning("MMS refused to unload %s: %s", entry.target, response.message)
        finally:
            if entry.hosting != DENSE:
                killed = await asyncio.to_thread(self._reap_workers, entry.name)
                if killed:
                    log.warning("killed %d worker process(es) MMS left behind for %s", len(killed), entry.target)
            entry.replicas.clear()
            entry.state = State.ON_DISK
            entry.memory_bytes = 0
            entry.timings["unload"] = time.perf_counter() - started
            if reason:
                self.evictions[reason] += 1
            for events in self.events:
                events.unloaded(entry, reason)

    async def _unload_from_shards(self, entry: Entry) -> None:
        for index in list(entry.replicas):
            response = await self.shards.operation(self.shards.shards[index], "unload", entry.name)
            if response is not None and response.status != 200:
                log.warning("dense shard %d refused to unload %s: %s", index, entry.target, response.message)

    async def _remove_from_disk(self, entry: Entry) -> None:
        if entry.managed:
            await asyncio.to_thread(shutil.rmtree, entry.path, True)
        entry.disk_bytes = 0
        entry.state = State.REMOTE
        self._forget_if_remote(entry)
        self.evictions["disk"] += 1
        for events in self.events:
            events.removed(entry)

    def _reap_workers(self, name: str) -> list[int]:
        """Blocking: kill any worker process still serving ``name`` (after an unregister or failed load)."""
        leftovers = self.process.worker_processes().get(name, [])
        return kill_processes(leftovers, grace=2.0) if leftovers else []

    def _measure_one(self, name: str) -> int:
        return _memory_of(self.process.worker_processes().get(name, []))

    # ---- eviction ----------------------------------------------------------------------------------

    def _slots(self, keep: Entry, evictable: set[State]) -> list[Slot]:
        """The policy's view of every model but ``keep``, least recently used first."""
        return [
            Slot(
                key=entry.target,
                loaded=entry.state in _LOADED,
                evictable=entry.state in evictable and entry.in_flight == 0 and entry.managed,
                memory=entry.memory_bytes,
                disk=entry.disk_bytes,
            )
            for entry in self.entries.values()
            if entry is not keep
        ]

    async def _make_memory_room(self, keep: Entry) -> None:
        """Unload idle models, least recently used first, until ``keep`` fits the count and memory budgets."""
        slots = self._slots(keep, evictable={State.READY})
        victims = memory_victims(slots, keep.memory_bytes, self.budgets.max_models, self._model_memory_budget())
        await self._run_all(self._start_unload(self.entries[key], reason) for key, reason in victims)

    async def _make_disk_room(self, incoming: int, keep: Entry) -> None:
        """Remove idle models from disk, unloaded ones first, until ``incoming`` more bytes fit."""
        slots = self._slots(keep, evictable={State.ON_DISK, State.READY})
        # ``keep`` is not among the slots: its own bytes on disk count as incoming.
        for key in disk_victims(slots, incoming + keep.disk_bytes, self.budgets.disk_bytes):
            victim = self.entries.get(key)
            if victim is None:
                continue
            if victim.state is State.READY and victim.in_flight == 0:
                await self._start_unload(victim, None)
            # The victim may have been asked for again while it unloaded.
            if victim.state is State.ON_DISK and victim.in_flight == 0:
                await self._remove_from_disk(victim)

    def _start_unload(self, entry: Entry, reason: str | None) -> asyncio.Task[None]:
        entry.state = State.UNLOADING
        entry.transition = asyncio.create_task(self._unload(entry, reason), name=f"unload {entry.target}")
        return entry.transition

    @staticmethod
    async def _run_all(tasks: Any) -> None:
        pending = list(tasks)
        if pending:
            await asyncio.gather(*pending)

    def _model_memory_budget(self) -> int:
        """The memory budget left for models once the dense shards' empty workers are counted (0: no budget)."""
        if not self.budgets.memory_bytes:
            return 0
        return max(self.budgets.memory_bytes - self.shards.overhead_bytes(), 1)

    def _forget_if_remote(self, entry: Entry) -> None:
        if entry.state is State.REMOTE and entry.in_flight == 0 and self.entries.get(entry.target) is entry:
            del self.entries[entry.target]

    def _enforce_budgets_soon(self) -> None:
        """After a request ends, models admitted over budget while others were busy may now leave."""
        over_count = self.budgets.max_models and self.loaded_count() > self.budgets.max_models
        over_memory = self.budgets.memory_bytes and self.memory_in_use() > self._model_memory_budget()
        if over_count or over_memory:
            newest = next(reversed(self.entries.values()))
            task = asyncio.create_task(self._make_memory_room(keep=newest), name="enforce budgets")
            task.add_done_callback(_log_failure)

    # ---- housekeeping and the SageMaker container contract -----------------------------------------

    async def check_workers(self, measure_memory: bool = True) -> None:
        """Housekeeping against MMS's processes: fresh memory figures (then the memory budget), workers of
        models no longer loaded stopped, and models whose workers all died loaded again."""
        scanned_at = time.monotonic()
        workers = await asyncio.to_thread(self.process.worker_processes)
        if measure_memory:
            sizes = await asyncio.to_thread(lambda: {name: _memory_of(group) for name, group in workers.items()})
            for entry in self.entries.values():
                if entry.state is State.READY and entry.hosting != DENSE:  # dense models report their own
                    entry.memory_bytes = sizes.get(entry.name, entry.memory_bytes)
            for shard in self.shards.shards:
                shard.memory_bytes = sizes.get(shard.name, 0)
        # Workers of a model that is not (being) loaded are ones MMS failed to stop: they only hold memory.
        owned = {entry.name for entry in self.entries.values() if entry.state in _LOADED | {State.UNLOADING}}
        owned |= self.shards.names
        orphans = [process for name, group in workers.items() if name not in owned for process in group]
        if orphans:
            await asyncio.to_thread(kill_processes, orphans, 2.0)
            log.warning("stopped %d MMS worker process(es) of models no longer loaded", len(orphans))
        # MMS 1.1 does not restart a worker that was killed (it retries a dead socket with growing back-off,
        # minutes apart): a ready model with no worker left is unregistered and registered again.
        for shard in self.shards.shards:
            if shard.ready.is_set() and shard.registered_at < scanned_at and shard.name not in workers:
                self._shard_lost(shard)
        for entry in list(self.entries.values()):
            if entry.hosting == DENSE:
                continue
            if entry.state is State.READY and entry.ready_at < scanned_at and entry.name not in workers:
                log.warning("every MMS worker of %s is gone; loading it again", entry.target)
                entry.state = State.UNLOADING
                entry.transition = asyncio.create_task(self._replace_workers(entry), name=f"revive {entry.target}")
                entry.transition.add_done_callback(_log_failure)
        self._enforce_budgets_soon()

    def _shard_lost(self, shard: Shard) -> None:
        """A dense shard's worker died: its models go back to disk (reloaded on their next request), requests
        in it are sent again, and the shard is registered anew."""
        log.warning("the worker of dense shard %s is gone; starting it again", shard.name)
        shard.ready.clear()
        for call in list(shard.calls):
            call.cancel()
        for entry in self.entries.values():
            if entry.replicas.pop(shard.index, None) is None:
                continue
            entry.memory_bytes = sum(entry.replicas.values())
            if not entry.replicas and entry.state is State.READY:
                entry.state = State.ON_DISK
        shard.revival = asyncio.create_task(self._revive_shard(shard), name=f"revive {shard.name}")
        shard.revival.add_done_callback(_log_failure)

    async def _revive_shard(self, shard: Shard) -> None:
        delay = 1.0
        while True:
            await self.shards.unregister(shard)
            await asyncio.to_thread(self._reap_workers, shard.name)
            try:
                await self.shards.register(shard)
            except Exception as exc:
                log.error("starting dense shard %s again failed (%s); retrying in %.0f s", shard.name, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            await self._measure_shard_baselines([shard])
            return

    async def _replace_workers(self, entry: Entry) -> None:
        for call in list(entry.calls):
            call.cancel()
        await self._unload(entry, None)
        await self._bring_up(entry)

    async def register_local(self, model_name: str, url: str) -> Entry:
        """SageMaker's ``POST /models``: serve the directory ``url`` SageMaker already downloaded."""
        path = Path(url)
        entry = self.entries.get(model_name)
        if entry is not None and entry.state in _LOADED:
            raise Conflict(f"model {model_name!r} is already loaded")
        name = mms_model_name(model_name)
        # MMS loads only directories directly under its model store: link SageMaker's directory in.
        link = self.settings.models_dir / name
        await asyncio.to_thread(_link_directory, link, path)
        entry = Entry(model_name, name, link, managed=False, state=State.ON_DISK, url=url)
        self.entries[model_name] = entry
        async with self.use(model_name, wait=max(self.settings.response_timeout, 120.0)):
            return entry

    async def unload(self, target: str) -> bool:
        """SageMaker's ``DELETE /models/{name}``: unload now (and forget a model SageMaker handed over)."""
        entry = self.entries.get(target)
        if entry is None or entry.state not in _LOADED | {State.UNLOADING}:
            return False
        if entry.transition is not None and not entry.transition.done():
            await asyncio.shield(entry.transition)
        if entry.state is State.READY:
            await self._start_unload(entry, "request")
        if not entry.managed and entry.in_flight == 0:
            del self.entries[target]
            entry.path.unlink(missing_ok=True)
        return True

    def mms_lost(self) -> list[Entry]:
        """MMS died and took every loaded model with it: mark them on disk; returns those that were ready."""
        lost = [entry for entry in self.entries.values() if entry.state is State.READY]
        for entry in self.entries.values():
            if entry.state in _LOADED | {State.UNLOADING}:
                entry.state = State.ON_DISK
                entry.memory_bytes = 0
            entry.replicas.clear()
        for shard in self.shards.shards:
            shard.ready.clear()
            for call in list(shard.calls):
                call.cancel()
        return lost

    async def mms_back(self, lost: list[Entry]) -> None:
        """MMS was restarted: the dense shards are registered again (if they ran), then ``lost`` reloaded."""
        if self._shards_started is not None:
            self._shards_started = None
            try:
                await self.start_shards()
            except Exception:
                # Not fatal: the next dense load starts them again (start_shards retries a failed start).
                log.exception("the dense shards did not start again after MMS restarted")
        self.reload(lost)

    def reload(self, entries: list[Entry]) -> None:
        """Load ``entries`` again in the background (after an MMS restart), unless something already is."""
        for entry in entries:
            idle = entry.transition is None or entry.transition.done()
            if entry.state is State.ON_DISK and idle and self.entries.get(entry.target) is entry:
                entry.transition = asyncio.create_task(self._bring_up(entry), name=f"reload {entry.target}")
                entry.transition.add_done_callback(_log_failure)

    def is_ready(self, target: str) -> bool:
        entry = self.entries.get(target)
        return entry is not None and entry.state is State.READY

    def loaded_count(self) -> int:
        return sum(entry.state in _LOADED for entry in self.entries.values())

    def memory_in_use(self) -> int:
        return sum(entry.memory_bytes for entry in self.entries.values() if entry.state in _LOADED)

    def disk_in_use(self) -> int:
        return sum(entry.disk_bytes for entry in self.entries.values())

    def snapshot(self) -> dict[str, Any]:
        return {
            "loadedModels": self.loaded_count(),
            "memoryBytes": self.memory_in_use(),
            "diskBytes": self.disk_in_use(),
            "budgets": {
                "maxModels": self.budgets.max_models,
                "memoryBytes": self.budgets.memory_bytes,
                "diskBytes": self.budgets.disk_bytes,
            },
            "evictions": dict(self.evictions),
            "counters": dict(self.counters),
            "hosting": self.settings.hosting,
            "shards": self.shards.describe() if self.shards_started() else [],
        }


def _memory_of(processes: list[psutil.Process]) -> int:
    """Proportional set size of a model's worker processes (RSS where PSS is not available)."""
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            info = process.memory_full_info()
            total += int(getattr(info, "pss", 0) or info.rss)
    return total


def _link_directory(link: Path, directory: Path) -> None:
    if not directory.is_dir():
        raise ValidationError(f"model directory {directory} does not exist")
    link.unlink(missing_ok=True)
    link.symlink_to(directory.resolve(), target_is_directory=True)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""


def _log_failure(task: asyncio.Task[None]) -> None:
    """Retrieve a background task's exception so that asyncio does not report it as lost."""
    if not task.cancelled() and task.exception() is not None:
        log.debug("%s failed: %s", task.get_name(), task.exception())
