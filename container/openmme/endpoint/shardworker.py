"""The direct channel to a dense shard's worker: MMS's Python worker and its socket protocol, without the Java hop.

Every warm request to a dense model used to cross three processes: this front, MMS's Java front (an HTTP parse,
a queue, a re-encode: about 0.45 ms of CPU per request) and the shard's Python worker. A shard's worker now is
a child of this front (``openmme.handlers._shard_worker``, which runs MMS's own worker code) and the front writes
MMS's binary messages to it over a socket pair: a load message once, then inference messages.

A worker answers one message at a time, in order. Requests that arrive while the worker is busy wait in a queue
and go in the next message together (up to ``MAX_BATCH``): MMS's protocol carries a batch per message and the
shard's handler answers each request of it on its own, so batching changes no answer, only the per-message
overhead at high concurrency.

The worker's end of the channel is its lifetime: when the worker dies, every request waiting in it fails with
``WorkerGone`` at once (the caller sends it again elsewhere), and ``on_exit`` is called. A prediction that takes
longer than its time-out ends the worker, as MMS does with a worker that does not answer: the requests queued
behind it are not left waiting for it.

The codec (``encode_load``, ``encode_inference``, ``read_reply``) is MMS 1.1's ``otf_message_handler`` format seen
from the Java front's side.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
import subprocess
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from openmme.endpoint.errors import ModelError, ServiceUnavailable
from openmme.endpoint.mms import MmsResponse

__all__ = [
    "MAX_BATCH",
    "ShardChannel",
    "ShardWorker",
    "WorkerGone",
    "encode_inference",
    "encode_load",
    "read_reply",
]

log = logging.getLogger(__name__)

# Requests sent to a worker in one message at most.
MAX_BATCH = 16

_INT = struct.Struct("!i")
_END = _INT.pack(-1)


class WorkerGone(Exception):
    """The worker died (or was stopped) before it answered: the request may be sent again."""


# ---- the codec -----------------------------------------------------------------------------------------------


def _field(data: bytes) -> bytes:
    return _INT.pack(len(data)) + data


def encode_load(name: str, model_dir: str, handler: str) -> bytes:
    """MMS's load message: model name, model path, batch size, handler, GPU (-1: none), no log FIFOs."""
    return b"".join(
        (
            b"L",
            _field(name.encode()),
            _field(model_dir.encode()),
            _INT.pack(MAX_BATCH),
            _field(handler.encode()),
            _INT.pack(-1),
            _field(b""),
        )
    )


@dataclass(frozen=True)
class Request:
    headers: Mapping[str, str]
    body: bytes
    content_type: str


def encode_inference(requests: list[Request]) -> bytes:
    """MMS's inference message: per request, its id (its index), its headers and one parameter, ``body``."""
    parts = [b"I"]
    for index, request in enumerate(requests):
        parts.append(_field(str(index).encode()))
        for name, value in request.headers.items():
            parts.append(_field(name.encode()))
            parts.append(_field(value.encode()))
        parts.append(_END)
        parts.append(_field(b"body"))
        parts.append(_field(request.content_type.encode()))
        parts.append(_field(request.body))
        parts.append(_END)
    parts.append(_END)
    return b"".join(parts)


async def read_reply(reader: asyncio.StreamReader, count: int) -> list[MmsResponse]:
    """One answer to an inference message of ``count`` requests, as the responses the Java front would have given.

    A whole message failed in the worker (its handler raised) carries no per-request status: each request gets the
    message's code and text, as MMS's Java front answers it."""
    code, message = await _read_int(reader), (await _read_bytes(reader)).decode(errors="replace")
    responses: list[MmsResponse | None] = [None] * count
    while (length := await _read_int(reader)) != -1:
        index = int(await reader.readexactly(length))
        content_type = (await _read_bytes(reader)).decode()
        status = await _read_int(reader)
        await _read_bytes(reader)  # the reason phrase
        headers: dict[str, str] = {}
        for _ in range(await _read_int(reader)):
            key = (await _read_bytes(reader)).decode()
            headers[key] = (await _read_bytes(reader)).decode()
        body = await _read_bytes(reader)
        if code != 200 and status == code and not headers:
            body = json.dumps({"code": code, "type": "InternalServerException", "message": message}).encode()
            content_type = "application/json"
        if content_type:
            headers.setdefault("Content-Type", content_type)
        responses[index] = MmsResponse(status, body, _Headers(headers))
    if any(response is None for response in responses):
        raise ConnectionError("the worker answered fewer requests than it was sent")
    return [response for response in responses if response is not None]


class _Headers(dict[str, str]):
    """Response headers, read case-insensitively (only ``get`` is used on them)."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        super().__init__((key.lower(), value) for key, value in headers.items())

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())


async def _read_int(reader: asyncio.StreamReader) -> int:
    value: int = _INT.unpack(await reader.readexactly(4))[0]
    return value


async def _read_bytes(reader: asyncio.StreamReader) -> bytes:
    length = await _read_int(reader)
    return await reader.readexactly(length) if length > 0 else b""


# ---- the worker --------------------------------------------------------------------------------------------


async def _read_load_reply(reader: asyncio.StreamReader) -> int:
    code = await _read_int(reader)
    await _read_bytes(reader)  # its message
    await _read_int(reader)  # -1: no predictions
    return code


class _Expired(Exception):
    """A request's time-out passed before its answer came."""


def _expire(future: asyncio.Future[MmsResponse]) -> None:
    if not future.done():
        future.set_exception(_Expired())


@dataclass(eq=False)
class _Pending:
    request: Request
    future: asyncio.Future[MmsResponse]
    prediction: bool


class ShardChannel:
    """One connection to a shard's worker: requests queued, sent a message (a batch of up to ``MAX_BATCH``) at a
    time, each answer handed to its caller. The front's own connection belongs to its ``ShardWorker``; an edge
    front (edges.py) opens one of its own to the worker's listening socket."""

    def __init__(
        self,
        name: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        max_queue: int,
        on_timeout: Callable[[], object] | None = None,
        on_closed: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        """``on_timeout``: what a prediction past its time-out does (None: close this channel); ``on_closed``:
        awaited once the channel is closed and its requests failed (None: nothing more)."""
        self.name = name
        self.max_queue = max_queue  # predictions waiting beyond which more are refused (503, as MMS does)
        self._reader, self._writer = reader, writer
        self._on_timeout, self._on_closed = on_timeout or self.close, on_closed
        self._queue: deque[_Pending] = deque()
        self._wakeup = asyncio.Event()
        self._in_worker: list[_Pending] = []  # the message the worker is answering
        self._closed = False  # closed (or the worker ended): the pump leaves even when idle, no request is taken
        self.stopping = False  # closed on purpose: its end is not a failure
        self._pump = asyncio.create_task(self._run(), name=f"{name} channel")

    @classmethod
    async def connect(cls, name: str, path: str, max_queue: int) -> ShardChannel:
        """A channel of an edge front to the worker listening at ``path``; a time-out closes it (the worker is the
        owner's to end). Raises OSError when nothing listens there."""
        reader, writer = await asyncio.open_unix_connection(path)
        return cls(name, reader, writer, max_queue)

    def alive(self) -> bool:
        """Whether it takes requests: not closed, and its worker not found gone."""
        return not self._closed and not self._pump.done()

    @property
    def waiting(self) -> int:
        """Requests sent and not answered yet, in the worker or queued for it."""
        return len(self._queue) + len(self._in_worker)

    async def call(
        self, headers: Mapping[str, str], body: bytes, content_type: str, timeout: float, *, prediction: bool = True
    ) -> MmsResponse:
        """One request to the shard: the handler's answer whatever its status. Raises WorkerGone when the worker
        died (or the channel closed) first; ServiceUnavailable when ``max_queue`` predictions already wait (as
        MMS's full job queue); on a time-out, ModelError 408 for a prediction (the model's failure, as MMS answers
        it) or ServiceUnavailable for an operation, after ``on_timeout``."""
        if not self.alive():
            raise WorkerGone(self.name)
        if prediction and len(self._queue) >= self.max_queue:
            raise ServiceUnavailable(
                f"dense shard {self.name} has {len(self._queue)} requests waiting (--job-queue-size); retry"
            )
        loop = asyncio.get_running_loop()
        pending = _Pending(Request(headers, body, content_type), loop.create_future(), prediction)
        self._queue.append(pending)
        self._wakeup.set()
        # A timer on the future itself rather than wait_for(shield(...)): no task or future more per request.
        timer = loop.call_later(timeout, _expire, pending.future)
        try:
            return await pending.future
        except _Expired as exc:
            log.error("dense shard %s did not answer within %g s", self.name, timeout)
            self._on_timeout()
            if prediction:
                message = f"the model did not answer within {timeout:g} s"
                raise ModelError(message, original_status=408, original_message="timed out") from exc
            raise ServiceUnavailable(f"dense shard {self.name} did not answer within {timeout:g} s; retry") from exc
        finally:
            timer.cancel()  # awaiting the future directly: a caller that goes away cancels it, and its answer,
            # when it comes, is dropped

    async def _run(self) -> None:
        """Send what is queued, one message at a time, and hand each answer to its caller."""
        reader, writer = self._reader, self._writer
        try:
            while not self._closed:
                if not self._queue:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                batch = self._in_worker
                while self._queue and len(batch) < MAX_BATCH:
                    pending = self._queue.popleft()
                    if not pending.future.done():  # its caller gave up already
                        batch.append(pending)
                if not batch:
                    continue
                writer.write(encode_inference([pending.request for pending in batch]))
                replies = await read_reply(reader, len(batch))
                for pending, reply in zip(batch, replies, strict=True):
                    if not pending.future.done():
                        pending.future.set_result(reply)
                batch.clear()
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            if not self.stopping:
                log.warning("dense shard %s: its worker is gone (%s)", self.name, exc or type(exc).__name__)
        finally:
            self._closed = True  # from now on a call is WorkerGone at once, never queued behind a dead pump
            for pending in [*self._in_worker, *self._queue]:
                if not pending.future.done():
                    pending.future.set_exception(WorkerGone(self.name))
            self._in_worker.clear()
            self._queue.clear()
            writer.close()
            if self._on_closed is not None:
                await self._on_closed()

    def close(self) -> None:
        """Close the channel: its requests fail with WorkerGone, ``on_closed`` follows."""
        self._closed = True
        self._wakeup.set()  # an idle pump leaves too
        self._writer.close()

    async def closed(self) -> None:
        """Wait for the pump to leave (after ``close``, or the worker's end)."""
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await self._pump


@dataclass(eq=False)
class ShardWorker:
    """One shard's worker process, and the front's channel to it."""

    name: str
    model_dir: Path
    handler: str
    environment: Mapping[str, str]
    log_path: Path
    max_queue: int = 100  # predictions waiting for the worker beyond which more are refused (503, as MMS does)
    on_exit: Callable[[ShardWorker], object] = lambda worker: None
    listen_path: str | None = None  # where the worker also accepts edge fronts' channels (None: it does not)
    process: subprocess.Popen[bytes] | None = None
    channel: ShardChannel | None = None
    stopping: bool = False  # stopped on purpose: its end is not a failure

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        return self.channel is not None and self.channel.alive()

    async def start(self, timeout: float) -> None:
        """Start the worker process and load the shard's handler in it; raises ServiceUnavailable if it cannot.
        Call it from the event loop's thread: the worker dies with the thread that started it."""
        ours = self._spawn()
        try:
            reader, writer = await asyncio.open_unix_connection(sock=ours)
        except BaseException:
            ours.close()
            self.kill()
            raise
        self.stopping = False
        try:
            writer.write(encode_load(self.name, str(self.model_dir), self.handler))
            code = await asyncio.wait_for(_read_load_reply(reader), timeout)
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
            writer.close()
            self.kill()
            raise ServiceUnavailable(f"dense shard {self.name}'s worker did not start ({exc or 'timed out'})") from exc
        if code != 200:
            writer.close()
            self.kill()
            message = f"dense shard {self.name}'s worker could not load its handler (see {self.log_path})"
            raise ServiceUnavailable(message)
        self.channel = ShardChannel(self.name, reader, writer, self.max_queue, self.kill, self._ended)
        log.info("dense shard %s: worker %d started", self.name, self.pid)

    def _spawn(self) -> socket.socket:
        """Start the worker process (a fork and exec: quick) on one end of a new socket pair; returns the other."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        command = [
            *(sys.executable, "-P", "-m", "openmme.handlers._shard_worker"),
            *("--fd", str(theirs.fileno()), "--model-name", self.name, "--front-pid", str(os.getpid())),
            *(("--listen", self.listen_path) if self.listen_path else ()),
        ]
        try:
            with theirs, self.log_path.open("ab") as out:
                self.process = subprocess.Popen(
                    command,
                    cwd=self.model_dir,
                    env=dict(self.environment),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    pass_fds=(theirs.fileno(),),
                    start_new_session=True,  # Ctrl-C at a terminal reaches the front only
                )
        except BaseException:
            ours.close()
            raise
        return ours

    async def call(
        self, headers: Mapping[str, str], body: bytes, content_type: str, timeout: float, *, prediction: bool = True
    ) -> MmsResponse:
        """One request to the shard (see ShardChannel.call); a time-out ends the worker, as MMS ends a worker that
        does not answer: the requests queued behind it are not left waiting for it."""
        if self.channel is None:
            raise WorkerGone(self.name)
        return await self.channel.call(headers, body, content_type, timeout, prediction=prediction)

    async def _ended(self) -> None:
        """The channel closed: the worker is ended (if it is not already), ``on_exit`` called at once (its models
        are lost now: a request sent again meanwhile must not find them loaded), then the process reaped."""
        if not self.stopping:
            log.warning("dense shard %s: its worker %s is gone", self.name, self.pid)
        process = self.process
        self.kill()
        self.on_exit(self)
        if process is not None:
            await asyncio.to_thread(process.wait)  # reaped

    def kill(self) -> None:
        """End the worker now (its requests fail with WorkerGone, ``on_exit`` follows); it is not restarted here."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        if self.channel is not None:
            self.channel.close()

    def check(self) -> None:
        """Housekeeping: a worker that died while idle (no request to find out) is ended now, and ``on_exit``
        follows, instead of on its next request."""
        if self.alive() and self.process is not None and self.process.poll() is not None:
            self.kill()

    async def stop(self, grace: float = 5.0) -> None:
        """Close the channel (the worker then exits by itself) and wait for it; killed after ``grace`` s."""
        self.stopping = True
        process, channel = self.process, self.channel
        if channel is not None:
            channel.stopping = True
            channel.close()
        if process is not None:
            try:
                await asyncio.wait_for(asyncio.to_thread(process.wait), grace)
            except TimeoutError:
                self.kill()
                await asyncio.to_thread(process.wait)
        if channel is not None:
            await channel.closed()

    def memory_bytes(self) -> int:
        """Blocking: the worker's proportional set size (0 when it is gone)."""
        from openmme.endpoint.mms import memory_of

        if self.pid is None:
            return 0
        with contextlib.suppress(psutil.Error):
            return memory_of([psutil.Process(self.pid)])
        return 0
