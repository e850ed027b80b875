"""Asynchronous invocations in process. The call exactly as boto3's ``invoke_endpoint_async`` sends it (caught before
it leaves), parsed and checked; the model it names; where its outcome goes; the journal's records. Then the runner
over the real data plane (a cache over test_cache's fake backend, which answers ``<target>:<body>``), reading inputs
from and writing outcomes to the session's real SeaweedFS: results and failures in S3, RequestTTLSeconds expiry,
InvocationTimeoutSeconds, a model still loading waited out, the bounded queue and its gauges, and requests left in
the journal by a crashed run picked up by the next one, once."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import boto3
import botocore.exceptions
import pytest
from botocore.awsrequest import AWSPreparedRequest, AWSResponse

from openmme.endpoint.asyncinvoke import runner as runner_module
from openmme.endpoint.asyncinvoke.journal import Journal
from openmme.endpoint.asyncinvoke.request import AsyncRequest, Destinations, parse_request
from openmme.endpoint.asyncinvoke.runner import Accepted, AsyncInvocations
from openmme.endpoint.dataplane import DataPlane
from openmme.endpoint.errors import ServiceUnavailable, ValidationError
from openmme.endpoint.metrics import Metrics
from openmme.endpoint.names import (
    CUSTOM_ATTRIBUTES,
    INFERENCE_ID,
    S3Location,
    async_target_model,
    validate_target_model,
)
from openmme.endpoint.s3 import make_client
from openmme.endpoint.settings import Settings
from openmme.seaweed import EmbeddedS3
from tests.conftest import BUCKET
from tests.endpoint.test_cache import NO_BUDGETS, Rig, make_rig

T = TypeVar("T")

DESTINATIONS = Destinations("prod", S3Location("results", "async/out/"), S3Location("results", "async/failed/"))
NOW = 1_700_000_000.0  # in the past: results S3 stamps now are newer than requests accepted then


class _NoBody:
    def stream(self, **_: Any) -> Any:
        yield b'{"InferenceId": "unused"}'


def sent(**params: Any) -> tuple[str, dict[str, str], bytes]:
    """What boto3's ``invoke_endpoint_async(**params)`` sends: the path, the headers, the body."""
    client = boto3.client(
        "sagemaker-runtime",
        endpoint_url="http://127.0.0.1:9",
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    caught: list[AWSPreparedRequest] = []

    def catch(request: AWSPreparedRequest, **_: Any) -> AWSResponse:
        caught.append(request)
        return AWSResponse(request.url, 202, {}, _NoBody())

    client.meta.events.register("before-send.sagemaker-runtime.InvokeEndpointAsync", catch)
    client.invoke_endpoint_async(**{"EndpointName": "prod", **params})
    (request,) = caught
    headers = {name: value.decode() if isinstance(value, bytes) else value for name, value in request.headers.items()}
    body = request.body or b""
    return request.url.split("127.0.0.1:9", 1)[1], headers, body if isinstance(body, bytes) else body.encode()


def parse(destinations: Destinations = DESTINATIONS, **params: Any) -> tuple[AsyncRequest, bytes | None]:
    path, headers, body = sent(**params)
    endpoint = path.split("/")[2]
    return parse_request(headers, body, endpoint, destinations, "4f1c", NOW)


# ---- the call ------------------------------------------------------------------------------------------------


def test_a_call_is_read_as_boto3_sends_it() -> None:
    path, _, _ = sent(InputLocation="s3://inputs/rows.csv")
    assert path == "/endpoints/prod/async-invocations"
    request, inline = parse(
        InputLocation="s3://inputs/batch/rows.csv",
        ContentType="text/csv",
        Accept="application/json",
        CustomAttributes="trace=17;TargetModel=houston/model.tar.gz",
        InferenceId="order-17",
        RequestTTLSeconds=600,
        InvocationTimeoutSeconds=120,
    )
    assert inline is None
    assert (request.input, request.inline) == (S3Location("inputs", "batch/rows.csv"), False)
    assert (request.target, request.inference_id, request.ttl, request.timeout) == (
        "houston/model.tar.gz",
        "order-17",
        600,
        120,
    )
    assert request.headers == {  # what the model sees: the CustomAttributes unchanged, as on SageMaker
        "Content-Type": "text/csv",
        "Accept": "application/json",
        CUSTOM_ATTRIBUTES: "trace=17;TargetModel=houston/model.tar.gz",
        INFERENCE_ID: "order-17",
    }
    assert (str(request.output), str(request.failure)) == (
        "s3://results/async/out/4f1c.out",
        "s3://results/async/failed/4f1c-error.out",
    )


def test_defaults_an_inline_body_and_the_output_names_a_call_may_choose() -> None:
    destinations = Destinations("prod", DESTINATIONS.output, DESTINATIONS.failure, default_model="chicago.tar.gz")
    request, inline = parse(destinations, Body=b"1,2,3")
    assert (inline, request.inline, request.input) == (b"1,2,3", True, None)
    assert (request.target, request.inference_id) == ("chicago.tar.gz", "4f1c")  # a generated id, as SageMaker's
    assert (request.ttl, request.timeout) == (21_600, 900)  # 6 hours in the queue, 15 minutes running
    assert request.headers == {INFERENCE_ID: "4f1c"}
    request, _ = parse(destinations, Body=b"1", S3OutputPathExtension="daily/2026-11-26", Filename="houston.json")
    assert (str(request.output), str(request.failure)) == (
        "s3://results/async/out/daily/2026-11-26/houston.json",
        "s3://results/async/failed/daily/2026-11-26/houston.json-error.out",
    )


def test_the_model_is_named_in_custom_attributes_then_by_the_header_then_by_the_default() -> None:
    assert async_target_model("TargetModel=a.tar.gz", "b.tar.gz", "c.tar.gz") == "a.tar.gz"
    assert async_target_model(" x=1 ; targetmodel = a/b.tar.gz ;y=2", None, "") == "a/b.tar.gz"
    assert async_target_model("x=1", "b.tar.gz", "c.tar.gz") == "b.tar.gz"
    assert async_target_model(None, None, "c.tar.gz") == "c.tar.gz"
    assert async_target_model("TargetModel=", None, "") is None


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"InputLocation": "s3://in/x.csv"}, "names no model"),
        ({"CustomAttributes": "TargetModel=a.tar.gz"}, "needs an InputLocation"),
        ({"InputLocation": "s3://in/x.csv", "Body": b"1", "CustomAttributes": "TargetModel=a"}, "mutually exclusive"),
        ({"InputLocation": "https://in.s3.amazonaws.com/x", "CustomAttributes": "TargetModel=a"}, "s3:// URI"),
        ({"InputLocation": "s3://in/", "CustomAttributes": "TargetModel=a"}, "must name an object"),
        ({"Body": b"1", "CustomAttributes": "TargetModel=a", "RequestTTLSeconds": 21_601}, "between 60 and 21600"),
        ({"Body": b"1", "CustomAttributes": "TargetModel=a", "InvocationTimeoutSeconds": 3_601}, "between 1 and 3600"),
        ({"Body": b"1", "CustomAttributes": "TargetModel=a", "S3OutputPathExtension": "a/../b"}, "'..'"),
        ({"Body": b"1", "CustomAttributes": "TargetModel=a", "Filename": "a.b.c"}, "one '.' at most"),
        ({"Body": b"1" * 128_001, "CustomAttributes": "TargetModel=a"}, "at most 128000 bytes"),
    ],
)
def test_a_call_sagemaker_would_refuse_is_a_validation_error(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse(**params)


def test_another_endpoint_name_is_a_validation_error() -> None:
    _, headers, body = sent(Body=b"1", CustomAttributes="TargetModel=a")
    with pytest.raises(ValidationError, match="Endpoint other not found"):
        parse_request(headers, body, "other", DESTINATIONS, "4f1c", NOW)


def test_the_options_and_their_defaults() -> None:
    settings = Settings.from_sources(
        ["--async-output-path", "s3://results/async", "--async-concurrency", "4"],
        {"OPENMME_ASYNC_DEFAULT_MODEL": "houston/model.tar.gz", "OPENMME_ASYNC_MAX_QUEUE": "50"},
    )
    assert (settings.async_output_path, settings.async_failure_path) == ("s3://results/async", "")
    assert (settings.async_default_model, settings.async_max_queue, settings.async_concurrency) == (
        "houston/model.tar.gz",
        50,
        4,
    )
    with pytest.raises(SystemExit):
        Settings.from_sources(["--async-output-path", "results/async"], {})


# ---- the journal ---------------------------------------------------------------------------------------------


def test_the_journal_keeps_whole_records_in_acceptance_order_and_sets_bad_ones_aside(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "async")
    journal.open()
    first, inline = parse(Body=b"0.5,1.5", CustomAttributes="TargetModel=a")
    second, _ = parse(InputLocation="s3://in/rows.csv", CustomAttributes="TargetModel=b")
    second = dataclasses.replace(second, id="second", accepted=NOW + 1)
    journal.add(second, None)
    journal.add(first, inline)
    (journal.pending / "00000000000000000001-broken.json").write_text('{"version": 1, "id": "bro')
    (journal.tmp / "half-written.json").write_text("{")

    reopened = Journal(tmp_path / "async")
    assert reopened.open() == [first, second]
    assert reopened.body(first) == b"0.5,1.5"
    assert [path.name for path in reopened.corrupt.iterdir()] == ["00000000000000000001-broken.json"]
    assert list(reopened.tmp.iterdir()) == []
    reopened.remove(first)
    assert Journal(tmp_path / "async").open() == [second]


# ---- the runner, over the data plane, against real S3 --------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@dataclass
class Harness:
    runner: AsyncInvocations
    rig: Rig
    metrics: Metrics
    clock: Clock
    s3: Any
    root: str  # s3://bucket/prefix/ of this test's inputs and outcomes

    def put_input(self, name: str, body: bytes) -> str:
        location = S3Location.parse_prefix(self.root).child(f"in/{name}")
        self.s3.put_object(Bucket=location.bucket, Key=location.key, Body=body)
        return str(location)

    async def submit(self, target: str | None = None, **params: Any) -> Accepted:
        if target is not None:
            params["CustomAttributes"] = f"TargetModel={target}"
        _, headers, body = sent(**params)
        return await self.runner.submit(headers, body, "prod")

    def read(self, location: S3Location) -> tuple[bytes, str] | None:
        """An outcome object's bytes and content type; None when it is not there."""
        try:
            response = self.s3.get_object(Bucket=location.bucket, Key=location.key)
        except botocore.exceptions.ClientError:
            return None
        return response["Body"].read(), response["ContentType"]

    def failure(self, accepted: Accepted) -> dict[str, Any]:
        found = self.read(accepted.failure)
        assert found is not None and found[1] == "application/json"
        assert self.read(accepted.output) is None
        document: dict[str, Any] = json.loads(found[0])
        return document

    async def drained(self, timeout: float = 20.0) -> None:
        """Until every accepted request has its outcome in S3 and its record gone."""
        for _ in range(int(timeout / 0.02)):
            if self.runner.journal.count() == 0 and self.runner.queued() == self.runner.running() == 0:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"{self.runner.journal.count()} async request(s) never finished")

    def gauges(self) -> dict[str, float]:
        value = self.metrics.registry.get_sample_value
        return {
            "queued": value("openmme_async_queue_requests", {"state": "queued"}) or 0.0,
            "running": value("openmme_async_queue_requests", {"state": "running"}) or 0.0,
            "oldest": value("openmme_async_oldest_queued_age_seconds") or 0.0,
            "capacity": value("openmme_async_queue_capacity") or 0.0,
        }

    def outcomes(self) -> dict[str, float]:
        value = self.metrics.registry.get_sample_value
        counts = {outcome: value("openmme_async_requests_total", {"outcome": outcome}) for outcome in OUTCOMES}
        return {outcome: count for outcome, count in counts.items() if count}


OUTCOMES = ("accepted", "refused", "succeeded", "failed", "expired", "timed_out")


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Attempts at a model still loading every 50 ms rather than every second."""
    monkeypatch.setattr(runner_module, "RETRY_FIRST_S", 0.05)


@pytest.fixture
def harness_of(s3: EmbeddedS3, s3_client: Any, tmp_path: Path) -> Callable[..., Harness]:
    root = f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}/"

    def build(capacity: int = 10, concurrency: int = 2, wait: float = 10.0, clock: Clock | None = None) -> Harness:
        """A runner with its own data plane over a fresh cache; its journal is the test's (shared by each)."""
        rig = make_rig(tmp_path / uuid.uuid4().hex[:6], NO_BUDGETS, wait=wait)
        metrics = Metrics()
        plane = DataPlane(rig.cache, metrics)
        prefix = S3Location.parse_prefix(root)
        destinations = Destinations("prod", prefix.child("out/"), prefix.child("failed/"))
        clock = clock or Clock()
        runner = AsyncInvocations(
            destinations,
            Journal(tmp_path / "async"),
            plane.invoke,
            validate_target_model,
            make_client(2, 10, 2, 8),
            metrics,
            capacity=capacity,
            concurrency=concurrency,
            clock=clock,
        )
        return Harness(runner, rig, metrics, clock, s3_client, root)

    return build


def run(scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(scenario())


def test_results_land_at_the_output_location_as_the_model_answered(harness_of: Callable[..., Harness]) -> None:
    harness = harness_of()

    async def scenario() -> list[Accepted]:
        await harness.runner.start()
        accepted = [
            await harness.submit("houston/model.tar.gz", InputLocation=harness.put_input("a.csv", b"1,2")),
            await harness.submit("chicago/model.tar.gz", Body=b"3,4", InferenceId="inline-1"),
        ]
        await harness.drained()
        await harness.runner.close()
        return accepted

    first, second = run(scenario)
    assert harness.read(first.output) == (b"houston/model.tar.gz:1,2", "text/csv")
    assert harness.read(second.output) == (b"chicago/model.tar.gz:3,4", "text/csv")
    assert second.inference_id == "inline-1" and uuid.UUID(first.inference_id)
    assert harness.read(first.failure) is None
    assert harness.outcomes() == {"accepted": 2, "succeeded": 2}


def test_a_failing_model_writes_its_error_to_the_failure_location(harness_of: Callable[..., Harness]) -> None:
    harness = harness_of()
    harness.rig.backend.failing.add("broken.tar.gz")

    async def scenario() -> tuple[Accepted, Accepted]:
        broken = await harness.submit("broken.tar.gz", Body=b"1,2", InferenceId="bad-1")
        input_location = S3Location.parse_prefix(harness.root).child("in/gone.csv")
        gone = await harness.submit("houston/model.tar.gz", InputLocation=harness.put_input("gone.csv", b"1"))
        harness.s3.delete_object(Bucket=input_location.bucket, Key=input_location.key)  # before it runs
        await harness.runner.start()
        await harness.drained()
        await harness.runner.close()
        return broken, gone

    broken, gone = run(scenario)
    document = harness.failure(broken)
    assert (document["__type"], document["OriginalStatusCode"]) == ("ModelError", 500)
    assert (document["InferenceId"], document["TargetModel"]) == ("bad-1", "broken.tar.gz")
    assert "broken" in document["message"]
    assert harness.outcomes() == {"accepted": 2, "failed": 2}
    assert harness.failure(gone)["__type"] == "ValidationError"  # its input was deleted after the call


def test_a_request_that_waited_past_its_ttl_is_not_run_and_says_so(harness_of: Callable[..., Harness]) -> None:
    harness = harness_of()

    async def scenario() -> tuple[Accepted, Accepted]:
        stale = await harness.submit("houston/model.tar.gz", Body=b"1", RequestTTLSeconds=60)
        harness.clock.now += 30
        fresh = await harness.submit("houston/model.tar.gz", Body=b"2", RequestTTLSeconds=60)
        harness.clock.now += 31  # the first has waited 61 s, the second 31 s
        await harness.runner.start()
        await harness.drained()
        await harness.runner.close()
        return stale, fresh

    stale, fresh = run(scenario)
    document = harness.failure(stale)
    assert document["__type"] == "RequestExpired"
    assert "waited 61 s" in document["message"] and "RequestTTLSeconds (60 s)" in document["message"]
    assert harness.read(fresh.output) == (b"houston/model.tar.gz:2", "text/csv")
    assert harness.rig.states() == {"houston/model.tar.gz": "ready"}  # loaded for the fresh one only
    assert harness.outcomes() == {"accepted": 2, "succeeded": 1, "expired": 1}


def test_a_model_still_loading_is_waited_for_within_the_invocation_timeout(
    harness_of: Callable[..., Harness],
) -> None:
    harness = harness_of(wait=0.05)  # the data plane answers 429 after 50 ms of waiting for a load
    backend = harness.rig.backend

    async def scenario() -> tuple[Accepted, Accepted]:
        backend.gates["slow.tar.gz"] = asyncio.Event()  # loads only once let go
        backend.gates["stuck.tar.gz"] = asyncio.Event()  # never loads
        await harness.runner.start()
        slow = await harness.submit("slow.tar.gz", Body=b"1", InvocationTimeoutSeconds=30)
        stuck = await harness.submit("stuck.tar.gz", Body=b"2", InvocationTimeoutSeconds=1)
        await asyncio.sleep(0.5)  # several 429s meanwhile
        backend.gates["slow.tar.gz"].set()
        await harness.drained()
        await harness.runner.close()
        return slow, stuck

    slow, stuck = run(scenario)
    assert harness.read(slow.output) == (b"slow.tar.gz:1", "text/csv")
    document = harness.failure(stuck)
    assert document["__type"] == "InvocationTimeout"
    assert "InvocationTimeoutSeconds (1 s)" in document["message"] and "ModelNotReadyException" in document["message"]
    assert harness.outcomes() == {"accepted": 2, "succeeded": 1, "timed_out": 1}


def test_the_queue_is_bounded_and_its_depth_and_age_are_gauges(harness_of: Callable[..., Harness]) -> None:
    harness = harness_of(capacity=2)

    async def scenario() -> None:
        assert harness.gauges() == {"queued": 0, "running": 0, "oldest": 0, "capacity": 2}
        await harness.submit("a.tar.gz", Body=b"1")
        harness.clock.now += 7
        await harness.submit("a.tar.gz", Body=b"2")
        harness.clock.now += 5
        with pytest.raises(ServiceUnavailable, match=r"queue is full \(2 requests"):
            await harness.submit("a.tar.gz", Body=b"3")
        assert harness.gauges() == {"queued": 2, "running": 0, "oldest": 12, "capacity": 2}
        await harness.runner.start()
        await harness.drained()
        await harness.submit("a.tar.gz", Body=b"4")  # room again
        await harness.drained()
        await harness.runner.close()

    run(scenario)
    assert harness.gauges() == {"queued": 0, "running": 0, "oldest": 0, "capacity": 2}
    assert harness.outcomes() == {"accepted": 3, "refused": 1, "succeeded": 3}


def test_a_call_naming_a_missing_input_or_a_bad_model_is_refused_before_it_is_queued(
    harness_of: Callable[..., Harness],
) -> None:
    harness = harness_of()

    async def scenario() -> None:
        missing = f"{harness.root}in/never-uploaded.csv"
        with pytest.raises(ValidationError, match="does not exist"):
            await harness.submit("a.tar.gz", InputLocation=missing)
        with pytest.raises(ValidationError, match="relative to the endpoint's model prefix"):
            await harness.submit("s3://models/a.tar.gz", Body=b"1")

    run(scenario)
    assert harness.runner.journal.count() == 0 and harness.outcomes() == {}


def test_requests_a_crashed_run_left_run_at_the_next_start_once(harness_of: Callable[..., Harness]) -> None:
    crashed = harness_of()

    async def accept() -> list[Accepted]:
        return [await crashed.submit("a.tar.gz", Body=f"{index}".encode()) for index in range(3)]

    first, second, third = run(accept)  # accepted, never run: the process "died" (no close, no workers)
    # The first one's result had made it to S3 just before the crash: it must not be run again.
    crashed.s3.put_object(Bucket=first.output.bucket, Key=first.output.key, Body=b"written before the crash")
    restarted = harness_of()

    async def resume() -> None:
        await restarted.runner.start()
        await restarted.drained()
        await restarted.runner.close()

    run(resume)
    assert (restarted.read(first.output) or (b"",))[0] == b"written before the crash"
    assert restarted.read(second.output) == (b"a.tar.gz:1", "text/csv")
    assert restarted.read(third.output) == (b"a.tar.gz:2", "text/csv")
    assert restarted.outcomes() == {"succeeded": 2}


def test_requests_running_at_stop_are_left_for_the_next_start(harness_of: Callable[..., Harness]) -> None:
    stopped = harness_of(concurrency=1)
    stopped.rig.backend.gates["a.tar.gz"] = asyncio.Event()  # the load never ends in this run

    async def stop_while_running() -> Accepted:
        await stopped.runner.start()
        accepted = await stopped.submit("a.tar.gz", Body=b"9")
        await asyncio.sleep(0.1)
        assert stopped.gauges()["running"] == 1
        await stopped.runner.close(grace=0.1)
        return accepted

    accepted = run(stop_while_running)
    assert stopped.read(accepted.output) is None and stopped.read(accepted.failure) is None
    restarted = harness_of()

    async def resume() -> None:
        await restarted.runner.start()
        await restarted.drained()
        await restarted.runner.close()

    run(resume)
    assert restarted.read(accepted.output) == (b"a.tar.gz:9", "text/csv")
