"""AWS's bounds on what an invocation sends (limits.py), enforced by a real endpoint in each hosting mode: over-long
CustomAttributes, InferenceId, Accept and Content-Type sent as raw HTTP (botocore checks some bounds itself) are a
ValidationError in AWS's words, before the model or the log sees them; values at the bounds reach the model; boto3
raises AWS's exception class for what it does not check itself. The edge front's refusal: test_fronts.py."""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import xgboost

from openmme.handlers import HOSTINGS
from openmme.publish import publish_archive
from openmme.publish.samples import make_rows, sample_archive, train_booster
from openmme.seaweed import EmbeddedS3
from tests.conftest import BUCKET, Endpoint, Launcher
from tests.support import answer, container_json, csv_body

pytestmark = pytest.mark.integration

ROWS = make_rows(2, seed=23)
TARGET = "limits/model.tar.gz"
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
INFERENCE_ID = "X-Amzn-SageMaker-Inference-Id"
# One past each bound (the same text repeated, so that the log can be searched for it).
OVER = {
    "Content-Type": "text/csv;" + "t" * 1016,
    "Accept": "application/json;" + "a" * 1008,
    CUSTOM_ATTRIBUTES: "c" * 1025,
    INFERENCE_ID: "i" * 65,
}
# AWS's sentences, in the model's order of the members; a sensitive member's value is left out.
MESSAGES = {
    "Content-Type": f"Value '{OVER['Content-Type']}' at 'contentType' failed to satisfy constraint: Member must have "
    "length less than or equal to 1024",
    "Accept": f"Value '{OVER['Accept']}' at 'accept' failed to satisfy constraint: Member must have length less than "
    "or equal to 1024",
    CUSTOM_ATTRIBUTES: "Value at 'customAttributes' failed to satisfy constraint: Member must have length less than or "
    "equal to 1024",
    INFERENCE_ID: f"Value '{OVER[INFERENCE_ID]}' at 'inferenceId' failed to satisfy constraint: Member must have "
    "length less than or equal to 64",
}


@dataclass
class Served:
    endpoint: Endpoint
    booster: xgboost.Booster


@pytest.fixture(scope="module", params=HOSTINGS)
def served(
    request: pytest.FixtureRequest, s3: EmbeddedS3, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    prefix = f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}/"
    booster = train_booster("binary:logistic", seed=23)
    publish_archive(sample_archive(booster), prefix, TARGET)
    launcher = Launcher(s3, tmp_path_factory)
    try:
        yield Served(launcher.start(prefix, "--hosting", str(request.param)), booster)
    finally:
        launcher.close()


def post(endpoint: Endpoint, headers: dict[str, str], path: str | None = None) -> tuple[int, Any, dict[str, str]]:
    """An invocation of TARGET over urllib with ``headers`` added: status, JSON (or raw) body, headers."""
    sent = {"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": TARGET, **headers}
    url = endpoint.url + (path or f"/endpoints/{endpoint.name}/invocations")
    status, body, answered = answer(urllib.request.Request(url, data=csv_body(ROWS).encode(), headers=sent))
    return status, json.loads(body) if status != 200 else body, {key.lower(): value for key, value in answered.items()}


def refusals(endpoint: Endpoint) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in endpoint.log().splitlines() if line.startswith('{"time"')]
    return [line for line in lines if line.get("event") == "refused"]


@pytest.mark.parametrize("header", OVER)
def test_a_header_over_its_bound_is_a_validation_error_in_aws_words(served: Served, header: str) -> None:
    status, body, headers = post(served.endpoint, {header: OVER[header]})
    assert (status, headers["x-amzn-errortype"], body["__type"]) == (400, "ValidationError", "ValidationError")
    assert body["message"] == "1 validation error detected: " + MESSAGES[header]


def test_every_member_over_its_bound_is_named_and_none_reaches_the_model_or_the_log(served: Served) -> None:
    endpoint = served.endpoint
    status, body, _ = post(endpoint, OVER, path="/endpoints/my_endpoint/invocations")
    assert status == 400
    pattern = "Value 'my_endpoint' at 'endpointName' failed to satisfy constraint: Member must satisfy regular "
    pattern += "expression pattern: ^[a-zA-Z0-9](-*[a-zA-Z0-9])*"
    assert body["message"] == "5 validation errors detected: " + "; ".join([pattern, *MESSAGES.values()])
    log = endpoint.log()
    assert all(value not in log for value in OVER.values())
    assert refusals(endpoint)[-1]["members"] == [
        "endpointName",
        "contentType",
        "accept",
        "customAttributes",
        "inferenceId",
    ]
    assert refusals(endpoint)[-1]["route"] == "/endpoints/{endpoint}/invocations"


@pytest.mark.parametrize("path", ["/invocations", f"/models/{TARGET}/invoke"])
def test_the_container_routes_refuse_alike(served: Served, path: str) -> None:
    assert post(served.endpoint, {})[0] == 200  # loaded, so that the container's own route reaches its check
    status, body, _ = post(served.endpoint, {INFERENCE_ID: OVER[INFERENCE_ID]}, path=path)
    assert (status, body["message"]) == (400, "1 validation error detected: " + MESSAGES[INFERENCE_ID])


def test_values_at_their_bounds_reach_the_model_and_come_back(served: Served) -> None:
    attributes, inference_id = "trace=" + "c" * 1018, "i" * 64
    status, body, headers = post(served.endpoint, {CUSTOM_ATTRIBUTES: attributes, INFERENCE_ID: inference_id})
    assert (status, body) == (200, container_json(served.booster, ROWS))
    assert headers[CUSTOM_ATTRIBUTES.lower()] == attributes


def test_boto3_raises_its_validation_error_for_what_it_does_not_check_itself(served: Served) -> None:
    endpoint = served.endpoint
    client = endpoint.runtime(retries=1)
    with pytest.raises(client.exceptions.ValidationError) as raised:
        endpoint.invoke(TARGET, csv_body(ROWS), CustomAttributes="note=été", client=client)
    assert raised.value.response["Error"]["Message"] == (
        "1 validation error detected: Value at 'customAttributes' failed to satisfy constraint: Member must satisfy "
        "regular expression pattern: \\p{ASCII}*"
    )


def test_an_async_call_is_held_to_invoke_endpoint_asyncs_bounds(served: Served) -> None:
    """Checked before anything else, even on an endpoint that has asynchronous invocations off."""
    endpoint = served.endpoint
    headers = {"X-Amzn-SageMaker-RequestTTLSeconds": "59", "X-Amzn-SageMaker-InputLocation": "s3://in/rows.csv"}
    request = urllib.request.Request(
        f"{endpoint.url}/endpoints/{endpoint.name}/async-invocations", data=b"", headers=headers, method="POST"
    )
    status, body, _ = answer(request)
    assert (status, json.loads(body)["message"]) == (
        400,
        "1 validation error detected: Value '59' at 'requestTTLSeconds' failed to satisfy constraint: Member must "
        "have value greater than or equal to 60",
    )
