"""The owner's side of several front processes, in process: which models an edge may answer itself (the routes),
the changes an edge is sent, and what an edge's report does to the cache (hits counted, the model used now, its
LRU place). With real processes: tests/integration/test_fronts.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openmme.endpoint.cache import Budgets
from openmme.endpoint.cache.entry import Entry, State
from openmme.endpoint.edges import Edges, RouteInfo, route_changes, routes_of
from openmme.endpoint.metrics import Metrics
from tests.endpoint.test_cache import make_rig, run


def entry(target: str, hosting: str = "dense", state: State = State.READY, **fields: object) -> Entry:
    made = Entry(target, target.replace("/", "_"), Path("/store") / target, hosting=hosting, state=state)
    made.replicas = {1: 100, 0: 100}
    for name, value in fields.items():
        setattr(made, name, value)
    return made


def test_an_edge_answers_only_loaded_dense_models_whose_cache_is_on() -> None:
    entries = [
        entry("a.tar.gz", default_accept="text/csv"),
        entry("isolated.tar.gz", hosting="isolated"),
        entry("loading.tar.gz", state=State.LOADING),
        entry("disabled.tar.gz", model_cache="disabled"),
        entry("lost.tar.gz", replicas={}),
    ]
    assert routes_of(entries) == {"a.tar.gz": RouteInfo("a.tar.gz", (0, 1), "text/csv")}
    route = RouteInfo("a.tar.gz", (0, 1), "text/csv")
    assert RouteInfo.decode(route.encode()) == route


def test_an_edge_is_sent_what_changed_and_nothing_when_nothing_did() -> None:
    one, two = RouteInfo("one", (0,), None), RouteInfo("two", (1,), None)
    assert route_changes({}, {"one": one}) == {"routes": {"set": {"one": ["one", [0], None]}, "drop": []}}
    assert route_changes({"one": one}, {"one": one}) is None
    spread = RouteInfo("one", (0, 1), None)
    assert route_changes({"one": one, "two": two}, {"one": spread}) == {
        "routes": {"set": {"one": ["one", [0, 1], None]}, "drop": ["two"]}
    }


def test_what_an_edge_answered_counts_as_hits_and_use_of_the_model(tmp_path: Path) -> None:
    now = [100.0]
    rig = make_rig(tmp_path, Budgets(0, 0, 0), clock=lambda: now[0])

    async def scenario() -> None:
        for target in ("a", "b"):
            async with rig.cache.use(target):
                pass

    run(scenario)
    hits = rig.cache.counters["hits"]
    now[0] = 250.0
    rig.cache.touched("a", 3)
    rig.cache.touched("unknown", 5)  # evicted meanwhile: nothing to count
    assert rig.cache.counters["hits"] == hits + 3
    assert [model.target for model in rig.cache.models()] == ["b", "a"]  # "a" is the most recently used now
    assert rig.cache.get("a") is not None and rig.cache.get("a").last_used == 250.0  # type: ignore[union-attr]
    assert rig.cache.usage.counts["a"] == 4 and rig.events.seen.count(("hit", "a")) == 3


class Writer:
    """What the owner writes to one edge's control channel."""

    def __init__(self) -> None:
        self.lines: list[dict[str, object]] = []

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.lines.append(json.loads(data))


@pytest.mark.parametrize(
    ("options", "sent"),
    [({}, True), ({"capture_destination": "s3://bucket/capture/"}, False), ({"pipeline": "f.pipeline.json"}, False)],
)
def test_with_data_capture_or_an_endpoint_pipeline_the_edges_get_no_route(
    tmp_path: Path, options: dict[str, str], sent: bool
) -> None:
    rig = make_rig(tmp_path, Budgets(0, 0, 0), fronts=2, **options)

    async def scenario() -> None:
        async with rig.cache.use("a"):
            pass

    run(scenario)
    loaded = rig.cache.get("a")
    assert loaded is not None
    loaded.hosting, loaded.replicas = "dense", {0: 100}  # as the dense backend leaves a loaded model
    edges = Edges(rig.cache.settings, rig.cache, Metrics(), tmp_path, {0: str(tmp_path / "shard-0.sock")})
    writer = Writer()
    edges.edges[0].writer = writer  # type: ignore[assignment]
    edges.sync()
    expected = [{"routes": {"set": {"a": [loaded.name, [0], None]}, "drop": []}}] if sent else []
    assert writer.lines == expected
