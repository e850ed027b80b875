"""The model cache: which models are on disk and loaded, and the policy that moves them.

A model's life: ``remote`` (only in S3) → ``downloading`` → ``on_disk`` → ``loading`` → ``ready``, and back
through ``unloading`` → ``on_disk`` when evicted from memory, or removed when evicted from disk. Each model has
at most one transition task at a time (single flight): however many requests miss on a model at once, it is
downloaded once and loaded once, and they all wait on the same task. Requests wait through ``asyncio.shield``,
so a client that gives up never cancels a load that the next request will use.

How a loaded model is hosted is the backend's business (see backend.py): the cache only asks it to load, measure
and unload, and hears from it when a host lost a model. The cache is keyed by immutable archive names: whatever
a TargetModel means is resolved before it (the data plane's job).

Eviction is least-recently-used under three budgets: the count of loaded models, the memory they hold (as the
backend measures it, after its own overhead), and the bytes of extracted models on disk. The disk budget is a plan;
the cache filesystem's real free space is checked too before a download (other files share it): idle models leave
the disk, least recently used first, when that makes room, and otherwise the model is refused with
InsufficientStorage (507), evicting nothing, as is a download or extraction that fills the disk anyway. A model
with requests in flight (or waiting for it) is never evicted, and a new model is admitted before the old ones leave
only when nothing idle can make room. With ``--admission tinylfu`` a frequency sketch of every request sits in
front of that eviction (policy.py): a model being loaded that was asked for no more often lately than its victims
is loaded to answer without unloading them, at the least-recently-used end, and is the first to leave once its
request ends.

What the operator keeps hot (keeping.py): a pinned model (``--pin``) counts against the budgets but is never
chosen to leave, and a load that would need a pinned model's room fails with InsufficientMemory (507) instead
(InsufficientStorage, also 507, for the disk's room).
Pre-loading (``warm``) loads a model before its first request without pushing out any other (a pinned one
excepted). Models unused for ``--idle-ttl`` seconds are unloaded by ``tend`` (housekeeping's round), and a
model whose cache is disabled (``--model-cache disabled``, or its archive's ``openmme.json``: SageMaker's
``ModelCacheSetting``) is unloaded and deleted from disk after each call, once no other request uses it.
Every request is counted in ``usage``, which ``--preload-top`` reads at the next start.

Everything here runs on one event loop; bookkeeping between two awaits is atomic, so no lock guards it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import psutil

from openmme.endpoint.cache.backend import Backend
from openmme.endpoint.cache.entry import HELD, LOADED, Budgets, Entry, State, mms_model_name
from openmme.endpoint.cache.events import CacheEvents
from openmme.endpoint.cache.keeping import Pins, Usage, write_usage
from openmme.endpoint.cache.store import ModelStore, disk_full_message
from openmme.endpoint.errors import Conflict, InsufficientMemory, InsufficientStorage, ModelError, ModelNotReady
from openmme.endpoint.logs import log_task_failure
from openmme.endpoint.policy import FrequencySketch, Slot, admits, disk_victims, memory_victims, room_victims
from openmme.endpoint.settings import Settings
from openmme.handlers import UnsupportedArchive, choose_default_accept, choose_model_cache

__all__ = ["ModelCache", "budgets_for"]

log = logging.getLogger(__name__)

# How often, at most, the usage record is written while serving (and once more at stop).
USAGE_SAVE_INTERVAL_S = 60.0
# A pre-load waits for its model however long the load takes (a request would get 429 after --wait-budget).
PRELOAD_WAIT_S = 24 * 3600.0


def budgets_for(settings: Settings) -> Budgets:
    """The budgets of ``settings``, defaults measured on this machine (60% of memory, 80% of the free disk)."""
    memory = settings.memory_budget or int(psutil.virtual_memory().total * 0.6)
    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    disk = settings.disk_budget or int(shutil.disk_usage(settings.cache_dir).free * 0.8)
    return Budgets(settings.max_models, memory, disk)


class ModelCache:
    """Single-flight loading and LRU eviction of models, hosted by ``backend``."""

    def __init__(
        self,
        settings: Settings,
        budgets: Budgets,
        backend: Backend,
        store: ModelStore,
        events: Sequence[CacheEvents] = (),
        clock: Callable[[], float] = time.time,
        usage: Usage | None = None,
    ) -> None:
        self.settings = settings
        self.budgets = budgets
        self.backend = backend
        self.store = store
        self.events = tuple(events)
        self.clock = clock
        self.entries: OrderedDict[str, Entry] = OrderedDict()  # least recently used first
        self.evictions: Counter[str] = Counter()  # by reason: count, memory, disk
        self.counters: Counter[str] = Counter()  # hits, misses, downloads, registrations
        # TinyLFU's sample is ten times the cache's size in models; without a count budget, as if it held 100.
        self.sketch = FrequencySketch(10 * (budgets.max_models or 100)) if settings.admission == "tinylfu" else None
        self.pins = Pins(settings.pin)
        self.usage = usage or Usage()  # requests per model, for --preload-top at the next start
        self._usage_saved = time.monotonic()
        self._warming: set[Entry] = set()  # being pre-loaded (warm)
        backend.attach(self)

    # ---- the request path -------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def use(self, target: str, wait: float | None = None, *, counted: bool = True) -> AsyncIterator[Entry]:
        """Hold ``target`` loaded for the duration of a request; loads it on a miss. ``counted=False``: the request
        was counted already (it is being sent again)."""
        entry = self.entries.get(target)
        if entry is None:
            if self.store.source is None:
                raise ModelError(f"model {target!r} is not loaded", original_status=404)
            entry = self._new_entry(target)
        self.entries.move_to_end(target)
        hit = entry.state is State.READY
        if counted:
            self.usage.record(target)
            if self.sketch is not None:
                self.sketch.record(target)
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
                if entry.model_cache == "disabled" and entry.state is State.READY and not entry.pinned:
                    self._drop(entry, "cache_disabled", delete=True)
                self._enforce_budgets_soon()

    def touched(self, target: str, count: int) -> None:
        """``count`` requests another front process answered from the loaded ``target`` (edges.py): counted as
        hits, and the model used now, as if they had gone through ``use``."""
        entry = self.entries.get(target)
        if entry is None or count <= 0:
            return
        self.entries.move_to_end(target)
        for _ in range(count):
            self.usage.record(target)
            if self.sketch is not None:
                self.sketch.record(target)
            for events in self.events:
                events.lookup(entry, True)
        self.counters["hits"] += count
        entry.last_used = self.clock()

    async def _wait_ready(self, entry: Entry, wait: float) -> None:
        deadline = asyncio.get_running_loop().time() + wait
        while entry.state is not State.READY:
            if entry.transition is None or entry.transition.done():
                self._transition(entry, self._bring_up(entry), "load")
            assert entry.transition is not None
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                await asyncio.wait_for(asyncio.shield(entry.transition), max(remaining, 0.001))
            except TimeoutError as exc:
                raise ModelNotReady(
                    f"model {entry.target!r} is still loading ({entry.state.value}); retry shortly"
                ) from exc

    # ---- what backends report (the Models protocol) -----------------------------------------------------

    def models(self) -> list[Entry]:
        """Every model known, least recently used first."""
        return list(self.entries.values())

    def lost(self, entry: Entry) -> bool:
        if entry.state is not State.READY:
            return False
        entry.state = State.ON_DISK
        entry.memory_bytes = 0
        return True

    def relaunch(self, entry: Entry) -> None:
        if entry.state is State.READY:
            entry.state = State.UNLOADING
            self._transition(entry, self._reload(entry), "revive")

    def resized(self, entry: Entry, memory_bytes: int) -> None:
        entry.memory_bytes = memory_bytes

    def recheck(self) -> None:
        self._enforce_budgets_soon()

    # ---- transitions ----------------------------------------------------------------------------------

    def _transition(self, entry: Entry, work: Any, verb: str) -> None:
        entry.transition = asyncio.create_task(work, name=f"{verb} {entry.target}")
        entry.transition.add_done_callback(log_task_failure)

    async def _bring_up(self, entry: Entry) -> None:
        try:
            if entry.state is State.ON_DISK and entry.managed and not await self.store.present(entry):
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

    async def _reload(self, entry: Entry) -> None:
        await self._unload(entry, None)
        await self._bring_up(entry)

    async def _fetch(self, entry: Entry) -> None:
        entry.state = State.DOWNLOADING
        try:
            size = await self.store.size(entry.target)
            self._refuse_beside_pinned(entry, disk=size)
            await self._make_disk_room(size, keep=entry)
            await self._make_free_room(size, keep=entry)
            entry.disk_bytes = await self.store.fetch(entry)
            no_room = self._beside_pinned(entry, disk=entry.disk_bytes)  # extracted, it takes more than its archive
            if no_room:
                await self.store.remove(entry)
                entry.disk_bytes = 0
                raise InsufficientStorage(no_room)
            entry.downloads += 1
            self.counters["downloads"] += 1
            entry.state = State.ON_DISK
        except BaseException:
            entry.state = State.REMOTE
            raise
        for events in self.events:
            events.fetched(entry)
        await self._make_disk_room(0, keep=entry)

    async def _load(self, entry: Entry) -> None:
        entry.state = State.LOADING
        try:
            await self.backend.prepare(entry)
            if entry.managed:
                entry.model_cache, entry.default_accept = await asyncio.to_thread(self._settings_of, entry)
            self._refuse_beside_pinned(entry)
            await self._make_memory_room(keep=entry, loading=True)
            started = time.perf_counter()
            self.counters["registrations"] += 1  # loads asked of the backend, failed ones included
            await self.backend.load(entry)
            entry.timings["register"] = time.perf_counter() - started
            entry.loads += 1
            entry.state = State.READY
            entry.ready_at = time.monotonic()
            entry.loaded_at = self.clock()
        except BaseException:
            entry.state = State.ON_DISK
            raise
        entry.memory_bytes = await self.backend.measure(entry)
        for events in self.events:
            events.loaded(entry)
        no_room = self._beside_pinned(entry)  # measured, it needs memory only a pinned model could free
        if no_room:
            entry.state = State.UNLOADING
            await self._unload(entry, None)
            raise InsufficientMemory(no_room)
        await self._make_memory_room(keep=entry, loading=True)

    def _settings_of(self, entry: Entry) -> tuple[str, str | None]:
        """Blocking: the model cache setting (``enabled`` or ``disabled``, as the archive's openmme.json or else
        --model-cache says) and the default accept the archive sets (None: none)."""
        try:
            return choose_model_cache(entry.path, self.settings.model_cache), choose_default_accept(entry.path)
        except UnsupportedArchive as exc:
            raise ModelError(f"model {entry.target!r} cannot be served: {exc}", original_status=400) from exc

    async def _unload(self, entry: Entry, reason: str | None) -> None:
        """Unload ``entry`` from its host; ``reason`` is counted as an eviction."""
        started = time.perf_counter()
        try:
            await self.backend.unload(entry)
        finally:
            entry.state = State.ON_DISK
            entry.memory_bytes = 0
            entry.timings["unload"] = time.perf_counter() - started
            if reason:
                self.evictions[reason] += 1
            for events in self.events:
                events.unloaded(entry, reason)

    async def _remove_from_disk(self, entry: Entry, reason: str = "disk") -> None:
        """Delete ``entry``'s files: for the disk budget (``disk``, counted as an eviction), or after the unload
        that was counted (``idle``, ``cache_disabled``)."""
        removal = asyncio.ensure_future(self._delete_files(entry, reason))
        if entry.transition is None or entry.transition.done():
            # The deletion is the model's transition while the files go (a thread deletes them): a request for it
            # waits and then downloads it again, instead of loading files half deleted, and no other eviction
            # picks it meanwhile (which would delete it again, perhaps after that download).
            entry.transition = removal
        await removal

    async def _delete_files(self, entry: Entry, reason: str) -> None:
        await self.store.remove(entry)
        entry.disk_bytes = 0
        entry.state = State.REMOTE
        self._forget_if_remote(entry)
        if reason == "disk":
            self.evictions["disk"] += 1
        for events in self.events:
            events.removed(entry, reason)

    def _drop(self, entry: Entry, reason: str, delete: bool) -> None:
        """Unload the idle ``entry`` in the background, and delete its files too with ``delete``."""
        entry.state = State.UNLOADING
        self._transition(entry, self._unload_and_delete(entry, reason, delete), "unload")

    async def _unload_and_delete(self, entry: Entry, reason: str, delete: bool) -> None:
        await self._unload(entry, reason)
        # Asked for again while it unloaded: it stays on disk for that request.
        if delete and entry.state is State.ON_DISK and entry.in_flight == 0:
            await self._remove_from_disk(entry, reason)

    # ---- eviction ----------------------------------------------------------------------------------

    def _slots(self, keep: Entry, evictable: set[State]) -> list[Slot]:
        """The policy's view of every model but ``keep``, least recently used first."""
        return [
            Slot(
                key=entry.target,
                loaded=entry.state in LOADED,
                evictable=entry.state in evictable and self._idle(entry) and entry.managed and not entry.pinned,
                memory=entry.memory_bytes,
                disk=entry.disk_bytes,
            )
            for entry in self.entries.values()
            if entry is not keep
        ]

    @staticmethod
    def _idle(entry: Entry) -> bool:
        """No request in it, and, on disk, no transition under way: its files being deleted, or just fetched for
        a load."""
        busy = entry.state is State.ON_DISK and entry.transition is not None and not entry.transition.done()
        return entry.in_flight == 0 and not busy

    async def _make_memory_room(self, keep: Entry, loading: bool = False) -> None:
        """Unload idle models, least recently used first, until ``keep`` fits the count and memory budgets. Under
        TinyLFU, a ``keep`` being loaded that is not admitted unloads no one: it moves to the least recently used
        end instead, over budget until its requests end (then ``_enforce_budgets_soon`` unloads it first)."""
        slots = self._slots(keep, evictable={State.READY})
        victims = memory_victims(slots, keep.memory_bytes, self.budgets.max_models, self._model_memory_budget())
        if loading and victims and (self._only_warming(keep) or not self._admitted(keep, victims)):
            self.entries.move_to_end(keep.target, last=False)
            return
        await _run_all(self._start_unload(self.entries[key], reason) for key, reason in victims)

    async def _make_disk_room(self, incoming: int, keep: Entry) -> None:
        """Remove idle models from disk, unloaded ones first, until ``incoming`` more bytes fit."""
        slots = self._slots(keep, evictable={State.ON_DISK, State.READY})
        # ``keep`` is not among the slots: its own bytes on disk count as incoming.
        await self._remove_victims(disk_victims(slots, incoming + keep.disk_bytes, self.budgets.disk_bytes))

    async def _make_free_room(self, archive_bytes: int, keep: Entry) -> None:
        """Make the cache filesystem itself hold ``keep``'s download of ``archive_bytes`` and its extraction (about
        as many bytes again, at least: both are on disk until the rename), removing idle models from disk when
        that frees enough; InsufficientStorage, and no model removed, when it cannot."""
        needed = 2 * archive_bytes
        free = await self.store.free_bytes()
        if free >= needed:
            return
        victims = room_victims(self._slots(keep, evictable={State.ON_DISK, State.READY}), needed - free)
        if victims is not None:
            await self._remove_victims(victims)
            free = await self.store.free_bytes()
        if free < needed:
            why = f"its download and extraction need about {needed} bytes, {free} are free"
            raise InsufficientStorage(disk_full_message(keep.target, why))

    async def _remove_victims(self, keys: Iterable[str]) -> None:
        """Delete the files of the models ``keys`` (unloading the ready ones first), counted as disk evictions."""
        for key in keys:
            victim = self.entries.get(key)
            if victim is None:
                continue
            if victim.state is State.READY and victim.in_flight == 0:
                await self._start_unload(victim, None)
            # The victim may have been asked for again while it unloaded, or picked by another eviction meanwhile.
            if victim.state is State.ON_DISK and self._idle(victim):
                await self._remove_from_disk(victim)

    def _admitted(self, keep: Entry, victims: list[tuple[str, str]]) -> bool:
        """TinyLFU's admission (always, under LRU)."""
        return self.sketch is None or admits(self.sketch, keep.target, [key for key, _ in victims])

    def _only_warming(self, keep: Entry) -> bool:
        """Being pre-loaded, and by nothing else: it pushes no model out (unless it is pinned)."""
        return keep in self._warming and keep.in_flight == 1 and not keep.pinned

    def _beside_pinned(self, keep: Entry, disk: int | None = None) -> str | None:
        """Why ``keep`` does not fit beside the pinned models (None: it does): in the count and memory budgets,
        or with ``disk``, its bytes on disk, in the disk budget. Only a pinned model could make room, and none
        ever does."""
        if not self.pins:
            return None
        pinned = [entry for entry in self.entries.values() if entry.pinned and entry is not keep]
        if disk is not None:
            held = sum(entry.disk_bytes for entry in pinned)
            if self.budgets.disk_bytes and held + disk > self.budgets.disk_bytes:
                return (
                    f"not enough disk for model {keep.target!r} ({disk} bytes): pinned models take {held} bytes of"
                    f" the {self.budgets.disk_bytes}-byte disk budget"
                )
            return None
        loaded = [entry for entry in pinned if entry.state in LOADED]
        if self.budgets.max_models and len(loaded) + 1 > self.budgets.max_models:
            return (
                f"no room to load model {keep.target!r}: the {len(loaded)} pinned models loaded take every one of the"
                f" {self.budgets.max_models} the count budget allows"
            )
        held, budget = sum(entry.memory_bytes for entry in loaded), self._model_memory_budget()
        if budget and held + keep.memory_bytes > budget:
            return (
                f"not enough memory to load model {keep.target!r} ({keep.memory_bytes} bytes): pinned models hold"
                f" {held} bytes of the {budget} bytes models may use"
            )
        return None

    def _refuse_beside_pinned(self, keep: Entry, disk: int | None = None) -> None:
        no_room = self._beside_pinned(keep, disk)
        if no_room:
            raise InsufficientMemory(no_room) if disk is None else InsufficientStorage(no_room)

    def _start_unload(self, entry: Entry, reason: str | None) -> asyncio.Task[None]:
        entry.state = State.UNLOADING
        entry.transition = asyncio.create_task(self._unload(entry, reason), name=f"unload {entry.target}")
        return entry.transition

    def _model_memory_budget(self) -> int:
        """The memory budget left for models once the backend's own overhead is counted (0: no budget)."""
        if not self.budgets.memory_bytes:
            return 0
        return max(self.budgets.memory_bytes - self.backend.overhead_bytes(), 1)

    def _forget_if_remote(self, entry: Entry) -> None:
        if entry.state is State.REMOTE and entry.in_flight == 0 and self.entries.get(entry.target) is entry:
            del self.entries[entry.target]

    def _over_budget(self) -> bool:
        over_count = self.budgets.max_models and self.loaded_count() > self.budgets.max_models
        over_memory = self.budgets.memory_bytes and self.memory_in_use() > self._model_memory_budget()
        return bool(over_count or over_memory)

    def _full(self) -> bool:
        """One more model would not fit without another leaving."""
        full_count = self.budgets.max_models and self.loaded_count() >= self.budgets.max_models
        full_memory = self.budgets.memory_bytes and self.memory_in_use() >= self._model_memory_budget()
        return bool(full_count or full_memory)

    def _enforce_budgets_soon(self) -> None:
        """After a request ends, models admitted over budget while others were busy may now leave."""
        if self._over_budget():
            newest = next(reversed(self.entries.values()))
            task = asyncio.create_task(self._make_memory_room(keep=newest), name="enforce budgets")
            task.add_done_callback(log_task_failure)

    # ---- keeping models hot: pre-loading, idle unloading, the usage record -------------------------------

    async def warm(self, target: str) -> bool:
        """Pre-load ``target`` ahead of its first request, pushing out no other model (a pinned one may push out
        models not pinned, as a request would). True when it is loaded and stays; False when there was no room
        (then it is not loaded, or unloaded again at once). Raises what its load raised."""
        entry = self.entries.get(target)
        if entry is None:
            if target not in self.pins and self._full():
                return False
            entry = self._new_entry(target)
            # Least recently used until asked for; the later in the pre-load list, the sooner it leaves.
            self.entries.move_to_end(target, last=False)
        entry.in_flight += 1
        self._warming.add(entry)
        try:
            await self._wait_ready(entry, PRELOAD_WAIT_S)
            kept = entry.pinned or entry.in_flight > 1 or not self._over_budget()
            if not kept and entry.state is State.READY:
                await self._start_unload(entry, None)
            return kept
        finally:
            self._warming.discard(entry)
            entry.in_flight -= 1
            if entry.in_flight == 0:
                self._forget_if_remote(entry)
                self._enforce_budgets_soon()

    def unload_idle(self) -> None:
        """``--idle-ttl``: unload the models no request used for that long, and with ``--idle-ttl-delete`` delete
        their files (those only on disk as well); never a pinned model, one in use, or one SageMaker handed over."""
        ttl = self.settings.idle_ttl
        if not ttl:
            return
        delete, now = self.settings.idle_ttl_delete, self.clock()
        for entry in list(self.entries.values()):
            busy = entry.in_flight or (entry.transition is not None and not entry.transition.done())
            if busy or entry.pinned or not entry.managed or now - max(entry.last_used, entry.loaded_at) < ttl:
                continue
            if entry.state is State.READY:
                self._drop(entry, "idle", delete)
            elif delete and entry.state is State.ON_DISK:
                self._transition(entry, self._remove_from_disk(entry, "idle"), "delete")

    async def tend(self) -> None:
        """Housekeeping's round: idle models unloaded; the cache filesystem's free space measured (for the metric,
        not for a request: a download measures it afresh); the usage record written now and then, if it changed."""
        self.unload_idle()
        try:
            free = await self.store.free_bytes()
        except OSError as exc:
            log.debug("could not measure the free space of %s: %s", self.settings.cache_dir, exc)
        else:
            for events in self.events:
                events.disk_measured(free)
        if self.usage.changed and time.monotonic() - self._usage_saved >= USAGE_SAVE_INTERVAL_S:
            await self.save_usage()

    async def save_usage(self) -> None:
        """Write the usage record (``--preload-top`` reads it at the next start) if it changed since the last."""
        if not self.usage.changed:
            return
        self._usage_saved = time.monotonic()
        self.usage.changed = False
        counts = dict(self.usage.counts)  # a copy: requests go on counting while the thread writes
        try:
            await asyncio.to_thread(write_usage, self.settings.cache_dir, counts)
        except OSError as exc:
            log.warning("could not write the usage record in %s: %s", self.settings.cache_dir, exc)

    def _new_entry(self, target: str) -> Entry:
        entry = self.entries[target] = self.store.new_entry(target, mms_model_name(target))
        entry.pinned = target in self.pins
        return entry

    # ---- the SageMaker container contract and the host's restarts ------------------------------------

    async def register_local(self, model_name: str, url: str) -> Entry:
        """SageMaker's ``POST /models``: serve the directory ``url`` SageMaker already downloaded."""
        entry = self.entries.get(model_name)
        if entry is not None and entry.state in LOADED:
            raise Conflict(f"model {model_name!r} is already loaded")
        name = mms_model_name(model_name)
        link = await self.store.link(name, Path(url))
        entry = Entry(model_name, name, link, managed=False, state=State.ON_DISK, url=url)
        entry.pinned = model_name in self.pins
        self.entries[model_name] = entry
        async with self.use(model_name, wait=max(self.settings.response_timeout, 120.0)):
            return entry

    async def unload(self, target: str) -> bool:
        """SageMaker's ``DELETE /models/{name}``: unload now (and forget a model SageMaker handed over)."""
        entry = self.entries.get(target)
        if entry is None or entry.state not in HELD:
            return False
        if entry.transition is not None and not entry.transition.done():
            await asyncio.shield(entry.transition)
        if entry.state is State.READY:
            await self._start_unload(entry, "request")
        if not entry.managed and entry.in_flight == 0:
            del self.entries[target]
            entry.path.unlink(missing_ok=True)
        return True

    def host_lost(self, hosted: Callable[[Entry], bool]) -> list[Entry]:
        """The host died and took the loaded models it ``hosted`` with it: mark them on disk; returns those that
        were ready."""
        lost = [entry for entry in self.entries.values() if entry.state is State.READY and hosted(entry)]
        for entry in self.entries.values():
            if entry.state in HELD and hosted(entry):
                entry.state = State.ON_DISK
                entry.memory_bytes = 0
        return lost

    def reload(self, entries: Iterable[Entry]) -> None:
        """Load ``entries`` again in the background (after a host restart), unless something already is."""
        for entry in entries:
            idle = entry.transition is None or entry.transition.done()
            if entry.state is State.ON_DISK and idle and self.entries.get(entry.target) is entry:
                self._transition(entry, self._bring_up(entry), "reload")

    # ---- figures ---------------------------------------------------------------------------------------

    def get(self, target: str) -> Entry | None:
        return self.entries.get(target)

    def is_ready(self, target: str) -> bool:
        entry = self.entries.get(target)
        return entry is not None and entry.state is State.READY

    def loaded_count(self) -> int:
        return sum(entry.state in LOADED for entry in self.entries.values())

    def memory_in_use(self) -> int:
        return sum(entry.memory_bytes for entry in self.entries.values() if entry.state in LOADED)

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
            "pinnedModels": sum(entry.pinned and entry.state in LOADED for entry in self.entries.values()),
            "evictions": dict(self.evictions),
            "counters": dict(self.counters),
            **self.backend.describe(),
        }


async def _run_all(tasks: Iterable[asyncio.Task[None]]) -> None:
    pending = list(tasks)
    if pending:
        await asyncio.gather(*pending)
