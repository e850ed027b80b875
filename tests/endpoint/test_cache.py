"""The model cache in process, with a fake backend and a directory as the model source (as Ray Serve tests its
multiplexer): single flight under concurrent misses, eviction order under each budget, a busy model never
evicted, a failed load, a model lost mid-request, and the budgets after every step. No S3, no JVM, no MMS: the
real processes stay in tests/integration for what only they can show.

Each scenario runs on its own event loop; after every step the whole state is asserted (states, what the backend
holds, what is on disk, counters), not one field.
"""

from __future__ import annotations

import asyncio
import io
import tarfile
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openmme.endpoint.cache import Budgets, CacheEvents, Entry, ModelLost, Models, Route, State
from openmme.endpoint.cache.core import ModelCache
from openmme.endpoint.cache.store import ModelStore
from openmme.endpoint.dataplane import DataPlane, Invocation
from openmme.endpoint.errors import ModelError, ServiceUnavailable
from openmme.endpoint.metrics import Metrics
from openmme.endpoint.names import S3Location
from openmme.endpoint.settings import Settings

T = TypeVar("T")
MB = 1_000_000


class DirectorySource:
    """The model source: archives made on the fly, each holding one file of ``sizes[target]`` bytes."""

    prefix = S3Location("models", "prod/")

    def __init__(self, sizes: Mapping[str, int] | None = None) -> None:
        self.sizes = dict(sizes or {})
        self.downloads: Counter[str] = Counter()

    def _archive(self, target: str) -> bytes:
        payload = b"\0" * self.sizes.get(target, 1000)
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w:gz") as archive:
            info = tarfile.TarInfo("model.bin")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
        return out.getvalue()

    def size(self, target: str) -> int:
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

    def removed(self, entry: Entry) -> None:
        self.seen.append(("removed", entry.target))


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


def make_rig(
    tmp_path: Path,
    budgets: Budgets,
    memory: Mapping[str, int] | None = None,
    sizes: Mapping[str, int] | None = None,
    wait: float = 10.0,
    admission: str = "lru",
) -> Rig:
    settings = Settings(cache_dir=tmp_path, wait_budget=wait, admission=admission)
    source = DirectorySource(sizes)
    backend = FakeBackend(memory)
    events = Recorder()
    cache = ModelCache(settings, budgets, backend, ModelStore(settings, source), events=(events,), clock=lambda: 0.0)
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
    async with rig.cache.use(target):
        pass
    await settle()


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
        assert ("removed", "a") in rig.events.seen
        rig.check()
        await request(rig, "a")  # downloaded again
        assert rig.source.downloads["a"] == 2
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
