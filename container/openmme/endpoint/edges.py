"""Several front processes (``--fronts N``): the owner, this process, and N-1 *edges* (edge.py) sharing its port.

One Python front costs about a quarter of a millisecond of CPU per warm request, so one front process caps an
endpoint at a few thousand requests a second whatever the machine. With ``--fronts N`` the kernel spreads the
port's connections over N processes (``SO_REUSEPORT``): this one, which stays the one owner of model state (the
cache, its budgets, single flight, loads, evictions, MMS, the shards' workers), and N-1 edges that own nothing.

An edge answers one kind of request itself: an invocation of a dense model this process says is loaded (the
*routes*: TargetModel → its name in the shards, the shards holding it, its default Accept). It sends it straight
to a shard's worker, on a channel of its own to the socket each worker listens on (shardworker.py), exactly as
this process would. Everything else — a model not loaded, isolated or script models, aliases, pipelines,
TargetVariant, the container API, ``/ping``, ``/metrics``, and every invocation when data capture or ``--pipeline``
is on (both live in this process's data plane) — the edge forwards whole to this process, over a unix
socket of its own, and relays the answer. So does an invocation whose worker answers that it does not hold the
model (an eviction raced it) or whose worker is gone: this process then loads it again, as it would for its own.

This process keeps the edges in step over a control channel each (a socket pair, newline-delimited JSON):

- to an edge: its settings once, then the routes, as changes, every ``SYNC_INTERVAL_S`` (a model is served by the
  edges that long after it loaded; until then they forward its requests here);
- from an edge, every ``SYNC_INTERVAL_S``: the invocations it answered (target, status, seconds), replayed here
  into the metrics and counted as the cache's hits, the model used now (its LRU place, ``--idle-ttl``, the usage
  ``--preload-top`` reads).

The LRU order is therefore exact to ``SYNC_INTERVAL_S``; single flight and the budgets are untouched (only this
process loads). An edge dies with this process; an edge that dies is started again. Each edge writes its own
access-log lines (``"front": "edge-<i>"``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import Counter

from openmme.endpoint.cache.core import ModelCache
from openmme.endpoint.cache.entry import Entry, State
from openmme.endpoint.logs import log_task_failure
from openmme.endpoint.metrics import Metrics
from openmme.endpoint.settings import Settings
from openmme.handlers import DENSE

__all__ = ["SYNC_INTERVAL_S", "Edges", "RouteInfo", "route_changes", "routes_of"]

log = logging.getLogger(__name__)

SYNC_INTERVAL_S = 0.05
RESTART_DELAY_S = 1.0


@dataclass(frozen=True)
class RouteInfo:
    """What an edge needs to send a model's invocations to the shards itself."""

    name: str  # its name in the shards (MODEL_HEADER)
    shards: tuple[int, ...]  # the shards holding it
    default_accept: str | None  # its archive's default Accept (openmme.json)

    def encode(self) -> list[Any]:
        return [self.name, list(self.shards), self.default_accept]

    @classmethod
    def decode(cls, data: list[Any]) -> RouteInfo:
        return cls(str(data[0]), tuple(int(shard) for shard in data[1]), data[2])


def routes_of(entries: Iterable[Entry]) -> dict[str, RouteInfo]:
    """The models an edge may answer itself: dense, loaded, held by a shard, their cache not disabled (a model
    with ``ModelCacheSetting: Disabled`` is unloaded after each call, which only the owner does)."""
    return {
        entry.target: RouteInfo(entry.name, tuple(sorted(entry.replicas)), entry.default_accept)
        for entry in entries
        if entry.hosting == DENSE and entry.state is State.READY and entry.replicas and entry.model_cache != "disabled"
    }


def route_changes(old: Mapping[str, RouteInfo], new: Mapping[str, RouteInfo]) -> dict[str, Any] | None:
    """The message that turns an edge's ``old`` routes into ``new`` (None: no change)."""
    changed = {target: route.encode() for target, route in new.items() if old.get(target) != route}
    dropped = [target for target in old if target not in new]
    if not changed and not dropped:
        return None
    return {"routes": {"set": changed, "drop": dropped}}


def encode_line(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


@dataclass(eq=False)
class _Edge:
    index: int
    process: subprocess.Popen[bytes] | None = None
    writer: asyncio.StreamWriter | None = None
    reader_task: asyncio.Task[None] | None = None
    routes: dict[str, RouteInfo] | None = None  # what it was last sent (None: nothing yet)

    @property
    def label(self) -> str:
        return f"edge-{self.index}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


class Edges:
    """The edge fronts of this endpoint: started, kept in step, restarted, stopped."""

    def __init__(
        self,
        settings: Settings,
        cache: ModelCache,
        metrics: Metrics,
        directory: Path,
        shard_sockets: Mapping[int, str],
    ) -> None:
        self.settings = settings
        self.cache = cache
        self.metrics = metrics
        self.shard_sockets = dict(shard_sockets)
        # In the private directory of socket_directory, beside the shards' sockets.
        self.forward_path = str(directory / "owner.sock")
        self.edges = [_Edge(index) for index in range(1, settings.front_count)]
        # With data capture, or an endpoint-wide pipeline, every invocation must go through the owner's data plane:
        # the edges are then sent no route, and forward everything.
        self.answering = not settings.capture_destination and not settings.pipeline
        self._stopping = False
        self.answered = Counter(
            "openmme_front_invocations",
            "Invocations answered by an edge front itself (--fronts), by front; the others are the owner's.",
            ["front"],
            registry=metrics.registry,
        )

    @staticmethod
    def socket_directory() -> Path:
        """A new private directory (mode 0700) for the sockets the edges connect to: the owner's, and each dense
        shard worker's. In the temporary directory, not the cache directory: a unix socket's path is short. Its
        creator removes it once the endpoint has stopped."""
        return Path(tempfile.mkdtemp(prefix="openmme-fronts-"))

    async def start(self) -> None:
        """Start every edge; they listen once they are given their settings."""
        for edge in self.edges:
            await self._start(edge)

    async def _start(self, edge: _Edge) -> None:
        """Start ``edge`` and give it its settings. From the event loop's thread: the edge dies with it."""
        reader, edge.writer = await asyncio.open_unix_connection(sock=self._spawn(edge))
        hello = {
            "settings": base64.b64encode(pickle.dumps(self.settings)).decode(),
            "shards": {str(index): path for index, path in self.shard_sockets.items()},
            "forward": self.forward_path,
        }
        edge.writer.write(encode_line({"hello": hello}))
        edge.routes = None
        edge.reader_task = asyncio.create_task(self._read_reports(edge, reader), name=f"{edge.label} reports")
        edge.reader_task.add_done_callback(log_task_failure)
        log.info("front %s started (pid %s)", edge.label, edge.pid)

    def _spawn(self, edge: _Edge) -> socket.socket:
        """The edge's process (a fork and exec) on one end of a new socket pair; returns the other end."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        command = [
            *(sys.executable, "-P", "-m", "openmme.endpoint.edge"),
            *("--control-fd", str(theirs.fileno()), "--index", str(edge.index), "--owner-pid", str(os.getpid())),
        ]
        try:
            with theirs:
                edge.process = subprocess.Popen(command, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        except BaseException:
            ours.close()
            raise
        return ours

    async def run(self) -> None:
        """Keep the edges' routes in step with the cache, every SYNC_INTERVAL_S."""
        while True:
            self.sync()
            await asyncio.sleep(SYNC_INTERVAL_S)

    def sync(self) -> None:
        """Send each edge what changed in the routes since it was last sent them."""
        routes = routes_of(self.cache.models()) if self.answering else {}
        for edge in self.edges:
            if edge.writer is None or edge.writer.is_closing():
                continue
            message = route_changes(edge.routes or {}, routes)
            if message is not None:
                edge.writer.write(encode_line(message))
            edge.routes = routes

    async def _read_reports(self, edge: _Edge, reader: asyncio.StreamReader) -> None:
        """Apply an edge's reports until its channel closes; then start it again (unless stopping)."""
        try:
            while line := await reader.readline():
                self._apply(edge, json.loads(line)["report"])
        except (OSError, ValueError, KeyError) as exc:
            log.warning("front %s sent what cannot be read (%s)", edge.label, exc)
        if edge.writer is not None:
            edge.writer.close()
        process = edge.process
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await asyncio.to_thread(process.wait)
        if self._stopping:
            return
        log.warning("front %s is gone (exit %s); starting it again", edge.label, process and process.returncode)
        await asyncio.sleep(RESTART_DELAY_S)
        if not self._stopping:
            await self._start(edge)

    def _apply(self, edge: _Edge, report: Mapping[str, Any]) -> None:
        hits: dict[str, int] = {}
        for target, status, seconds in report.get("invocations", []):
            self.metrics.invocation(target, int(status), float(seconds))
            hits[target] = hits.get(target, 0) + 1
        for target, count in hits.items():
            self.cache.touched(target, count)
        if hits:
            self.answered.labels(edge.label).inc(sum(hits.values()))

    async def stop(self) -> None:
        """SIGTERM every edge (each stops listening and finishes its requests), wait; killed after 30 s."""
        self._stopping = True
        for edge in self.edges:
            if edge.process is not None and edge.process.poll() is None:
                edge.process.send_signal(signal.SIGTERM)
        for edge in self.edges:
            if edge.process is None:
                continue
            try:
                await asyncio.wait_for(asyncio.to_thread(edge.process.wait), 30.0)
            except TimeoutError:
                edge.process.kill()
                await asyncio.to_thread(edge.process.wait)
            if edge.reader_task is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await edge.reader_task
