"""The transform runner in process, against real S3 (SeaweedFS) and the endpoint's real front as ``build_app`` makes
it (routes, SigV4 middleware, error rendering) with a stand-in model behind it that predicts with xgboost here:
what the runner does with answers, refusals, failures, retries, re-runs and cancellation, without MMS."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import io
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import xgboost
from aiohttp import web
from aiohttp.test_utils import TestServer

from openmme.cli import main
from openmme.endpoint.app import read_body
from openmme.endpoint.auth import AccessKey, KeyStore
from openmme.endpoint.errors import ModelError, ServiceUnavailable
from openmme.endpoint.settings import Settings
from openmme.handlers.xgboost_service import container_csv, container_json
from openmme.transform import DataProcessing, EndpointTarget, Summary, TransformJob, transform
from tests.conftest import BUCKET
from tests.support import front_app
from tests.transform.conftest import (
    Area,
    id_rows,
    joined_lines,
    output_keys,
    output_text,
    parsed_output,
    put_lines,
)

KEY = AccessKey("AKIDBATCH", "batch-secret", ("*",))
TARGET = "houston/model.tar.gz"


@dataclass
class StandIn:
    """The model behind the front: predicts CSV rows with ``booster`` as the XGBoost container answers them (its one
    CSV line); refuses a body with ``oops`` in it as the container does (400, "Unable to evaluate payload
    provided"); answers 503 to the first try of each body when ``overloaded``; takes ``delay`` seconds a request."""

    booster: xgboost.Booster
    overloaded: bool = False
    delay: float = 0.0
    auth: bool = True
    bodies: Counter[bytes] = field(default_factory=Counter)
    signed: Counter[bool] = field(default_factory=Counter)  # invocations with and without an Authorization header

    @property
    def calls(self) -> int:
        return sum(self.bodies.values())

    def app(self) -> web.Application:
        def route(name: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
            async def handle(request: web.Request) -> web.StreamResponse:
                if name == "shards":
                    return web.json_response({"shards": {"openmme-shard-0": {}, "openmme-shard-1": {}}})
                self.signed["Authorization" in request.headers] += 1
                return await self.predict(await read_body(request), request.headers.get("Accept"))

            return handle

        settings = Settings.from_sources(["--auth", "sigv4"] if self.auth else [], {})
        return front_app(settings, KeyStore([KEY]) if self.auth else None, route)

    async def predict(self, body: bytes, accept: str | None) -> web.Response:
        self.bodies[body] += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.overloaded and self.bodies[body] == 1:
            raise ServiceUnavailable("the model's queue is full")
        if b"oops" in body:
            row = next(number for number, line in enumerate(body.split(b"\n"), start=1) if b"oops" in line)
            message = f"Unable to evaluate payload provided: row {row}: could not convert 'oops' to a number"
            raise ModelError("the model refused the rows", 400, message)
        rows = np.loadtxt(io.BytesIO(body), delimiter=",", ndmin=2, dtype=np.float32)
        predictions = self.booster.predict(xgboost.DMatrix(rows))
        if accept == "application/json":
            return web.Response(text=container_json(predictions), content_type="application/json")
        return web.Response(text=container_csv(predictions), content_type="text/csv")


def csv_job(area: Area, **settings: Any) -> TransformJob:
    """A CSV job with an id column: the id filtered out, joined back, the prediction kept beside it."""
    defaults: dict[str, Any] = {
        "target_model": TARGET,
        "s3_uri": area.input,
        "s3_output_path": area.output,
        "content_type": "text/csv",
        "split_type": "Line",
        "accept": "text/csv",
        "assemble_with": "Line",
    }
    return TransformJob(**(defaults | settings))


JOIN = {"input_filter": "$[1:]", "join_source": "Input", "output_filter": "$[0,-1]"}


def run(
    stand_in: StandIn,
    job: TransformJob,
    s3_client: Any,
    key: AccessKey = KEY,
    stop_when: Callable[[], bool] | None = None,
) -> Summary:
    """The job against the front with ``stand_in`` behind it, signed with ``key``; cancelled (as Ctrl-C does) once
    ``stop_when`` holds."""

    async def go() -> Summary:
        async with TestServer(stand_in.app(), host="127.0.0.1") as server:
            endpoint = EndpointTarget(
                f"http://127.0.0.1:{server.port}", "prod", credentials=(key.access_key_id, key.secret_access_key)
            )
            task = asyncio.create_task(transform(job, endpoint, client=s3_client))
            while stop_when is not None and not stop_when():
                done, _ = await asyncio.wait({task}, timeout=0.02)
                if done:
                    break
            if stop_when is not None:
                task.cancel()
            return await task

    return asyncio.run(go())


def test_a_signed_job_joins_and_filters_records_and_equals_in_process_xgboost(
    s3_client: Any, area: Area, boosters: dict[str, xgboost.Booster]
) -> None:
    booster = boosters["reg:squarederror"]
    stand_in = StandIn(booster)
    objects = {"a.csv": id_rows(5, seed=1), "b.csv": id_rows(9000, seed=2), "sub/c.csv": id_rows(3, seed=3)}
    for name, (lines, _) in objects.items():
        put_lines(s3_client, area, name, lines)
    job = csv_job(area, max_payload_mb=1, data_processing=DataProcessing(**JOIN))
    summary = run(stand_in, job, s3_client)

    assert summary.ok and summary.count("transformed") == 3 and summary.records == 9008
    for name, (lines, rows) in objects.items():
        assert parsed_output(output_text(s3_client, area, name)) == joined_lines(booster, lines, rows)
    # b.csv is over 1 MB: cut into several requests, each within the limit; the job's requests are all there were.
    assert max(len(body) for body in stand_in.bodies) <= 1024 * 1024
    assert summary.requests == stand_in.calls >= 4
    # The id never reached the model.
    assert not any(b"id-" in body for body in stand_in.bodies)
    # MaxConcurrentTransforms 0: two requests per dense shard the endpoint lists.
    assert summary.concurrency == 4


def test_a_record_the_model_refuses_fails_its_object_only_with_its_position_and_message(
    s3_client: Any, area: Area, boosters: dict[str, xgboost.Booster]
) -> None:
    booster = boosters["binary:logistic"]
    good, _ = id_rows(50, seed=4)
    bad, _ = id_rows(3000, seed=5)
    bad[1233] = bad[1233].rsplit(",", 1)[0] + ",oops"  # line 1235 of the object: a blank line comes first
    put_lines(s3_client, area, "a.csv", good)
    s3_client.put_object(Bucket=BUCKET, Key=area.key(area.input) + "b.csv", Body=("\n" + "\n".join(bad)).encode())
    put_lines(s3_client, area, "c.csv", good)
    # An output of b.csv from an earlier job with other settings: it must not survive b.csv's failure.
    s3_client.put_object(Bucket=BUCKET, Key=area.key(area.output) + "b.csv.out", Body=b"stale")
    stand_in = StandIn(booster)
    summary = run(stand_in, csv_job(area, data_processing=DataProcessing(**JOIN)), s3_client)

    assert not summary.ok and summary.count("transformed") == 2
    (failed,) = summary.failures
    assert (failed.record, failed.line) == (1234, 1235)
    assert failed.error is not None and "OriginalStatusCode 400" in failed.error
    assert "Unable to evaluate payload provided: row 1: could not convert 'oops'" in failed.error
    assert failed.failure().startswith(f"{area.input}b.csv: record 1234 (line 1235): ModelError")
    assert set(output_keys(s3_client, area)) == {"a.csv.out", "c.csv.out"}
    # Found by halving the refused batch: a couple of requests per halving, not one per record.
    assert failed.requests <= 1 + 2 * 12


def test_a_rerun_skips_complete_outputs_and_redoes_a_changed_input(
    s3_client: Any, area: Area, boosters: dict[str, xgboost.Booster]
) -> None:
    booster = boosters["reg:squarederror"]
    for index in range(4):
        put_lines(s3_client, area, f"part-{index}.csv", id_rows(20, seed=10 + index)[0])
    job = csv_job(area, data_processing=DataProcessing(**JOIN))
    assert run(StandIn(booster), job, s3_client).count("transformed") == 4
    before = output_keys(s3_client, area)

    changed, rows = id_rows(30, seed=99)
    put_lines(s3_client, area, "part-2.csv", changed)
    stand_in = StandIn(booster)
    summary = run(stand_in, job, s3_client)
    assert (summary.count("transformed"), summary.count("skipped")) == (1, 3)
    assert stand_in.calls == 1
    after = output_keys(s3_client, area)
    assert {name: etag for name, etag in after.items() if name != "part-2.csv.out"} == {
        name: etag for name, etag in before.items() if name != "part-2.csv.out"
    }
    assert parsed_output(output_text(s3_client, area, "part-2.csv")) == joined_lines(booster, changed, rows)

    # Other settings are another job: its outputs are not complete ones of this job, so all are done again.
    other = csv_job(area, data_processing=DataProcessing(input_filter="$[1:]"))
    assert run(StandIn(booster), other, s3_client).count("transformed") == 4


def test_a_cancelled_job_keeps_whole_outputs_and_the_next_run_does_the_rest(
    s3_client: Any, area: Area, boosters: dict[str, xgboost.Booster]
) -> None:
    booster = boosters["binary:logistic"]
    objects = {f"part-{index:02d}.csv": id_rows(10, seed=20 + index) for index in range(8)}
    for name, (lines, _) in objects.items():
        put_lines(s3_client, area, name, lines)
    job = csv_job(
        area, batch_strategy="SingleRecord", max_concurrent_transforms=1, data_processing=DataProcessing(**JOIN)
    )
    summary = run(
        StandIn(booster, delay=0.02), job, s3_client, stop_when=lambda: len(output_keys(s3_client, area)) >= 2
    )

    assert summary.interrupted and not summary.ok
    written = output_keys(s3_client, area)
    assert 2 <= len(written) < len(objects)
    for name in written:  # whatever was written is whole
        lines, rows = objects[name.removesuffix(".out")]
        assert parsed_output(output_text(s3_client, area, name.removesuffix(".out"))) == joined_lines(
            booster, lines, rows
        )

    stand_in = StandIn(booster)
    summary = run(stand_in, job, s3_client)
    assert summary.ok and summary.count("skipped") == len(written)
    assert summary.count("transformed") == len(objects) - len(written)
    assert stand_in.calls == 10 * (len(objects) - len(written))  # nothing done twice
    for name, (lines, rows) in objects.items():
        assert parsed_output(output_text(s3_client, area, name)) == joined_lines(booster, lines, rows)


def test_overload_is_retried_and_a_refused_signature_is_not(
    s3_client: Any, area: Area, boosters: dict[str, xgboost.Booster]
) -> None:
    booster = boosters["reg:squarederror"]
    for index in range(2):
        put_lines(s3_client, area, f"{index}.csv", id_rows(5, seed=30 + index)[0])
    stand_in = StandIn(booster, overloaded=True)
    started = time.monotonic()
    job = csv_job(area, data_processing=DataProcessing(**JOIN))
    summary = run(stand_in, job, s3_client)
    assert summary.ok and summary.requests == stand_in.calls == 4  # each body refused once with 503, then answered
    assert time.monotonic() - started >= 0.5  # after the back-off
    assert stand_in.signed == {True: 4}  # the endpoint checks signatures: every request signed

    # An endpoint that checks none gets none (signing hashes every body).
    stand_in = StandIn(booster, auth=False)
    assert run(stand_in, dataclasses.replace(job, s3_output_path=area.output + "open/"), s3_client).ok
    assert stand_in.signed == {False: 2}

    wrong = AccessKey(KEY.access_key_id, "not-the-secret")
    stand_in = StandIn(booster)
    summary = run(stand_in, dataclasses.replace(job, s3_output_path=area.output + "wrong/"), s3_client, key=wrong)
    assert summary.count("failed") == 2 and stand_in.calls == 0
    assert all(outcome.requests == 1 for outcome in summary.outcomes)
    assert all("InvalidSignatureException (403)" in (outcome.error or "") for outcome in summary.failures)


@pytest.mark.parametrize("accept", ["text/csv", "application/json"])
def test_answers_without_join_are_assembled_a_line_per_record(
    s3_client: Any, area: Area, boosters: dict[str, xgboost.Booster], accept: str
) -> None:
    booster = boosters["multi:softmax"]
    lines, rows = id_rows(7, seed=40)
    put_lines(s3_client, area, "a.csv", [line.split(",", 1)[1] for line in lines])
    job = csv_job(area, accept=accept, max_payload_mb=1)
    run(StandIn(booster), job, s3_client)
    text = output_text(s3_client, area, "a.csv")
    assert [float(line) for line in text.splitlines()] == [float(v) for v in booster.predict(xgboost.DMatrix(rows))]


def test_a_manifest_of_gzip_objects_and_outputs_inside_the_input_prefix(
    s3_client: Any, area: Area, boosters: dict[str, xgboost.Booster]
) -> None:
    booster = boosters["reg:squarederror"]
    objects = {"2024/a.csv.gz": id_rows(6, seed=70), "b.csv.gz": id_rows(4, seed=71), "unlisted.csv.gz": id_rows(2, 72)}
    for name, (lines, _) in objects.items():
        body = gzip.compress(("\n".join(lines) + "\n").encode())
        s3_client.put_object(Bucket=BUCKET, Key=area.key(area.input) + name, Body=body)
    manifest = [{"prefix": area.input}, "2024/a.csv.gz", "b.csv.gz"]
    s3_client.put_object(Bucket=BUCKET, Key=area.key(area.output) + "job.manifest", Body=json.dumps(manifest).encode())
    job = csv_job(
        area,
        s3_uri=area.output + "job.manifest",
        s3_data_type="ManifestFile",
        compression_type="Gzip",
        data_processing=DataProcessing(**JOIN),
    )
    summary = run(StandIn(booster), job, s3_client)
    assert summary.ok and [outcome.source for outcome in summary.outcomes] == [
        f"{area.input}2024/a.csv.gz",
        f"{area.input}b.csv.gz",
    ]
    for name in ("2024/a.csv.gz", "b.csv.gz"):
        lines, rows = objects[name]
        assert parsed_output(output_text(s3_client, area, name)) == joined_lines(booster, lines, rows)

    # Outputs written beside the inputs (the output path inside the input prefix) are never taken for inputs.
    beside = csv_job(
        area, s3_output_path=area.input + "scored/", compression_type="Gzip", data_processing=DataProcessing(**JOIN)
    )
    for _ in range(2):
        summary = run(StandIn(booster), beside, s3_client)
        assert len(summary.outcomes) == len(objects) and summary.ok


def test_no_input_objects_or_no_endpoint_is_a_failed_command(
    s3_client: Any, area: Area, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["transform", "--endpoint-url", "http://127.0.0.1:1", "--target-model", TARGET, "--input", area.input]
    assert main([*argv, "--output", area.output]) == 1  # nothing listens on port 1: nothing was sent either
    captured = capsys.readouterr()
    assert "0 objects" in captured.out and f"no input objects at {area.input}" in captured.err
    assert main([*argv, "--output", area.output, "--max-payload-in-mb", "9"]) == 2
    assert "MaxPayloadInMB: 9 is not 1 to 6" in capsys.readouterr().err
    put_lines(s3_client, area, "a.csv", id_rows(1, seed=1)[0])  # something to send, and no one to send it to
    assert main([*argv, "--output", area.output]) == 1
    assert "nothing answers at http://127.0.0.1:1" in capsys.readouterr().err
