"""The model cache in process, with a fake backend and a directory as the model source (as Ray Serve tests its
multiplexer): single flight under concurrent misses, eviction order under each budget, a busy model never
evicted, a failed load, a model lost mid-request, and the budgets after every step; and keeping models hot:
pinned models never evicted (and the 507 when only a pinned model could make room), pre-loading's order, bound
and room, idle TTL, the disabled model cache (endpoint-wide and per archive), and the usage record; a full cache
disk (a fake filesystem's free space, a download or extraction failing with ENOSPC): 507, nothing kept. No S3, no
JVM, no MMS: the real processes stay in tests/integration for what only they can show.

Each scenario runs on its own event loop; after every step the whole state is asserted (states, what the backend
holds, what is on disk, counters), not one field.
"""

from __future__ import annotations

import asyncio
import errno
import io
import json
import math
import os
import random
import tarfile
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest

from openmme.endpoint import extract
from openmme.endpoint.cache import Budgets, CacheEvents, Entry, ModelLost, Models, Route, State
from openmme.endpoint.cache.core import ModelCache
from openmme.endpoint.cache.keeping import (
    PRELOAD_STATES,
    USAGE_FILE_NAME,
    KeepingConfigError,
    Pins,
    Preload,
    Usage,
    check_keeping,
    preload_targets,
    read_usage,
    write_usage,
)
from openmme.endpoint.cache.store import ModelStore
from openmme.endpoint.dataplane import DataPlane, Invocation
from openmme.endpoint.errors import (
    InsufficientMemory,
    InsufficientStorage,
    ModelError,
    ServiceUnavailable,
    ValidationError,
)
from openmme.endpoint.metrics import Metrics
from openmme.endpoint.names import S3Location
from openmme.endpoint.settings import Settings

T = TypeVar("T")
MB = 1_000_000


class DirectorySource:
    """The model source: archives made on the fly, each holding one file of ``sizes[target]`` bytes, and the
    ``openmme.json`` of ``archive_settings[target]`` if there is one; every target but those in ``missing``."""

    prefix = S3Location("models", "prod/")

    def __init__(self, sizes: Mapping[str, int] | None = None) -> None:
        self.sizes = dict(sizes or {})
        self.archive_settings: dict[str, dict[str, Any]] = {}
        self.missing: set[str] = set()
        self.downloads: Counter[str] = Counter()

    def _archive(self, target: str) -> bytes:
        files = {"model.bin": b"\0" * self.sizes.get(target, 1000)}
        if target in self.archive_settings:
            files["openmme.json"] = json.dumps(self.archive_settings[target]).encode()
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w:gz") as archive:
            for name, payload in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                archive.addfile(info, io.BytesIO(payload))
        return out.getvalue()

    def size(self, target: str) -> int:
        if target in self.missing:
            raise ValidationError(f"model {target!r} is not in the model prefix {self.prefix}")
        return len(self._archive(target))

    def download(self, target: str, destination: Path, max_bytes: int) -> int:
        self.downloads[target] += 1
        data = self._archive(target)
        destination.write_bytes(data)
        return len(data)


@dataclass
class FakeReply:
    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def message(self) -> str:
        return self.body.decode()


class FakeBackend:
    """Hosts models in a dict. Loads can be held open (``gates``), made to fail (``failing``), and a model can be
    lost in the middle of its next request (``lose_next``), as a dead worker would lose it."""

    def __init__(self, memory: Mapping[str, int] | None = None) -> None:
        self.memory = dict(memory or {})
        self.hosted: dict[str, str] = {}  # MMS-style name → target
        self.gates: dict[str, asyncio.Event] = {}
        self.failing: set[str] = set()
        self.lose_next: set[str] = set()
        self.loads: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self._models: Models | None = None

    def attach(self, models: Models) -> None:
        self._models = models

    async def prepare(self, entry: Entry) -> None:
        entry.handler, entry.hosting = "fake_service:handle", "fake"

    async def load(self, entry: Entry) -> None:
        self.loads[entry.target] += 1
        gate = self.gates.get(entry.target)
        if gate is not None:
            await gate.wait()
        if entry.target in self.failing:
            raise ModelError(f"model {entry.target!r} failed to load: broken", original_status=500)
        self.hosted[entry.name] = entry.target

    async def measure(self, entry: Entry) -> int:
        return self.memory.get(entry.target, 10 * MB)

    async def unload(self, entry: Entry) -> None:
        self.hosted.pop(entry.name, None)

    def route(self, entry: Entry) -> Route:
        if entry.name not in self.hosted:
            raise ModelLost(entry.target)
        return Route(entry.name, {})

    async def call(self, entry: Entry, route: Route, body: bytes, headers: Mapping[str, str]) -> FakeReply:
        self.calls[entry.target] += 1
        await asyncio.sleep(0)
        if entry.target in self.lose_next:
            self.lose_next.discard(entry.target)
            self.hosted.pop(entry.name, None)
            assert self._models is not None
            self._models.lost(entry)
            raise ModelLost(entry.target)
        return FakeReply(200, entry.target.encode() + b":" + body, {"Content-Type": "text/csv"})

    def overhead_bytes(self) -> int:
        return 0

    def describe(self) -> dict[str, Any]:
        return {"hosting": "fake", "shards": []}

    async def listings(self) -> dict[str, Any]:
        return {"fake": sorted(self.hosted)}


class Recorder(CacheEvents):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def lookup(self, entry: Entry, hit: bool) -> None:
        self.seen.append(("hit" if hit else "miss", entry.target))

    def loaded(self, entry: Entry) -> None:
        self.seen.append(("loaded", entry.target))

    def load_failed(self, entry: Entry, error: BaseException) -> None:
        self.seen.append(("load_failed", entry.target))

    def unloaded(self, entry: Entry, reason: str | None) -> None:
        self.seen.append((f"unloaded:{reason}", entry.target))

    def removed(self, entry: Entry, reason: str = "disk") -> None:
        self.seen.append((f"removed:{reason}", entry.target))


@dataclass
class Rig:
    cache: ModelCache
    backend: FakeBackend
    source: DirectorySource
    events: Recorder

    def states(self) -> dict[str, str]:
        return {entry.target: entry.state.value for entry in self.cache.models()}

    def check(self) -> None:
        """What must hold between any two steps once nothing is in flight."""
        cache, budgets = self.cache, self.cache.budgets
        ready = {entry.name for entry in cache.models() if entry.state is State.READY}
        assert set(self.backend.hosted) == ready  # the backend holds exactly what the cache calls ready
        on_disk = {p.name for p in cache.settings.models_dir.iterdir()} if cache.settings.models_dir.exists() else set()
        assert on_disk == {entry.name for entry in cache.models() if entry.disk_bytes > 0}
        assert all(entry.in_flight == 0 for entry in cache.models())
        assert not budgets.max_models or cache.loaded_count() <= budgets.max_models
        assert not budgets.memory_bytes or cache.memory_in_use() <= budgets.memory_bytes
        assert not budgets.disk_bytes or cache.disk_in_use() <= budgets.disk_bytes
        assert cache.memory_in_use() == sum(self.backend.memory.get(self.backend.hosted[n], 10 * MB) for n in ready)


class Clock:
    """The cache's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_rig(
    tmp_path: Path,
    budgets: Budgets,
    memory: Mapping[str, int] | None = None,
    sizes: Mapping[str, int] | None = None,
    wait: float = 10.0,
    admission: str = "lru",
    clock: Callable[[], float] = lambda: 0.0,
    **options: Any,
) -> Rig:
    """A cache over a fake backend; ``options`` are more settings (``pin``, ``idle_ttl``, ``model_cache``…)."""
    settings = Settings(cache_dir=tmp_path, wait_budget=wait, admission=admission, **options)
    source = DirectorySource(sizes)
    backend = FakeBackend(memory)
    events = Recorder()
    cache = ModelCache(settings, budgets, backend, ModelStore(settings, source), events=(events,), clock=clock)
    return Rig(cache, backend, source, events)


def run(scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(scenario())


async def settle() -> None:
    """Let the background work the last step started (enforcing budgets, unloads) finish."""
    for _ in range(50):
        pending = [task for task in asyncio.all_tasks() if task is not asyncio.current_task() and not task.done()]
        if not pending:
            return
        await asyncio.wait(pending, timeout=5)


async def request(rig: Rig, target: str) -> None:
    await call(rig, target)
    await settle()


async def call(rig: Rig, target: str) -> None:
    """One request, without waiting for what it set off (for requests run side by side: see ``settle``)."""
    async with rig.cache.use(target):
        pass


NO_BUDGETS = Budgets(0, 0, 0)


def test_concurrent_misses_download_and_load_once(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, NO_BUDGETS)

    async def scenario() -> None:
        rig.backend.gates["a"] = gate = asyncio.Event()

        async def one() -> str:
            async with rig.cache.use("a") as entry:
                return entry.state.value

        waiting = [asyncio.create_task(one()) for _ in range(20)]
        for _ in range(20):
            await asyncio.sleep(0.01)
            if rig.backend.loads["a"]:
                break
        assert rig.states() == {"a": "loading"}
        assert rig.cache.get("a") is not None and rig.cache.get("a").in_flight == 20  # type: ignore[union-attr]
        gate.set()
        assert await asyncio.gather(*waiting) == ["ready"] * 20
        await settle()
        assert (rig.source.downloads["a"], rig.backend.loads["a"]) == (1, 1)
        assert rig.cache.counters == Counter(misses=20, downloads=1, registrations=1)
        assert rig.events.seen.count(("loaded", "a")) == 1
        rig.check()

    run(scenario)


def test_a_waiter_that_gives_up_does_not_cancel_the_load(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, NO_BUDGETS, wait=0.05)

    async def scenario() -> None:
        rig.backend.gates["slow"] = gate = asyncio.Event()
        from openmme.endpoint.errors import ModelNotReady

        with pytest.raises(ModelNotReady):
            await request(rig, "slow")
        assert rig.states() == {"slow": "loading"}
        gate.set()
        await settle()
        assert rig.states() == {"slow": "ready"}
        await request(rig, "slow")
        assert rig.backend.loads["slow"] == 1
        rig.check()

    run(scenario)


def test_count_budget_evicts_the_least_recently_used(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, Budgets(2, 0, 0))

    async def scenario() -> None:
        for target in ("a", "b"):
            await request(rig, target)
        await request(rig, "a")  # a is now the most recently used
        await request(rig, "c")
        assert rig.states() == {"a": "ready", "b": "on_disk", "c": "ready"}
        assert rig.cache.evictions == Counter(count=1)
        rig.check()
        await request(rig, "b")  # from disk: no second download
        assert rig.states() == {"a": "on_disk", "c": "ready", "b": "ready"}
        assert (rig.source.downloads["b"], rig.backend.loads["b"]) == (1, 2)
        assert ("unloaded:count", "b") in rig.events.seen and ("unloaded:count", "a") in rig.events.seen
        rig.check()

    run(scenario)


@pytest.mark.parametrize("admission", ["lru", "tinylfu"])
def test_a_one_off_newcomer_pushes_out_a_hot_model_only_under_lru(tmp_path: Path, admission: str) -> None:
    rig = make_rig(tmp_path, Budgets(2, 0, 0), admission=admission)

    async def scenario() -> None:
        for target in ("a", "a", "a", "b", "b", "b"):
            await request(rig, target)
        assert list(rig.states().items()) == [("a", "ready"), ("b", "ready")]
        await request(rig, "once")  # loaded to answer either way
        assert rig.backend.loads["once"] == 1
        assert rig.cache.evictions == Counter(count=1)
        if admission == "lru":
            assert list(rig.states().items()) == [("a", "on_disk"), ("b", "ready"), ("once", "ready")]
            assert ("unloaded:count", "a") in rig.events.seen
        else:
            # Asked for once against a's three: not admitted, so it answered, then left first; a and b stayed.
            assert list(rig.states().items()) == [("once", "on_disk"), ("a", "ready"), ("b", "ready")]
            assert ("unloaded:count", "once") in rig.events.seen and ("unloaded:count", "a") not in rig.events.seen
        rig.check()
        await request(rig, "b")
        await request(rig, "a")
        # The first a, b and once missed either way; under LRU the evicted a missed again (a load from disk).
        misses = 4 if admission == "lru" else 3
        assert rig.cache.counters == Counter(hits=9 - misses, misses=misses, downloads=3, registrations=misses)
        rig.check()

    run(scenario)


def test_under_tinylfu_a_newcomer_asked_for_more_often_than_the_victim_takes_its_place(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, Budgets(2, 0, 0), admission="tinylfu")

    async def scenario() -> None:
        for target in ("a", "a", "b", "b", "b"):
            await request(rig, target)
        for _ in range(2):  # asked for once, then twice: no more often than a, so it answers and leaves
            await request(rig, "rising")
            assert list(rig.states().items()) == [("rising", "on_disk"), ("a", "ready"), ("b", "ready")]
            rig.check()
        await request(rig, "rising")  # three requests against a's two: admitted, and a, least recently used, goes
        assert list(rig.states().items()) == [("a", "on_disk"), ("b", "ready"), ("rising", "ready")]
        assert (rig.source.downloads["rising"], rig.backend.loads["rising"]) == (1, 3)
        assert rig.cache.evictions == Counter(count=3)
        assert ("unloaded:count", "a") in rig.events.seen
        rig.check()

    run(scenario)


def test_memory_budget_evicts_as_many_as_needed_and_no_more(tmp_path: Path) -> None:
    memory = {"small-1": 10 * MB, "small-2": 10 * MB, "small-3": 10 * MB, "big": 25 * MB}
    rig = make_rig(tmp_path, Budgets(0, 40 * MB, 0), memory=memory)

    async def scenario() -> None:
        for target in ("small-1", "small-2", "small-3"):
            await request(rig, target)
        assert rig.cache.memory_in_use() == 30 * MB
        await request(rig, "big")  # 55 MB: the two least recently used go
        assert rig.states() == {"small-1": "on_disk", "small-2": "on_disk", "small-3": "ready", "big": "ready"}
        assert rig.cache.evictions == Counter(memory=2)
        rig.check()

    run(scenario)


def test_disk_budget_removes_unloaded_models_first(tmp_path: Path) -> None:
    sizes = {"a": 300_000, "b": 300_000, "c": 300_000}
    rig = make_rig(tmp_path, Budgets(1, 0, 700_000), sizes=sizes)

    async def scenario() -> None:
        await request(rig, "a")
        await request(rig, "b")  # count budget 1: a unloaded, still on disk
        assert rig.states() == {"a": "on_disk", "b": "ready"}
        await request(rig, "c")  # disk: a (unloaded) is removed, not b
        assert rig.states() == {"b": "on_disk", "c": "ready"}
        assert rig.cache.evictions == Counter(count=2, disk=1)
        assert ("removed:disk", "a") in rig.events.seen
        rig.check()
        await request(rig, "a")  # downloaded again
        assert rig.source.downloads["a"] == 2
        rig.check()

    run(scenario)


def test_a_model_whose_files_are_being_deleted_is_not_picked_again_nor_loaded_from_them(tmp_path: Path) -> None:
    # Found by bench/soak.py: concurrent downloads each picked the same victim and deleted it again (counted as
    # many evictions), and a request for the victim meanwhile loaded it from files being deleted: a ModelError
    # (424, "model directory does not exist"), or a loaded model the cache then called remote.
    sizes = {"a": 300_000, "b": 300_000, "c": 300_000, "d": 300_000}
    rig = make_rig(tmp_path, Budgets(1, 0, 700_000), sizes=sizes)
    store = rig.cache.store
    deleting = asyncio.Event()
    held: list[str] = []
    remove = store.remove

    async def held_remove(entry: Entry) -> None:
        held.append(entry.target)
        await deleting.wait()  # the deletion thread, slow: the files are still there meanwhile
        await remove(entry)

    async def until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
        for _ in range(int(seconds * 100)):  # the cache's blocking steps run in threads: time for them, bounded
            if condition():
                return
            await asyncio.sleep(0.01)

    async def scenario() -> None:
        await request(rig, "a")
        await request(rig, "b")
        assert rig.states() == {"a": "on_disk", "b": "ready"}
        store.remove = held_remove  # type: ignore[method-assign]
        first = asyncio.create_task(call(rig, "c"))  # needs a's room on disk: a's deletion starts, and is held
        await until(lambda: held == ["a"])
        second = asyncio.create_task(call(rig, "d"))  # needs room too: b's, not a's again
        await until(lambda: len(held) == 2)
        again = asyncio.create_task(call(rig, "a"))  # waits for a's deletion, then downloads it again
        # What it did before: loaded a from the files being deleted. Now it does not, and this waits out its bound.
        await until(lambda: rig.backend.loads["a"] == 2, seconds=1.0)
        deleting.set()
        await asyncio.gather(first, second, again)
        await settle()
        assert rig.events.seen.count(("removed:disk", "a")) == 1
        assert rig.cache.evictions["disk"] == sum(event.startswith("removed:disk") for event, _ in rig.events.seen)
        assert rig.source.downloads["a"] == 2
        assert ("load_failed", "a") not in rig.events.seen
        rig.check()

    run(scenario)


def test_a_busy_model_is_never_evicted_and_leaves_once_idle(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, Budgets(1, 0, 0))

    async def scenario() -> None:
        async with rig.cache.use("busy"):
            await request(rig, "other")  # admitted over budget: busy has a request in it
            assert rig.states() == {"busy": "ready", "other": "ready"}
            assert rig.cache.evictions == Counter()
        await settle()  # busy's request ended: the budget is enforced again, the idle LRU one leaves
        assert rig.states() == {"busy": "on_disk", "other": "ready"}
        assert rig.cache.evictions == Counter(count=1)
        rig.check()

    run(scenario)


def test_a_failed_load_fails_every_waiter_and_the_next_request_tries_again(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, NO_BUDGETS)

    async def scenario() -> None:
        rig.backend.failing.add("bad")
        results = await asyncio.gather(*(request(rig, "bad") for _ in range(3)), return_exceptions=True)
        assert all(isinstance(result, ModelError) for result in results)
        assert rig.states() == {"bad": "on_disk"}
        assert (rig.backend.loads["bad"], rig.events.seen.count(("load_failed", "bad"))) == (1, 1)
        rig.check()
        rig.backend.failing.clear()
        await request(rig, "bad")
        assert rig.states() == {"bad": "ready"}
        assert (rig.source.downloads["bad"], rig.backend.loads["bad"]) == (1, 2)
        rig.check()

    run(scenario)


def plane_of(rig: Rig) -> tuple[DataPlane, Metrics]:
    metrics = Metrics()
    return DataPlane(rig.cache, metrics), metrics


def invocation(target: str, body: bytes = b"1,2") -> Invocation:
    async def read() -> bytes:
        return body

    return Invocation(target, {"Content-Type": "text/csv"}, "text/csv", read)


def test_a_model_lost_mid_request_is_loaded_again_and_the_request_recorded_once(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, NO_BUDGETS)
    plane, metrics = plane_of(rig)

    async def scenario() -> None:
        assert (await plane.invoke(invocation("m"))).body == b"m:1,2"
        rig.backend.lose_next.add("m")
        answer = await plane.invoke(invocation("m"))
        assert (answer.body, answer.content_type) == (b"m:1,2", "text/csv")
        await settle()
        assert rig.states() == {"m": "ready"}
        assert (rig.source.downloads["m"], rig.backend.loads["m"], rig.backend.calls["m"]) == (1, 2, 3)
        # Two invocations, each counted once: the retry is no second lookup, no second invocation.
        assert rig.cache.counters == Counter(misses=1, hits=1, downloads=1, registrations=2)
        assert metrics.invocations.labels("200")._value.get() == 2
        rig.check()

    run(scenario)


def test_a_model_lost_twice_is_a_503_recorded_once(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, NO_BUDGETS)
    plane, metrics = plane_of(rig)

    async def scenario() -> None:
        await plane.invoke(invocation("m"))

        async def lose_again(entry: Entry, route: Route, body: bytes, headers: Mapping[str, str]) -> FakeReply:
            rig.backend.calls[entry.target] += 1
            rig.backend.hosted.pop(entry.name, None)
            rig.cache.lost(entry)
            raise ModelLost(entry.target)

        rig.backend.call = lose_again  # type: ignore[method-assign]
        with pytest.raises(ServiceUnavailable, match="could not be kept loaded"):
            await plane.invoke(invocation("m"))
        await settle()
        assert rig.backend.calls["m"] == 3  # one answered, then lost on the attempt and on its one retry
        assert metrics.invocations.labels("503")._value.get() == 1
        assert rig.cache.counters["hits"] + rig.cache.counters["misses"] == 2
        rig.check()

    run(scenario)


OPERATIONS = st.lists(st.sampled_from("abcdef"), min_size=1, max_size=25)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    targets=OPERATIONS,
    max_models=st.integers(0, 4),
    memory_budget=st.sampled_from([0, 25 * MB, 60 * MB]),
    disk_budget=st.sampled_from([0, 20_000, 60_000]),
)
def test_budgets_hold_after_every_step(
    tmp_path_factory: pytest.TempPathFactory, targets: list[str], max_models: int, memory_budget: int, disk_budget: int
) -> None:
    memory = {target: (index + 1) * 4 * MB for index, target in enumerate("abcdef")}
    sizes = {target: 2000 + 3000 * index for index, target in enumerate("abcdef")}
    rig = make_rig(tmp_path_factory.mktemp("cache"), Budgets(max_models, memory_budget, disk_budget), memory, sizes)

    async def scenario() -> None:
        for target in targets:
            await request(rig, target)
            assert rig.cache.get(target) is not None and rig.cache.get(target).state is State.READY  # type: ignore[union-attr]
            rig.check()
        # Everything the cache forgot it also removed; everything it kept it can still serve.
        assert rig.cache.counters["hits"] + rig.cache.counters["misses"] == len(targets)

    run(scenario)


# ---- keeping models hot: pinning ---------------------------------------------------------------------------


def test_pinned_models_outlive_a_flood_and_count_against_the_budget(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, Budgets(3, 0, 0), pin=("hot.tar.gz", "keep/*"))

    async def scenario() -> None:
        await request(rig, "hot.tar.gz")
        await request(rig, "keep/one")
        for index in range(8):  # least recently used are the pinned two, yet only the others leave
            await request(rig, f"flood-{index}")
            assert rig.states()["hot.tar.gz"] == rig.states()["keep/one"] == "ready"
            rig.check()
        assert [e.target for e in rig.cache.models() if e.state is State.READY] == ["hot.tar.gz", "keep/one", "flood-7"]
        assert rig.cache.evictions == Counter(count=7)
        assert (rig.backend.loads["hot.tar.gz"], rig.backend.loads["keep/one"]) == (1, 1)
        described = {e.target: e.describe()["pinned"] for e in rig.cache.models()}
        assert described == {"hot.tar.gz": True, "keep/one": True, **{f"flood-{i}": False for i in range(8)}}
        assert rig.cache.snapshot()["pinnedModels"] == 2

    run(scenario)


def test_a_load_that_needs_a_pinned_models_place_is_refused_and_the_pinned_one_stays(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, Budgets(1, 0, 0), pin=("hot",))

    async def scenario() -> None:
        await request(rig, "hot")
        with pytest.raises(InsufficientMemory, match="pinned models loaded take every one of the 1"):
            await request(rig, "other")
        assert rig.states() == {"hot": "ready", "other": "on_disk"}
        assert rig.backend.loads["other"] == 0  # refused before the backend was asked
        assert rig.cache.evictions == Counter()
        rig.check()

    run(scenario)


def test_memory_known_only_after_the_load_a_model_that_would_need_pinned_memory_is_unloaded_and_refused(
    tmp_path: Path,
) -> None:
    memory = {"pinned": 25 * MB, "small": 4 * MB, "big": 10 * MB}
    rig = make_rig(tmp_path, Budgets(0, 30 * MB, 0), memory=memory, pin=("pinned",))

    async def scenario() -> None:
        await request(rig, "pinned")
        await request(rig, "small")  # 29 MB: fits
        with pytest.raises(InsufficientMemory, match="pinned models hold 25000000 bytes of the 30000000"):
            await request(rig, "big")  # 35 MB beside the pinned one even with small gone: refused, not evicting
        await settle()
        assert rig.states() == {"pinned": "ready", "small": "ready", "big": "on_disk"}
        assert rig.backend.loads["big"] == 1 and ("load_failed", "big") in rig.events.seen
        rig.check()

    run(scenario)


def test_disk_held_by_pinned_models_is_never_freed_for_another(tmp_path: Path) -> None:
    sizes = {"pinned": 300_000, "other": 300_000}
    rig = make_rig(tmp_path, Budgets(0, 0, 400_000), sizes=sizes, pin=("pinned",))

    async def scenario() -> None:
        await request(rig, "pinned")
        for _ in range(2):
            with pytest.raises(InsufficientMemory, match=r"not enough disk for model 'other' \(300000 bytes\): pinned"):
                await request(rig, "other")  # its archive of zeros is small: refused once extracted
            assert rig.states() == {"pinned": "ready"}  # nothing of other left on disk, nothing of pinned removed
            rig.check()
        rig.cache.entries["pinned"].disk_bytes = 399_990  # as if it were larger: the archive is refused unread
        with pytest.raises(InsufficientMemory, match=r"not enough disk for model 'other' \([0-9]{3,4} bytes\): pinned"):
            await request(rig, "other")
        assert (rig.source.downloads["other"], rig.source.downloads["pinned"]) == (2, 1)

    run(scenario)


def test_pins_match_names_and_patterns() -> None:
    pins = Pins(["houston/model.tar.gz", "keep/*", "m-?.tar.gz"])
    assert pins.literals == ("houston/model.tar.gz",)
    assert all(name in pins for name in ("houston/model.tar.gz", "keep/a/b.tar.gz", "m-1.tar.gz"))
    assert not any(name in pins for name in ("houston/other.tar.gz", "kept/a", "m-10.tar.gz"))
    assert not Pins([])


@pytest.mark.parametrize(
    ("argv", "refusal"),
    [
        (["--pin", "a", "--pin", "b", "--pin", "c", "--max-models", "2"], "3 pinned models do not fit --max-models 2"),
        (["--preload", "a", "--model-prefix", ""], "--preload and --preload-top need --model-prefix"),
        (["--preload-top", "5"], "--preload and --preload-top need --model-prefix"),
        (["--pin", "s3://models/prod/a.tar.gz"], "--pin 's3://models/prod/a.tar.gz': TargetModel must"),
        (["--idle-ttl-delete"], "--idle-ttl-delete needs --idle-ttl"),
    ],
)
def test_settings_that_cannot_work_are_refused_at_start(argv: list[str], refusal: str) -> None:
    with pytest.raises(KeepingConfigError) as refused:
        check_keeping(Settings.from_sources(argv, {}))
    assert str(refused.value).startswith(refusal) and "\n" not in str(refused.value)


def test_pinned_names_filling_the_count_budget_or_patterns_are_allowed_with_a_warning_at_most() -> None:
    full = Settings.from_sources(["--pin", "a", "--pin", "b", "--pin", "c*", "--max-models", "2"], {})
    (warning,) = check_keeping(full)
    assert "take every one of --max-models 2" in warning
    assert check_keeping(Settings.from_sources(["--pin", "*", "--max-models", "1"], {})) == []


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    targets=OPERATIONS,
    max_models=st.integers(0, 4),
    memory_budget=st.sampled_from([0, 30 * MB, 60 * MB]),
    pinned=st.sets(st.sampled_from("abcdef"), max_size=3),
)
def test_budgets_hold_and_pinned_models_stay_whatever_the_traffic(
    tmp_path_factory: pytest.TempPathFactory, targets: list[str], max_models: int, memory_budget: int, pinned: set[str]
) -> None:
    memory = {target: (index + 1) * 4 * MB for index, target in enumerate("abcdef")}
    rig = make_rig(
        tmp_path_factory.mktemp("cache"), Budgets(max_models, memory_budget, 0), memory, pin=tuple(sorted(pinned))
    )

    async def scenario() -> None:
        ever_ready: set[str] = set()
        for target in targets:
            try:
                await request(rig, target)
            except InsufficientMemory:
                await settle()  # only a pinned model could have made room: refused, and nothing else moved
            ever_ready |= {t for t, state in rig.states().items() if state == "ready" and t in pinned}
            assert all(rig.states()[t] == "ready" for t in ever_ready)
            rig.check()

    run(scenario)


# ---- keeping models hot: pre-loading ------------------------------------------------------------------------


def test_preload_loads_the_list_until_it_is_full_and_pushes_out_nobody(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, Budgets(3, 0, 0))

    async def scenario() -> None:
        await request(rig, "served")  # a model a request loaded first
        preload = Preload(["first", "second", "third"], rig.cache.warm, concurrency=1)
        assert preload.status() == {"total": 3, "pending": 3, "loaded": 0, "skipped": 0, "failed": 0}
        await preload.run()
        await settle()
        assert preload.status() == {"total": 3, "pending": 0, "loaded": 2, "skipped": 1, "failed": 0}
        # Least recently used until asked for, the later in the list the sooner it leaves; served was not pushed out.
        assert list(rig.states().items()) == [("second", "ready"), ("first", "ready"), ("served", "ready")]
        assert rig.cache.counters == Counter(misses=1, downloads=3, registrations=3)  # pre-loads are no requests
        assert rig.cache.usage.counts == Counter(served=1)
        rig.check()
        await request(rig, "newcomer")
        assert rig.states()["second"] == "on_disk" and rig.states()["first"] == "ready"
        rig.check()

    run(scenario)


def test_a_preloaded_model_that_turns_out_too_large_is_unloaded_again_and_skipped(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, Budgets(0, 30 * MB, 0), memory={"a": 15 * MB, "huge": 20 * MB, "b": 10 * MB})

    async def scenario() -> None:
        preload = Preload(["a", "huge", "b"], rig.cache.warm, concurrency=1)
        await preload.run()
        await settle()
        assert preload.status() == {"total": 3, "pending": 0, "loaded": 2, "skipped": 1, "failed": 0}
        assert rig.states() == {"b": "ready", "huge": "on_disk", "a": "ready"}
        assert rig.cache.evictions == Counter()
        rig.check()

    run(scenario)


def test_preloading_is_bounded_and_a_failure_is_counted_not_raised(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, NO_BUDGETS)

    async def scenario() -> None:
        targets = ["m0", "m1", "bad", "m3", "m4"]
        gates = {target: asyncio.Event() for target in targets}
        rig.backend.gates.update(gates)
        rig.backend.failing.add("bad")
        preload = Preload(targets, rig.cache.warm, concurrency=2)
        running = asyncio.create_task(preload.run())
        for target in targets:
            for _ in range(100):
                await asyncio.sleep(0.01)
                if rig.backend.loads[target]:
                    break
            loading = [t for t, state in rig.states().items() if state == "loading"]
            assert len(loading) <= 2 and target in loading
            gates[target].set()
        await running
        await settle()
        assert preload.status() == {"total": 5, "pending": 0, "loaded": 4, "skipped": 0, "failed": 1}
        assert rig.states() == {"m0": "ready", "m1": "ready", "bad": "on_disk", "m3": "ready", "m4": "ready"}
        rig.check()

    run(scenario)


def test_a_request_during_a_preload_shares_its_load_and_makes_room_as_any_request(tmp_path: Path) -> None:
    memory = {"old": 20 * MB, "lonely": 15 * MB, "wanted": 15 * MB}
    rig = make_rig(tmp_path, Budgets(0, 30 * MB, 0), memory=memory)

    async def scenario() -> None:
        await request(rig, "old")
        assert await rig.cache.warm("lonely") is False  # 35 MB: pre-loaded alone, it does not push old out
        await settle()
        assert rig.states() == {"lonely": "on_disk", "old": "ready"}
        rig.backend.gates["wanted"] = gate = asyncio.Event()
        warming = asyncio.create_task(rig.cache.warm("wanted"))
        await asyncio.sleep(0.05)
        assert rig.states()["wanted"] == "loading"
        asking = asyncio.create_task(call(rig, "wanted"))  # a real request joins: admitted as any, old leaves
        await asyncio.sleep(0.05)
        gate.set()
        assert await warming is True
        await asking
        await settle()
        assert rig.states() == {"lonely": "on_disk", "old": "on_disk", "wanted": "ready"}
        assert rig.backend.loads["wanted"] == 1 and rig.cache.evictions == Counter(memory=1)
        rig.check()

    run(scenario)


def test_the_usage_record_carries_over_halved_and_is_written_whole(tmp_path: Path) -> None:
    assert read_usage(tmp_path) == {}
    usage = Usage({"old-favourite": 10.0, "old-rare": 1.0})
    for target in ["new"] * 3 + ["old-rare"] * 3:
        usage.record(target)
    assert usage.counts == Counter({"old-favourite": 5.0, "old-rare": 3.5, "new": 3})
    assert usage.top(2) == ["old-favourite", "old-rare"] and usage.top(0) == []
    write_usage(tmp_path, usage.counts)
    assert read_usage(tmp_path) == {"old-favourite": 5.0, "old-rare": 3.5, "new": 3.0}
    assert [path.name for path in tmp_path.iterdir()] == [USAGE_FILE_NAME]  # no partial file left beside it
    (tmp_path / USAGE_FILE_NAME).write_text('{"models": [{"model": "x"')  # what a torn write would leave
    assert read_usage(tmp_path) == {}


def test_preload_list_is_the_named_models_then_the_most_used_each_once() -> None:
    recorded = {"a": 1.0, "b": 50.0, "c": 20.0, "d": 30.0}
    chosen = Settings.from_sources(["--preload", "c", "--preload", "x", "--preload-top", "3"], {})
    assert preload_targets(chosen, recorded) == ["c", "x", "b", "d"]
    assert preload_targets(Settings.from_sources([], {"OPENMME_PRELOAD": "y, z"}), recorded) == ["y", "z"]


def test_requests_are_recorded_and_saved_to_the_cache_dir(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, NO_BUDGETS)

    async def scenario() -> None:
        for target in ["a", "b", "b"]:
            await request(rig, target)
        await rig.cache.save_usage()
        assert read_usage(tmp_path) == {"a": 1.0, "b": 2.0}

    run(scenario)


# ---- keeping models hot: idle TTL and the disabled model cache ---------------------------------------------


def test_idle_models_are_unloaded_after_the_ttl_and_loaded_again_on_the_next_request(tmp_path: Path) -> None:
    clock = Clock()
    rig = make_rig(tmp_path, NO_BUDGETS, clock=clock, idle_ttl=10.0, pin=("pinned",))

    async def scenario() -> None:
        for target in ("a", "pinned"):
            await request(rig, target)
        clock.now = 5.0
        await request(rig, "b")
        clock.now = 12.0
        rig.cache.unload_idle()
        await settle()
        assert rig.states() == {"a": "on_disk", "pinned": "ready", "b": "ready"}
        assert ("unloaded:idle", "a") in rig.events.seen
        async with rig.cache.use("b"):  # in use at the deadline: it stays
            clock.now = 100.0
            rig.cache.unload_idle()
            await settle()
            assert rig.states()["b"] == "ready"
        rig.cache.unload_idle()  # its request just ended at 100: idle from then on
        await settle()
        assert rig.states() == {"a": "on_disk", "pinned": "ready", "b": "ready"}
        clock.now = 111.0
        rig.cache.unload_idle()
        await settle()
        assert rig.states() == {"a": "on_disk", "pinned": "ready", "b": "on_disk"}
        assert rig.cache.evictions == Counter(idle=2)
        rig.check()
        await request(rig, "a")  # loaded again from disk
        assert rig.states()["a"] == "ready" and (rig.source.downloads["a"], rig.backend.loads["a"]) == (1, 2)
        rig.check()

    run(scenario)


def test_with_idle_ttl_delete_idle_models_leave_the_disk_too(tmp_path: Path) -> None:
    clock = Clock()
    rig = make_rig(tmp_path, Budgets(1, 0, 0), clock=clock, idle_ttl=10.0, idle_ttl_delete=True)

    async def scenario() -> None:
        await request(rig, "a")
        await request(rig, "b")  # a: unloaded by the count budget, still on disk
        warm = asyncio.create_task(rig.cache.warm("b"))  # pre-loaded models are idle from their load
        await warm
        clock.now = 11.0
        rig.cache.unload_idle()
        await settle()
        assert rig.states() == {}
        assert {("removed:idle", "a"), ("removed:idle", "b"), ("unloaded:idle", "b")} <= set(rig.events.seen)
        assert rig.cache.evictions == Counter(count=1, idle=1)
        rig.check()
        await request(rig, "a")
        assert rig.source.downloads["a"] == 2
        rig.check()

    run(scenario)


def test_a_preloaded_model_is_idle_from_its_load(tmp_path: Path) -> None:
    clock = Clock()
    rig = make_rig(tmp_path, NO_BUDGETS, clock=clock, idle_ttl=10.0)

    async def scenario() -> None:
        clock.now = 50.0
        assert await rig.cache.warm("early") is True
        clock.now = 55.0
        rig.cache.unload_idle()
        await settle()
        assert rig.states() == {"early": "ready"}
        assert rig.cache.get("early").describe()["lastUsed"] is None  # type: ignore[union-attr]
        clock.now = 61.0
        rig.cache.unload_idle()
        await settle()
        assert rig.states() == {"early": "on_disk"}

    run(scenario)


def test_with_the_model_cache_disabled_every_call_loads_and_then_unloads_and_deletes(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, NO_BUDGETS, model_cache="disabled", pin=("pinned",))

    async def scenario() -> None:
        rig.backend.gates["m"] = gate = asyncio.Event()
        calls = [asyncio.create_task(call(rig, "m")) for _ in range(5)]
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(*calls)  # five concurrent calls: one load, one unload once the last one ended
        await settle()
        assert rig.states() == {}
        assert rig.cache.evictions == Counter(cache_disabled=1)
        assert (rig.source.downloads["m"], rig.backend.loads["m"]) == (1, 1)
        assert ("removed:cache_disabled", "m") in rig.events.seen
        rig.check()
        await request(rig, "m")
        assert (rig.source.downloads["m"], rig.backend.loads["m"]) == (2, 2)
        await request(rig, "pinned")  # a pinned model stays whatever the cache setting
        assert rig.states() == {"pinned": "ready"}
        assert rig.cache.get("pinned").describe()["modelCache"] == "disabled"  # type: ignore[union-attr]
        rig.check()

    run(scenario)


def test_an_archive_can_turn_its_model_cache_off_or_on_against_the_endpoint(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, NO_BUDGETS)
    enabled = make_rig(tmp_path / "other", NO_BUDGETS, model_cache="disabled")

    async def scenario() -> None:
        rig.source.archive_settings["once"] = {"modelCache": "Disabled"}  # SageMaker's spelling
        rig.source.archive_settings["odd"] = {"modelCache": "sometimes"}
        for target in ("once", "usual"):
            await request(rig, target)
        assert rig.states() == {"usual": "ready"}
        with pytest.raises(ModelError, match='"modelCache" must be "Enabled" or "Disabled"'):
            await request(rig, "odd")
        rig.check()
        enabled.source.archive_settings["kept"] = {"modelCache": "enabled", "hosting": "isolated"}
        for target in ("kept", "dropped"):
            await request(enabled, target)
        assert enabled.states() == {"kept": "ready"}
        enabled.check()

    run(scenario)


def test_metrics_show_pinned_models_preloading_and_the_new_eviction_reasons(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, NO_BUDGETS, memory={"hot": 7 * MB}, pin=("hot",), model_cache="disabled")
    metrics = Metrics()
    rig.cache.events = (*rig.cache.events, metrics)
    metrics.watch(rig.cache)
    preload = Preload(["hot", "missing"], rig.cache.warm, concurrency=1)
    metrics.watch_preload(preload)
    rig.source.missing.add("missing")

    def scrape() -> dict[str, float]:
        lines = generate_latest(metrics.registry).decode().splitlines()
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("openmme_")}

    assert scrape()['openmme_preload_models{state="pending"}'] == 2

    async def scenario() -> None:
        await preload.run()
        await request(rig, "other")

    run(scenario)
    samples = scrape()
    assert {state: samples[f'openmme_preload_models{{state="{state}"}}'] for state in PRELOAD_STATES} == {
        "pending": 0,
        "loaded": 1,
        "skipped": 0,
        "failed": 1,
    }
    assert (samples["openmme_pinned_models"], samples["openmme_pinned_memory_bytes"]) == (1, 7 * MB)
    assert samples['openmme_model_evictions_total{reason="cache_disabled"}'] == 1
    assert samples['openmme_model_evictions_total{reason="disk"}'] == 0  # its files went with the counted unload


# ---- a full cache disk: the operator's problem, answered 507 InsufficientStorage -----------------------------------


class IncompressibleSource(DirectorySource):
    """Archives of random bytes (seeded by the name): an archive is about as large as its extracted model."""

    def _archive(self, target: str) -> bytes:
        payload = random.Random(target).randbytes(self.sizes.get(target, 1000))
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w:gz") as archive:
            info = tarfile.TarInfo("model.bin")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
        return out.getvalue()


class SmallDisk(ModelStore):
    """The store on a filesystem of ``capacity`` bytes: what is free is that, less the bytes really under the
    cache directory (models, staging, archives)."""

    def __init__(self, settings: Settings, source: DirectorySource, capacity: int) -> None:
        super().__init__(settings, source)
        self.capacity = capacity

    async def free_bytes(self) -> int:
        root = self.settings.cache_dir
        used = sum(path.stat().st_size for path in root.rglob("*") if path.is_file()) if root.exists() else 0
        return self.capacity - used


def disk_rig(tmp_path: Path, sizes: Mapping[str, int], capacity: int) -> tuple[Rig, SmallDisk, Metrics]:
    settings = Settings(cache_dir=tmp_path / "cache", wait_budget=10.0)
    source = IncompressibleSource(sizes)
    store = SmallDisk(settings, source, capacity)
    events, metrics = Recorder(), Metrics()
    cache = ModelCache(settings, NO_BUDGETS, FakeBackend(), store, events=(events, metrics))
    assert isinstance(cache.backend, FakeBackend)
    return Rig(cache, cache.backend, source, events), store, metrics


def refusals(metrics: Metrics) -> tuple[float | None, float | None]:
    """Loads refused for space, and other load failures (a full disk is not the model's failure)."""
    sample = metrics.registry.get_sample_value
    return sample("openmme_cache_disk_refusals_total"), sample("openmme_model_load_failures_total")


def test_idle_models_leave_the_disk_least_recently_used_first_to_make_real_room(tmp_path: Path) -> None:
    rig, _, metrics = disk_rig(tmp_path, {"a": 300_000, "b": 300_000, "c": 300_000}, capacity=1_000_000)

    async def scenario() -> None:
        await request(rig, "a")
        await request(rig, "b")
        assert rig.states() == {"a": "ready", "b": "ready"}
        # 400 kB free; c's archive and extraction need about 600 kB: a, the least recently used, leaves.
        await request(rig, "c")
        assert rig.states() == {"b": "ready", "c": "ready"}
        assert ("removed:disk", "a") in rig.events.seen and rig.cache.evictions == Counter({"disk": 1})
        assert refusals(metrics) == (0, 0)
        rig.check()

    run(scenario)


def test_a_model_the_disk_cannot_hold_is_refused_without_evicting_and_loads_once_there_is_room(
    tmp_path: Path,
) -> None:
    rig, store, metrics = disk_rig(tmp_path, {"small": 300_000, "huge": 600_000}, capacity=1_000_000)

    async def scenario() -> None:
        await request(rig, "small")
        for _ in range(2):  # about 1.2 MB needed: removing small would not make room, so it stays
            with pytest.raises(InsufficientStorage, match=r"no room on the endpoint's cache disk for model 'huge'"):
                await request(rig, "huge")
            assert rig.states() == {"small": "ready"}  # huge not remembered, small kept
            assert rig.source.downloads["huge"] == 0 and not rig.cache.evictions
            rig.check()
        assert refusals(metrics) == (2, 0)
        await request(rig, "small")
        store.capacity = 2_000_000  # the operator freed space
        await request(rig, "huge")
        assert rig.states() == {"small": "ready", "huge": "ready"} and rig.source.downloads["huge"] == 1
        assert refusals(metrics) == (2, 0)
        rig.check()

    run(scenario)


class FillingSource(IncompressibleSource):
    """A source whose downloads fill the disk after ``room`` bytes, as ENOSPC (or EDQUOT) would, while ``full``."""

    def __init__(self, sizes: Mapping[str, int], error: int, room: int) -> None:
        super().__init__(sizes)
        self.error, self.room, self.full = error, room, True

    def download(self, target: str, destination: Path, max_bytes: int) -> int:
        if not self.full:
            return super().download(target, destination, max_bytes)
        self.downloads[target] += 1
        destination.write_bytes(self._archive(target)[: self.room])
        raise OSError(self.error, os.strerror(self.error))


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EDQUOT])
def test_a_disk_that_fills_during_the_download_is_a_storage_error_and_nothing_is_kept(
    tmp_path: Path, error: int
) -> None:
    rig = make_rig(tmp_path, NO_BUDGETS)
    rig.source = source = FillingSource({"m": 50_000}, error, room=20_000)
    rig.cache.store.source = source

    async def scenario() -> None:
        with pytest.raises(InsufficientStorage, match=rf"model 'm' \({os.strerror(error)}\): retry later"):
            await request(rig, "m")
        assert rig.states() == {} and ("load_failed", "m") in rig.events.seen
        assert list(rig.cache.settings.staging_dir.iterdir()) == []  # the half-written archive is gone
        rig.check()
        source.full = False
        await request(rig, "m")  # not remembered as failed
        assert rig.states() == {"m": "ready"} and source.downloads["m"] == 2
        rig.check()

    run(scenario)


def test_a_disk_that_fills_during_extraction_is_a_storage_error_not_a_model_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = make_rig(tmp_path, NO_BUDGETS, sizes={"m": 50_000})
    real_fdopen = os.fdopen

    def full_disk(descriptor: int, mode: str) -> Any:
        real_fdopen(descriptor, mode).close()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    async def scenario() -> None:
        with monkeypatch.context() as patch:
            patch.setattr(extract.os, "fdopen", full_disk)
            with pytest.raises(InsufficientStorage, match=r"model 'm' \(No space left on device\): retry later"):
                await request(rig, "m")
        assert rig.states() == {}
        assert list(rig.cache.settings.staging_dir.iterdir()) == []
        rig.check()
        await request(rig, "m")
        assert rig.states() == {"m": "ready"}
        rig.check()

    run(scenario)


def test_housekeeping_measures_the_cache_disk_for_the_free_space_gauge(tmp_path: Path) -> None:
    rig, store, metrics = disk_rig(tmp_path, {"a": 300_000}, capacity=1_000_000)

    def gauge() -> float | None:
        return metrics.registry.get_sample_value("openmme_cache_disk_free_bytes")

    async def scenario() -> None:
        assert math.isnan(gauge() or 0.0)  # unknown until housekeeping's first round, not 0
        await rig.cache.tend()
        assert gauge() == 1_000_000
        await request(rig, "a")
        assert gauge() == 1_000_000  # a request does not measure it
        await rig.cache.tend()
        assert gauge() == await store.free_bytes() == 700_000

    run(scenario)
