"""``openmme serve`` refuses to start, in one line and before touching anything, where it would harm or could not
serve: a cache directory another front owns, a port another process listens on, a model prefix it cannot read
(S3 that does not answer is waited for first); and a front clears what an earlier front of its cache directory left
running."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
import xgboost

from openmme.endpoint.cache import mms_model_name
from openmme.ports import free_port
from openmme.publish.samples import make_rows
from openmme.seaweed import EmbeddedS3
from tests.conftest import EndpointFactory, run_serve
from tests.support import CountingProxy, expected, sleeper

pytestmark = pytest.mark.integration

ROWS = make_rows(2, seed=5)


def tree(directory: Path) -> dict[str, tuple[int, int, int]]:
    """Every file and directory under a cache directory: inode, size and modification time, by path; MMS's logs
    aside, which the running MMS appends to whenever it likes."""
    return {
        str(path.relative_to(directory)): (path.lstat().st_ino, path.lstat().st_size, path.lstat().st_mtime_ns)
        for path in directory.rglob("*")
        if not path.relative_to(directory).as_posix().startswith(("mms/logs", "mms/mms.out"))
    }


def test_a_second_front_on_a_cache_dir_in_use_is_refused_in_one_line_and_touches_nothing(
    start_endpoint: EndpointFactory, s3: EmbeddedS3, prefix: str, publish: Any, boosters: dict[str, xgboost.Booster]
) -> None:
    booster = boosters["binary:logistic"]
    publish(prefix, "owned.tar.gz", booster)
    endpoint = start_endpoint(prefix, "--hosting", "isolated")
    assert endpoint.predictions("owned.tar.gz", ROWS) == expected(booster, ROWS)
    before = tree(endpoint.cache_dir)
    assert f"models/{mms_model_name('owned.tar.gz')}/xgboost-model" in before

    # What a new user does: a second `openmme serve` with the same defaults (cache directory and port).
    port = endpoint.url.rsplit(":", 1)[1]
    second = run_serve(
        "--model-prefix", prefix, "--cache-dir", str(endpoint.cache_dir), "--port", port, environ=s3.environment()
    )
    assert second.returncode != 0
    assert second.stderr == (
        f"openmme serve: the cache directory {endpoint.cache_dir} is in use by another openmme serve "
        f"(PID {endpoint.front().pid}); give each endpoint its own --cache-dir\n"
    )
    assert tree(endpoint.cache_dir) == before  # not a file deleted, added or rewritten
    # The first endpoint serves on from its cache, as if nothing had happened.
    assert endpoint.predictions("owned.tar.gz", ROWS) == expected(booster, ROWS)
    assert endpoint.models()["owned.tar.gz"]["downloads"] == 1


def test_a_taken_port_is_refused_in_one_line_before_anything_starts(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        refused = run_serve("--port", str(port), "--cache-dir", str(cache_dir))
    assert refused.returncode != 0
    assert refused.stderr == (
        f"openmme serve: port {port} on 127.0.0.1 is taken (Address already in use); choose another --port\n"
    )
    assert refused.stdout == ""
    assert time.monotonic() - started < 30  # no MMS was started and waited for
    assert not (cache_dir / "mms").exists() and not (cache_dir / "models").exists()


def test_a_front_stops_what_an_earlier_front_of_its_cache_dir_left_running(
    start_endpoint: EndpointFactory, prefix: str, tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    # What a front killed before it could stop MMS left: its Java front and a worker, and their record.
    cache_dir = tmp_path / "cache"
    earlier_tmp = tmp_path / "openmme-mms-earlier"
    earlier_tmp.mkdir()
    java = sleeper(sleepers, f"-Djava.io.tmpdir={earlier_tmp}", "com.amazonaws.ml.mms.ModelServer")
    worker = sleeper(sleepers, "--sock-name", f"{earlier_tmp}/.mms.sock.9000", "--model-name", "m-1")
    (cache_dir / "mms").mkdir(parents=True)
    record = {"pid": java.pid, "create_time": psutil.Process(java.pid).create_time(), "tmp_dir": str(earlier_tmp)}
    (cache_dir / "mms" / "mms.json").write_text(json.dumps(record))

    endpoint = start_endpoint(prefix, "--cache-dir", str(cache_dir))

    assert java.wait(timeout=10) is not None
    assert worker.wait(timeout=10) is not None
    assert not earlier_tmp.exists()
    assert "stopped 2 MMS process(es) an earlier openmme serve" in endpoint.log()


# No credentials anywhere botocore looks: the variables emptied, no files, no instance metadata.
NO_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "",
    "AWS_SECRET_ACCESS_KEY": "",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
    "AWS_CONFIG_FILE": "/nonexistent/config",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.mark.parametrize(
    ("environ", "says"),
    [
        ({}, "openmme serve: bucket '{bucket}' does not exist (NoSuchBucket) at {s3}: create it or fix --model-prefix"),
        (
            NO_CREDENTIALS,
            "openmme serve: no AWS credentials to read s3://{bucket}/x/ with (Unable to locate credentials): set"
            " AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE",
        ),
        (
            {"AWS_SECRET_ACCESS_KEY": "not-the-secret"},
            "openmme serve: S3 at {s3} refuses the credentials (SignatureDoesNotMatch): fix AWS_ACCESS_KEY_ID and"
            " AWS_SECRET_ACCESS_KEY, or AWS_PROFILE",
        ),
    ],
    ids=["missing bucket", "no credentials", "wrong secret"],
)
def test_a_model_prefix_that_cannot_serve_is_refused_in_one_line_before_anything_starts(
    s3: EmbeddedS3, tmp_path: Path, environ: dict[str, str], says: str
) -> None:
    bucket = f"nope-{uuid.uuid4().hex[:8]}"
    cache_dir = tmp_path / "cache"
    refused = run_serve(
        "--model-prefix", f"s3://{bucket}/x/", "--cache-dir", str(cache_dir), environ={**s3.environment(), **environ}
    )
    assert refused.returncode == 1
    assert refused.stderr.splitlines()[-1] == says.format(bucket=bucket, s3=s3.endpoint_url)
    assert "Traceback" not in refused.stderr
    assert not (cache_dir / "mms").exists() and not (cache_dir / "models").exists()


def test_s3_that_does_not_answer_is_waited_for_then_refused(s3: EmbeddedS3, tmp_path: Path) -> None:
    away = f"http://127.0.0.1:{free_port()}"
    refused = run_serve(
        "--model-prefix", "s3://models/x/", "--model-prefix-wait", "1", "--cache-dir", str(tmp_path / "cache"),
        environ={**s3.environment(), "AWS_ENDPOINT_URL_S3": away},
    )  # fmt: skip
    assert refused.returncode == 1
    last = refused.stderr.splitlines()[-1]
    assert last.startswith(f"openmme serve: cannot reach S3 at {away} (Could not connect to the endpoint URL")
    assert last.endswith(
        ", for 1 s: start it or fix AWS_ENDPOINT_URL_S3 (--model-prefix-wait: how long serve waits for it)"
    )
    assert "trying again" in refused.stderr  # it did wait
    assert not (tmp_path / "cache" / "mms").exists()


def test_an_endpoint_whose_s3_comes_up_during_its_start_waits_for_it_and_serves(
    start_endpoint: EndpointFactory, s3: EmbeddedS3, prefix: str, publish: Any, boosters: dict[str, xgboost.Booster]
) -> None:
    booster = boosters["binary:logistic"]
    publish(prefix, "patient.tar.gz", booster)
    port = free_port()
    not_yet = socket.create_server(("127.0.0.1", port))
    proxies: list[CountingProxy] = []

    def s3_comes_up() -> None:
        connection, _ = not_yet.accept()  # the endpoint's first try: closed unanswered, as by S3 still starting
        connection.close()
        not_yet.close()
        proxies.append(CountingProxy(s3.ports["s3"], port=port))
        proxies[0].serve_forever()

    thread = threading.Thread(target=s3_comes_up, daemon=True)
    thread.start()
    try:
        endpoint = start_endpoint(prefix, s3_url=f"http://127.0.0.1:{port}")
        assert endpoint.predictions("patient.tar.gz", ROWS) == expected(booster, ROWS)
        assert f"cannot reach S3 at http://127.0.0.1:{port}" in endpoint.log()
    finally:
        not_yet.close()
        if proxies:
            proxies[0].shutdown()
            proxies[0].server_close()
