"""Data capture in process: the record SageMaker's tooling reads, the S3 layout, sampling and the model filter,
drops when the buffer is full or S3 fails (down, or hanging), and the data plane's hook. Writes go to the real
SeaweedFS of the session; a down S3 is a port nobody listens on, a hanging one a socket that never answers."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import random
import re
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import pytest
from prometheus_client import generate_latest

from openmme.endpoint.capture import CaptureConfig, Captured, Capturer, capture_line, object_key
from openmme.endpoint.dataplane import DataPlane, Invocation
from openmme.endpoint.errors import ModelError
from openmme.endpoint.metrics import Metrics
from openmme.endpoint.names import INFERENCE_ID
from openmme.endpoint.s3 import make_client
from openmme.endpoint.settings import Settings
from openmme.ports import free_port
from openmme.seaweed import EmbeddedS3
from tests.conftest import BUCKET
from tests.endpoint.test_cache import NO_BUDGETS, make_rig, settle

# 2021-09-27T03:47:25.250Z, and an hour later
ANSWERED = 1632714445.25
HOUR = 3600.0
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def capture_config(destination: str = "s3://captures/monitor", **settings: Any) -> CaptureConfig:
    """The capture options as ``openmme serve`` parses them (endpoint ``prod``), with ``settings`` over them."""
    return CaptureConfig.from_settings(Settings(capture_destination=destination, endpoint_name="prod", **settings))


def record(**fields: Any) -> Captured:
    values: dict[str, Any] = {
        "time": ANSWERED,
        "target": "houston/model.tar.gz",
        "request": b"0.3,-1.0\n",
        "request_type": "text/csv",
        "response": b"[0.25]",
        "response_type": "application/json",
    }
    return Captured(**{**values, **fields})


def samples(metrics: Metrics) -> dict[str, float]:
    """The capture series as /metrics exposes them."""
    value = metrics.registry.get_sample_value
    return {
        "written": value("openmme_capture_records_total", {"outcome": "written"}) or 0.0,
        "dropped": value("openmme_capture_records_total", {"outcome": "dropped"}) or 0.0,
        "buffered": value("openmme_capture_buffer_records") or 0.0,
    }


def offer(capturer: Capturer, target: str = "houston/model.tar.gz", **headers: str) -> None:
    capturer.offer(target, {"Content-Type": "text/csv", **headers}, b"1,2,3", b"[0.5]", "application/json")


def read_captures(client: Any, config: CaptureConfig) -> dict[str, list[dict[str, Any]]]:
    """Every capture file under the endpoint's and variant's folder: key → its lines, parsed."""
    listing = client.list_objects_v2(Bucket=config.destination.bucket, Prefix=config.root.key)
    files = {}
    for item in listing.get("Contents", []):
        body = client.get_object(Bucket=config.destination.bucket, Key=item["Key"])["Body"].read().decode()
        assert body.endswith("\n")
        files[item["Key"]] = [json.loads(line) for line in body.splitlines()]
    return files


@pytest.fixture
def destination(s3: EmbeddedS3) -> str:
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}/capture"


def unreachable_client(port: int, timeout: float = 1.0) -> Any:
    """An S3 client of an endpoint at ``port`` on loopback, one attempt per call, ``timeout`` seconds to wait."""
    config = botocore.config.Config(
        connect_timeout=timeout, read_timeout=timeout, retries={"mode": "standard", "max_attempts": 1}
    )
    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", config=config)


@pytest.fixture
def hanging_s3() -> Iterator[int]:
    """A port where connections are accepted (by the kernel's backlog) and never answered: an S3 that hangs."""
    with socket.create_server(("127.0.0.1", 0), backlog=64) as server:
        yield server.getsockname()[1]


# ---- the options and the metrics ------------------------------------------------------------------------------


def test_the_options_read_as_sagemakers_data_capture_config() -> None:
    environ = {"OPENMME_CAPTURE_CSV_CONTENT_TYPES": "text/csv, Text/Plain", "OPENMME_CAPTURE_MODELS": "a/*,b/*"}
    settings = Settings.from_sources(
        ["--capture-destination", "s3://monitoring/data-capture", "--capture-mode", "Input", "--endpoint-name", "prod"],
        environ,
    )
    config = CaptureConfig.from_settings(settings)
    assert (config.destination.bucket, config.root.key) == ("monitoring", "data-capture/prod/AllTraffic/")
    assert (config.percentage, config.inputs, config.outputs) == (20.0, True, False)  # the SDK's default share
    assert config.csv_types == {"text/csv", "text/plain"} and config.json_types == {"application/json"}
    assert config.models == ("a/*", "b/*")
    assert Settings.from_sources([], {}).capture_destination == ""  # off unless asked for


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--capture-destination", "https://bucket/prefix", "not an S3 URI"),
        ("--capture-destination", "s3:///prefix", "not an S3 URI"),
        ("--capture-sampling-percentage", "101", "not a percentage"),
        ("--capture-mode", "request", "not a capture mode"),
        ("--capture-csv-content-types", "text/csv; charset=utf-8", "not a media type"),
        ("--capture-variant", "All Traffic", "not a variant name"),
        ("--capture-flush-interval", "0", "not an interval"),
    ],
)
def test_bad_options_are_refused_in_one_line(
    flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        Settings.from_sources([flag, value], {})
    assert f"{flag}: {message}" in capsys.readouterr().err


def test_the_capture_series_exist_at_zero_from_the_first_scrape() -> None:
    text = generate_latest(Metrics().registry).decode()
    for line in (
        'openmme_capture_records_total{outcome="written"} 0.0',
        'openmme_capture_records_total{outcome="dropped"} 0.0',
        "openmme_capture_buffer_records 0.0",
    ):
        assert line in text.splitlines()


# ---- the record -----------------------------------------------------------------------------------------------


def test_a_record_is_a_line_of_sagemakers_capture_format() -> None:
    """The shape of the developer guide's captured record (model-monitor-data-capture-endpoint), with the
    caller's InferenceId and CustomAttributes where Model Monitor reads them, and the TargetModel."""
    line = capture_line(record(inference_id="order-17", custom_attributes="c=1"), capture_config())
    event_id = line["eventMetadata"].pop("eventId")
    assert UUID.fullmatch(event_id)
    assert line == {
        "captureData": {
            "endpointInput": {
                "observedContentType": "text/csv",
                "mode": "INPUT",
                "data": "0.3,-1.0\n",
                "encoding": "CSV",
            },
            "endpointOutput": {
                "observedContentType": "application/json",
                "mode": "OUTPUT",
                "data": "[0.25]",
                "encoding": "JSON",
            },
        },
        "eventMetadata": {
            "inferenceId": "order-17",
            "customAttributes": "c=1",
            "inferenceTime": "2021-09-27T03:47:25Z",
            "targetModel": "houston/model.tar.gz",
        },
        "eventVersion": "0",
    }
    # Without them, the optional fields are absent, not null; every event gets an id of its own.
    plain = capture_line(record(), capture_config())
    assert set(plain["eventMetadata"]) == {"eventId", "inferenceTime", "targetModel"}
    assert plain["eventMetadata"]["eventId"] != event_id


def test_only_the_configured_text_types_are_captured_as_text() -> None:
    config = capture_config(capture_csv_content_types=("text/csv", "text/plain"), capture_json_content_types=())
    binary = bytes(range(256))
    line = capture_line(
        record(request_type="text/plain; charset=utf-8", response=binary, response_type="application/json"), config
    )
    data = line["captureData"]
    # The media type decides, its parameters aside; the observed type is kept as it was sent.
    assert data["endpointInput"] == {
        "observedContentType": "text/plain; charset=utf-8",
        "mode": "INPUT",
        "data": "0.3,-1.0\n",
        "encoding": "CSV",
    }
    # JSON was not declared a JSON type here: base64, and it decodes back to the very bytes.
    assert data["endpointOutput"]["encoding"] == "BASE64"
    assert base64.b64decode(data["endpointOutput"]["data"]) == binary
    # Declared CSV but not UTF-8: base64 rather than a lossy text.
    latin1 = capture_line(record(request="é,1".encode("latin-1")), config)["captureData"]["endpointInput"]
    assert (latin1["encoding"], base64.b64decode(latin1["data"])) == ("BASE64", "é,1".encode("latin-1"))


@pytest.mark.parametrize(("mode", "sides"), [("input", {"endpointInput"}), ("output", {"endpointOutput"})])
def test_the_capture_mode_keeps_one_side(mode: str, sides: set[str]) -> None:
    capturer = Capturer(capture_config(capture_mode=mode, capture_sampling_percentage=100), Metrics(), client=None)
    offer(capturer)
    (kept,) = capturer.buffer
    assert set(capture_line(kept, capturer.config)["captureData"]) == sides
    # The side not captured is not held in memory either.
    assert (kept.request is None, kept.response is None) == (mode == "output", mode == "input")


def test_objects_are_named_as_sagemaker_names_them() -> None:
    """<destination>/<endpoint>/<variant>/yyyy/mm/dd/hh/<mm>-<ss>-<mmm>-<uuid>.jsonl, as a capture key of a real
    endpoint reads: .../AllTraffic/2020/03/11/12/32-18-648-cee08c3a-02ce-4790-b8ba-3173cfc12813.jsonl."""
    unique = str(uuid.uuid4())
    assert (
        object_key(capture_config(), ANSWERED, unique)
        == f"monitor/prod/AllTraffic/2021/09/27/03/47-25-250-{unique}.jsonl"
    )
    config = capture_config("s3://captures", capture_variant="Canary")
    assert object_key(config, ANSWERED + HOUR, unique) == f"prod/Canary/2021/09/27/04/47-25-250-{unique}.jsonl"


# ---- sampling, the model filter, the buffer ------------------------------------------------------------------


def test_the_sampler_picks_its_percentage_and_nothing_else_is_kept() -> None:
    offers = 20_000
    for percentage in (0.0, 0.5, 20.0, 100.0):
        capturer = Capturer(
            capture_config(capture_sampling_percentage=percentage), Metrics(), None, draw=random.Random(7).random
        )
        for _ in range(offers):
            offer(capturer)
        # Binomial(n, p): within 5 standard deviations (a false alarm about once in 3.5 million runs).
        p = percentage / 100
        assert abs(len(capturer.buffer) - offers * p) <= 5 * math.sqrt(offers * p * (1 - p)), percentage
        assert samples(capturer.metrics)["dropped"] == 0


def test_only_models_matching_a_pattern_are_captured() -> None:
    capturer = Capturer(
        capture_config(capture_models=("houston/*", "m-1?.tar.gz"), capture_sampling_percentage=100), Metrics(), None
    )
    for target in (
        "houston/model.tar.gz",
        "houston/v2/model.tar.gz",
        "chicago/model.tar.gz",
        "m-17.tar.gz",
        "m-7.tar.gz",
    ):
        offer(capturer, target)
    assert [kept.target for kept in capturer.buffer] == [
        "houston/model.tar.gz",
        "houston/v2/model.tar.gz",
        "m-17.tar.gz",
    ]


def test_a_full_buffer_drops_and_counts_at_once() -> None:
    size = record(request=b"1,2,3", response=b"[0.5]").size
    capturer = Capturer(capture_config(capture_sampling_percentage=100, capture_buffer=10 * size), Metrics(), None)
    started = time.perf_counter()
    for _ in range(25):
        offer(capturer)
    assert time.perf_counter() - started < 0.5  # nothing waited for room
    assert samples(capturer.metrics) == {"written": 0, "dropped": 15, "buffered": 10}
    assert capturer.buffered_bytes == 10 * size


# ---- writing to S3 --------------------------------------------------------------------------------------------


def test_a_flush_writes_one_object_per_hour_with_every_record(s3_client: Any, destination: str) -> None:
    config = capture_config(destination, capture_sampling_percentage=100)
    metrics = Metrics()
    times = iter([ANSWERED, ANSWERED + 1, ANSWERED + HOUR, ANSWERED + 2])
    capturer = Capturer(config, metrics, make_client(2, 5, 1, 2), clock=lambda: next(times))

    async def scenario() -> None:
        for index in range(4):
            offer(capturer, f"m-{index}.tar.gz", **{INFERENCE_ID: f"id-{index}"})
        assert await capturer.flush()

    asyncio.run(scenario())
    files = read_captures(s3_client, config)
    by_hour = {key.split("/")[-2]: lines for key, lines in files.items()}
    assert sorted(by_hour) == ["03", "04"]
    assert [line["eventMetadata"]["inferenceId"] for line in by_hour["03"]] == ["id-0", "id-1", "id-3"]
    assert [line["eventMetadata"]["targetModel"] for line in by_hour["04"]] == ["m-2.tar.gz"]
    for key in files:
        assert re.fullmatch(rf"{config.root.key}2021/09/27/0[34]/47-25-250-{UUID.pattern}\.jsonl", key), key
    assert samples(metrics) == {"written": 4, "dropped": 0, "buffered": 0}


def test_the_writer_flushes_on_its_interval_and_at_close(s3_client: Any, destination: str) -> None:
    config = capture_config(destination, capture_sampling_percentage=100, capture_flush_interval=0.2)
    metrics = Metrics()
    capturer = Capturer(config, metrics, make_client(2, 5, 1, 2))

    async def scenario() -> None:
        capturer.start()
        offer(capturer)
        for _ in range(100):  # written within a few intervals, with nothing else asking for it
            await asyncio.sleep(0.05)
            if samples(metrics)["written"] == 1:
                break
        offer(capturer)
        offer(capturer)
        await capturer.close()
        offer(capturer)  # after close: dropped, never buffered

    asyncio.run(scenario())
    assert sorted(map(len, read_captures(s3_client, config).values())) == [1, 2]
    assert samples(metrics) == {"written": 3, "dropped": 1, "buffered": 0}


def test_an_s3_that_is_down_drops_the_batch_and_counts_it() -> None:
    metrics = Metrics()
    capturer = Capturer(capture_config(capture_sampling_percentage=100), metrics, unreachable_client(free_port()))

    async def scenario() -> None:
        for _ in range(5):
            offer(capturer)
        assert not await capturer.flush()
        offer(capturer)
        await capturer.close()  # tries once more, fails, returns

    started = time.monotonic()
    asyncio.run(scenario())
    assert time.monotonic() - started < 5
    assert samples(metrics) == {"written": 0, "dropped": 6, "buffered": 0}


def test_an_s3_that_hangs_never_holds_up_offers_or_the_event_loop(hanging_s3: int) -> None:
    """While a write hangs in its thread, offers keep returning at once (into the buffer, then dropped when it is
    full), the event loop keeps running, and the hung batch is dropped when its time-out ends it."""
    size = record(request=b"1,2,3", response=b"[0.5]").size
    config = capture_config(capture_sampling_percentage=100, capture_buffer=20 * size, capture_flush_interval=0.05)
    metrics = Metrics()
    capturer = Capturer(config, metrics, unreachable_client(hanging_s3, timeout=2.0))
    lags: list[float] = []

    async def scenario() -> None:
        capturer.start()
        offer(capturer)
        await asyncio.sleep(0.3)  # the writer took that one and hangs on it
        assert samples(metrics)["buffered"] == 0
        for _ in range(30):
            started = time.perf_counter()
            offer(capturer)
            await asyncio.sleep(0.01)
            lags.append(time.perf_counter() - started)
        assert samples(metrics) == {"written": 0, "dropped": 10, "buffered": 20}
        await capturer.close(timeout=0.5)

    asyncio.run(scenario())
    assert max(lags) < 0.25, lags
    # Nothing was written; every capture is counted once: 10 for a full buffer, 21 when the endpoint stopped.
    assert samples(metrics) == {"written": 0, "dropped": 31, "buffered": 0}


# ---- the data plane's hook ------------------------------------------------------------------------------------


def test_the_data_plane_offers_answered_invocations_only(tmp_path: Path, s3_client: Any, destination: str) -> None:
    rig = make_rig(tmp_path, NO_BUDGETS)
    metrics = Metrics()
    config = capture_config(destination, capture_sampling_percentage=100)
    capturer = Capturer(config, metrics, make_client(2, 5, 1, 2))
    plane = DataPlane(rig.cache, metrics, capturer)

    def invocation(target: str, body: bytes, inference_id: str) -> Invocation:
        async def read() -> bytes:
            return body

        headers = {"Content-Type": "text/csv", INFERENCE_ID: inference_id}
        return Invocation(target, headers, "text/csv", read)

    async def scenario() -> None:
        await plane.invoke(invocation("houston/model.tar.gz", b"1,2", "first"))
        rig.backend.failing.add("broken.tar.gz")
        with pytest.raises(ModelError):
            await plane.invoke(invocation("broken.tar.gz", b"3,4", "failed"))
        await plane.invoke(invocation("houston/model.tar.gz", b"5,6", "second"))
        await settle()
        await capturer.close()

    asyncio.run(scenario())
    (lines,) = read_captures(s3_client, config).values()
    assert [
        (
            line["eventMetadata"]["inferenceId"],
            line["eventMetadata"]["targetModel"],
            line["captureData"]["endpointInput"]["data"],
            line["captureData"]["endpointOutput"]["data"],
            line["captureData"]["endpointOutput"]["observedContentType"],
        )
        for line in lines
    ] == [
        ("first", "houston/model.tar.gz", "1,2", "houston/model.tar.gz:1,2", "text/csv"),
        ("second", "houston/model.tar.gz", "5,6", "houston/model.tar.gz:5,6", "text/csv"),
    ]
    assert samples(metrics) == {"written": 2, "dropped": 0, "buffered": 0}
