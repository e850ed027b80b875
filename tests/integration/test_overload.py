"""Failures inside a model and overload, through boto3's typed exceptions: a handler that raises is a
ModelError carrying its status; more concurrent requests than MMS queues are 503 ServiceUnavailable, fast."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from openmme.publish import pack_directory
from tests.conftest import Endpoint, EndpointFactory

pytestmark = pytest.mark.integration

SLOW_OR_FAILING = """
import time


def model_fn(model_dir):
    return None


def input_fn(body, content_type):
    return body.decode() if isinstance(body, bytes) else body


def predict_fn(text, model):
    if text.startswith("fail"):
        raise ValueError("the rows were rejected by the model: boom")
    if text.startswith("sleep"):
        time.sleep(float(text.split()[1]))
    return text.upper()


def output_fn(prediction, accept):
    return prediction, "text/plain"
"""


@pytest.fixture
def script_endpoint(start_endpoint: EndpointFactory, prefix: str, publish: Any, tmp_path: Path) -> Endpoint:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "inference.py").write_text(SLOW_OR_FAILING)
    publish(prefix, "script.tar.gz", archive=pack_directory(tmp_path))
    return start_endpoint(prefix, "--job-queue-size", "1")


def call(endpoint: Endpoint, body: str, client: Any = None) -> str:
    """The script model's answer to a plain-text ``body``."""
    return str(endpoint.invoke("script.tar.gz", body, "text/plain", client=client)["Body"].read().decode())


def test_a_handler_exception_is_a_model_error_without_traceback(script_endpoint: Endpoint) -> None:
    assert call(script_endpoint, "hello") == "HELLO"
    client = script_endpoint.runtime(retries=1)
    with pytest.raises(client.exceptions.ModelError) as caught:
        call(script_endpoint, "fail please", client)
    response = caught.value.response
    assert response["OriginalStatusCode"] == 500
    assert "boom" in response["OriginalMessage"]
    assert "Traceback" not in response["OriginalMessage"] and "\n" not in response["OriginalMessage"]
    assert call(script_endpoint, "still alive") == "STILL ALIVE"


def test_more_requests_than_the_queue_holds_get_503_quickly(script_endpoint: Endpoint) -> None:
    assert call(script_endpoint, "warm") == "WARM"  # loaded: what follows measures the queue, not the load

    def attempt(_: int) -> tuple[str, float]:
        started = time.perf_counter()
        try:
            call(script_endpoint, "sleep 1.5")
            outcome = "ok"
        except botocore.exceptions.ClientError as error:
            outcome = error.response["Error"]["Code"]
        return outcome, time.perf_counter() - started

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(attempt, range(8)))
    outcomes = [outcome for outcome, _ in results]
    assert set(outcomes) <= {"ok", "ServiceUnavailable"}
    assert outcomes.count("ok") >= 1
    assert outcomes.count("ServiceUnavailable") >= 4
    # Refused at once, not queued: each refusal came back before the call that held the queue (sleeping 1.5 s) did.
    refused = [seconds for outcome, seconds in results if outcome == "ServiceUnavailable"]
    assert max(refused) < min(seconds for outcome, seconds in results if outcome == "ok")
    # Nothing in flight was dropped, and the model serves again once the queue drains.
    assert call(script_endpoint, "after") == "AFTER"
