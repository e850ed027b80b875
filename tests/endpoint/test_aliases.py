"""Aliases in the data plane, in process: the alias documents in the real SeaweedFS (written by
``openmme.publish.aliases``), the cache over test_cache's fake backend. What an alias resolves to and the variant
named in the answer, the warm switch (a new version loaded before any request goes to it; one that cannot load
keeps the alias where it was), sticky keys and the weights, TargetVariant, shadow versions, S3 unreachable and a
restart without it, and the alias document's own rules.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import boto3
import botocore.config
import pytest

from openmme.endpoint.alias_state import AliasDocument, AliasInvalid, Split, Variant, sticky_key, variant_name_for
from openmme.endpoint.aliases import AliasReader, AliasTable
from openmme.endpoint.cache import Budgets
from openmme.endpoint.dataplane import Answer, DataPlane, Invocation
from openmme.endpoint.errors import ServiceUnavailable, ValidationError
from openmme.endpoint.metrics import Metrics
from openmme.endpoint.names import INVOKED_VARIANT, S3Location
from openmme.endpoint.shadow import prediction_delta
from openmme.ports import free_port
from openmme.publish.aliases import ShadowSpec, set_alias
from openmme.seaweed import EmbeddedS3
from tests.conftest import BUCKET
from tests.endpoint.test_cache import FakeBackend, make_rig, settle

T = TypeVar("T")
V1, V2, V3 = (f"houston/v{number}/model.tar.gz" for number in (1, 2, 3))


@dataclass
class AliasRig:
    plane: DataPlane
    table: AliasTable
    backend: FakeBackend
    prefix: str
    s3_client: Any

    async def invoke(
        self,
        target: str,
        inference_id: str | None = None,
        variant: str | None = None,
        attributes: str | None = None,
        body: bytes = b"1,2",
    ) -> Answer:
        headers = {"Content-Type": "text/csv"}
        if inference_id is not None:
            headers["X-Amzn-SageMaker-Inference-Id"] = inference_id
        if attributes is not None:
            headers["X-Amzn-SageMaker-Custom-Attributes"] = attributes

        async def read() -> bytes:
            return body

        return await self.plane.invoke(Invocation(target, headers, "text/csv", read, variant=variant))

    def set(self, *versions: str, **options: Any) -> AliasDocument:
        """``openmme alias set houston …`` (the versions exist in S3; the fake backend loads them)."""
        return set_alias(self.prefix, "houston", list(versions), check=False, client=self.s3_client, **options)


def served_by(answer: Answer) -> str:
    """The archive that answered (the fake backend answers ``<target>:<body>``)."""
    return answer.body.decode().split(":")[0]


def make_alias_rig(tmp_path: Path, s3_client: Any, reader_client: Any = None, **options: Any) -> AliasRig:
    prefix = f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}/"
    location = S3Location.parse_prefix(prefix)
    for target in (V1, V2, V3):  # they only need to exist for `alias set`; the fake backend makes the models
        s3_client.put_object(Bucket=BUCKET, Key=location.key + target, Body=b"archive")
    rig = make_rig(tmp_path, Budgets(0, 0, 0), **options)
    metrics = Metrics()
    table = AliasTable(rig.cache.settings, rig.cache, metrics, AliasReader(location, reader_client or s3_client))
    plane = DataPlane(rig.cache, metrics, aliases=table)
    return AliasRig(plane, table, rig.backend, prefix, s3_client)


def run(scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(scenario())


def unreachable_client() -> Any:
    """An S3 client for an address nothing listens on: every call fails to connect, as when S3 is down."""
    return boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=botocore.config.Config(connect_timeout=1, retries={"max_attempts": 1}),
    )


@pytest.fixture
def rig(tmp_path: Path, s3: EmbeddedS3, s3_client: Any) -> AliasRig:
    return make_alias_rig(tmp_path, s3_client)


@pytest.mark.integration  # the alias documents are in the real SeaweedFS
def test_an_archive_answers_as_alltraffic_and_any_other_variant_is_refused(rig: AliasRig) -> None:
    async def scenario() -> None:
        await rig.table.start()
        answer = await rig.invoke(V1)
        assert (served_by(answer), answer.headers[INVOKED_VARIANT]) == (V1, "AllTraffic")
        assert served_by(await rig.invoke(V1, variant="AllTraffic")) == V1
        with pytest.raises(ValidationError, match="TargetVariant v1 is not a variant of TargetModel"):
            await rig.invoke(V1, variant="v1")
        with pytest.raises(ValidationError, match=r"not be under \.openmme/"):
            await rig.invoke(".openmme/aliases/houston.json")

    run(scenario)


@pytest.mark.integration  # the alias documents are in the real SeaweedFS
def test_an_alias_answers_from_its_version_and_names_the_variant(rig: AliasRig) -> None:
    async def scenario() -> None:
        rig.set(V1)
        await rig.table.start()
        answer = await rig.invoke("houston")
        assert (served_by(answer), answer.headers[INVOKED_VARIANT]) == (V1, "v1")
        figures = rig.plane.alias_figures()
        assert figures["aliases"]["houston"]["generation"] == 1
        assert [(v["variant"], v["requests"], v["errors"]) for v in figures["versions"]] == [("v1", 1, 0)]
        # Not an alias any more once removed; an unknown alias is an unknown TargetModel (the cache says so).
        set_alias(rig.prefix, "houston", [V2], check=False, client=rig.s3_client)
        from openmme.publish.aliases import remove_alias

        remove_alias(rig.prefix, "houston", client=rig.s3_client)
        assert await rig.table.refresh()
        assert served_by(await rig.invoke("houston")) == "houston"  # the fake source serves any name

    run(scenario)


@pytest.mark.integration  # the alias documents are in the real SeaweedFS
def test_a_moved_alias_loads_its_new_version_before_any_request_goes_to_it(rig: AliasRig) -> None:
    async def scenario() -> None:
        rig.set(V1)
        await rig.table.start()
        assert served_by(await rig.invoke("houston")) == V1  # served here: its next versions are loaded first
        rig.backend.gates[V2] = gate = asyncio.Event()
        rig.set(V2, reason="v2 is better")
        assert await rig.table.refresh()
        for _ in range(50):
            await asyncio.sleep(0.01)
            if rig.backend.loads[V2]:
                break
        assert rig.backend.loads[V2] == 1  # v2 is loading …
        answers = [served_by(await rig.invoke("houston")) for _ in range(20)]
        assert answers == [V1] * 20  # … and v1 answers meanwhile, without waiting for it
        gate.set()
        await rig.table.settle()
        assert [served_by(await rig.invoke("houston")) for _ in range(5)] == [V2] * 5
        assert rig.table.describe()["aliases"]["houston"]["generation"] == 2
        # No alias request ever waited for a load: every one of them was a hit.
        assert rig.plane.cache.counters["misses"] == 1  # the very first request, before any switch
        assert rig.backend.loads == Counter({V1: 1, V2: 1})

    run(scenario)


@pytest.mark.integration  # the alias documents are in the real SeaweedFS
def test_an_alias_not_served_here_moves_at_once_without_loading_anything(rig: AliasRig) -> None:
    async def scenario() -> None:
        rig.set(V1)
        await rig.table.start()
        rig.set(V2)
        assert await rig.table.refresh()
        assert rig.table.describe()["aliases"]["houston"]["generation"] == 2
        assert rig.backend.loads == Counter()  # another replica serves it: nothing loaded here

    run(scenario)


@pytest.mark.integration  # the alias documents are in the real SeaweedFS
def test_a_version_that_cannot_load_keeps_the_alias_where_it_was(rig: AliasRig) -> None:
    async def scenario() -> None:
        rig.set(V1)
        await rig.table.start()
        await rig.invoke("houston")
        rig.backend.failing.add(V2)
        rig.set(V2)
        assert await rig.table.refresh()
        await rig.table.settle()
        assert rig.table.describe()["aliases"]["houston"]["generation"] == 1
        assert [served_by(await rig.invoke("houston")) for _ in range(5)] == [V1] * 5
        assert await rig.table.refresh()  # tried again only after RETRY_AFTER_S
        await rig.table.settle()
        assert rig.backend.loads[V2] == 1

    run(scenario)


@pytest.mark.integration  # the alias documents are in the real SeaweedFS
def test_sticky_keys_stay_on_one_version_and_the_split_follows_the_weights(rig: AliasRig) -> None:
    async def scenario() -> None:
        rig.set(f"{V1}=80", f"{V2}=20")
        await rig.table.start()
        first: dict[str, str] = {}
        for key in range(400):
            first[str(key)] = (await rig.invoke("houston", inference_id=str(key))).headers[INVOKED_VARIANT]
        for key in range(0, 400, 7):  # again, later: the same version
            assert (await rig.invoke("houston", inference_id=str(key))).headers[INVOKED_VARIANT] == first[str(key)]
        share = Counter(first.values())["v2"] / len(first)
        assert 0.14 < share < 0.26, share  # 20 % ± 3 standard deviations of 400 draws
        # A CustomAttributes key instead, when the alias says so.
        rig.set(f"{V1}=50", f"{V2}=50", sticky="custom-attribute:user")
        assert await rig.table.refresh()
        for user in ("ana", "bo", "cy", "dee"):
            seen = {
                (await rig.invoke("houston", attributes=f"trace={n}; user={user}")).headers[INVOKED_VARIANT]
                for n in range(10)
            }
            assert len(seen) == 1, (user, seen)
        # No key: a draw per request.
        unsticky = {(await rig.invoke("houston")).headers[INVOKED_VARIANT] for _ in range(60)}
        assert unsticky == {"v1", "v2"}

    run(scenario)


def test_a_key_in_the_canary_stays_in_it_as_the_canary_grows() -> None:
    def canary_keys(percent: float) -> set[str]:
        split = Split(AliasDocument("houston", 1, (Variant("v1", V1, 100 - percent), Variant("v2", V2, percent))))
        return {str(key) for key in range(2000) if split.choose(str(key), 0.0).name == "v2"}

    steps = [canary_keys(percent) for percent in (5, 10, 25, 50, 100)]
    assert all(earlier <= later for earlier, later in itertools.pairwise(steps))
    assert [len(keys) for keys in steps][-1] == 2000


@pytest.mark.integration  # the alias documents are in the real SeaweedFS
def test_target_variant_pins_a_version_and_an_unknown_one_is_refused(rig: AliasRig) -> None:
    async def scenario() -> None:
        rig.set(f"{V1}=100", f"{V2}=0")  # v2 takes no traffic: reached only by name
        await rig.table.start()
        assert {served_by(await rig.invoke("houston")) for _ in range(20)} == {V1}
        pinned = [await rig.invoke("houston", variant="v2", inference_id=str(n)) for n in range(10)]
        assert {(served_by(answer), answer.headers[INVOKED_VARIANT]) for answer in pinned} == {(V2, "v2")}
        with pytest.raises(ValidationError, match="TargetVariant v9 is not a variant of alias houston; its variants"):
            await rig.invoke("houston", variant="v9")

    run(scenario)


@pytest.mark.integration  # the alias documents are in the real SeaweedFS
def test_shadow_answers_are_never_returned_and_its_failures_are_counted(rig: AliasRig) -> None:
    async def scenario() -> None:
        rig.set(V1, shadow=ShadowSpec(V3, 100))
        await rig.table.start()
        rig.backend.failing.add(V3)  # the shadow version cannot even load
        answers = [await rig.invoke("houston", body=f"{n}".encode()) for n in range(12)]
        assert [(served_by(a), a.headers[INVOKED_VARIANT]) for a in answers] == [(V1, "v1")] * 12
        await settle()
        (shadow,) = rig.plane.alias_figures()["shadows"]
        assert (shadow["variant"], shadow["answered"], shadow["errors"] + shadow["skipped"]) == ("v3", 0, 12)
        assert shadow["errors"] >= 1
        rig.backend.failing.discard(V3)
        for n in range(6):
            await rig.invoke("houston", body=f"{n}".encode())
            await settle()
        (shadow,) = rig.plane.alias_figures()["shadows"]
        assert shadow["answered"] == 6 and shadow["compared"] == 0  # the fake's answers are not numbers

    run(scenario)


@pytest.mark.integration  # the alias documents are in the real SeaweedFS
def test_s3_unreachable_keeps_the_last_documents_and_a_restart_comes_back_on_them(
    tmp_path: Path, s3: EmbeddedS3, s3_client: Any
) -> None:
    rig = make_alias_rig(tmp_path, s3_client, alias_max_staleness=30.0)

    async def scenario() -> None:
        rig.set(f"{V1}=50", f"{V2}=50")
        await rig.table.start()
        await rig.table.save()
        rig.table.reader = AliasReader(rig.table.reader.prefix, unreachable_client())
        assert not await rig.table.refresh()
        assert {served_by(await rig.invoke("houston", variant=v)) for v in ("v1", "v2")} == {V1, V2}
        assert 0 <= rig.table.age() < 30
        rig.table.refreshed_at -= 60  # a minute without S3: past --alias-max-staleness
        with pytest.raises(ServiceUnavailable, match=r"the state of alias houston is 6[0-9] s old"):
            await rig.invoke("houston")
        assert served_by(await rig.invoke(V1)) == V1  # versions invoked by name are not affected

    run(scenario)

    # The endpoint restarts while S3 is still unreachable: it serves what it served before it stopped.
    again = make_alias_rig(tmp_path, s3_client, reader_client=unreachable_client())

    async def restarted() -> None:
        await again.table.start()
        answer = await again.invoke("houston", variant="v2")
        assert (served_by(answer), answer.headers[INVOKED_VARIANT]) == (V2, "v2")

    run(restarted)


@pytest.mark.integration  # the alias documents are in the real SeaweedFS
def test_an_older_generation_is_never_installed(rig: AliasRig) -> None:
    async def scenario() -> None:
        first = rig.set(V1)
        rig.set(V2)
        await rig.table.start()
        assert not rig.table._consider(first, "an old etag", warm=False)  # a stale read of generation 1
        assert served_by(await rig.invoke("houston")) == V2

    run(scenario)


def test_the_alias_documents_rules() -> None:
    document = AliasDocument("houston", 3, (Variant("v1", V1, 70), Variant("v2", V2, 30)))
    assert AliasDocument.parse(json.loads(json.dumps(document.describe())), "houston") == document
    with pytest.raises(AliasInvalid, match="newer than this openmme reads"):
        AliasDocument.parse({**document.describe(), "format": 2})
    with pytest.raises(AliasInvalid, match="names alias 'houston'"):
        AliasDocument.parse(document.describe(), "chicago")
    with pytest.raises(AliasInvalid, match="at most 8 versions"):
        AliasDocument("many", 1, tuple(Variant(f"v{n}", f"m{n}.tar.gz", 10) for n in range(10))).check()
    with pytest.raises(AliasInvalid, match="sticky must be"):
        AliasDocument("houston", 1, (Variant("v1", V1, 100),), sticky="cookie").check()
    assert [variant_name_for("houston", target) for target in (V1, "houston/model-v2.tar.gz", "m-17.tar.gz")] == [
        "v1",
        "model-v2",
        "m-17",
    ]
    assert sticky_key("custom-attribute:user", "user", "id-1", "a=1,user= 42 ;b=2") == "42"
    assert sticky_key("inference-id", None, "id-1", "user=42") == "id-1"
    assert sticky_key("none", None, "id-1", "user=42") is None


@pytest.mark.parametrize(
    ("live", "shadow", "content_type", "delta"),
    [
        (b"[0.5, 0.25]", b"[0.75, 0.25]", "application/json", 0.125),
        (b"0.5,0.25", b"0.5,0.5", "text/csv", 0.125),
        (b'{"predictions": [{"score": 1.0}]}', b'{"predictions": [{"score": 0.5}]}', "application/json", 0.5),
        (b"[[0.1, 0.9]]", b"[[0.1, 0.9]]", "application/json", 0.0),
        (b"[1, 2]", b"[1]", "application/json", None),
        (b"not numbers", b"[1]", "text/csv", None),
    ],
)
def test_the_prediction_delta_of_two_answers(
    live: bytes, shadow: bytes, content_type: str, delta: float | None
) -> None:
    assert prediction_delta(live, content_type, shadow, content_type) == delta
