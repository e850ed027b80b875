"""The direct channel to a dense shard's worker: the front's codec against MMS's own, and a real worker process
(MMS's worker code, the dense handler, xgboost) answering batches, dying, and timing out."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import xgboost
from mms.protocol.otf_message_handler import create_predict_response, retrieve_msg

from openmme.endpoint.errors import ModelError, ServiceUnavailable
from openmme.endpoint.mms import MmsResponse
from openmme.endpoint.shardworker import Request, ShardWorker, WorkerGone, encode_inference, encode_load, read_reply
from openmme.handlers import DENSE_HANDLER, ERROR_HEADER, MODEL_HEADER, OP_HEADER
from openmme.publish.samples import make_rows, train_booster
from tests.support import alive, container_json, csv_body


class _Context:
    """What MMS's ``create_predict_response`` reads of a handler's context."""

    def __init__(self, types: dict[int, str], statuses: dict[int, int], headers: dict[int, dict[str, str]]) -> None:
        self.types, self.statuses, self.headers = types, statuses, headers

    def get_response_content_type(self, idx: int) -> str | None:
        return self.types.get(idx)

    def get_response_status(self, idx: int) -> tuple[int | None, str | None]:
        return self.statuses.get(idx), None

    def get_response_headers(self, idx: int) -> dict[str, str]:
        return self.headers.get(idx, {})


def test_mms_reads_the_messages_the_front_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMS_DECODE_INPUT_REQUEST", "false")  # as the shards' workers run
    ours, theirs = socket.socketpair()
    requests = [
        Request({"Content-Type": "text/csv", MODEL_HEADER: "m0"}, b"1,2,3", "text/csv"),
        Request({OP_HEADER: "list"}, b"", ""),
    ]
    with ours, theirs:
        ours.sendall(encode_load("openmme-shard-0", "/store/_openmme-shard-0", DENSE_HANDLER))
        ours.sendall(encode_inference(requests))
        command, load = retrieve_msg(theirs)
        assert command == b"L"
        assert (load["modelName"], load["modelPath"], load["handler"]) == (
            b"openmme-shard-0",
            b"/store/_openmme-shard-0",
            DENSE_HANDLER.encode(),
        )
        assert "gpu" not in load  # -1: no GPU
        command, batch = retrieve_msg(theirs)
    assert command == b"I"
    assert [request["requestId"] for request in batch] == [b"0", b"1"]
    assert [{bytes(h["name"]): bytes(h["value"]) for h in request["headers"]} for request in batch] == [
        {b"Content-Type": b"text/csv", MODEL_HEADER.encode(): b"m0"},
        {OP_HEADER.encode(): b"list"},
    ]
    assert [[{**p, "value": bytes(p["value"])} for p in request["parameters"]] for request in batch] == [
        [{"name": "body", "contentType": "text/csv", "value": b"1,2,3"}],
        [{"name": "body", "contentType": "", "value": b""}],
    ]


async def _replies(message: bytes, count: int) -> list[tuple[int, bytes, dict[str, str]]]:
    reader = asyncio.StreamReader()
    reader.feed_data(bytes(message))
    reader.feed_eof()
    return [(reply.status, reply.body, dict(reply.headers)) for reply in await read_reply(reader, count)]


def test_the_front_reads_what_mms_answers() -> None:
    context = _Context({0: "application/json", 1: "text/plain"}, {1: 415}, {1: {ERROR_HEADER: "1"}})
    message = create_predict_response([b"[0.5]", "not this type"], {0: "0", 1: "1"}, "Prediction success", 200, context)
    assert asyncio.run(_replies(message, 2)) == [
        (200, b"[0.5]", {"content-type": "application/json"}),
        (415, b"not this type", {ERROR_HEADER.lower(): "1", "content-type": "text/plain"}),
    ]
    # A handler that raised fails the whole message: each request gets MMS's status and message, as the Java
    # front answers them.
    failed = create_predict_response(None, {0: "0"}, "Prediction failed", 503)
    ((status, body, headers),) = asyncio.run(_replies(failed, 1))
    assert status == 503 and json.loads(body)["message"] == "Prediction failed"
    assert headers == {"content-type": "application/json"}


@pytest.fixture
def store(tmp_path: Path) -> Path:
    (tmp_path / "_openmme-shard-0").mkdir()
    booster = train_booster("binary:logistic", seed=3)
    (tmp_path / "m0").mkdir()
    (tmp_path / "m0" / "xgboost-model").write_bytes(bytes(booster.save_raw("ubj")))
    return tmp_path


@contextlib.asynccontextmanager
async def started(store: Path) -> AsyncIterator[ShardWorker]:
    """A real worker process for a shard of ``store``, stopped (and reaped) at the end."""
    shard = ShardWorker(
        "openmme-shard-0",
        store / "_openmme-shard-0",
        DENSE_HANDLER,
        {**os.environ, "MMS_DECODE_INPUT_REQUEST": "false"},
        store / "shards.out",
    )
    await shard.start(timeout=120)
    try:
        yield shard
    finally:
        await shard.stop()
    assert shard.process is not None and shard.process.poll() is not None  # gone, and reaped


async def _load(worker: ShardWorker, name: str = "m0") -> None:
    load = await worker.call({OP_HEADER: "load", MODEL_HEADER: name}, b"", "", 60, prediction=False)
    assert load.status == 200 and json.loads(load.body)["memoryBytes"] > 0


def test_a_batch_of_concurrent_requests_answers_each_like_in_process_xgboost(store: Path) -> None:
    rows = [make_rows(1 + index % 3, seed=index) for index in range(40)]
    headers = {"Content-Type": "text/csv", MODEL_HEADER: "m0"}

    async def scenario() -> tuple[list[MmsResponse], MmsResponse]:
        async with started(store) as worker:
            await _load(worker)
            # Sent at once: they queue behind the worker and go in batches; each answer is its own request's.
            calls = (worker.call(headers, csv_body(r).encode(), "text/csv", 60) for r in rows)
            replies = await asyncio.gather(*calls)
            missing = await worker.call({**headers, MODEL_HEADER: "m1"}, b"1,2", "text/csv", 60)
            return replies, missing

    replies, missing = asyncio.run(scenario())
    booster = xgboost.Booster()
    booster.load_model(bytearray((store / "m0" / "xgboost-model").read_bytes()))
    assert [reply.body for reply in replies] == [container_json(booster, r) for r in rows]
    assert all(reply.status == 200 for reply in replies)
    # A model the shard does not hold: 404 without the error header (the front loads it again).
    assert missing.status == 404 and missing.forgot_model


def test_a_dead_worker_fails_its_requests_at_once_and_reports_its_end(store: Path) -> None:
    ended: list[ShardWorker] = []
    body = csv_body(np.zeros((20000, 6))).encode()  # long enough to be in the worker when it dies

    async def scenario() -> list[object]:
        async with started(store) as worker:
            worker.on_exit = ended.append
            await _load(worker)
            calls = [asyncio.ensure_future(worker.call({MODEL_HEADER: "m0"}, body, "text/csv", 60)) for _ in range(4)]
            await asyncio.sleep(0.05)
            assert worker.pid is not None
            os.kill(worker.pid, signal.SIGKILL)
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            for _ in range(100):
                if ended:
                    break
                await asyncio.sleep(0.1)
            with pytest.raises(WorkerGone):
                await worker.call({MODEL_HEADER: "m0"}, b"1,2", "text/csv", 60)
            return outcomes

    outcomes = asyncio.run(scenario())
    assert [type(outcome) for outcome in outcomes] == [WorkerGone] * 4
    assert len(ended) == 1


def test_a_prediction_over_its_time_out_is_the_models_408_and_ends_the_worker(store: Path) -> None:
    async def scenario() -> tuple[int, ModelError, bool]:
        async with started(store) as worker:
            await _load(worker)
            assert worker.pid is not None
            os.kill(worker.pid, signal.SIGSTOP)  # a worker that hangs
            with pytest.raises(ModelError) as caught:
                await worker.call({MODEL_HEADER: "m0"}, b"1,2,3,4,5,6", "text/csv", 0.5)
            for _ in range(100):
                if not worker.alive():
                    break
                await asyncio.sleep(0.1)
            return worker.pid, caught.value, worker.alive()

    pid, error, still_alive = asyncio.run(scenario())
    assert error.original_status == 408
    assert not still_alive and not alive(pid)


def test_predictions_beyond_the_queue_bound_are_refused_at_once_and_the_queued_ones_answered(store: Path) -> None:
    headers = {"Content-Type": "text/csv", MODEL_HEADER: "m0"}
    body = b"1,2,3,4,5,6"

    async def scenario() -> tuple[list[int], ServiceUnavailable]:
        async with started(store) as worker:
            assert worker.channel is not None
            worker.channel.max_queue = 3  # the front's channel to it holds the bound (--job-queue-size)
            await _load(worker)
            assert worker.pid is not None
            os.kill(worker.pid, signal.SIGSTOP)  # busy: one request in the worker, then three waiting
            calls = [asyncio.ensure_future(worker.call(headers, body, "text/csv", 60))]
            await asyncio.sleep(0.2)
            calls += [asyncio.ensure_future(worker.call(headers, body, "text/csv", 60)) for _ in range(3)]
            await asyncio.sleep(0.2)
            with pytest.raises(ServiceUnavailable) as refused:
                await worker.call(headers, body, "text/csv", 60)
            # Operations are the front's own: never refused for the queue.
            listing = asyncio.ensure_future(worker.call({OP_HEADER: "list"}, b"", "", 60, prediction=False))
            os.kill(worker.pid, signal.SIGCONT)
            replies = await asyncio.gather(*calls, listing)
            return [reply.status for reply in replies], refused.value

    statuses, refused = asyncio.run(scenario())
    assert statuses == [200] * 5
    assert refused.status == 503 and "--job-queue-size" in str(refused)


def test_a_worker_that_dies_idle_is_noticed_by_housekeeping_and_a_stop_is_prompt(store: Path) -> None:
    ended: list[ShardWorker] = []

    async def scenario() -> tuple[float, float]:
        gone = asyncio.Event()
        async with started(store) as worker:
            worker.on_exit = lambda exited: (ended.append(exited), gone.set())
            await _load(worker)
            assert worker.pid is not None
            os.kill(worker.pid, signal.SIGKILL)  # no request in it: nothing reads the socket
            for _ in range(50):
                if worker.process is not None and worker.process.poll() is not None:
                    break
                await asyncio.sleep(0.05)
            started_at = asyncio.get_running_loop().time()
            worker.check()  # housekeeping's round
            await asyncio.wait_for(gone.wait(), 10)
            noticed = asyncio.get_running_loop().time() - started_at
            # A live worker, idle, stops at once: the channel closed, the worker gone, the pump out.
            await worker.start(timeout=120)
            stopping = asyncio.get_running_loop().time()
            await worker.stop()
            return noticed, asyncio.get_running_loop().time() - stopping

    noticed, stopped = asyncio.run(scenario())
    assert len(ended) == 2  # the dead one, then the stopped one
    assert noticed < 1.0 and stopped < 2.0
