"""Asynchronous invocations end to end: accept a call (checked, recorded on disk, answered at once), run it through
the data plane like any invocation, write its result or its failure to S3, then forget it.

    submit ─▶ parse, check the model name and the input object ─▶ journal (fsync) ─▶ 202 ─▶ queue
    worker (``concurrency`` of them) ─▶ expired? ─▶ DataPlane.invoke, within InvocationTimeoutSeconds
          ─▶ result to OutputLocation, or failure document to FailureLocation ─▶ journal record removed

Nothing accepted is lost: a request leaves the journal only once its outcome is in S3, so a stop, a crash or
SIGKILL leaves it to the next start on the same cache directory, which runs it again unless its outcome was
written just before the crash. A request that waited longer than its RequestTTLSeconds is not run: its failure
says it expired. While it runs, a model still loading (429), an overloaded or restarting model server (503) or no
memory (507) is waited out and tried again within its InvocationTimeoutSeconds; anything else the model or the
data plane answers is the failure written. Writes to S3 are tried until they succeed (an S3 outage holds the
queue; it never drops a request).

The queue is bounded: past ``capacity`` requests accepted and not finished, a call is refused with
ServiceUnavailable (503), which boto3 retries with back-off. The input object is streamed into one buffer (the
model needs the whole body at once): ``concurrency`` bounds how many are in memory.

A failure document is JSON, the error shape the synchronous call answers (``__type``, ``message``, and for a
model's failure ``OriginalStatusCode`` and ``OriginalMessage``) plus ``InferenceId`` and ``TargetModel``; openmme's
own codes ``RequestExpired`` and ``InvocationTimeout`` say that the request never ran or ran out of time.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import botocore.exceptions

from openmme.endpoint.asyncinvoke.journal import Journal
from openmme.endpoint.asyncinvoke.request import MAX_INPUT_BYTES, AsyncRequest, Destinations, parse_request
from openmme.endpoint.dataplane import Answer, DataPlane, Invocation
from openmme.endpoint.errors import (
    EndpointError,
    InsufficientMemory,
    ModelNotReady,
    ServiceUnavailable,
    ValidationError,
)
from openmme.endpoint.logs import access_log, log_json
from openmme.endpoint.metrics import Metrics
from openmme.endpoint.names import S3_MISSING_CODES, S3Location, s3_error_code, validate_target_model
from openmme.endpoint.s3 import make_client
from openmme.endpoint.settings import Settings

__all__ = ["CLOSE_GRACE_S", "Accepted", "AsyncInvocations"]

log = logging.getLogger(__name__)

# At stop, how long requests running may take to finish; the others are run again at the next start.
CLOSE_GRACE_S = 10.0
# Between attempts at a model that is not ready or an overloaded server, and at a write S3 refused.
RETRY_FIRST_S, RETRY_MAX_S, WRITE_RETRY_MAX_S = 1.0, 30.0, 60.0
# A result found in S3 for a request recovered after a crash is this request's when written at most this long
# before it was accepted (clock skew between S3 and this machine); an older one is a Filename reused.
SKEW_S = 60.0
_CHUNK = 1024 * 1024
_TRANSIENT = (ModelNotReady, ServiceUnavailable, InsufficientMemory)
_REFUSED = {"403", "AccessDenied", "NoSuchBucket", "InvalidAccessKeyId", "SignatureDoesNotMatch"}


@dataclass(frozen=True)
class Accepted:
    """The answer to an accepted call."""

    inference_id: str
    output: S3Location
    failure: S3Location


@dataclass(frozen=True)
class _Outcome:
    kind: str  # succeeded, failed, expired or timed_out (the metric's outcome label)
    location: S3Location
    body: bytes
    content_type: str


class AsyncInvocations:
    """The endpoint's async invocations: ``submit`` from the front, ``start``/``close`` from the server.

    ``invoke`` is the data plane's (an ``Invocation`` to its ``Answer``); ``check_target`` checks a TargetModel as
    ``invoke_endpoint`` does, at once (what it resolves to, an alias's version say, is decided when it runs);
    ``client`` the S3 client inputs are read and outcomes written with; ``clock``: seconds since the
    epoch (a request's age must survive restarts)."""

    def __init__(
        self,
        destinations: Destinations,
        journal: Journal,
        invoke: Callable[[Invocation], Awaitable[Answer]],
        check_target: Callable[[str], object],
        client: Any,
        metrics: Metrics,
        *,
        capacity: int,
        concurrency: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.destinations = destinations
        self.journal = journal
        self.invoke = invoke
        self.check_target = check_target
        self.client = client
        self.metrics = metrics
        self.capacity = capacity
        self.concurrency = concurrency
        self.clock = clock
        self.closed = False
        self._queue: asyncio.Queue[AsyncRequest] = asyncio.Queue()
        self._waiting: dict[str, AsyncRequest] = {}  # queued, not started, oldest first
        self._held: set[str] = set()  # accepted and not finished
        self._reserved = 0  # calls between the capacity check and their record on disk
        self._recovered: set[str] = set()  # found in the journal at start: maybe finished before a crash
        self._workers: list[asyncio.Task[None]] = []
        self._busy: set[asyncio.Task[Any]] = set()
        metrics.watch_async(self)

    @classmethod
    def from_settings(cls, settings: Settings, plane: DataPlane, metrics: Metrics) -> AsyncInvocations:
        output = S3Location.parse_prefix(settings.async_output_path)
        failure = S3Location.parse_prefix(settings.async_failure_path or settings.async_output_path)
        destinations = Destinations(settings.endpoint_name, output, failure, settings.async_default_model)
        pool = 2 * settings.async_concurrency + 4
        client = make_client(connect_timeout=5, read_timeout=60, max_attempts=3, pool=pool)
        return cls(
            destinations,
            Journal(settings.cache_dir / "async"),
            plane.invoke,
            functools.partial(validate_target_model, prefix=plane.prefix),
            client,
            metrics,
            capacity=settings.async_max_queue,
            concurrency=settings.async_concurrency,
        )

    # ---- what the metrics read ---------------------------------------------------------------------------

    def queued(self) -> int:
        return len(self._waiting)

    def running(self) -> int:
        return len(self._busy)

    def oldest_queued_age(self) -> float:
        """Seconds the oldest request not started yet has waited (0: none waits)."""
        oldest = min((request.accepted for request in self._waiting.values()), default=None)
        return max(0.0, self.clock() - oldest) if oldest is not None else 0.0

    # ---- the server's -------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Queue again what the journal holds (an earlier run's unfinished requests), then start the workers."""
        owed = await asyncio.to_thread(self.journal.open)
        recovered = [request for request in owed if request.id not in self._held]  # not accepted just now
        for request in recovered:
            self._recovered.add(request.id)
            self._enqueue(request)
        if recovered:
            log.info("%d async request(s) accepted before this start are queued again", len(recovered))
        self._workers = [
            asyncio.create_task(self._work(), name=f"async invocations {index}") for index in range(self.concurrency)
        ]

    async def close(self, grace: float = CLOSE_GRACE_S) -> None:
        """Take no more requests; let those running finish for up to ``grace`` seconds. What is not finished stays
        in the journal for the next start."""
        self.closed = True
        for worker in self._workers:
            if worker not in self._busy:
                worker.cancel()
        running = [worker for worker in self._workers if worker in self._busy]
        if running:
            _, left = await asyncio.wait(running, timeout=grace)
            for worker in left:
                worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        if self._held:
            log.info("%d async request(s) left in %s for the next start", len(self._held), self.journal.pending)

    # ---- the front's --------------------------------------------------------------------------------------

    async def submit(self, headers: Mapping[str, str], body: bytes, endpoint: str) -> Accepted:
        """Accept one ``InvokeEndpointAsync`` call: on disk when this returns. ValidationError for a call SageMaker
        would refuse, a model name the endpoint refuses, or an input object that cannot be read;
        ServiceUnavailable when the queue is full or cannot be written."""
        if self.closed:
            raise ServiceUnavailable("the endpoint is stopping; retry")
        request, inline = parse_request(headers, body, endpoint, self.destinations, str(uuid.uuid4()), self.clock())
        self.check_target(request.target)
        if len(self._held) + self._reserved >= self.capacity:
            self.metrics.async_request("refused")
            raise ServiceUnavailable(
                f"the asynchronous invocation queue is full ({self.capacity} requests waiting or running); retry later"
            )
        self._reserved += 1
        try:
            if request.input is not None:
                await asyncio.to_thread(self._check_input, request.input)
            try:
                await asyncio.to_thread(self.journal.add, request, inline)
            except OSError as exc:
                log.error("cannot record an async request in %s: %s", self.journal.pending, exc)
                reason = exc.strerror or exc
                raise ServiceUnavailable(f"the endpoint cannot queue the request ({reason}); retry") from exc
        finally:
            self._reserved -= 1
        self._enqueue(request)
        self.metrics.async_request("accepted")
        return Accepted(request.inference_id, request.output, request.failure)

    def _enqueue(self, request: AsyncRequest) -> None:
        self._held.add(request.id)
        self._waiting[request.id] = request
        self._queue.put_nowait(request)

    # ---- the workers --------------------------------------------------------------------------------------

    async def _work(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        while not self.closed:
            request = await self._queue.get()
            self._waiting.pop(request.id, None)
            self._busy.add(task)
            try:
                await self._run(request)
            except Exception:  # a bug: this worker goes on; the request stays recorded for the next start
                log.exception("async request %s could not be finished", request.inference_id)
            finally:
                self._busy.discard(task)

    async def _run(self, request: AsyncRequest) -> None:
        """One request to its end: its outcome in S3, then its record gone."""
        started = self.clock()
        if request.id in self._recovered:
            self._recovered.discard(request.id)
            if await asyncio.to_thread(self._finished_before, request):
                log.info("async request %s had its outcome written before the restart", request.inference_id)
                await self._forget(request)
                return
        try:
            outcome = await self._outcome(request, started)
        except Exception:  # a bug: the request still gets its failure, and the queue goes on
            log.exception("async request %s failed unexpectedly", request.inference_id)
            failure = EndpointError("the endpoint failed unexpectedly; see its log")
            outcome = self._failure(request, "failed", failure.body())
        await self._write(outcome)
        await self._forget(request)
        self.metrics.async_request(outcome.kind)
        log_json(
            access_log,
            {
                "event": "async_invocation",
                "inference_id": request.inference_id,
                "target_model": request.target,
                "outcome": outcome.kind,
                "location": str(outcome.location),
                "queued_ms": round((started - request.accepted) * 1000, 2),
                "run_ms": round((self.clock() - started) * 1000, 2),
            },
        )

    async def _outcome(self, request: AsyncRequest, started: float) -> _Outcome:
        waited = started - request.accepted
        if waited > request.ttl:
            message = (
                f"the request waited {waited:.0f} s in the queue, longer than its RequestTTLSeconds "
                f"({request.ttl} s); it was not run"
            )
            return self._failure(request, "expired", {"__type": "RequestExpired", "message": message})
        transient: list[EndpointError] = []
        try:
            answer = await asyncio.wait_for(self._invoke(request, transient), request.timeout)
        except TimeoutError:
            message = f"the request did not finish within its InvocationTimeoutSeconds ({request.timeout} s)"
            if transient:
                message += f"; the last attempt answered {transient[-1].code}: {transient[-1].message}"
            return self._failure(request, "timed_out", {"__type": "InvocationTimeout", "message": message})
        except EndpointError as error:
            return self._failure(request, "failed", error.body())
        return _Outcome("succeeded", request.output, answer.body, answer.content_type)

    async def _invoke(self, request: AsyncRequest, transient: list[EndpointError]) -> Answer:
        """Through the data plane, as often as a transient refusal (``transient`` collects them) says to retry;
        the body is read once, on the first attempt that gets that far."""
        kept: list[bytes] = []

        async def read_body() -> bytes:
            if not kept:
                kept.append(await self._read(request))
            return kept[0]

        delay = RETRY_FIRST_S
        while True:
            call = Invocation(request.target, request.headers, request.content_type, read_body)
            try:
                return await self.invoke(call)
            except _TRANSIENT as error:
                transient.append(error)
                log.info("async request %s: %s; trying again in %g s", request.inference_id, error.message, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    def _failure(self, request: AsyncRequest, kind: str, document: Mapping[str, object]) -> _Outcome:
        body = {**document, "InferenceId": request.inference_id, "TargetModel": request.target}
        return _Outcome(kind, request.failure, json.dumps(body).encode(), "application/json")

    async def _write(self, outcome: _Outcome) -> None:
        delay = RETRY_FIRST_S
        while True:
            try:
                await asyncio.to_thread(self._put, outcome)
                return
            except Exception as exc:  # S3 down or refusing: the request waits, it is never dropped
                log.warning("cannot write %s (%s); trying again in %g s", outcome.location, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, WRITE_RETRY_MAX_S)

    async def _forget(self, request: AsyncRequest) -> None:
        try:
            await asyncio.to_thread(self.journal.remove, request)
        except OSError as exc:  # its outcome is written: the next start finds it and does not run it again
            log.error("cannot remove the record of async request %s: %s", request.inference_id, exc)
        self._held.discard(request.id)

    # ---- S3 (blocking: run in threads) --------------------------------------------------------------------

    async def _read(self, request: AsyncRequest) -> bytes:
        if request.input is None:
            return await asyncio.to_thread(self.journal.body, request)
        stop = threading.Event()
        try:
            return await asyncio.to_thread(self._get, request.input, stop)
        finally:
            stop.set()  # cancelled (timed out, or the endpoint stops): the thread gives up at its next chunk

    def _get(self, location: S3Location, stop: threading.Event) -> bytes:
        """The input object, streamed into one buffer that becomes the body without a second copy."""
        try:
            response = self.client.get_object(Bucket=location.bucket, Key=location.key)
            stream = response["Body"]
            try:
                if int(response["ContentLength"]) > MAX_INPUT_BYTES:
                    raise ValidationError(f"InputLocation {location} is larger than {MAX_INPUT_BYTES} bytes")
                buffer = io.BytesIO()
                for chunk in stream.iter_chunks(_CHUNK):
                    if stop.is_set():
                        raise ServiceUnavailable("reading the input was abandoned")
                    buffer.write(chunk)
            finally:
                stream.close()
        except botocore.exceptions.ClientError as exc:
            raise _translate(exc, location) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise ServiceUnavailable(f"S3 cannot be reached to read {location}: {exc}") from exc
        return buffer.getvalue()

    def _check_input(self, location: S3Location) -> None:
        try:
            head = self.client.head_object(Bucket=location.bucket, Key=location.key)
        except botocore.exceptions.ClientError as exc:
            raise _translate(exc, location) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise ServiceUnavailable(f"S3 cannot be reached to check InputLocation {location}: {exc}") from exc
        if int(head["ContentLength"]) > MAX_INPUT_BYTES:
            raise ValidationError(
                f"InputLocation {location} is larger than the {MAX_INPUT_BYTES}-byte limit of asynchronous inference"
            )

    def _put(self, outcome: _Outcome) -> None:
        location = outcome.location
        self.client.put_object(
            Bucket=location.bucket, Key=location.key, Body=outcome.body, ContentType=outcome.content_type
        )

    def _finished_before(self, request: AsyncRequest) -> bool:
        """Whether this request's result or failure is in S3 already (written just before a crash)."""
        for location in (request.output, request.failure):
            try:
                head = self.client.head_object(Bucket=location.bucket, Key=location.key)
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
                continue  # absent, or S3 cannot say: run it (writing the same outcome again is harmless)
            if head["LastModified"].timestamp() >= request.accepted - SKEW_S:
                return True
        return False


def _translate(exc: botocore.exceptions.ClientError, location: S3Location) -> EndpointError:
    code = s3_error_code(exc)
    if code in S3_MISSING_CODES:
        return ValidationError(f"InputLocation {location} does not exist")
    if code in _REFUSED:
        return ValidationError(f"the endpoint may not read InputLocation {location}: {code}")
    return ServiceUnavailable(f"S3 failed reading InputLocation {location}: {code or exc}")
