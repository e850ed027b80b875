"""Aliases with real processes: SeaweedFS, ``openmme serve`` (MMS, its workers, xgboost) and, for the scale-out case,
three replicas behind the generated nginx router.

A client calling one alias under steady load sees no error and no cold start while the alias moves v1 → v2: no
request of the alias misses the cache (the endpoint's own access log says so: a miss is a request that waited for a
load, which is what a cold start is), whatever the machine's load makes of the latencies. The single endpoint hosts
models isolated; behind the router the replicas host them dense. TargetVariant pins a version,
a sticky key keeps its version, a shadow's failures never reach a caller and its prediction delta is measured, and a
canary that fails is rolled back by the rollout controller within its bake time (a good one is promoted).
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import xgboost

from openmme.ports import free_port
from openmme.publish import publish_archive, s3_client
from openmme.publish.aliases import ShadowSpec, alias_history, get_alias, set_alias
from openmme.publish.rollout import Guardrails, start_rollout
from openmme.publish.samples import make_rows, sample_archive, train_booster
from openmme.router import RouterOptions, nginx_config
from openmme.seaweed import EmbeddedS3
from tests.conftest import Endpoint, Launcher
from tests.support import Nginx, csv_body, needs_nginx, wait_until

pytestmark = pytest.mark.integration

V1, V2, WIDE = "houston/v1/model.tar.gz", "houston/v2/model.tar.gz", "houston/wide/model.tar.gz"
ROWS = make_rows(1, seed=5)
BODY = csv_body(ROWS).encode()
REFRESH = "0.5"


def wide_booster() -> xgboost.Booster:
    """A model of 10 features: it loads, but refuses the 6-column rows every client here sends (a 424)."""
    rows = np.random.default_rng(3).normal(size=(100, 10)).astype(np.float32)
    return xgboost.train({"nthread": 1}, xgboost.DMatrix(rows, label=rows[:, 0]), num_boost_round=3)


@dataclass
class World:
    prefix: str
    answers: dict[str, bytes]  # the JSON answer of each version to BODY
    client: Any  # S3, made once: making a boto3 client holds the GIL long enough to stall the clients' threads


def publish_versions(prefix: str) -> World:
    boosters = {V1: train_booster("reg:squarederror", 1), V2: train_booster("reg:squarederror", 2, rounds=30)}
    for target, booster in boosters.items():
        publish_archive(sample_archive(booster), prefix, target)
    publish_archive(sample_archive(wide_booster()), prefix, WIDE)
    answers = {target: json.dumps(b.predict(xgboost.DMatrix(ROWS)).tolist()).encode() for target, b in boosters.items()}
    return World(prefix, answers, s3_client())


@dataclass
class Call:
    started: float
    seconds: float
    status: int
    variant: str | None
    body: bytes


@dataclass
class Load:
    """Clients invoking one alias in a loop over keep-alive connections, every call recorded."""

    url: str
    target: str = "houston"
    clients: int = 2
    calls: list[Call] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        for _ in range(self.clients):
            thread = threading.Thread(target=self._client, daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def _client(self) -> None:
        address = urllib.parse.urlsplit(self.url)
        connection = http.client.HTTPConnection(address.hostname or "127.0.0.1", address.port, timeout=60)
        headers = {"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": self.target}
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                connection.request("POST", "/invocations", body=BODY, headers=headers)
                response = connection.getresponse()
                body = response.read()
                call = Call(started, time.monotonic() - started, response.status,
                            response.headers.get("x-Amzn-Invoked-Production-Variant"), body)  # fmt: skip
            except OSError as exc:
                call = Call(started, time.monotonic() - started, 0, None, repr(exc).encode())
                connection.close()
            self.calls.append(call)
        connection.close()

    def since(self, moment: float) -> list[Call]:
        return [call for call in list(self.calls) if call.started >= moment]


def serving(endpoint: Endpoint, generation: int) -> bool:
    alias = endpoint.get("/aliases")["aliases"].get("houston")
    return alias is not None and alias["generation"] >= generation


def alias_misses(endpoint: Endpoint, since: float) -> int:
    """Invocations of the alias the endpoint logged as cache misses (each one a cold start) from ``since`` (wall
    clock) on."""
    lines = [json.loads(line) for line in endpoint.log().splitlines() if line.startswith('{"time"')]
    return sum(
        line["time"] >= since and line.get("target_model") == "houston" and line.get("cache") == "miss"
        for line in lines
    )


@pytest.fixture(scope="module")
def world(s3: EmbeddedS3) -> World:
    return publish_versions(f"s3://models/{uuid.uuid4().hex[:10]}/")


@pytest.fixture(scope="module")
def endpoint(world: World, s3: EmbeddedS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    launcher = Launcher(s3, tmp_path_factory)
    try:
        yield launcher.start(world.prefix, "--alias-refresh", REFRESH)
    finally:
        launcher.close()


def move(world: World, endpoint: Endpoint | list[Endpoint], *versions: str, **options: Any) -> int:
    """``openmme alias set houston …`` and wait until the endpoint(s) serve it; the generation. The versions are
    not loaded here first (tests/publish/test_aliases.py checks that): in this process, under the clients' load,
    loading them would stall the clients' threads and count as their latency."""
    document = set_alias(world.prefix, "houston", list(versions), check=False, client=world.client, **options)
    for one in endpoint if isinstance(endpoint, list) else [endpoint]:
        assert wait_until(lambda one=one: serving(one, document.generation), timeout=60)  # type: ignore[misc]
    return document.generation


def test_an_alias_moves_under_load_with_no_error_and_no_cold_start(world: World, endpoint: Endpoint) -> None:
    move(world, endpoint, V1)
    with Load(endpoint.url) as load:
        assert wait_until(lambda: len(load.calls) > 50, timeout=60)  # v1 loaded by the first call
        moved_wall = time.time()
        move(world, endpoint, V2, reason="v2 is better")
        after = time.monotonic()
        time.sleep(2)
    assert [call for call in load.calls if call.status != 200] == []
    expected = {"v1": world.answers[V1], "v2": world.answers[V2]}
    assert all(call.body == expected[str(call.variant)] for call in load.calls)
    assert {call.variant for call in load.since(after)} == {"v2"}
    assert alias_misses(endpoint, since=moved_wall) == 0
    assert endpoint.get("/aliases")["aliases"]["houston"]["switch_ms"] > 0  # v2 was loaded before it took calls


def test_target_variant_pins_a_version_and_a_sticky_key_keeps_its_version(world: World, endpoint: Endpoint) -> None:
    move(world, endpoint, f"{V1}=50", f"{V2}=50")
    client = endpoint.runtime(retries=1)
    for variant, target in (("v1", V1), ("v2", V2)):
        for _ in range(5):
            response = endpoint.invoke("houston", BODY, TargetVariant=variant, client=client)
            assert response["InvokedProductionVariant"] == variant
            assert response["Body"].read() == world.answers[target]
    with pytest.raises(client.exceptions.ValidationError, match="TargetVariant v9 is not a variant of alias houston"):
        endpoint.invoke("houston", BODY, TargetVariant="v9", client=client)
    seen: dict[str, set[str]] = {}
    for _ in range(3):
        for key in range(30):
            response = endpoint.invoke("houston", BODY, InferenceId=f"user-{key}", client=client)
            seen.setdefault(str(key), set()).add(response["InvokedProductionVariant"])
    assert all(len(variants) == 1 for variants in seen.values()), seen
    assert set().union(*seen.values()) == {"v1", "v2"}


def test_a_shadows_failures_never_reach_a_caller_and_its_delta_is_measured(world: World, endpoint: Endpoint) -> None:
    move(world, endpoint, V2, shadow=ShadowSpec(WIDE, 100))
    client = endpoint.runtime(retries=1)
    for _ in range(20):
        response = endpoint.invoke("houston", BODY, client=client)
        assert (response["InvokedProductionVariant"], response["Body"].read()) == ("v2", world.answers[V2])

    def shadow(target: str) -> dict[str, Any]:
        found = [item for item in endpoint.get("/aliases")["shadows"] if item["target"] == target]
        return found[0] if found else {"answered": 0, "errors": 0, "skipped": 0}

    assert wait_until(lambda: shadow(WIDE)["errors"] + shadow(WIDE)["skipped"] == 20, timeout=30)
    assert shadow(WIDE)["answered"] == 0 and shadow(WIDE)["errors"] > 0
    move(world, endpoint, V2, shadow=ShadowSpec(V1, 100))
    for _ in range(10):
        assert endpoint.invoke("houston", BODY, client=client)["Body"].read() == world.answers[V2]
    assert wait_until(lambda: shadow(V1)["answered"] + shadow(V1)["skipped"] == 10, timeout=30)
    live, mirrored = json.loads(world.answers[V2]), json.loads(world.answers[V1])
    assert shadow(V1)["mean_abs_delta"] == pytest.approx(abs(live[0] - mirrored[0]), rel=1e-6)


def test_a_failing_canary_is_rolled_back_by_itself_within_its_bake(world: World, endpoint: Endpoint) -> None:
    move(world, endpoint, V2)
    bake = 30.0
    guardrails = Guardrails(steps=(50.0,), bake_seconds=bake, poll_seconds=0.5, min_requests=10)
    with Load(endpoint.url):
        started = time.monotonic()
        outcome = start_rollout(world.prefix, "houston", WIDE, [endpoint.url], guardrails, reason="wide canary")
        took = time.monotonic() - started
    assert outcome.result == "rolled-back", outcome
    assert took < bake, f"rolled back after {took:.1f} s, the bake is {bake:.0f} s"
    assert "canary error rate" in outcome.reason
    document = get_alias(world.prefix, "houston")
    assert [(v.name, v.target, v.weight) for v in document.variants] == [("v2", V2, 100.0)]
    assert document.rollout is None
    assert [record.change.action for record in alias_history(world.prefix, "houston", limit=2) if record.change] == [
        "rollout-start",
        "rollback",
    ]


def test_a_canary_that_holds_is_promoted(world: World, endpoint: Endpoint) -> None:
    # The default judge: on a busy machine both versions' latencies are noisy, and it rolls back only a difference
    # its confidence bounds show beyond its floors, so the outcome does not hang on how loaded the machine is.
    move(world, endpoint, V2)
    guardrails = Guardrails(steps=(50.0,), bake_seconds=3.0, poll_seconds=0.5, min_requests=10)
    with Load(endpoint.url):
        outcome = start_rollout(world.prefix, "houston", V1, [endpoint.url], guardrails, name="v1-again")
    assert outcome.result == "promoted", outcome
    assert [(v.name, v.weight) for v in get_alias(world.prefix, "houston").variants] == [("v1-again", 100.0)]


# ---- three replicas behind the generated nginx router ----------------------------------------------------------


@dataclass
class Cluster:
    world: World
    replicas: list[Endpoint]
    router_url: str


@pytest.fixture(scope="module")
def cluster(s3: EmbeddedS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    world = publish_versions(f"s3://models/{uuid.uuid4().hex[:10]}/")
    launcher = Launcher(s3, tmp_path_factory)
    replicas = [launcher.start(world.prefix, "--alias-refresh", REFRESH) for _ in range(3)]
    workdir, port = tmp_path_factory.mktemp("nginx"), free_port()
    options = RouterOptions(
        listen=f"127.0.0.1:{port}",
        worker_processes="1",
        prefix_paths=str(workdir),
        user="root" if os.geteuid() == 0 else None,
        tries=3,
    )
    nginx = Nginx(workdir, nginx_config([replica.url.removeprefix("http://") for replica in replicas], options), port)
    try:
        yield Cluster(world, replicas, nginx.url)
    finally:
        nginx.stop()
        launcher.close()


@needs_nginx
def test_behind_the_router_every_replica_moves_and_callers_see_no_error_and_no_cold_start(cluster: Cluster) -> None:
    world, replicas = cluster.world, cluster.replicas
    move(world, replicas, V1)
    with Load(cluster.router_url) as load:
        assert wait_until(lambda: len(load.calls) > 50, timeout=60)
        moved_wall = time.time()
        document = set_alias(world.prefix, "houston", [V2], check=False, client=world.client)
        written = time.monotonic()
        seen_after: list[float] = []
        for replica in replicas:
            assert wait_until(lambda one=replica: serving(one, document.generation), timeout=60, interval=0.02)  # type: ignore[misc]
            seen_after.append(time.monotonic() - written)
        time.sleep(2)
    print(f"replicas served generation {document.generation} after {[round(s, 3) for s in seen_after]} s")
    assert [call for call in load.calls if call.status != 200] == []
    assert {call.variant for call in load.since(written + max(seen_after))} == {"v2"}
    owners = [
        replica for replica in replicas if any(v["alias"] == "houston" for v in replica.get("/aliases")["versions"])
    ]
    assert len(owners) == 1  # the router sends the alias to one replica, which warmed v2 before the move
    assert sum(alias_misses(replica, since=moved_wall) for replica in replicas) == 0
