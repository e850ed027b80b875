"""Several front processes (``--fronts 2``) with real processes: the owner and one edge share the port. A warm
dense invocation reaching the edge is answered there, straight from the shard's worker, with the bytes the owner
gives; headers over AWS's bounds it refuses as the owner does; everything else it forwards to the owner; what the
edge answered is counted once, in the owner's metrics and cache. A shard worker killed and a model unloaded behind
the edge's back lose no request. One endpoint for the module; every request on a new connection, so the kernel
spreads them over both fronts."""

from __future__ import annotations

import http.client
import json
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import xgboost

from openmme.publish import publish_archive
from openmme.publish.samples import make_rows, sample_archive, train_booster
from openmme.seaweed import EmbeddedS3
from tests.conftest import BUCKET, Endpoint, Launcher, run_serve
from tests.support import container_json, csv_body, scrape, value, wait_until

pytestmark = pytest.mark.integration

ROWS = make_rows(3, seed=5)
TARGET = "fronts/model.tar.gz"


@dataclass
class Served:
    endpoint: Endpoint
    booster: xgboost.Booster


@pytest.fixture(scope="module")
def served(s3: EmbeddedS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    prefix = f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}/"
    booster = train_booster("binary:logistic", seed=8)
    publish_archive(sample_archive(booster), prefix, TARGET)
    launcher = Launcher(s3, tmp_path_factory)
    try:
        yield Served(launcher.start(prefix, "--fronts", "2", "--hosting", "dense", "--shards", "1"), booster)
    finally:
        launcher.close()  # exits 0, and no process is left: the edge and the shard's worker included


def post(
    endpoint: Endpoint, target: str, body: str, extra: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One invocation on a connection of its own (``extra``: more headers): status, headers, body."""
    connection = http.client.HTTPConnection(endpoint.url.removeprefix("http://"), timeout=60)
    try:
        headers = {"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": target, **(extra or {})}
        connection.request("POST", f"/endpoints/{endpoint.name}/invocations", body=body, headers=headers)
        response = connection.getresponse()
        return response.status, {key.lower(): v for key, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def fronts_of(endpoint: Endpoint, target: str) -> Counter[str]:
    """Which front answered each invocation of ``target`` in the access log: ``owner`` or ``edge-<i>``."""
    lines = [json.loads(line) for line in endpoint.log().splitlines() if line.startswith('{"time"')]
    return Counter(
        line.get("front", "owner")
        for line in lines
        if line.get("event") == "invocation" and line.get("target_model") == target
    )


def test_warm_invocations_are_answered_by_both_fronts_alike_and_counted_once_by_the_owner(served: Served) -> None:
    endpoint, wanted = served.endpoint, container_json(served.booster, ROWS)
    body = csv_body(ROWS)
    assert post(endpoint, TARGET, body)[0] == 200  # loaded (by the owner, whichever front took it)
    assert wait_until(lambda: post(endpoint, TARGET, body)[0] == 200 and fronts_of(endpoint, TARGET)["edge-1"] > 0)
    time.sleep(0.3)  # what the edge answered so far is reported (every 50 ms) before the first scrape
    before = scrape(endpoint)
    answered = [post(endpoint, TARGET, body) for _ in range(60)]
    assert [status for status, _, _ in answered] == [200] * 60
    assert {payload for _, _, payload in answered} == {wanted}  # in-process xgboost's, from either front
    assert {headers["x-amzn-invoked-production-variant"] for _, headers, _ in answered} == {"AllTraffic"}

    time.sleep(0.5)  # the edge reports every 50 ms
    after = scrape(endpoint)
    fronts = fronts_of(endpoint, TARGET)
    assert fronts["edge-1"] > 0 and fronts["owner"] > 0, fronts
    # Every invocation counted once, in the owner's metrics, whichever front answered it.
    invocations = value(after, "openmme_invocations_total", status="200") - value(
        before, "openmme_invocations_total", status="200"
    )
    assert invocations == 60
    assert value(after, "openmme_front_invocations_total", front="edge-1") == fronts["edge-1"]
    model = endpoint.models()[TARGET]
    assert model["state"] == "ready" and model["loads"] == 1


def test_what_the_edge_does_not_answer_itself_is_forwarded_and_answered_as_the_owner_answers(served: Served) -> None:
    endpoint = served.endpoint
    missing = [post(endpoint, "fronts/missing.tar.gz", "1,2") for _ in range(12)]
    assert {status for status, _, _ in missing} == {400}
    assert {headers["x-amzn-errortype"] for _, headers, _ in missing} == {"ValidationError"}
    assert len({payload for _, _, payload in missing}) == 1
    assert "is not in the model prefix" in json.loads(missing[0][2])["message"]
    for _ in range(12):  # the container API and the health check, whichever front the connection reached
        connection = http.client.HTTPConnection(endpoint.url.removeprefix("http://"), timeout=30)
        connection.request("GET", "/ping")
        assert connection.getresponse().status == 200
        connection.close()
    assert len({json.dumps(endpoint.models()[TARGET]["modelUrl"]) for _ in range(6)}) == 1


def test_the_edge_refuses_headers_over_aws_bounds_as_the_owner_does(served: Served) -> None:
    """A warm model, so that the edge would answer the request itself: it refuses it instead, in the same words."""
    endpoint, body = served.endpoint, csv_body(ROWS)
    over = {"X-Amzn-SageMaker-Inference-Id": "i" * 65, "X-Amzn-SageMaker-Custom-Attributes": "c" * 1025}
    assert wait_until(lambda: post(endpoint, TARGET, body)[0] == 200 and fronts_of(endpoint, TARGET)["edge-1"] > 0)
    answered: list[tuple[int, dict[str, str], bytes]] = []

    def refused_by_both() -> bool:
        answered.append(post(endpoint, TARGET, body, over))
        lines = [json.loads(line) for line in endpoint.log().splitlines() if line.startswith('{"time"')]
        fronts = {line.get("front", "owner") for line in lines if line.get("event") == "refused"}
        return fronts == {"owner", "edge-1"}

    assert wait_until(refused_by_both)
    assert {(status, headers["x-amzn-errortype"]) for status, headers, _ in answered} == {(400, "ValidationError")}
    assert {payload for _, _, payload in answered} == {
        json.dumps(
            {
                "__type": "ValidationError",
                "message": "2 validation errors detected: Value at 'customAttributes' failed to satisfy constraint: "
                "Member must have length less than or equal to 1024; Value '" + "i" * 65 + "' at 'inferenceId' failed "
                "to satisfy constraint: Member must have length less than or equal to 64",
            }
        ).encode()
    }
    assert "c" * 1025 not in endpoint.log()


def test_a_worker_killed_or_a_model_unloaded_behind_the_edge_loses_no_request(served: Served) -> None:
    endpoint, wanted = served.endpoint, container_json(served.booster, ROWS)
    body = csv_body(ROWS)
    assert post(endpoint, TARGET, body)[0] == 200
    shard = endpoint.worker_pids()["openmme-shard-0"]
    os.kill(shard[0], signal.SIGKILL)
    answered = [post(endpoint, TARGET, body) for _ in range(20)]
    assert [(status, payload) for status, _, payload in answered] == [(200, wanted)] * 20

    connection = http.client.HTTPConnection(endpoint.url.removeprefix("http://"), timeout=30)
    connection.request("DELETE", f"/models/{TARGET}")
    assert connection.getresponse().status == 200
    connection.close()
    answered = [post(endpoint, TARGET, body) for _ in range(20)]
    assert [(status, payload) for status, _, payload in answered] == [(200, wanted)] * 20


def test_refusing_replays_needs_one_front_and_serve_says_so(tmp_path: Path) -> None:
    keys = {"OPENMME_AUTH_ACCESS_KEY_ID": "AKID", "OPENMME_AUTH_SECRET_ACCESS_KEY": "secret"}
    result = run_serve(
        "--cache-dir", str(tmp_path / "cache"), "--auth", "sigv4", "--auth-refuse-replays", "--fronts", "2",
        environ=keys,
    )  # fmt: skip
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "openmme serve: --auth-refuse-replays needs one front process (--fronts 1): each front would remember only"
        " the signatures it saw, so a replay sent to another would be accepted"
    ]
    assert not (tmp_path / "cache").exists()
