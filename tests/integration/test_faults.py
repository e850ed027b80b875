"""Faults the endpoint must survive, each broken on purpose against the real processes: MMS killed, a model
worker killed, the S3 server stopped and back, a client that gives up during a cold load, SIGTERM with a
request in flight, the front itself killed with SIGKILL, and extracted models deleted under a running endpoint."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import xgboost

from openmme.endpoint.cache import mms_model_name
from openmme.endpoint.dense import SHARD_PREFIX
from openmme.publish import pack_directory, publish_archive
from openmme.publish.samples import make_rows, sample_archive
from openmme.seaweed import EmbeddedS3
from tests.conftest import Endpoint, EndpointFactory, Launcher
from tests.support import alive, csv_body, expected, wait_until

pytestmark = pytest.mark.integration

ROWS = make_rows(2, seed=31)


def mms_java(endpoint: Endpoint) -> psutil.Process:
    return next(
        child
        for child in endpoint.front().children()
        if any(arg.startswith("-Dmodel_server_home=") for arg in child.cmdline())
    )


def eventually_served(endpoint: Endpoint, target: str, want: list[float], timeout: float) -> int:
    """Invoke until the answer is right; returns how many attempts failed on the way."""
    failures = 0
    deadline = time.monotonic() + timeout
    while True:
        try:
            if endpoint.predictions(target, ROWS) == want:
                return failures
        except Exception:
            if time.monotonic() > deadline:
                raise
        failures += 1
        time.sleep(0.2)


def test_mms_killed_is_restarted_its_models_loaded_again_and_dense_shards_untouched(
    start_endpoint: EndpointFactory, hosting: str, prefix: str, publish: Any, boosters: dict[str, xgboost.Booster]
) -> None:
    booster = boosters["binary:logistic"]
    publish(prefix, "steady.tar.gz", booster)
    endpoint = start_endpoint(prefix, "--hosting", hosting)
    assert endpoint.predictions("steady.tar.gz", ROWS) == expected(booster, ROWS)
    mms_workers = [pid for pids in endpoint.model_pids().values() for pid in pids]
    shard_workers = shard_pids(endpoint)
    assert bool(shard_workers) == (hosting == "dense")
    java = mms_java(endpoint)

    java.kill()
    assert wait_until(lambda: endpoint.ping() == 503, timeout=10)
    assert wait_until(lambda: endpoint.ping() == 200, timeout=90)
    assert mms_java(endpoint).pid != java.pid
    # Loaded again by the endpoint itself, before anyone asks (an isolated model); never lost (a dense one).
    name = mms_model_name("steady.tar.gz")
    assert wait_until(lambda: name in endpoint.resident(), timeout=30)
    assert endpoint.predictions("steady.tar.gz", ROWS) == expected(booster, ROWS)
    assert endpoint.models()["steady.tar.gz"]["downloads"] == 1
    # The dead MMS's workers did not outlive it; the dense shards' workers, the front's own, never noticed.
    assert wait_until(lambda: not any(psutil.pid_exists(pid) for pid in mms_workers), timeout=15)
    assert shard_pids(endpoint) == shard_workers
    if hosting == "dense":
        assert sum(endpoint.loads(name).values()) == 1


def shard_pids(endpoint: Endpoint) -> dict[str, list[int]]:
    return {name: pids for name, pids in endpoint.worker_pids().items() if name.startswith(SHARD_PREFIX)}


def test_a_killed_model_worker_answers_again_within_seconds(
    start_endpoint: EndpointFactory, prefix: str, publish: Any, boosters: dict[str, xgboost.Booster]
) -> None:
    booster = boosters["multi:softmax"]
    publish(prefix, "victim.tar.gz", booster)
    endpoint = start_endpoint(prefix, "--hosting", "isolated")
    assert endpoint.predictions("victim.tar.gz", ROWS) == expected(booster, ROWS)
    for pid in endpoint.worker_pids()[mms_model_name("victim.tar.gz")]:
        os.kill(pid, signal.SIGKILL)
    started = time.monotonic()
    failures = eventually_served(endpoint, "victim.tar.gz", expected(booster, ROWS), timeout=30)
    assert time.monotonic() - started < 30
    assert failures < 100
    assert endpoint.ping() == 200


def test_a_killed_shard_worker_loses_at_most_the_requests_in_it_and_its_models_reload_on_demand(
    start_endpoint: EndpointFactory, prefix: str, publish: Any, boosters: dict[str, xgboost.Booster]
) -> None:
    booster = boosters["binary:logistic"]
    targets = [f"tenant-{index}.tar.gz" for index in range(6)]
    for target in targets:
        publish(prefix, target, booster)
    endpoint = start_endpoint(prefix, "--hosting", "dense", "--shards", "2")
    want = expected(booster, ROWS)
    for target in targets:
        assert endpoint.predictions(target, ROWS) == want
    (shard,) = endpoint.models()["tenant-0.tar.gz"]["shards"]
    shard_name = f"openmme-shard-{shard}"
    held = sorted(endpoint.shard_listings()[shard_name]["models"])
    assert mms_model_name("tenant-0.tar.gz") in held

    # A client keeps calling a model of that shard while its worker is killed.
    outcomes: list[bool] = []
    stop = threading.Event()

    def keep_calling() -> None:
        client = endpoint.runtime(retries=1)
        while not stop.is_set():
            try:
                outcomes.append(endpoint.predictions("tenant-0.tar.gz", ROWS, client=client) == want)
            except Exception:
                outcomes.append(False)

    caller = threading.Thread(target=keep_calling)
    caller.start()
    try:
        assert wait_until(lambda: outcomes.count(True) >= 3, timeout=30), outcomes
        killed = set(endpoint.worker_pids()[shard_name])
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        before = len(outcomes)

        def served_by_a_new_worker() -> bool:
            # The front notices within its 2 s housekeeping round and starts the shard again; the calls that
            # follow are served by its new worker.
            new_worker = bool(set(endpoint.worker_pids().get(shard_name, [])) - killed)
            return new_worker and outcomes[before:].count(True) >= 3

        assert wait_until(served_by_a_new_worker, timeout=30), outcomes[before:]
    finally:
        stop.set()
        caller.join(timeout=60)
    assert outcomes.count(False) <= 1, outcomes  # no more than the one request in the worker when it died
    assert outcomes[-1] is True

    # Every model answers again, the shard's from disk (no download), in the new worker.
    for target in targets:
        assert endpoint.predictions(target, ROWS) == want
    assert [model["downloads"] for model in endpoint.models().values()] == [1] * len(targets)
    assert set(held) <= set(endpoint.resident())
    assert endpoint.ping() == 200


@pytest.fixture
def own_s3(tmp_path: Path) -> Iterator[EmbeddedS3]:
    """An S3 server this test may stop and start again (on the same ports, with the same data)."""
    server = EmbeddedS3(tmp_path / "own-s3").start()
    try:
        server.client().create_bucket(Bucket="models")  # type: ignore[attr-defined]
        yield server
    finally:
        server.stop()


def test_s3_down_cached_models_serve_uncached_fail_fast_then_load_when_it_is_back(
    start_endpoint: EndpointFactory, own_s3: EmbeddedS3, boosters: dict[str, xgboost.Booster]
) -> None:
    booster = boosters["reg:squarederror"]
    client = own_s3.client()
    for target in ("cached.tar.gz", "later.tar.gz"):
        publish_archive(sample_archive(booster), "s3://models/p/", target, client=client)
    endpoint = start_endpoint("s3://models/p/", env=own_s3.environment())
    assert endpoint.predictions("cached.tar.gz", ROWS) == expected(booster, ROWS)

    own_s3.stop()
    assert endpoint.predictions("cached.tar.gz", ROWS) == expected(booster, ROWS)
    runtime = endpoint.runtime(retries=1)
    started = time.monotonic()
    with pytest.raises(runtime.exceptions.ClientError) as caught:
        endpoint.predictions("later.tar.gz", ROWS, client=runtime)
    assert time.monotonic() - started < 10
    assert caught.value.response["Error"]["Code"] == "ServiceUnavailable"
    assert "cannot be reached" in caught.value.response["Error"]["Message"]

    own_s3.start()
    assert endpoint.predictions("later.tar.gz", ROWS) == expected(booster, ROWS)  # no restart of the endpoint
    assert endpoint.predictions("cached.tar.gz", ROWS) == expected(booster, ROWS)


def test_a_client_that_gives_up_during_a_cold_load_does_not_cancel_it(
    start_endpoint: EndpointFactory, prefix: str, publish: Any, boosters: dict[str, xgboost.Booster]
) -> None:
    booster = boosters["binary:logistic"]
    publish(prefix, "patient.tar.gz", booster)
    # Isolated: a load long enough (a worker process start) to give up during; a dense load takes milliseconds.
    endpoint = start_endpoint(prefix, "--hosting", "isolated")
    request = urllib.request.Request(
        endpoint.url + "/invocations",
        data=csv_body(ROWS).encode(),
        headers={"X-Amzn-SageMaker-Target-Model": "patient.tar.gz", "Content-Type": "text/csv"},
    )
    with pytest.raises((TimeoutError, socket.timeout, urllib.error.URLError)):
        urllib.request.urlopen(request, timeout=0.05)
    assert wait_until(lambda: endpoint.models().get("patient.tar.gz", {}).get("state") == "ready", timeout=60)
    assert endpoint.predictions("patient.tar.gz", ROWS) == expected(booster, ROWS)
    model = endpoint.models()["patient.tar.gz"]
    assert (model["downloads"], model["loads"]) == (1, 1)


SLOW_SCRIPT = """
import time


def model_fn(model_dir):
    return None


def input_fn(body, content_type):
    return body.decode() if isinstance(body, bytes) else body


def predict_fn(text, model):
    time.sleep(float(text))
    return "slept " + text


def output_fn(prediction, accept):
    return prediction, "text/plain"
"""


def test_sigterm_finishes_the_request_in_flight_and_stops_everything(
    start_endpoint: EndpointFactory, prefix: str, publish: Any, tmp_path: Path
) -> None:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "inference.py").write_text(SLOW_SCRIPT)
    publish(prefix, "slow.tar.gz", archive=pack_directory(tmp_path))
    endpoint = start_endpoint(prefix)
    client = endpoint.runtime(retries=1)

    def call(seconds: str) -> str:
        return str(endpoint.invoke("slow.tar.gz", seconds, "text/plain", client=client)["Body"].read().decode())

    assert call("0") == "slept 0"  # loaded
    processes = psutil.Process(endpoint.process.pid).children(recursive=True)
    answers: list[str] = []
    in_flight = threading.Thread(target=lambda: answers.append(call("2")))
    in_flight.start()
    time.sleep(0.5)
    endpoint.process.send_signal(signal.SIGTERM)
    in_flight.join(timeout=30)
    assert answers == ["slept 2"]
    assert endpoint.process.wait(timeout=60) == 0
    assert wait_until(lambda: not any(alive(process) for process in processes), timeout=10)


def test_a_front_killed_with_sigkill_leaves_no_process_behind_and_a_new_one_starts_on_its_cache_dir(
    s3: EmbeddedS3,
    tmp_path_factory: pytest.TempPathFactory,
    start_endpoint: EndpointFactory,
    hosting: str,
    prefix: str,
    publish: Any,
    boosters: dict[str, xgboost.Booster],
) -> None:
    booster = boosters["reg:squarederror"]
    publish(prefix, "orphan.tar.gz", booster)
    # Started apart from `start_endpoint`, whose clean-up expects every front it started to exit 0.
    victim = Launcher(s3, tmp_path_factory).start(prefix, "--hosting", hosting, "--shards", "1")
    try:
        assert victim.predictions("orphan.tar.gz", ROWS) == expected(booster, ROWS)
        java = mms_java(victim)
        workers = [pid for pids in victim.worker_pids().values() for pid in pids]
        assert workers  # the model's (isolated) or the shard's (dense) listener and serving process
        everything = psutil.Process(victim.process.pid).children(recursive=True)
        assert {java.pid, *workers} <= {process.pid for process in everything}
        mms_tmp = Path(next(arg for arg in java.cmdline() if arg.startswith("-Djava.io.tmpdir=")).split("=", 1)[1])

        # As a supervisor that kills the one PID it started: `openmme serve`, the front's own supervisor, whose
        # front dies with it (the front killed alone, as the OOM killer does: test_tenant_processes.py).
        victim.process.kill()
        victim.process.wait()

        assert wait_until(lambda: not any(alive(process) for process in everything), timeout=5), [
            (process.pid, process.cmdline()) for process in everything if alive(process)
        ]
    finally:
        if victim.process.poll() is None:
            victim.process.kill()
            victim.process.wait()
    # The next front on the same cache directory starts, serves, and clears what the killed one could not.
    successor = start_endpoint(prefix, "--hosting", hosting, "--shards", "1", "--cache-dir", str(victim.cache_dir))
    assert successor.predictions("orphan.tar.gz", ROWS) == expected(booster, ROWS)
    assert not mms_tmp.exists()


@pytest.mark.parametrize("gone", ["the model's directory", "the whole model store"])
def test_a_model_whose_extracted_files_were_deleted_is_fetched_again_on_its_next_request(
    start_endpoint: EndpointFactory,
    hosting: str,
    prefix: str,
    publish: Any,
    boosters: dict[str, xgboost.Booster],
    gone: str,
) -> None:
    booster = boosters["multi:softmax"]
    for target in ("first.tar.gz", "second.tar.gz"):
        publish(prefix, target, booster)
    endpoint = start_endpoint(prefix, "--hosting", hosting, "--max-models", "1")
    assert endpoint.predictions("first.tar.gz", ROWS) == expected(booster, ROWS)
    assert endpoint.predictions("second.tar.gz", ROWS) == expected(booster, ROWS)  # first leaves memory, stays on disk
    assert wait_until(lambda: endpoint.models()["first.tar.gz"]["state"] == "on_disk", timeout=30)

    models_dir = endpoint.cache_dir / "models"
    shutil.rmtree(models_dir / mms_model_name("first.tar.gz") if gone == "the model's directory" else models_dir)

    assert endpoint.predictions("first.tar.gz", ROWS) == expected(booster, ROWS)
    assert endpoint.models()["first.tar.gz"]["downloads"] == 2
    assert (models_dir / mms_model_name("first.tar.gz")).is_dir()


# A script model whose first load is slow (long enough to kill its worker in model_fn) and whose next loads are
# quick: the marker it leaves in its own directory says a load began before.
SLOW_FIRST_LOAD = """
import os
import time


def model_fn(model_dir):
    marker = os.path.join(model_dir, "loaded-before")
    if not os.path.exists(marker):
        open(marker, "w").close()
        time.sleep(60)
    return "ready"


def input_fn(body, content_type):
    return body.decode() if isinstance(body, bytes) else body


def predict_fn(text, model):
    return model + " " + text


def output_fn(prediction, accept):
    return prediction, "text/plain"
"""

BROKEN_MODEL_FN = """
def model_fn(model_dir):
    raise RuntimeError("no weights in this archive")
"""


def test_a_worker_killed_while_a_script_model_loads_is_retryable_and_model_fn_raising_is_the_models_error(
    start_endpoint: EndpointFactory, prefix: str, publish: Any, tmp_path: Path
) -> None:
    for target, script in (("slow-load.tar.gz", SLOW_FIRST_LOAD), ("broken.tar.gz", BROKEN_MODEL_FN)):
        (tmp_path / target / "code").mkdir(parents=True)
        (tmp_path / target / "code" / "inference.py").write_text(script)
        publish(prefix, target, archive=pack_directory(tmp_path / target))
    endpoint = start_endpoint(prefix)  # script models are isolated whatever --hosting says
    client = endpoint.runtime(retries=1)
    name = mms_model_name("slow-load.tar.gz")
    marker = endpoint.cache_dir / "models" / name / "loaded-before"
    raised: list[Exception] = []

    def first_call() -> None:
        try:
            endpoint.invoke("slow-load.tar.gz", "x", "text/plain", client=client)
        except Exception as exc:
            raised.append(exc)

    caller = threading.Thread(target=first_call)
    caller.start()
    try:
        assert wait_until(marker.exists, timeout=60)  # its model_fn runs: the worker is loading the model
        for pid in endpoint.worker_pids()[name]:
            os.kill(pid, signal.SIGKILL)  # as the OOM killer would
    finally:
        caller.join(timeout=90)
    # The host's failure: a 503 the SDK retries, not the model's ModelError.
    assert len(raised) == 1 and isinstance(raised[0], client.exceptions.ServiceUnavailable), raised
    assert raised[0].response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert "died" in raised[0].response["Error"]["Message"]
    # Nothing remembered of it: the next request loads the model and is served.
    answer = endpoint.invoke("slow-load.tar.gz", "x", "text/plain", client=client)["Body"].read()
    assert answer == b"ready x"

    # model_fn raising is the model's failure, each time, with its reason.
    for _attempt in range(2):
        with pytest.raises(client.exceptions.ModelError) as caught:
            endpoint.invoke("broken.tar.gz", "x", "text/plain", client=client)
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 424
        assert "RuntimeError: no weights in this archive" in caught.value.response["Error"]["Message"]


def test_a_shard_worker_killed_while_it_loads_a_model_is_replaced_and_the_load_served(
    start_endpoint: EndpointFactory, prefix: str, publish: Any, boosters: dict[str, xgboost.Booster]
) -> None:
    booster = boosters["binary:logistic"]
    publish(prefix, "dense-load.tar.gz", booster)
    endpoint = start_endpoint(prefix, "--hosting", "dense", "--shards", "1")
    shard = f"{SHARD_PREFIX}0"
    (worker,) = endpoint.worker_pids()[shard]
    # A booster loads in milliseconds: the worker is stopped first, so that the load is surely in it when it dies.
    os.kill(worker, signal.SIGSTOP)
    answers: list[Any] = []

    def first_call() -> None:
        try:
            answers.append(endpoint.predictions("dense-load.tar.gz", ROWS))
        except Exception as exc:
            answers.append(exc)

    caller = threading.Thread(target=first_call)
    caller.start()
    try:
        assert wait_until(lambda: endpoint.models().get("dense-load.tar.gz", {}).get("state") == "loading", timeout=30)
    finally:
        os.kill(worker, signal.SIGKILL)
        caller.join(timeout=90)
    # The shard's worker is started again and the load sent to it: the request is served.
    assert answers == [expected(booster, ROWS)]
    assert worker not in endpoint.worker_pids()[shard]
    assert endpoint.predictions("dense-load.tar.gz", ROWS) == expected(booster, ROWS)
