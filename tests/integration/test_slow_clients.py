"""Slow clients hold their own connections, not the endpoint (slowloris): hundreds of connections that send a
request's headers a byte at a time are closed after --header-timeout while a normal client is served throughout,
a body that stalls is answered RequestTimeout after --body-timeout, and an idle kept-alive connection is not
taken for a slow one. Two fronts (--fronts 2), so that the owner and an edge both meet the slow connections."""

from __future__ import annotations

import resource
import selectors
import socket
import time
from typing import Any

import pytest
import xgboost

from openmme.publish.samples import make_rows
from tests.conftest import EndpointFactory
from tests.support import csv_body, expected

pytestmark = pytest.mark.integration

ROWS = make_rows(2, seed=41)
SLOW = 300
HEADER_TIMEOUT = 2.0
# What a slow client sends, a byte every DRIP seconds: far longer than the time-out allows.
HEAD = b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/csv\r\nContent-Length: 3\r\n\r\n"
DRIP = 0.5


def open_slow_connections(port: int, count: int) -> dict[socket.socket, float]:
    """``count`` connections to the endpoint, each having sent the first byte of a request; when each connected."""
    connections = {}
    for _ in range(count):
        started = time.monotonic()  # before the server can have seen it
        connection = socket.create_connection(("127.0.0.1", port), timeout=10)
        connection.sendall(HEAD[:1])
        connection.setblocking(False)
        connections[connection] = started
    return connections


def drip_until_closed(
    connections: dict[socket.socket, float], deadline: float, between: Any
) -> dict[socket.socket, float]:
    """Send each open connection one more byte of its head every DRIP s, calling ``between()`` in the pauses,
    until the server closed all of them or ``deadline``; when each was seen closed."""
    closed: dict[socket.socket, float] = {}
    sent = dict.fromkeys(connections, 1)
    with selectors.DefaultSelector() as selector:
        for connection in connections:
            selector.register(connection, selectors.EVENT_READ)
        while len(closed) < len(connections) and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=DRIP):
                connection = key.fileobj
                assert isinstance(connection, socket.socket)
                try:
                    data = connection.recv(4096)
                except ConnectionError:
                    data = b""
                assert data == b"", data  # no answer: the head never completes
                closed[connection] = time.monotonic()
                selector.unregister(connection)
            for connection in connections:
                if connection not in closed and sent[connection] < len(HEAD) - 1:
                    try:
                        connection.send(HEAD[sent[connection] : sent[connection] + 1])
                        sent[connection] += 1
                    except (BlockingIOError, ConnectionError):
                        pass  # closed: the selector says so next
            between()
    return closed


def test_slow_heads_are_closed_after_the_header_timeout_while_a_normal_client_is_served(
    start_endpoint: EndpointFactory, prefix: str, publish: Any, boosters: dict[str, xgboost.Booster]
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * SLOW:  # the client's sockets here, the server's there (the endpoint inherits the limit)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4 * SLOW, hard), hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= 4 * SLOW
    booster = boosters["binary:logistic"]
    publish(prefix, "steady.tar.gz", booster)
    endpoint = start_endpoint(
        prefix, "--fronts", "2", "--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", str(HEADER_TIMEOUT)
    )
    want = expected(booster, ROWS)
    client = endpoint.runtime(retries=1)
    assert endpoint.predictions("steady.tar.gz", ROWS, client=client) == want
    port = int(endpoint.url.rsplit(":", 1)[1])

    slow = open_slow_connections(port, SLOW)
    answers: list[bool] = []
    try:
        closed = drip_until_closed(
            slow,
            deadline=time.monotonic() + 60,
            between=lambda: answers.append(endpoint.predictions("steady.tar.gz", ROWS, client=client) == want),
        )
    finally:
        for connection in slow:
            connection.close()
    # Every normal request was served, while the slow connections were open and as they were closed.
    assert answers and all(answers), answers
    assert len(closed) == SLOW, f"{SLOW - len(closed)} slow connections still open"
    # Closed by the server because of the time-out: never before it (the heads were still arriving).
    assert min(closed[connection] - slow[connection] for connection in closed) >= HEADER_TIMEOUT

    request = (
        b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Amzn-SageMaker-Target-Model: steady.tar.gz\r\n"
        b"Content-Type: text/csv\r\nContent-Length: %d\r\n\r\n%s"
    )
    body = csv_body(ROWS).encode()

    # A body that stalls once its headers are in: RequestTimeout (408), a code botocore retries.
    with socket.create_connection(("127.0.0.1", port), timeout=30) as stalled:
        stalled.sendall(request % (len(body), body[:1]))  # the rest of the body never comes
        reply = stalled.recv(65536)
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert b"RequestTimeout" in reply

    # A kept-alive connection idle for longer than the header time-out between two requests is not a slow one.
    with socket.create_connection(("127.0.0.1", port), timeout=30) as kept:
        kept.sendall(request % (len(body), body))
        assert kept.recv(65536).startswith(b"HTTP/1.1 200")
        time.sleep(2 * HEADER_TIMEOUT)
        kept.sendall(request % (len(body), body))
        assert kept.recv(65536).startswith(b"HTTP/1.1 200"), "the idle kept-alive connection was closed"
