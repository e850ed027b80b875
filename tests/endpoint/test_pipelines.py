"""Pipelines in the data plane, in process: the cache over a backend whose models echo what they were sent, the
manifests from a local directory source. SageMaker's serial semantics step by step (which Content-Type, Accept,
CustomAttributes and InferenceId each step is sent), the Accept an intermediate step is asked (its manifest entry's,
its archive's openmme.json default, or none), errors naming the step, the shared-featurizer shape, manifests read
once, and the manifest's own rules. With real processes and real models: tests/integration/test_pipelines.py."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from openmme.endpoint.aliases import AliasReader, AliasTable
from openmme.endpoint.cache import Budgets
from openmme.endpoint.cache.backend import Route
from openmme.endpoint.cache.core import ModelCache
from openmme.endpoint.cache.entry import Entry
from openmme.endpoint.cache.store import ModelStore
from openmme.endpoint.dataplane import Answer, DataPlane, Invocation
from openmme.endpoint.errors import ModelError, ValidationError
from openmme.endpoint.metrics import Metrics
from openmme.endpoint.names import CUSTOM_ATTRIBUTES, INFERENCE_ID, INVOKED_VARIANT, S3Location
from openmme.endpoint.pipeline_manifest import (
    MAX_STEPS,
    PipelineInvalid,
    PipelineManifest,
    Step,
    is_pipeline,
    split_pipeline_target,
)
from openmme.endpoint.pipelines import Pipelines
from openmme.endpoint.settings import MAX_BODY_BYTES, Settings
from openmme.publish.aliases import set_alias
from tests.conftest import BUCKET
from tests.endpoint.test_cache import DirectorySource, FakeBackend, FakeReply, run, settle

FEATURIZER, BOOSTER, LABELS = "featurizer.tar.gz", "churn/xgboost.tar.gz", "labels.tar.gz"
PIPELINE = "churn.pipeline.json"
SHARED = "featurize.pipeline.json"


class EchoBackend(FakeBackend):
    """Each model answers, as JSON in the type it was asked (Accept, else ``application/json``), what it was sent;
    ``raising`` models answer the handler's 400, ``huge`` models an answer over the invocation limit."""

    def __init__(self) -> None:
        super().__init__()
        self.raising: set[str] = set()
        self.huge: set[str] = set()
        self.seen: list[dict[str, Any]] = []

    async def call(self, entry: Entry, route: Route, body: bytes, headers: Mapping[str, str]) -> FakeReply:
        self.calls[entry.target] += 1
        sent = {
            "model": entry.target,
            "body": body.decode(),
            "content_type": headers.get("Content-Type"),
            "accept": headers.get("Accept"),
            "attributes": headers.get(CUSTOM_ATTRIBUTES),
            "inference_id": headers.get(INFERENCE_ID),
        }
        self.seen.append(sent)
        if entry.target in self.raising:
            return FakeReply(400, b"bad rows", {"X-Openmme-Model-Error": "1"})
        answered = b"x" * (MAX_BODY_BYTES + 1) if entry.target in self.huge else json.dumps(sent).encode()
        return FakeReply(200, answered, {"Content-Type": headers.get("Accept") or "application/json"})


class Source(DirectorySource):
    """Archives as DirectorySource makes them, and manifests kept as bytes (counting the reads)."""

    def __init__(self) -> None:
        super().__init__()
        self.manifests: dict[str, bytes] = {}
        self.reads: Counter[str] = Counter()

    def read(self, target: str, max_bytes: int) -> bytes:
        self.reads[target] += 1
        if target not in self.manifests:
            raise ValidationError(f"model {target!r} is not in the model prefix {self.prefix}")
        return self.manifests[target]


class Rig:
    def __init__(self, tmp_path: Path, default: str = "") -> None:
        settings = Settings(cache_dir=tmp_path, wait_budget=10.0)
        self.source = Source()
        self.backend = EchoBackend()
        self.cache = ModelCache(settings, Budgets(0, 0, 0), self.backend, ModelStore(settings, self.source))
        self.plane = DataPlane(self.cache, Metrics(), pipelines=Pipelines(self.source, default=default))  # type: ignore[arg-type]

    def manifest(self, name: str, *steps: str | dict[str, str]) -> None:
        self.source.manifests[name] = json.dumps({"steps": list(steps)}).encode()

    async def invoke(self, target: str, body: bytes = b"houston,3", **headers: str) -> Answer:
        sent = {"Content-Type": "text/csv", **headers}

        async def read() -> bytes:
            return body

        return await self.plane.invoke(Invocation(target, sent, sent["Content-Type"], read))


def steps_seen(answer: Answer) -> list[dict[str, Any]]:
    """The chain of what each step was sent, unwound from the echoes nested in the last answer."""
    chain = []
    sent = json.loads(answer.body)
    while True:
        chain.insert(0, sent)
        try:
            sent = json.loads(sent["body"])
        except ValueError:
            return chain


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def test_each_step_gets_the_previous_answer_with_its_type_and_only_the_last_gets_the_clients_accept(rig: Rig) -> None:
    rig.manifest(PIPELINE, FEATURIZER, BOOSTER, LABELS)
    attributes, inference_id = "trace=abc,tenant=7", "req-1"
    answer = run(
        lambda: rig.invoke(PIPELINE, Accept="text/csv", **{CUSTOM_ATTRIBUTES: attributes, INFERENCE_ID: inference_id})
    )
    chain = steps_seen(answer)
    assert [sent["model"] for sent in chain] == [FEATURIZER, BOOSTER, LABELS]
    assert chain[0]["body"] == "houston,3" and chain[0]["content_type"] == "text/csv"
    # Between steps: no Accept asked (each answers in its own default, JSON here), and the next step is told so.
    assert [sent["accept"] for sent in chain] == [None, None, "text/csv"]
    assert [sent["content_type"] for sent in chain] == ["text/csv", "application/json", "application/json"]
    assert all(sent["attributes"] == attributes and sent["inference_id"] == inference_id for sent in chain)
    assert answer.content_type == "text/csv"
    assert answer.headers[INVOKED_VARIANT] == "AllTraffic"
    assert answer.headers[CUSTOM_ATTRIBUTES] == attributes and answer.headers[INFERENCE_ID] == inference_id


def test_an_intermediate_step_is_asked_its_manifest_accept_else_its_archives_default(rig: Rig) -> None:
    rig.source.archive_settings[FEATURIZER] = {"environment": {"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "text/csv"}}
    rig.manifest(PIPELINE, FEATURIZER, {"model": BOOSTER, "accept": "application/jsonlines"}, LABELS)
    chain = steps_seen(run(lambda: rig.invoke(PIPELINE)))
    assert [sent["accept"] for sent in chain] == ["text/csv", "application/jsonlines", None]
    assert [sent["content_type"] for sent in chain] == ["text/csv", "text/csv", "application/jsonlines"]

    # The archive's default is the model's, pipeline or not: a direct call asking no Accept (or */*) gets it.
    alone = run(lambda: rig.invoke(FEATURIZER))
    assert alone.content_type == "text/csv" and json.loads(alone.body)["accept"] == "text/csv"
    assert json.loads(run(lambda: rig.invoke(FEATURIZER, Accept="*/*")).body)["accept"] == "text/csv"
    assert json.loads(run(lambda: rig.invoke(FEATURIZER, Accept="application/json")).body)["accept"] == (
        "application/json"
    )


def test_a_step_that_fails_is_named_with_its_own_status_and_message(rig: Rig) -> None:
    rig.manifest(PIPELINE, FEATURIZER, BOOSTER, LABELS)
    rig.backend.raising.add(BOOSTER)
    with pytest.raises(ModelError) as raised:
        run(lambda: rig.invoke(PIPELINE))
    error = raised.value
    assert error.status == 424 and error.original_status == 400 and error.original_message == "bad rows"
    assert error.message == (
        f"Received client error (400) from model {BOOSTER!r} (step 2 of 3 of pipeline {PIPELINE!r}) with message"
        ' "bad rows".'
    )
    assert rig.backend.calls[LABELS] == 0  # the steps after it never ran


def test_a_missing_step_is_a_validation_error_and_a_step_that_cannot_load_a_model_error_both_named(rig: Rig) -> None:
    rig.manifest(PIPELINE, FEATURIZER, BOOSTER, LABELS)
    rig.source.missing.add(BOOSTER)
    rig.backend.failing.add(LABELS)  # its load is tried (and fails quietly) while the first steps run
    with pytest.raises(ValidationError) as missing:
        run(lambda: rig.invoke(PIPELINE))
    assert missing.value.message.startswith(f"step 2 of 3 of pipeline {PIPELINE!r} ({BOOSTER!r}): model {BOOSTER!r}")
    assert "is not in the model prefix" in missing.value.message

    rig.source.missing.clear()
    with pytest.raises(ModelError) as broken:
        run(lambda: rig.invoke(PIPELINE))
    assert broken.value.message.startswith(f"step 3 of 3 of pipeline {PIPELINE!r} ({LABELS!r}): model {LABELS!r}")
    assert broken.value.original_status == 500

    # Nothing else is disturbed: the steps that loaded serve on their own, and a pipeline without the broken step.
    rig.manifest(SHARED, FEATURIZER, BOOSTER)
    assert [sent["model"] for sent in steps_seen(run(lambda: rig.invoke(SHARED)))] == [FEATURIZER, BOOSTER]


def test_a_cold_pipeline_loads_its_later_steps_while_the_first_one_loads(rig: Rig) -> None:
    rig.manifest(PIPELINE, FEATURIZER, BOOSTER, LABELS)
    gate = rig.backend.gates[FEATURIZER] = asyncio.Event()

    async def scenario() -> None:
        call = asyncio.create_task(rig.invoke(PIPELINE))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if rig.cache.is_ready(BOOSTER) and rig.cache.is_ready(LABELS):
                break
        assert rig.cache.is_ready(BOOSTER) and rig.cache.is_ready(LABELS) and not rig.cache.is_ready(FEATURIZER)
        assert not call.done()
        gate.set()
        assert [sent["model"] for sent in steps_seen(await call)] == [FEATURIZER, BOOSTER, LABELS]
        await settle()

    run(scenario)
    assert rig.backend.loads == Counter({FEATURIZER: 1, BOOSTER: 1, LABELS: 1})
    assert not rig.plane._prefetching


def test_an_intermediate_answer_over_the_invocation_limit_is_refused_naming_both_steps_and_its_size(rig: Rig) -> None:
    rig.manifest(PIPELINE, FEATURIZER, BOOSTER, LABELS)
    rig.backend.huge.add(FEATURIZER)
    with pytest.raises(ModelError) as raised:
        run(lambda: rig.invoke(PIPELINE))
    error = raised.value
    assert error.status == 424 and error.original_status == 413
    assert f"step 1 of 3 of pipeline {PIPELINE!r} ({FEATURIZER!r}) answered {MAX_BODY_BYTES + 1} bytes" in error.message
    assert f"step 2 ({BOOSTER!r})" in error.message and str(MAX_BODY_BYTES) in error.message
    assert rig.backend.calls[BOOSTER] == 0


def test_one_featurizer_in_front_of_whichever_model_the_target_model_names(rig: Rig) -> None:
    rig.manifest(SHARED, FEATURIZER, "{TargetModel}")
    for booster in ("houston/model.tar.gz", "chicago/model.tar.gz"):
        chain = steps_seen(run(lambda booster=booster: rig.invoke(f"{SHARED}/{booster}")))  # type: ignore[misc]
        assert [sent["model"] for sent in chain] == [FEATURIZER, booster]
    assert rig.backend.loads[FEATURIZER] == 1  # one featurizer, loaded once, for every model behind it

    with pytest.raises(ValidationError, match="runs in front of a model: invoke it as TargetModel="):
        run(lambda: rig.invoke(SHARED))
    rig.manifest(PIPELINE, FEATURIZER, BOOSTER)
    with pytest.raises(ValidationError, match=r"has no \{TargetModel\} step"):
        run(lambda: rig.invoke(f"{PIPELINE}/houston/model.tar.gz"))


def test_with_an_endpoint_pipeline_every_target_model_runs_behind_its_steps(tmp_path: Path) -> None:
    rig = Rig(tmp_path, default=SHARED)
    rig.manifest(SHARED, FEATURIZER, "{TargetModel}")
    rig.manifest(PIPELINE, BOOSTER, LABELS)
    chain = steps_seen(run(lambda: rig.invoke("houston/model.tar.gz")))
    assert [sent["model"] for sent in chain] == [FEATURIZER, "houston/model.tar.gz"]
    # A pipeline named as the TargetModel runs as it is, not behind the endpoint's.
    assert [sent["model"] for sent in steps_seen(run(lambda: rig.invoke(PIPELINE)))] == [BOOSTER, LABELS]


def test_a_manifest_is_read_once_however_many_ask_and_one_that_is_missing_or_invalid_is_read_again(rig: Rig) -> None:
    rig.manifest(PIPELINE, FEATURIZER, BOOSTER)

    async def together() -> list[Answer]:
        return await asyncio.gather(*(rig.invoke(PIPELINE) for _ in range(8)))

    assert len(run(together)) == 8
    run(lambda: rig.invoke(PIPELINE))
    assert rig.source.reads[PIPELINE] == 1

    for _ in range(2):
        with pytest.raises(ValidationError, match=r"pipeline 'absent\.pipeline\.json' cannot be read: model"):
            run(lambda: rig.invoke("absent.pipeline.json"))
    assert rig.source.reads["absent.pipeline.json"] == 2
    rig.source.manifests["bad.pipeline.json"] = b'{"steps": ["only-one.tar.gz"]}'
    with pytest.raises(ValidationError, match="has 1 steps; a pipeline has 2 to 15"):
        run(lambda: rig.invoke("bad.pipeline.json"))


def test_a_local_manifest_file_is_served_before_s3s_and_one_that_is_invalid_stops_the_start(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps({"steps": [FEATURIZER, BOOSTER]}))
    bad.write_text("{not json")
    settings = Settings(cache_dir=tmp_path, pipeline_file=((PIPELINE, good),))
    pipelines = Pipelines.from_settings(settings, None)
    assert run(lambda: pipelines.manifest(PIPELINE)).steps == (Step(FEATURIZER), Step(BOOSTER))
    with pytest.raises(ValueError, match=f"--pipeline-file {PIPELINE}=.*bad.json: pipeline .* is not JSON"):
        Pipelines.from_settings(Settings(cache_dir=tmp_path, pipeline_file=((PIPELINE, bad),)), None)
    with pytest.raises(SystemExit):  # the flag's own check: a manifest's name ends in .pipeline.json
        Settings.from_sources(["--pipeline-file", f"churn.json={good}"], {})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"steps": [FEATURIZER]}, "has 1 steps; a pipeline has 2 to 15"),
        ({"steps": [FEATURIZER] * (MAX_STEPS + 1)}, "has 16 steps"),
        ({"steps": [FEATURIZER, BOOSTER], "name": "x"}, "unknown fields name"),
        ([FEATURIZER, BOOSTER], 'must be a JSON object with a "steps" list'),
        ({"steps": [FEATURIZER, "other.pipeline.json"]}, "step 2 of pipeline .* names pipeline 'other.pipeline.json'"),
        ({"steps": ["{TargetModel}", "{TargetModel}"]}, "names {TargetModel} more than once"),
        ({"steps": [FEATURIZER, "../up.tar.gz"]}, r"step 2 .*: TargetModel must not contain empty, '\.' or '\.\.'"),
        ({"steps": [FEATURIZER, {"model": BOOSTER, "accept": "csv"}]}, '"accept" must be a MIME type'),
        ({"steps": [FEATURIZER, {"model": BOOSTER, "timeout": 3}]}, "unknown fields timeout"),
        ({"steps": [FEATURIZER, 7]}, "step 2 of pipeline .* must be a model name or an object"),
    ],
)
def test_a_manifest_no_endpoint_can_run_is_refused_saying_why(data: Any, message: str) -> None:
    with pytest.raises(PipelineInvalid, match=message):
        PipelineManifest.parse(data, PIPELINE)


def test_pipeline_names_and_the_manifest_round_trip() -> None:
    assert is_pipeline(PIPELINE) and is_pipeline(f"{SHARED}/houston/model.tar.gz")
    assert not is_pipeline("houston/model.tar.gz") and not is_pipeline("pipeline.json.tar.gz")
    assert split_pipeline_target(f"{SHARED}/houston/model.tar.gz") == (SHARED, "houston/model.tar.gz")
    assert split_pipeline_target(PIPELINE) == (PIPELINE, None)
    manifest = PipelineManifest.parse({"steps": [FEATURIZER, {"model": "{TargetModel}", "accept": "text/csv"}]}, SHARED)
    assert PipelineManifest.from_bytes(manifest.to_json().encode(), SHARED) == manifest
    assert manifest.bound("houston/model.tar.gz") == (Step(FEATURIZER), Step("houston/model.tar.gz", "text/csv"))


@pytest.mark.integration  # the alias documents are in the real SeaweedFS
def test_an_alias_may_point_at_a_pipeline_and_a_step_may_be_an_alias(tmp_path: Path, s3: Any, s3_client: Any) -> None:
    prefix = f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}/"
    location = S3Location.parse_prefix(prefix)
    rig = Rig(tmp_path)
    rig.manifest("churn-v1.pipeline.json", FEATURIZER, "houston")  # its second step: the alias houston
    rig.manifest("churn-v2.pipeline.json", FEATURIZER, LABELS)
    for target in (BOOSTER, "churn-v1.pipeline.json", "churn-v2.pipeline.json"):
        s3_client.put_object(Bucket=BUCKET, Key=location.key + target, Body=rig.source.manifests.get(target, b"x"))
    table = AliasTable(rig.cache.settings, rig.cache, Metrics(), AliasReader(location, s3_client))
    plane = DataPlane(rig.cache, Metrics(), aliases=table, pipelines=rig.plane.pipelines)
    rig.plane = plane

    async def scenario() -> None:
        set_alias(prefix, "houston", [BOOSTER], check=False, client=s3_client)
        set_alias(prefix, "churn", ["churn-v1.pipeline.json"], check=False, client=s3_client)
        await table.start()
        answer = await rig.invoke("churn")
        assert [sent["model"] for sent in steps_seen(answer)] == [FEATURIZER, BOOSTER]
        assert answer.headers[INVOKED_VARIANT] == "churn-v1"

        # A move to another pipeline: its steps are loaded before the alias takes it (the warm switch).
        set_alias(prefix, "churn", ["churn-v2.pipeline.json"], check=False, client=s3_client)
        await table.refresh()
        await settle()
        assert rig.backend.loads[LABELS] == 1 and rig.backend.calls[LABELS] == 0
        answer = await rig.invoke("churn")
        assert [sent["model"] for sent in steps_seen(answer)] == [FEATURIZER, LABELS]
        assert answer.headers[INVOKED_VARIANT] == "churn-v2"

    run(scenario)
