"""A dense shard's worker that also listens for the endpoint's other front processes (its edges): a real worker
process with its real handler and a real booster, fed at once from two edge connections and the front's own end,
each answer compared with in-process xgboost's."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import xgboost

from openmme.endpoint.shardworker import Request, encode_inference, encode_load, read_reply
from openmme.handlers import DENSE_HANDLER, MODEL_HEADER, OP_HEADER
from openmme.publish.samples import make_rows
from tests.endpoint.test_shardworker import store  # noqa: F401  (the fixture: a shard's directory and model m0)
from tests.support import container_json, csv_body

SHARD = "openmme-shard-0"
_INT = struct.Struct("!i")

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@contextlib.contextmanager
def listening_worker(root: Path) -> Iterator[tuple[subprocess.Popen[bytes], socket.socket, Path]]:
    """A worker for the shard in the model store ``root``, started as the front starts one, plus ``--listen``: its
    process, the front's end of the socket pair and the socket path (in a private directory, as the front makes
    one)."""
    directory = Path(tempfile.mkdtemp(prefix="openmme-edges-"))  # mode 0700; short, as a socket path must be
    path = directory / "shard-0.sock"
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    command = [
        *(sys.executable, "-P", "-m", "openmme.handlers._shard_worker", "--fd", str(theirs.fileno())),
        *("--model-name", SHARD, "--front-pid", str(os.getpid()), "--listen", str(path)),
    ]
    with theirs, (root / "shards.out").open("ab") as out:
        process = subprocess.Popen(
            command,
            cwd=root / f"_{SHARD}",
            env={**os.environ, "MMS_DECODE_INPUT_REQUEST": "false"},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            pass_fds=(theirs.fileno(),),
        )
    try:
        yield process, ours, path
    finally:
        ours.close()
        if process.poll() is None:
            process.kill()
        process.wait()
        shutil.rmtree(directory, ignore_errors=True)


def _prediction(rows: np.ndarray) -> Request:
    return Request({"Content-Type": "text/csv", MODEL_HEADER: "m0"}, csv_body(rows).encode(), "text/csv")


async def _exchange(connection: Connection, requests: list[Request]) -> list[tuple[int, bytes]]:
    reader, writer = connection
    writer.write(encode_inference(requests))
    return [(reply.status, reply.body) for reply in await read_reply(reader, len(requests))]


async def _converse(connection: Connection, batches: list[list[np.ndarray]]) -> list[bytes]:
    """All of ``batches`` written at once (pipelined), then their answers read in order: each body, in order."""
    reader, writer = connection
    for batch in batches:
        writer.write(encode_inference([_prediction(rows) for rows in batch]))
    bodies = []
    for batch in batches:
        replies = await read_reply(reader, len(batch))
        assert [reply.status for reply in replies] == [200] * len(batch)
        bodies += [reply.body for reply in replies]
    return bodies


async def _closed(reader: asyncio.StreamReader) -> bool:
    """Whether the worker closed this connection without a word more."""
    return await asyncio.wait_for(reader.read(), 10) == b""


def test_edges_and_the_front_share_a_worker_that_answers_each_on_its_own_connection(store: Path) -> None:  # noqa: F811
    # Per connection (edge 1, edge 2, the front): batches of one to three requests, rows of its own.
    batches = [
        [[make_rows(1 + r % 3, seed=100 * c + 10 * b + r) for r in range(1 + b % 3)] for b in range(6)]
        for c in range(3)
    ]

    with listening_worker(store) as (process, front_end, path):

        async def scenario() -> tuple[list[list[bytes]], list[bytes]]:
            deadline = time.monotonic() + 60
            while not path.exists():  # listening from the start: no load needed to connect
                assert time.monotonic() < deadline and process.poll() is None
                await asyncio.sleep(0.02)
            early = await asyncio.open_unix_connection(str(path))
            early[1].write(encode_inference([_prediction(make_rows(1))]))
            assert await _closed(early[0])  # nothing loaded yet: that connection closed, the worker still up

            front = await asyncio.open_unix_connection(sock=front_end)
            front[1].write(encode_load(SHARD, str(store / f"_{SHARD}"), DENSE_HANDLER))
            code, length = _INT.unpack(await front[0].readexactly(4))[0], _INT.unpack(await front[0].readexactly(4))[0]
            await front[0].readexactly(length)
            assert (code, _INT.unpack(await front[0].readexactly(4))[0]) == (200, -1)
            ((status, _),) = await _exchange(front, [Request({OP_HEADER: "load", MODEL_HEADER: "m0"}, b"", "")])
            assert status == 200

            edges = [await asyncio.open_unix_connection(str(path)) for _ in range(2)]
            answers = await asyncio.gather(*(_converse(c, b) for c, b in zip([*edges, front], batches, strict=True)))

            # A load message on an edge's connection closes that one; the others, and new ones, answer on.
            edges[0][1].write(encode_load(SHARD, str(store / f"_{SHARD}"), DENSE_HANDLER))
            assert await _closed(edges[0][0])
            late = await asyncio.open_unix_connection(str(path))
            after = [
                body
                for connection in (edges[1], front, late)
                for _, body in await _exchange(connection, [_prediction(make_rows(2, seed=7))])
            ]

            # The front closes its end: the worker ends, and its edges' connections with it.
            front[1].close()
            assert await _closed(edges[1][0]) and await _closed(late[0])
            for _, writer in (*edges, late, early):
                writer.close()
            return answers, after

        answers, after = asyncio.run(scenario())
        assert process.wait(timeout=30) == 0
        assert not path.exists()

    booster = xgboost.Booster()
    booster.load_model(bytearray((store / "m0" / "xgboost-model").read_bytes()))
    for bodies, connection_batches in zip(answers, batches, strict=True):
        assert bodies == [container_json(booster, rows) for batch in connection_batches for rows in batch]
    assert after == [container_json(booster, make_rows(2, seed=7))] * 3
