"""Data capture: a sampled share of invocations written to S3 the way SageMaker's data capture writes them, so
that Model Monitor tooling and notebooks read openmme's captures unchanged.

The request path only *offers* an answered invocation (``Capturer.offer``): a pattern check, one sampling draw
and, when picked, an append to a bounded in-memory buffer; when the buffer is full the capture is dropped and
counted, never waited for. A background task takes the whole buffer every flush interval (sooner once it is
half full) and writes one JSON Lines object per hour of inference time, in a thread:

    <destination>/<endpoint>/<variant>/yyyy/mm/dd/hh/<mm>-<ss>-<mmm>-<uuid>.jsonl

one line per invocation::

    {"captureData": {"endpointInput": {"observedContentType", "mode": "INPUT", "data", "encoding"},
                     "endpointOutput": {... "mode": "OUTPUT" ...}},
     "eventMetadata": {"eventId", "inferenceId"?, "customAttributes"?, "inferenceTime", "targetModel"},
     "eventVersion": "0"}

``encoding`` is CSV or JSON (``data`` the text itself) for the content types configured so, else BASE64.
A write that fails (S3 down, slower than its time-out, access denied) drops its records, counted, and is not
retried: after a failure the next attempt waits a whole flush interval, so an outage costs one bounded write
per interval and never a request's time.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fnmatch
import functools
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from openmme.endpoint.metrics import Metrics
from openmme.endpoint.names import CUSTOM_ATTRIBUTES, INFERENCE_ID, S3Location
from openmme.endpoint.s3 import make_client
from openmme.endpoint.settings import Settings

__all__ = ["CaptureConfig", "Captured", "Capturer", "capture_line", "object_key"]

log = logging.getLogger(__name__)

T = TypeVar("T")

EVENT_VERSION = "0"
# What a buffered capture costs beyond its payloads (its metadata, and the JSON around it once written).
RECORD_OVERHEAD_BYTES = 512
# A write to S3 must never hold a flush for long: short time-outs, one retry (botocore's, with back-off).
WRITE_CONNECT_TIMEOUT_S = 3.0
WRITE_READ_TIMEOUT_S = 20.0
WRITE_ATTEMPTS = 2
# At shutdown, how long the last flush may take before what is left is dropped.
CLOSE_TIMEOUT_S = 10.0
# Records encoded between two hand-overs of the GIL by the writing thread (~0.3 ms of work): otherwise the event
# loop waits for it up to the interpreter's switch interval (5 ms) each time a request needs the GIL back (measured
# with 800-record batches: the loop's 99th percentile wait 5-6 ms unsliced, under 2 ms in slices of 16 to 64).
ENCODE_SLICE = 32


@dataclass(frozen=True)
class CaptureConfig:
    """What to capture and where: the capture options of the settings, parsed."""

    destination: S3Location
    endpoint: str
    variant: str
    percentage: float
    inputs: bool
    outputs: bool
    csv_types: frozenset[str]
    json_types: frozenset[str]
    models: tuple[str, ...]  # fnmatch patterns over the TargetModel; empty: every model
    buffer_bytes: int
    flush_interval: float

    @classmethod
    def from_settings(cls, settings: Settings) -> CaptureConfig:
        return cls(
            destination=S3Location.parse_prefix(settings.capture_destination),
            endpoint=settings.endpoint_name,
            variant=settings.capture_variant,
            percentage=settings.capture_sampling_percentage,
            inputs=settings.capture_mode in {"input", "both"},
            outputs=settings.capture_mode in {"output", "both"},
            csv_types=frozenset(settings.capture_csv_content_types),
            json_types=frozenset(settings.capture_json_content_types),
            models=settings.capture_models,
            buffer_bytes=settings.capture_buffer,
            flush_interval=settings.capture_flush_interval,
        )

    @property
    def root(self) -> S3Location:
        """Where this endpoint's and variant's hourly folders are."""
        return self.destination.child(f"{self.endpoint}/{self.variant}/")


@dataclass(frozen=True)
class Captured:
    """One invocation picked for capture, as the request path hands it over (payloads not yet encoded)."""

    time: float  # when it was answered, seconds since the epoch
    target: str
    request: bytes | None  # None: requests are not captured
    request_type: str
    response: bytes | None  # None: responses are not captured
    response_type: str
    inference_id: str | None = None
    custom_attributes: str | None = None

    @property
    def size(self) -> int:
        return len(self.request or b"") + len(self.response or b"") + RECORD_OVERHEAD_BYTES


def _payload(data: bytes, content_type: str, mode: str, config: CaptureConfig) -> dict[str, str]:
    """One side of an invocation as SageMaker captures it: as text when its media type (parameters aside) is one
    of the CSV or JSON types and it is UTF-8, else base64."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    encoding = "CSV" if media_type in config.csv_types else "JSON" if media_type in config.json_types else "BASE64"
    text = None
    if encoding != "BASE64":
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            encoding = "BASE64"
    if text is None:
        text = base64.b64encode(data).decode("ascii")
    return {"observedContentType": content_type, "mode": mode, "data": text, "encoding": encoding}


def capture_line(record: Captured, config: CaptureConfig) -> dict[str, Any]:
    """The JSON object of one captured invocation (a line of a capture file)."""
    data: dict[str, Any] = {}
    if record.request is not None:
        data["endpointInput"] = _payload(record.request, record.request_type, "INPUT", config)
    if record.response is not None:
        data["endpointOutput"] = _payload(record.response, record.response_type, "OUTPUT", config)
    metadata = {"eventId": str(uuid.uuid4())}
    if record.inference_id is not None:
        metadata["inferenceId"] = record.inference_id
    if record.custom_attributes is not None:
        metadata["customAttributes"] = record.custom_attributes
    metadata["inferenceTime"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.time))
    metadata["targetModel"] = record.target
    return {"captureData": data, "eventMetadata": metadata, "eventVersion": EVENT_VERSION}


def object_key(config: CaptureConfig, first: float, unique: str) -> str:
    """The key of a capture file whose first invocation was answered at ``first``: in that hour's folder, named
    after its minute, second and millisecond, then ``unique``."""
    moment = time.gmtime(first)
    millisecond = int(first * 1000) % 1000
    return (
        f"{config.root.key}{time.strftime('%Y/%m/%d/%H', moment)}/"
        f"{moment.tm_min:02d}-{moment.tm_sec:02d}-{millisecond:03d}-{unique}.jsonl"
    )


def _hour(record: Captured) -> tuple[int, int, int, int]:
    moment = time.gmtime(record.time)
    return moment.tm_year, moment.tm_mon, moment.tm_mday, moment.tm_hour


class Capturer:
    """Takes captures from the request path without ever making it wait, and writes them to S3 in batches.

    ``client``: the S3 client the batches are written with (``from_settings`` makes one with short time-outs);
    ``draw``: the sampler's random numbers in [0, 1); ``clock``: seconds since the epoch."""

    def __init__(
        self,
        config: CaptureConfig,
        metrics: Metrics,
        client: Any,
        draw: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.client = client
        self.draw = draw
        self.clock = clock
        self.buffer: list[Captured] = []
        self.buffered_bytes = 0
        self.closed = False
        self._wake = asyncio.Event()  # the buffer is half full, or the capturer is closing
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._full_drops = 0  # dropped for a full buffer since the last flush, for the log
        metrics.capture_buffer_records.set_function(lambda: len(self.buffer))

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics) -> Capturer:
        client = make_client(WRITE_CONNECT_TIMEOUT_S, WRITE_READ_TIMEOUT_S, WRITE_ATTEMPTS, pool=2)
        return cls(CaptureConfig.from_settings(settings), metrics, client)

    # ---- the request path --------------------------------------------------------------------------------

    def offer(
        self, target: str, headers: Mapping[str, str], request: bytes, response: bytes, response_type: str
    ) -> None:
        """An answered invocation: kept for the next write when the model is one to capture and the sampler picks
        it; never raises, never waits."""
        config = self.config
        if config.models and not any(fnmatch.fnmatchcase(target, pattern) for pattern in config.models):
            return
        if self.draw() * 100.0 >= config.percentage:
            return
        try:
            record = Captured(
                time=self.clock(),
                target=target,
                request=request if config.inputs else None,
                request_type=headers.get("Content-Type", "application/octet-stream"),
                response=response if config.outputs else None,
                response_type=response_type,
                inference_id=headers.get(INFERENCE_ID),
                custom_attributes=headers.get(CUSTOM_ATTRIBUTES),
            )
            if self.closed or self.buffered_bytes + record.size > config.buffer_bytes:
                self._full_drops += 1
                self.metrics.captured("dropped")
                return
            self.buffer.append(record)
            self.buffered_bytes += record.size
            if self.buffered_bytes * 2 >= config.buffer_bytes:
                self._wake.set()
        except Exception:  # a capture must never fail the invocation it records
            log.exception("data capture: could not keep an invocation of %s", target)
            self.metrics.captured("dropped")

    # ---- the writer ----------------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = self._writer()
        log.info(
            "data capture: %g%% of invocations%s to %s",
            self.config.percentage,
            f" of {', '.join(self.config.models)}" if self.config.models else "",
            self.config.root,
        )

    def _writer(self) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(self._write_loop(), name="data capture")

    async def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Stop taking captures and write what is buffered, giving up (and counting it dropped) after ``timeout``
        seconds."""
        self.closed = True
        self._stop.set()
        self._wake.set()
        task = self._task or self._writer()  # never started: one write of what was offered
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            log.warning("data capture: the last write to %s did not finish within %g s", self.config.root, timeout)
        if self.buffer:
            self._drop(len(self.buffer), "the endpoint stopped")
            self.buffer, self.buffered_bytes = [], 0

    async def _write_loop(self) -> None:
        """Write the buffer every flush interval, or as soon as it is half full; after a failed write, only once a
        whole interval has passed; once more at close."""
        interval = self.config.flush_interval
        succeeded = True
        while True:
            event = self._wake if succeeded else self._stop
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), interval)
            self._wake.clear()
            try:
                succeeded = await self.flush()
            except Exception:  # the writer lives as long as the endpoint
                log.exception("data capture: a write failed unexpectedly")
                succeeded = False
            if self._stop.is_set():
                if self.buffer:  # offered while that write was under way
                    await self.flush()
                return

    async def flush(self) -> bool:
        """Write everything buffered now, one object per hour of inference time; False when a write failed (its
        records, and those of the hours not tried after it, are dropped)."""
        if self._full_drops:
            log.warning("data capture: %d invocation(s) dropped: the buffer was full", self._full_drops)
            self._full_drops = 0
        batch, self.buffer, self.buffered_bytes = self.buffer, [], 0
        hours: dict[tuple[int, int, int, int], list[Captured]] = {}
        for record in batch:
            hours.setdefault(_hour(record), []).append(record)
        groups = list(hours.values())
        for index, records in enumerate(groups):
            try:
                await _in_daemon_thread(self._write, records)
            except asyncio.CancelledError:
                self._drop(sum(map(len, groups[index:])), "the endpoint stopped while writing")
                raise
            except Exception as exc:
                self._drop(sum(map(len, groups[index:])), f"writing to {self.config.root} failed: {exc}")
                return False
            self.metrics.captured("written", len(records))
        return True

    def _write(self, records: list[Captured]) -> None:
        """One capture file (blocking: runs in a thread)."""
        lines = []
        for start in range(0, len(records), ENCODE_SLICE):
            for record in records[start : start + ENCODE_SLICE]:
                lines.append(json.dumps(capture_line(record, self.config), separators=(",", ":")) + "\n")
            time.sleep(0)  # hands the GIL over (see ENCODE_SLICE)
        key = object_key(self.config, records[0].time, str(uuid.uuid4()))
        body = "".join(lines).encode()
        self.client.put_object(Bucket=self.config.destination.bucket, Key=key, Body=body)

    def _drop(self, records: int, reason: str) -> None:
        log.warning("data capture: %d invocation(s) dropped: %s", records, reason)
        self.metrics.captured("dropped", records)


async def _in_daemon_thread(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` in a thread of its own, awaited. Not ``asyncio.to_thread``: a write hung on an S3 that
    stopped answering must not hold the process at exit, and the default executor's threads are joined then."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], object]) -> None:
        if not future.done():  # not cancelled meanwhile
            outcome()

    def run() -> None:
        done: Callable[[], object]
        try:
            done = functools.partial(future.set_result, function(*args))
        except BaseException as exc:
            done = functools.partial(future.set_exception, exc)
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
            loop.call_soon_threadsafe(settle, done)

    threading.Thread(target=run, name="openmme-capture-write", daemon=True).start()
    return await future
