"""Asynchronous invocations with real endpoint processes, through boto3's unchanged ``invoke_endpoint_async``: results
land at OutputLocation equal to in-process xgboost, a model's refusal at FailureLocation, and an endpoint killed
with SIGKILL while requests are queued finishes them after its restart. Expiry (RequestTTLSeconds is at least 60 s),
time-outs, the bounded queue and the journal are shown in process: tests/endpoint/test_async.py."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import xgboost

from openmme.endpoint.names import S3Location
from openmme.publish import publish_archive
from openmme.publish.samples import make_rows, sample_archive
from openmme.seaweed import EmbeddedS3
from tests.conftest import BUCKET, Endpoint, EndpointFactory, Launcher
from tests.integration.test_dropin import script_archive
from tests.support import container_csv, container_json, csv_body, expected, wait_until

pytestmark = pytest.mark.integration

HOUSTON, CHICAGO, SLOW = "houston/model.tar.gz", "chicago/model.tar.gz", "slow/model.tar.gz"
# A user script whose every prediction takes a second: requests queue up behind it.
SLOW_SCRIPT = """\
import os
import time
import xgboost as xgb

def model_fn(model_dir):
    booster = xgb.Booster()
    booster.load_model(os.path.join(model_dir, "xgboost-model"))
    return booster

def predict_fn(data, model):
    time.sleep(1.0)
    return model.predict(data, validate_features=False)
"""


@dataclass
class Served:
    endpoint: Endpoint
    root: str  # s3://bucket/prefix/ of this module's inputs and outcomes

    def upload(self, s3_client: Any, body: str | bytes) -> str:
        location = S3Location.parse_prefix(self.root).child(f"inputs/{uuid.uuid4().hex}.csv")
        s3_client.put_object(Bucket=location.bucket, Key=location.key, Body=body)
        return str(location)


def outcome(s3_client: Any, uri: str, timeout: float = 60.0) -> tuple[bytes, str]:
    """The object at ``uri`` once it is there: its bytes and content type."""
    location = S3Location(*uri[len("s3://") :].split("/", 1))

    def there() -> bool:
        listed = s3_client.list_objects_v2(Bucket=location.bucket, Prefix=location.key)
        return any(item["Key"] == location.key for item in listed.get("Contents", []))

    assert wait_until(there, timeout=timeout, interval=0.2), f"nothing was written to {uri}"
    response = s3_client.get_object(Bucket=location.bucket, Key=location.key)
    return response["Body"].read(), response["ContentType"]


def absent(s3_client: Any, uri: str) -> bool:
    location = S3Location(*uri[len("s3://") :].split("/", 1))
    listed = s3_client.list_objects_v2(Bucket=location.bucket, Prefix=location.key)
    return not listed.get("Contents")


def pending(endpoint: Endpoint) -> int:
    """Requests the endpoint's journal holds: accepted and not finished."""
    return len(list((endpoint.cache_dir / "async" / "pending").glob("*.json")))


@pytest.fixture(scope="module")
def served(
    s3: EmbeddedS3, tmp_path_factory: pytest.TempPathFactory, boosters: dict[str, xgboost.Booster]
) -> Iterator[Served]:
    prefix = f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}/"
    publish_archive(sample_archive(boosters["reg:squarederror"]), prefix, HOUSTON)
    publish_archive(sample_archive(boosters["binary:logistic"]), prefix, CHICAGO)
    root = f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}/"
    launcher = Launcher(s3, tmp_path_factory)
    try:
        endpoint = launcher.start(
            prefix,
            "--async-output-path", f"{root}results",
            "--async-failure-path", f"{root}failures",
            "--async-default-model", CHICAGO,
        )  # fmt: skip
        yield Served(endpoint, root)
    finally:
        launcher.close()


def test_results_land_at_the_output_location_equal_to_in_process_xgboost(
    served: Served, s3_client: Any, boosters: dict[str, xgboost.Booster]
) -> None:
    runtime = served.endpoint.runtime()
    rows = make_rows(6, seed=41)
    calls = {  # TargetModel in CustomAttributes (with other attributes), or the endpoint's default model
        "houston-json": dict(CustomAttributes=f"trace=a1;TargetModel={HOUSTON}"),
        "houston-csv": dict(CustomAttributes=f"TargetModel={HOUSTON}", Accept="text/csv"),
        "chicago-default": dict(InferenceId="chicago-1"),
    }
    responses = {
        name: runtime.invoke_endpoint_async(
            EndpointName=served.endpoint.name,
            InputLocation=served.upload(s3_client, csv_body(rows)),
            ContentType="text/csv",
            **params,
        )
        for name, params in calls.items()
    }
    for response in responses.values():
        assert response["ResponseMetadata"]["HTTPStatusCode"] == 202
        assert response["OutputLocation"].startswith(f"{served.root}results/")
        assert response["OutputLocation"].endswith(".out")
        assert response["FailureLocation"].startswith(f"{served.root}failures/")
    assert responses["chicago-default"]["InferenceId"] == "chicago-1"
    assert outcome(s3_client, responses["houston-json"]["OutputLocation"]) == (
        container_json(boosters["reg:squarederror"], rows),
        "application/json",
    )
    assert outcome(s3_client, responses["houston-csv"]["OutputLocation"]) == (
        container_csv(boosters["reg:squarederror"], rows),
        "text/csv",
    )
    assert outcome(s3_client, responses["chicago-default"]["OutputLocation"]) == (
        container_json(boosters["binary:logistic"], rows),
        "application/json",
    )
    assert all(absent(s3_client, response["FailureLocation"]) for response in responses.values())


def test_a_body_beyond_the_synchronous_limit_is_served(
    served: Served, s3_client: Any, boosters: dict[str, xgboost.Booster]
) -> None:
    rows = make_rows(70_000, seed=43)
    body = csv_body(rows).encode()
    assert len(body) > 6 * 1024 * 1024  # invoke_endpoint refuses this body
    response = served.endpoint.runtime().invoke_endpoint_async(
        EndpointName=served.endpoint.name,
        InputLocation=served.upload(s3_client, body),
        ContentType="text/csv",
        CustomAttributes=f"TargetModel={HOUSTON}",
    )
    assert outcome(s3_client, response["OutputLocation"]) == (
        container_json(boosters["reg:squarederror"], rows),
        "application/json",
    )


def test_a_request_the_model_refuses_writes_its_error_to_the_failure_location(served: Served, s3_client: Any) -> None:
    response = served.endpoint.runtime().invoke_endpoint_async(
        EndpointName=served.endpoint.name,
        InputLocation=served.upload(s3_client, "1.0,2.0"),  # narrower than the model
        ContentType="text/csv",
        CustomAttributes=f"TargetModel={HOUSTON}",
        InferenceId="too-narrow",
    )
    body, content_type = outcome(s3_client, response["FailureLocation"])
    document = json.loads(body)
    assert content_type == "application/json"
    assert (document["__type"], document["OriginalStatusCode"]) == ("ModelError", 400)
    assert (document["InferenceId"], document["TargetModel"]) == ("too-narrow", HOUSTON)
    assert "Unable to evaluate payload provided" in document["OriginalMessage"]
    assert absent(s3_client, response["OutputLocation"])


def test_the_sagemaker_sdks_async_predictor_reads_the_result_and_raises_the_failure(
    served: Served, s3_client: Any, boosters: dict[str, xgboost.Booster]
) -> None:
    import boto3
    import sagemaker
    from sagemaker.async_inference import WaiterConfig
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.exceptions import AsyncInferenceModelError
    from sagemaker.predictor import Predictor
    from sagemaker.predictor_async import AsyncPredictor
    from sagemaker.serializers import CSVSerializer

    session = sagemaker.Session(
        boto_session=boto3.Session(region_name="us-east-1"),  # S3 as the tests' environment says
        sagemaker_runtime_client=served.endpoint.runtime(),
    )
    predictor = Predictor(served.endpoint.name, session, serializer=CSVSerializer(), deserializer=JSONDeserializer())
    asynchronous = AsyncPredictor(predictor)
    arguments = {"initial_args": {"CustomAttributes": f"TargetModel={HOUSTON}"}, "waiter_config": WaiterConfig(10, 1)}
    rows = make_rows(3, seed=44)
    result = asynchronous.predict(input_path=served.upload(s3_client, csv_body(rows)), **arguments)
    assert result == expected(boosters["reg:squarederror"], rows)
    with pytest.raises(AsyncInferenceModelError, match="Unable to evaluate payload provided"):
        asynchronous.predict(input_path=served.upload(s3_client, "1.0,2.0"), **arguments)


def test_a_call_whose_input_does_not_exist_is_refused_at_once(served: Served) -> None:
    runtime = served.endpoint.runtime(retries=1)
    with pytest.raises(runtime.exceptions.ValidationError, match="does not exist"):
        runtime.invoke_endpoint_async(
            EndpointName=served.endpoint.name, InputLocation=f"{served.root}inputs/never-uploaded.csv"
        )


def test_an_endpoint_killed_with_requests_queued_finishes_them_after_its_restart(
    s3: EmbeddedS3,
    s3_client: Any,
    tmp_path_factory: pytest.TempPathFactory,
    start_endpoint: EndpointFactory,
    prefix: str,
    boosters: dict[str, xgboost.Booster],
) -> None:
    booster = boosters["reg:squarederror"]
    publish_archive(script_archive(booster, SLOW_SCRIPT, tmp_path_factory.mktemp("slow")), prefix, SLOW)
    root = f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}/"
    options = ("--async-output-path", f"{root}results", "--async-concurrency", "1")
    victim = Launcher(s3, tmp_path_factory).start(prefix, *options)  # not stopped cleanly: killed
    inputs = Served(victim, root)
    batches: list[np.ndarray] = [make_rows(2, seed=50 + index) for index in range(4)]
    try:
        runtime = victim.runtime()
        locations = [
            runtime.invoke_endpoint_async(
                EndpointName=victim.name,
                InputLocation=inputs.upload(s3_client, csv_body(rows)),
                ContentType="text/csv",
                CustomAttributes=f"TargetModel={SLOW}",
            )["OutputLocation"]
            for rows in batches
        ]
        victim.process.kill()  # SIGKILL: the model is still loading, or answering the first request
        victim.process.wait()
    finally:
        if victim.process.poll() is None:
            victim.process.kill()
            victim.process.wait()
    left = pending(victim)
    assert left >= 2, f"only {left} request(s) were still queued when the endpoint was killed"
    started = time.monotonic()
    successor = start_endpoint(prefix, *options, "--cache-dir", str(victim.cache_dir))
    for location, rows in zip(locations, batches, strict=True):
        body, _ = outcome(s3_client, location, timeout=90)
        assert json.loads(body) == expected(booster, rows)
    assert wait_until(lambda: pending(successor) == 0, timeout=10)
    assert time.monotonic() - started < 90
