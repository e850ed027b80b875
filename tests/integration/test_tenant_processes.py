"""A model's code may start processes that try to outlive it (setsid, a double fork, SIGTERM ignored, no
parent-death signal): they end when the model is evicted, when its worker is killed and when the front is killed
(README, "When things break"). Real endpoints; the mechanism's own tests are tests/endpoint/test_tenant_processes.py.

Script models always run isolated; a dense shard runs model code only when it unpickles a booster
(``--allow-pickle``), which is covered too."""

from __future__ import annotations

import contextlib
import pickle
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import xgboost

from openmme.endpoint.cache import mms_model_name
from openmme.publish import pack_directory
from openmme.publish.samples import make_rows
from openmme.seaweed import EmbeddedS3
from tests.conftest import Endpoint, EndpointFactory, Launcher
from tests.support import ESCAPEE, alive, escapee, expected, kill_escapee, wait_until

pytestmark = pytest.mark.integration

ROWS = make_rows(2, seed=23)

# A script model whose model_fn leaves ESCAPEE running (its PID in PID_FILE) and answers with that PID.
SPAWNING_SCRIPT = """
import subprocess, sys

def model_fn(model_dir):
    subprocess.run([sys.executable, "-c", ESCAPEE, PID_FILE], check=True)
    return PID_FILE

def input_fn(body, content_type):
    return body

def predict_fn(data, pid_file):
    with open(pid_file) as file:
        return file.read()

def output_fn(prediction, accept):
    return prediction, "text/plain"
"""


@pytest.fixture
def escapees() -> Iterator[list[psutil.Process]]:
    """The escapees a test found: whatever still runs at its end is killed (by PID, checked to still be it)."""
    found: list[psutil.Process] = []
    yield found
    for process in found:
        kill_escapee(process)


def publish_spawner(publish: Any, prefix: str, target: str, directory: Path) -> Path:
    """Publish SPAWNING_SCRIPT as ``target``; returns the file its escapee's PID will be written to."""
    pid_file = directory / "escapee.pid"
    (directory / "code").mkdir(parents=True)
    script = f"ESCAPEE = {ESCAPEE!r}\nPID_FILE = {str(pid_file)!r}\n{SPAWNING_SCRIPT}"
    (directory / "code" / "inference.py").write_text(script)
    publish(prefix, target, archive=pack_directory(directory))
    return pid_file


def spawned(endpoint: Endpoint, target: str, pid_file: Path, escapees: list[psutil.Process]) -> psutil.Process:
    """Load ``target`` (its model_fn leaves an escapee); returns the escapee, checked to be held in the model's
    worker's tree (adopted by its listener), not reparented to PID 1."""
    answer = endpoint.invoke(target, "pid?", "text/plain")["Body"].read().decode()
    process = escapee(pid_file)
    escapees.append(process)
    assert answer == str(process.pid)
    assert endpoint.models()[target]["hosting"] == "isolated"
    assert process.ppid() in endpoint.worker_pids()[mms_model_name(target)]
    assert alive(process)
    return process


@pytest.mark.parametrize("hosting", ["isolated", "dense"])
def test_an_evicted_script_models_processes_are_gone(
    start_endpoint: EndpointFactory,
    prefix: str,
    publish: Any,
    boosters: dict[str, xgboost.Booster],
    tmp_path: Path,
    escapees: list[psutil.Process],
    hosting: str,
) -> None:
    pid_file = publish_spawner(publish, prefix, "spawner.tar.gz", tmp_path / "spawner")
    booster = boosters["binary:logistic"]
    publish(prefix, "next.tar.gz", booster)
    # On a dense endpoint too: the script runs isolated, the booster that evicts it dense.
    endpoint = start_endpoint(prefix, "--hosting", hosting, "--max-models", "1")
    left = spawned(endpoint, "spawner.tar.gz", pid_file, escapees)

    assert endpoint.predictions("next.tar.gz", ROWS) == expected(booster, ROWS)  # evicts the script model
    assert wait_until(lambda: endpoint.models()["spawner.tar.gz"]["state"] == "on_disk", timeout=30)
    assert wait_until(lambda: not alive(left), timeout=30)


def test_the_processes_of_a_script_model_whose_worker_is_killed_are_gone(
    start_endpoint: EndpointFactory, prefix: str, publish: Any, tmp_path: Path, escapees: list[psutil.Process]
) -> None:
    pid_file = publish_spawner(publish, prefix, "spawner.tar.gz", tmp_path / "spawner")
    endpoint = start_endpoint(prefix, "--hosting", "isolated")
    left = spawned(endpoint, "spawner.tar.gz", pid_file, escapees)

    for pid in endpoint.worker_pids()[mms_model_name("spawner.tar.gz")]:  # the listener and its serving process
        with contextlib.suppress(psutil.NoSuchProcess):  # the serving process may end with its listener first
            psutil.Process(pid).kill()
    assert wait_until(lambda: not alive(left), timeout=30)
    # (The endpoint loads the model again, and its new escapee ends with the endpoint's stop: start_endpoint's
    # clean-up checks that no process of the endpoint's is left.)


def test_when_the_front_is_killed_a_script_models_processes_are_gone(
    s3: EmbeddedS3,
    tmp_path_factory: pytest.TempPathFactory,
    prefix: str,
    publish: Any,
    tmp_path: Path,
    escapees: list[psutil.Process],
) -> None:
    pid_file = publish_spawner(publish, prefix, "spawner.tar.gz", tmp_path / "spawner")
    # Started apart from `start_endpoint`, whose clean-up expects every front it started to exit 0.
    victim = Launcher(s3, tmp_path_factory).start(prefix, "--hosting", "isolated")
    try:
        left = spawned(victim, "spawner.tar.gz", pid_file, escapees)
        everything = victim.front().children(recursive=True)

        victim.front().kill()  # as the OOM killer does: `openmme serve`, its supervisor, lives on
        assert victim.process.wait(timeout=60) == -signal.SIGKILL  # then ends as its front did
        assert wait_until(lambda: not alive(left), timeout=30)
        assert not [process.pid for process in everything if alive(process)]
    finally:
        if victim.process.poll() is None:
            victim.process.kill()
            victim.process.wait()


class _Spawning:
    """Unpickles to ``booster`` and, on the way, runs ESCAPEE: the code a pickle may carry (``--allow-pickle``)."""

    def __init__(self, booster: xgboost.Booster, pid_file: Path) -> None:
        self.raw, self.pid_file = bytes(booster.save_raw("ubj")), str(pid_file)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        command = f"[__import__('sys').executable, '-c', {ESCAPEE!r}, {self.pid_file!r}]"
        booster = f"__import__('xgboost').Booster(model_file=bytearray({self.raw!r}))"
        return eval, (f"(__import__('subprocess').run({command}, check=True), {booster})[1]",)


def test_a_process_that_a_pickled_boosters_code_leaves_in_a_dense_shard_is_gone_and_the_model_serves(
    start_endpoint: EndpointFactory,
    prefix: str,
    publish: Any,
    boosters: dict[str, xgboost.Booster],
    tmp_path: Path,
    escapees: list[psutil.Process],
) -> None:
    booster = boosters["reg:squarederror"]
    pid_file = tmp_path / "escapee.pid"
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "xgboost-model").write_bytes(pickle.dumps(_Spawning(booster, pid_file)))
    publish(prefix, "pickled.tar.gz", archive=pack_directory(tmp_path / "model"))
    endpoint = start_endpoint(prefix, "--hosting", "dense", "--shards", "1", "--allow-pickle")

    assert endpoint.predictions("pickled.tar.gz", ROWS) == expected(booster, ROWS)
    assert endpoint.models()["pickled.tar.gz"]["hosting"] == "dense"
    with contextlib.suppress(psutil.NoSuchProcess):  # gone already: it wrote its PID, so it ran
        escapees.append(escapee(pid_file))
    # A shard holds no process of any model's: what leaves its tree goes up to the supervisor, which ends it.
    assert wait_until(lambda: not any(alive(process) for process in escapees), timeout=30)
    assert endpoint.predictions("pickled.tar.gz", ROWS) == expected(booster, ROWS)
