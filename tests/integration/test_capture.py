"""Data capture with a real endpoint process: the files it writes to SeaweedFS are read with the SageMaker SDK's
own S3 reader and parse as SageMaker's capture records, holding the sampled share of invocations (within a
binomial bound) and only the models asked for; then S3 goes down and every invocation is still answered while
the captures are dropped and counted.

One endpoint for the module; it reaches S3 through a proxy that the outage test shuts (so that test runs last).
A hanging S3, and the request path never waiting for it, are shown in process (tests/endpoint/test_capture.py).
"""

from __future__ import annotations

import calendar
import contextlib
import json
import math
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
import xgboost

from openmme.publish import publish_archive
from openmme.publish.samples import make_rows, sample_archive
from openmme.seaweed import EmbeddedS3
from tests.conftest import BUCKET, Endpoint, Launcher
from tests.support import CountingProxy, csv_body, scrape, wait_until

pytestmark = pytest.mark.integration

CAPTURED = "city-a/model.tar.gz"
IGNORED = "other/model.tar.gz"  # not matched by --capture-models
PERCENT = 50
ENDPOINT_NAME = "capture-test"
BODY = csv_body(make_rows(1, seed=31))
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


class CuttableProxy(CountingProxy):
    """The counting proxy to S3, whose open connections can be cut too: ``shutdown`` alone stops only new ones,
    and a client's kept-alive connection would still reach S3."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__(upstream_port)
        self.connections: list[socket.socket] = []

    def process_request(self, request: Any, client_address: Any) -> None:
        self.connections.append(request)
        super().process_request(request, client_address)

    def cut(self) -> None:
        """From now on, S3 is down for whoever came through here: connections are refused or reset."""
        self.shutdown()
        self.server_close()
        for connection in self.connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


@dataclass
class Capturing:
    endpoint: Endpoint
    proxy: CuttableProxy  # the endpoint's only way to S3
    destination: str


@pytest.fixture(scope="module")
def capturing(
    s3: EmbeddedS3, tmp_path_factory: pytest.TempPathFactory, boosters: dict[str, xgboost.Booster]
) -> Iterator[Capturing]:
    prefix = f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}/"
    for target in (CAPTURED, IGNORED):
        publish_archive(sample_archive(boosters["binary:logistic"]), prefix, target)
    destination = f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}/data-capture"
    proxy = CuttableProxy(s3.ports["s3"])
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    launcher = Launcher(s3, tmp_path_factory)
    try:
        endpoint = launcher.start(
            prefix,
            "--capture-destination", destination,
            "--capture-sampling-percentage", str(PERCENT),
            "--capture-models", "city-*/*",
            "--capture-flush-interval", "0.5",
            s3_url=proxy.url,
            name=ENDPOINT_NAME,
        )  # fmt: skip
        for target in (CAPTURED, IGNORED):  # loaded while S3 is up
            endpoint.invoke(target, BODY)["Body"].read()
        yield Capturing(endpoint, proxy, destination)
    finally:
        launcher.close()  # exits 0 and leaves nothing behind, S3 down or not
        proxy.cut()


def capture_metrics(endpoint: Endpoint) -> dict[str, float]:
    found = {}
    for (name, labels), sample in scrape(endpoint).items():
        if name == "openmme_capture_records_total":
            found[dict(labels)["outcome"]] = sample
        elif name == "openmme_capture_buffer_records":
            found["buffered"] = sample
    return found


def settled(endpoint: Endpoint) -> dict[str, float]:
    """The capture metrics once every capture is written or dropped: nothing buffered, and the counts unchanged
    over more than a flush interval."""
    last: dict[str, float] = {}

    def still() -> bool:
        nonlocal last
        now = capture_metrics(endpoint)
        done = now == last and now["buffered"] == 0
        last = now
        return done

    assert wait_until(still, timeout=30, interval=1.0), last
    return last


def within_binomial(count: int, trials: int) -> bool:
    """``count`` of ``trials`` picked at PERCENT %: within 5 standard deviations (a false alarm about once in
    3.5 million runs)."""
    p = PERCENT / 100
    return abs(count - trials * p) <= 5 * math.sqrt(trials * p * (1 - p))


def test_captured_files_are_sagemakers_and_hold_the_sampled_share(capturing: Capturing) -> None:
    import sagemaker
    from sagemaker.s3 import S3Downloader

    endpoint, invocations = capturing.endpoint, 300
    started = time.time()
    answers = {}
    for index in range(invocations):
        inference_id = f"req-{index}"
        answers[inference_id] = endpoint.invoke(CAPTURED, BODY, InferenceId=inference_id)["Body"].read()
    for index in range(30):
        endpoint.invoke(IGNORED, BODY, InferenceId=f"ignored-{index}")["Body"].read()
    counts = settled(endpoint)

    # As a notebook reads them: the SDK lists the endpoint's and variant's folder and reads each file.
    session = sagemaker.Session(boto_session=boto3.Session())
    folder = f"{capturing.destination}/{ENDPOINT_NAME}/AllTraffic"
    files = S3Downloader.list(folder, sagemaker_session=session)
    lines = []
    for uri in files:
        hour = re.fullmatch(rf"{folder}/(\d{{4}}/\d\d/\d\d/\d\d)/\d\d-\d\d-\d{{3}}-{UUID}\.jsonl", uri)
        assert hour, uri
        for line in S3Downloader.read_file(uri, sagemaker_session=session).splitlines():
            record = json.loads(line)
            inference_time = record["eventMetadata"]["inferenceTime"]
            assert time.strftime("%Y/%m/%d/%H", time.strptime(inference_time, "%Y-%m-%dT%H:%M:%SZ")) == hour[1]
            lines.append(record)

    # Every invocation picked is written once, each as its own event, and nothing else is written.
    assert counts == {"written": len(lines), "dropped": 0, "buffered": 0}
    assert len({record["eventMetadata"]["eventId"] for record in lines}) == len(lines)
    captured = {record["eventMetadata"].get("inferenceId"): record for record in lines}
    assert {record["eventMetadata"]["targetModel"] for record in lines} == {CAPTURED}
    sampled = [name for name in captured if name is not None]
    assert within_binomial(len(sampled), invocations), len(sampled)
    assert set(sampled) <= set(answers)

    for inference_id in sampled:
        record = captured[inference_id]
        assert set(record) == {"captureData", "eventMetadata", "eventVersion"}
        assert record["eventVersion"] == "0"
        metadata = record["eventMetadata"]
        assert set(metadata) == {"eventId", "inferenceId", "inferenceTime", "targetModel"}
        assert re.fullmatch(UUID, metadata["eventId"])
        answered = calendar.timegm(time.strptime(metadata["inferenceTime"], "%Y-%m-%dT%H:%M:%SZ"))
        assert started - 1 <= answered <= time.time() + 1
        # The request as sent and the answer as returned, byte for byte, as text of the declared types.
        assert record["captureData"] == {
            "endpointInput": {"observedContentType": "text/csv", "mode": "INPUT", "data": BODY, "encoding": "CSV"},
            "endpointOutput": {
                "observedContentType": "application/json",
                "mode": "OUTPUT",
                "data": answers[inference_id].decode(),
                "encoding": "JSON",
            },
        }


def test_an_s3_outage_drops_captures_and_fails_no_invocation(capturing: Capturing, s3_client: Any) -> None:
    """Runs last: it shuts the endpoint's way to S3 for good."""
    endpoint, invocations = capturing.endpoint, 200
    before = settled(endpoint)
    bucket, _, key = capturing.destination.removeprefix("s3://").partition("/")
    objects = s3_client.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount", 0)
    capturing.proxy.cut()

    slowest = 0.0
    for _ in range(invocations):  # each one a single attempt: a failure would raise here
        started = time.perf_counter()
        endpoint.invoke(CAPTURED, BODY)["Body"].read()
        slowest = max(slowest, time.perf_counter() - started)
    after = settled(endpoint)

    assert after["written"] == before["written"]
    dropped = after["dropped"] - before["dropped"]
    assert within_binomial(int(dropped), invocations), dropped
    assert s3_client.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount", 0) == objects
    assert endpoint.ping() == 200
    assert slowest < 2.0, slowest  # far under the write's time-outs: no invocation waited for S3
    assert "data capture: " in endpoint.log() and "dropped" in endpoint.log()
