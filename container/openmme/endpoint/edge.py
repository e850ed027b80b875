"""An edge front (``--fronts N``, see edges.py): the endpoint's port, shared with the owner (``SO_REUSEPORT``);
warm invocations of dense models answered here, straight from the shards' workers; everything else forwarded
to the owner and its answer relayed.

What an edge answers itself is answered as the owner would: the same body limit and bounds on the headers
(limits.py: an invocation over them is refused here, forwarded or not), the same headers to the model and the same
answer and errors (dataplane.reply_answer), the same access-log line (with ``"front"``); with ``--auth sigv4`` the
same signature check (a forwarded request is checked here, then again by the owner). Its invocations are reported
to the owner, which counts them in its metrics and its cache.

    python -m openmme.endpoint.edge --control-fd N --index I --owner-pid PID   (started by the owner only)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import pickle
import signal
import socket
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Middleware

from openmme.endpoint.aliases import ALL_TRAFFIC
from openmme.endpoint.app import FORWARDED, check_limits, read_body
from openmme.endpoint.auth import load_keys, sigv4_middleware
from openmme.endpoint.dataplane import FORM_TYPES, ms_since, reply_answer, with_default_accept
from openmme.endpoint.edges import SYNC_INTERVAL_S, RouteInfo, encode_line
from openmme.endpoint.errors import EndpointError
from openmme.endpoint.http_errors import errors_middleware
from openmme.endpoint.logs import access_log, configure_logging, log_json
from openmme.endpoint.names import INFERENCE_ID, TARGET_MODEL, TARGET_VARIANT
from openmme.endpoint.settings import LISTEN_BACKLOG, MAX_BODY_BYTES, Settings
from openmme.endpoint.shardworker import ShardChannel, WorkerGone
from openmme.endpoint.slowclients import BODY_TIMEOUT, Runner, read_within
from openmme.endpoint.tls import tls_context
from openmme.handlers import MODEL_HEADER
from openmme.handlers._lifetime import die_with_parent

__all__ = ["main"]

log = logging.getLogger(__name__)

# Request headers not passed on when a request is forwarded (hop by hop, or set again by the client).
_HOP_HEADERS = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection", "content-length"}
)
_NOT_RELAYED = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "date", "server"})


class Edge:
    """One edge's state: its settings, the routes the owner sent, its channels to the shards, its reports."""

    def __init__(self, index: int, settings: Settings, shard_sockets: Mapping[int, str], forward_path: str) -> None:
        self.index = index
        self.label = f"edge-{index}"
        self.settings = settings
        self.shard_sockets = dict(shard_sockets)
        self.forward_path = forward_path
        self.routes: dict[str, RouteInfo] = {}
        self.channels: dict[int, ShardChannel] = {}
        self._connecting: dict[int, asyncio.Task[ShardChannel | None]] = {}
        self.invocations: list[tuple[str, int, float]] = []  # answered here since the last report
        self.session: aiohttp.ClientSession | None = None

    def apply(self, message: Mapping[str, Any]) -> None:
        """A route change from the owner."""
        changes = message["routes"]
        for target, encoded in changes["set"].items():
            self.routes[target] = RouteInfo.decode(encoded)
        for target in changes["drop"]:
            self.routes.pop(target, None)

    async def channel(self, route: RouteInfo) -> ShardChannel | None:
        """The least busy live channel to a shard holding the model, connecting to one if needed (None: none)."""
        live = [self.channels[shard] for shard in route.shards if shard in self.channels]
        live = [channel for channel in live if channel.alive()]
        if live:
            return min(live, key=lambda channel: channel.waiting)
        for shard in route.shards:
            channel = await self._connect(shard)
            if channel is not None:
                return channel
        return None

    async def _connect(self, shard: int) -> ShardChannel | None:
        connecting = self._connecting.get(shard)
        if connecting is None:
            connecting = asyncio.ensure_future(self._open(shard))
            self._connecting[shard] = connecting
            connecting.add_done_callback(lambda _: self._connecting.pop(shard, None))
        return await asyncio.shield(connecting)

    async def _open(self, shard: int) -> ShardChannel | None:
        path = self.shard_sockets.get(shard)
        if path is None:
            return None
        try:
            channel = await ShardChannel.connect(f"shard {shard} ({self.label})", path, self.settings.job_queue_size)
        except OSError:
            return None  # its worker is being started again: forwarded meanwhile
        self.channels[shard] = channel
        return channel

    async def forward(self, request: web.Request, body: bytes | None = None) -> web.Response:
        """``request`` sent whole to the owner, its answer relayed."""
        assert self.session is not None
        if body is None:
            body = await read_within(request, request.read())
        headers = {key: value for key, value in request.headers.items() if key.lower() not in _HOP_HEADERS}
        async with self.session.request(request.method, request.path_qs, headers=headers, data=body) as response:
            payload = await response.read()
            relayed = [(key, value) for key, value in response.headers.items() if key.lower() not in _NOT_RELAYED]
            return web.Response(status=response.status, body=payload, headers=relayed)

    async def invoke(self, request: web.Request, endpoint: str | None = None) -> web.Response:
        """A warm dense invocation answered here; anything else forwarded. Headers over AWS's bounds are refused
        here, as the owner refuses them."""
        check_limits(request, front=self.label)
        target = request.headers.get(TARGET_MODEL)
        route = self.routes.get(target) if target is not None else None
        if (
            route is None
            or TARGET_VARIANT in request.headers
            or (endpoint is not None and endpoint != self.settings.endpoint_name)
            or request.content_type in FORM_TYPES
        ):
            return await self.forward(request)
        assert target is not None
        started = time.perf_counter()
        body = await read_body(request)
        channel = await self.channel(route)
        if channel is None:
            return await self.forward(request, body)
        asked = {key: request.headers[key] for key in FORWARDED if key in request.headers}
        headers = with_default_accept(asked, route.default_accept)
        sent = {**headers, MODEL_HEADER: route.name}
        status = 500
        record: dict[str, object] = {
            "event": "invocation",
            "inference_id": request.headers.get(INFERENCE_ID),
            "target_model": target,
            "front": self.label,
            "cache": "hit",
        }
        try:
            try:
                reply = await channel.call(sent, body, headers.get("Content-Type", ""), self.settings.response_timeout)
            except WorkerGone:
                record = {}
                return await self.forward(request, body)
            if reply.forgot_model:  # evicted meanwhile: the owner loads it again
                record = {}
                return await self.forward(request, body)
            record["predict_ms"] = ms_since(started)
            answer = reply_answer(target, reply, headers, ALL_TRAFFIC)
            status = 200
            return web.Response(body=answer.body, headers=answer.headers, content_type=answer.content_type)
        except EndpointError as error:
            status = error.status
            record["error"] = error.code
            raise
        finally:
            if record:
                seconds = time.perf_counter() - started
                record["status"], record["total_ms"] = status, ms_since(started)
                self.invocations.append((target, status, seconds))
                log_json(access_log, record)

    async def report(self, writer: asyncio.StreamWriter) -> None:
        """Every SYNC_INTERVAL_S: the invocations answered here, to the owner."""
        while True:
            await asyncio.sleep(SYNC_INTERVAL_S)
            if self.invocations:
                invocations, self.invocations = self.invocations, []
                writer.write(encode_line({"report": {"invocations": invocations}}))
                await writer.drain()

    async def close(self) -> None:
        for channel in self.channels.values():
            channel.stopping = True
            channel.close()
        if self.session is not None:
            await self.session.close()


def build_edge_app(edge: Edge, keys: Any) -> web.Application:
    middlewares: list[Middleware] = [errors_middleware]
    if edge.settings.auth:
        middlewares.append(sigv4_middleware(edge.settings, keys, read_body))
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY_BYTES + 1024 * 1024)
    app[BODY_TIMEOUT] = edge.settings.body_timeout

    async def invocations(request: web.Request) -> web.Response:
        return await edge.invoke(request)

    async def endpoint_invocations(request: web.Request) -> web.Response:
        return await edge.invoke(request, request.match_info["endpoint"])

    async def forwarded(request: web.Request) -> web.Response:
        return await edge.forward(request)

    app.router.add_post("/invocations", invocations)
    app.router.add_post("/endpoints/{endpoint}/invocations", endpoint_invocations)
    app.router.add_route("*", "/{tail:.*}", forwarded)
    return app


async def serve(control: socket.socket, index: int) -> None:
    reader, writer = await asyncio.open_unix_connection(sock=control)
    hello = json.loads(await reader.readline())["hello"]
    settings: Settings = pickle.loads(base64.b64decode(hello["settings"]))  # from the owner, our parent
    configure_logging(settings.log_level)
    shards = {int(shard): path for shard, path in hello["shards"].items()}
    edge = Edge(index, settings, shards, hello["forward"])
    edge.session = aiohttp.ClientSession(
        connector=aiohttp.UnixConnector(path=edge.forward_path, limit=0),
        base_url="http://owner",
        timeout=aiohttp.ClientTimeout(total=None),
        auto_decompress=False,
    )
    keys = load_keys(settings, os.environ)
    runner = Runner(
        build_edge_app(edge, keys), header_timeout=settings.header_timeout, access_log=None, shutdown_timeout=30.0
    )
    await runner.setup()
    site = web.TCPSite(
        runner,
        settings.host,
        settings.port,
        reuse_address=True,
        reuse_port=True,
        ssl_context=tls_context(settings),
        backlog=LISTEN_BACKLOG,
    )
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    reporting = asyncio.create_task(edge.report(writer), name="report")

    async def follow() -> None:
        while line := await reader.readline():
            edge.apply(json.loads(line))
        stop.set()  # the owner closed the channel: it is stopping (or gone)

    following = asyncio.create_task(follow(), name="routes")
    await stop.wait()
    await runner.cleanup()  # stops listening, lets requests under way finish
    reporting.cancel()
    if edge.invocations:
        with contextlib.suppress(OSError):
            writer.write(encode_line({"report": {"invocations": edge.invocations}}))
            await writer.drain()
    following.cancel()
    await edge.close()
    writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="openmme.endpoint.edge")
    parser.add_argument("--control-fd", type=int, required=True, help="this edge's end of the owner's socket pair")
    parser.add_argument("--index", type=int, required=True, help="which edge (1 to --fronts - 1)")
    parser.add_argument("--owner-pid", type=int, required=True, help="the owner front that started this edge")
    args = parser.parse_args()
    owner = args.owner_pid
    die_with_parent(lambda pid: pid == owner)
    control = socket.socket(fileno=args.control_fd)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(control, args.index))
    else:
        uvloop.run(serve(control, args.index))


if __name__ == "__main__":
    main()
