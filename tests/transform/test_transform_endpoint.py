"""``openmme transform`` as a user runs it, against real processes: SeaweedFS, an ``openmme serve`` with MMS and
xgboost behind it (one for the module), and the transform itself as its own process. Outputs must equal the same
booster predicting in-process, row by row; a record the model refuses fails its object only; a job killed half-way
resumes to the same result; ``--model-prefix`` brings an endpoint of its own and takes it away."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
import xgboost

from openmme.publish import publish_archive
from openmme.publish.samples import sample_archive
from openmme.seaweed import EmbeddedS3
from tests.conftest import BUCKET, Endpoint, Launcher
from tests.support import alive, wait_until
from tests.transform.conftest import Area, id_rows, joined_lines, output_keys, output_text, parsed_output, put_lines

pytestmark = pytest.mark.integration

TARGET = "scores/model.tar.gz"
JOIN = ("--input-filter", "$[1:]", "--join-source", "Input", "--output-filter", "$[0,-1]")


@pytest.fixture(scope="module")
def prefix(s3: EmbeddedS3, boosters: dict[str, xgboost.Booster]) -> str:
    prefix = f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}/"
    publish_archive(sample_archive(boosters["reg:squarederror"]), prefix, TARGET)
    return prefix


@pytest.fixture(scope="module")
def endpoint(s3: EmbeddedS3, prefix: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    launcher = Launcher(s3, tmp_path_factory)
    yield launcher.start(prefix, name="batch")
    launcher.close()


@pytest.fixture
def booster(boosters: dict[str, xgboost.Booster]) -> xgboost.Booster:
    return boosters["reg:squarederror"]


def command(area: Area, *flags: str) -> list[str]:
    return [
        sys.executable, "-m", "openmme.cli", "transform", "--target-model", TARGET, "--input", area.input,
        "--output", area.output, "--content-type", "text/csv", "--split-type", "Line", "--accept", "text/csv",
        "--assemble-with", "Line", *flags,
    ]  # fmt: skip


def transform(s3: EmbeddedS3, area: Area, *flags: str) -> subprocess.CompletedProcess[str]:
    """``openmme transform`` run to its end, with the suite's S3 settings (the keys it signs with, too)."""
    env = {**os.environ, **s3.environment()}
    return subprocess.run(command(area, *flags), env=env, capture_output=True, text=True, timeout=240, check=False)


def test_a_csv_join_over_several_objects_equals_in_process_xgboost(
    s3: EmbeddedS3, s3_client: Any, endpoint: Endpoint, area: Area, booster: xgboost.Booster
) -> None:
    objects = {"a.csv": id_rows(40, seed=1), "b.csv": id_rows(12_000, seed=2), "2024/05/c.csv": id_rows(1, seed=3)}
    for name, (lines, _) in objects.items():
        put_lines(s3_client, area, name, lines)
    done = transform(
        s3, area, "--endpoint-url", endpoint.url, "--endpoint-name", "batch", "--max-payload-in-mb", "1", *JOIN
    )

    assert done.returncode == 0, done.stderr
    assert "3 objects: 3 transformed, 0 skipped (complete already), 0 failed" in done.stdout
    assert "12,041 records" in done.stdout
    for name, (lines, rows) in objects.items():
        assert parsed_output(output_text(s3_client, area, name)) == joined_lines(booster, lines, rows)
    # b.csv (1.4 MB) went in two requests at most 1 MB each; the others in one each.
    assert "4 requests" in done.stdout


def test_a_record_the_model_refuses_fails_its_object_only(
    s3: EmbeddedS3, s3_client: Any, endpoint: Endpoint, area: Area, booster: xgboost.Booster
) -> None:
    good, good_rows = id_rows(30, seed=4)
    bad, _ = id_rows(500, seed=5)
    bad[316] = bad[316].rsplit(",", 1)[0] + ",not-a-number"
    for name, lines in (("a.csv", good), ("b.csv", bad), ("c.csv", good)):
        put_lines(s3_client, area, name, lines)
    done = transform(s3, area, "--endpoint-url", endpoint.url, *JOIN)

    assert done.returncode == 1, done.stderr
    assert "3 objects: 2 transformed, 0 skipped (complete already), 1 failed" in done.stdout
    (failure,) = [line for line in done.stderr.splitlines() if line.startswith("openmme transform: failed: ")]
    assert f"{area.input}b.csv: record 317: ModelError (OriginalStatusCode 400): " in failure
    assert "Unable to evaluate payload provided" in failure  # the model's own message
    assert set(output_keys(s3_client, area)) == {"a.csv.out", "c.csv.out"}
    assert parsed_output(output_text(s3_client, area, "a.csv")) == joined_lines(booster, good, good_rows)


def test_a_job_stopped_or_killed_half_way_resumes_to_the_same_result(
    s3: EmbeddedS3, s3_client: Any, endpoint: Endpoint, area: Area, booster: xgboost.Booster
) -> None:
    objects = {f"part-{index:02d}.csv": id_rows(60, seed=10 + index) for index in range(10)}
    for name, (lines, _) in objects.items():
        put_lines(s3_client, area, name, lines)
    # One record per request, one request at a time: slow enough to stop half-way.
    slow = ("--endpoint-url", endpoint.url, "--batch-strategy", "SingleRecord", "--max-concurrent-transforms", "1")
    env = {**os.environ, **s3.environment()}

    def stopped_after(outputs: int, how: signal.Signals) -> tuple[int, str, dict[str, str]]:
        """The job started, then stopped with ``how`` once ``outputs`` outputs exist: its exit code, its stdout and
        the outputs there are once it is gone."""
        process = subprocess.Popen(command(area, *slow, *JOIN), env=env, stdout=subprocess.PIPE, text=True)
        assert wait_until(lambda: len(output_keys(s3_client, area)) >= outputs, timeout=120)
        process.send_signal(how)
        stdout, _ = process.communicate(timeout=60)
        return process.returncode, stdout, output_keys(s3_client, area)

    # As a scheduler stops a job (SIGTERM): exit code 130, and told how to resume.
    code, stdout, first = stopped_after(2, signal.SIGTERM)
    assert code == 130 and "run the same command again" in stdout
    code, _, second = stopped_after(len(first) + 2, signal.SIGKILL)  # a crash
    assert code == -signal.SIGKILL and len(first) < len(second) < len(objects)
    assert {name: second[name] for name in first} == first  # what was complete was not done again

    done = transform(s3, area, *slow, *JOIN)
    assert done.returncode == 0, done.stderr
    assert f"{len(objects) - len(second)} transformed, {len(second)} skipped" in done.stdout
    assert {name: etag for name, etag in output_keys(s3_client, area).items() if name in second} == second
    for name, (lines, rows) in objects.items():
        assert parsed_output(output_text(s3_client, area, name)) == joined_lines(booster, lines, rows)


def test_a_job_brings_its_own_endpoint_and_stops_it(
    s3: EmbeddedS3, s3_client: Any, prefix: str, area: Area, booster: xgboost.Booster
) -> None:
    lines, rows = id_rows(25, seed=6)
    put_lines(s3_client, area, "a.csv", lines)
    before = {process.pid for process in psutil.process_iter()}
    started = time.monotonic()
    done = transform(s3, area, "--model-prefix", prefix, *JOIN)

    assert done.returncode == 0, done.stderr
    assert parsed_output(output_text(s3_client, area, "a.csv")) == joined_lines(booster, lines, rows)
    # Its endpoint (and that endpoint's MMS and workers) went with it.
    new = [process for process in psutil.process_iter() if process.pid not in before]
    left = [process.pid for process in new if alive(process) and "openmme-transform-" in " ".join(_cmdline(process))]
    assert left == [], left
    assert time.monotonic() - started < 120


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []
