"""Time-outs for slow clients: a client that sends slowly holds its own connection, never the endpoint (slowloris).

aiohttp (3.14) reads a request's headers and body without a time-out; its one timer, ``keepalive_timeout``, is
for idle connections (and an hour by default). So:

- **Headers** (``--header-timeout``): ``Runner`` is aiohttp's ``AppRunner`` whose connections are
  ``HeadTimedHandler``s, each marking when the head of the request it waits for began: its connection's start for
  the first request, the head's first byte on a kept-alive connection (the idle time between requests stays
  aiohttp's). One task per runner looks at every connection about once a second and closes those still without a
  complete head past the time-out. A request costs one comparison in ``data_received`` and one clock read when
  its head begins: no timer per request.
- **Body** (``--body-timeout``): ``read_within``, around the reads of a body that did not come whole with its
  head (a small body always does, and then no timer is armed): ``RequestTimeout`` (408) past the time-out.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from openmme.endpoint.errors import RequestTimeout

__all__ = ["BODY_TIMEOUT", "HeadTimedHandler", "Runner", "read_within"]

T = TypeVar("T")

# Set on each front's app (the owner's and the edges'): --body-timeout.
BODY_TIMEOUT: web.AppKey[float] = web.AppKey("body_timeout", float)


class HeadTimedHandler(RequestHandler):
    """aiohttp's connection, marking when the head of the request it waits for began (``head_since``)."""

    __slots__ = ("head_count", "head_since")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The first head is timed from the connection's start: a client that connects and sends nothing is slow too.
        self.head_count, self.head_since = 0, self._loop.time()
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        # Bytes while the handler waits for a request, past the last complete head: the next head begins now.
        if self.head_count != self._request_count and self._waiter is not None:
            self.head_count, self.head_since = self._request_count, self._loop.time()
        super().data_received(data)

    def head_overdue(self, now: float, timeout: float) -> bool:
        """Waiting, past ``timeout``, for the rest of a request head that began (no complete head since)."""
        waiting = self._waiter is not None and not self._waiter.done()
        return waiting and self.head_count == self._request_count and now - self.head_since > timeout


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return HeadTimedHandler(self, loop=self._loop, **self._kwargs)


class Runner(web.AppRunner):
    """``web.AppRunner`` whose connections that do not send a request's headers within ``header_timeout`` seconds
    are closed."""

    __slots__ = ("_watch", "header_timeout")

    def __init__(self, app: web.Application, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.header_timeout = header_timeout
        self._watch: asyncio.Task[None] | None = None

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server  # the Server the app built, with our connections (aiohttp has no option for it)
        self._watch = asyncio.create_task(_watch_heads(server, self.header_timeout), name="watch request heads")
        return server

    async def cleanup(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await super().cleanup()


async def _watch_heads(server: web.Server, timeout: float) -> None:
    """Close, about once a second, the connections of ``server`` whose request head is overdue."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(min(1.0, timeout / 2))
        now = loop.time()
        for connection in server.connections:
            if isinstance(connection, HeadTimedHandler) and connection.head_overdue(now, timeout):
                connection.force_close()


async def read_within(request: web.Request, read: Awaitable[T]) -> T:
    """``read`` (of ``request``'s body), within the app's --body-timeout unless the body came whole with the head."""
    if request.content.is_eof():
        return await read
    seconds = request.app[BODY_TIMEOUT]
    try:
        async with asyncio.timeout(seconds):
            return await read
    except TimeoutError as exc:
        raise RequestTimeout(f"the request body did not arrive within {seconds:g} s (--body-timeout); retry") from exc
