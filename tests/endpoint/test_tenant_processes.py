"""Processes a model's code leaves behind end with the model's worker and with the front, whatever they do to stay:
``openmme serve``'s supervisor (openmme.endpoint.supervisor) and the MMS worker launcher as a subreaper
(openmme.handlers._lifetime). Real processes, no MMS: the endpoint's own tests are tests/integration's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support import ESCAPEE, alive, escapee, kill_escapee, wait_until

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_CHILD_SUBREAPER and /proc")

# Stands for `openmme serve`: run_supervised runs `front` in a child. The front starts ESCAPEE as a model's code
# would; as a subreaper it holds it (as an MMS worker does), or (`--not-a-subreaper`) lets it go to the supervisor.
# Then it sleeps until a SIGTERM, on which it exits with the code argv[2] names.
SUPERVISED = """
import signal, subprocess, sys, time
from openmme.endpoint.supervisor import run_supervised
from openmme.handlers._lifetime import become_subreaper

def front():
    if "--not-a-subreaper" not in sys.argv:
        become_subreaper()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(int(sys.argv[2])))
    subprocess.run([sys.executable, "-c", ESCAPEE, sys.argv[1]], check=True)
    time.sleep(120)
    return 1

sys.exit(run_supervised(front))
"""


@pytest.fixture
def started() -> Iterator[list[psutil.Process]]:
    """Processes a test started or found: whatever still runs at its end is killed (by PID, checked to be it)."""
    processes: list[psutil.Process] = []
    yield processes
    for process in processes:
        kill_escapee(process)


def supervised(tmp_path: Path, code_on_sigterm: int, *flags: str) -> subprocess.Popen[bytes]:
    """A supervised front as SUPERVISED: the supervisor's process."""
    script = f"ESCAPEE = {ESCAPEE!r}\n{SUPERVISED}"
    root = Path(__file__).resolve().parent.parent.parent
    return subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "escapee.pid"), str(code_on_sigterm), *flags],
        env={**os.environ, "PYTHONPATH": str(root)},
    )


def front_of(supervisor: subprocess.Popen[bytes]) -> psutil.Process:
    """The supervisor's front: its child with its command line (a fork; an escapee it adopted has its own)."""
    parent = psutil.Process(supervisor.pid)

    def forks() -> list[psutil.Process]:
        return [child for child in parent.children() if child.cmdline() == parent.cmdline()]

    assert wait_until(lambda: bool(forks()), timeout=30)
    (front,) = forks()
    return front


def test_when_the_front_is_killed_what_its_tree_held_is_killed_and_the_supervisor_dies_as_it_did(
    tmp_path: Path, started: list[psutil.Process]
) -> None:
    supervisor = supervised(tmp_path, 0)
    front = front_of(supervisor)
    started.append(front)
    left = escapee(tmp_path / "escapee.pid")
    started.append(left)
    assert left.ppid() == front.pid  # held by the subreaper below the supervisor, as an MMS worker holds it
    assert alive(left)

    front.kill()  # as the OOM killer does
    assert wait_until(lambda: not alive(left), timeout=30)
    assert supervisor.wait(timeout=30) == -signal.SIGKILL


def test_a_process_orphaned_while_the_front_lives_is_killed_and_the_front_serves_on(
    tmp_path: Path, started: list[psutil.Process]
) -> None:
    supervisor = supervised(tmp_path, 0, "--not-a-subreaper")
    front = front_of(supervisor)
    started.append(front)
    try:
        left = escapee(tmp_path / "escapee.pid")
    except psutil.NoSuchProcess:  # killed already: it wrote its PID, so it ran
        pass
    else:
        started.append(left)
        # Its parent left: it went up to the supervisor (not PID 1), which kills what it did not start.
        assert wait_until(lambda: not alive(left), timeout=30)
    assert alive(front)

    supervisor.send_signal(signal.SIGTERM)  # forwarded: the front exits 0 on it
    assert supervisor.wait(timeout=30) == 0
    assert not alive(front)


def test_sigterm_reaches_the_front_and_what_its_tree_held_ends_with_it(
    tmp_path: Path, started: list[psutil.Process]
) -> None:
    supervisor = supervised(tmp_path, 3)
    started.append(front_of(supervisor))
    left = escapee(tmp_path / "escapee.pid")
    started.append(left)
    assert alive(left)

    supervisor.send_signal(signal.SIGTERM)  # forwarded: the front exits 3 on it, and so does the supervisor
    assert supervisor.wait(timeout=30) == 3
    assert wait_until(lambda: not alive(left), timeout=30)


# Stands for MMS's worker script, run through the launcher as MMS runs it: the listener forks a serving process
# (with multiprocessing, as MMS does), whose model code starts ESCAPEE and serves on.
WORKER_SCRIPT = """
import multiprocessing, subprocess, sys, time
from pathlib import Path
out = Path(sys.argv[1])

def serve():
    subprocess.run([sys.executable, "-c", ESCAPEE, str(out / "escapee.pid")], check=True)
    (out / "serving").write_text(str(multiprocessing.current_process().pid))
    time.sleep(120)

if __name__ == "__main__":
    (out / "listener").write_text(str(multiprocessing.current_process().pid))
    multiprocessing.get_context("fork").Process(target=serve).start()
    time.sleep(120)
"""


def test_an_mms_worker_holds_what_its_model_left_while_it_serves_and_kills_it_when_its_serving_process_ends(
    tmp_path: Path, started: list[psutil.Process]
) -> None:
    script = tmp_path / "model_service_worker.py"
    script.write_text(f"ESCAPEE = {ESCAPEE!r}\n{WORKER_SCRIPT}")
    worker = subprocess.Popen([sys.executable, "-P", "-m", "openmme.handlers._lifetime", str(script), str(tmp_path)])
    try:
        left = escapee(tmp_path / "escapee.pid")
        started.append(left)
        assert wait_until((tmp_path / "serving").exists, timeout=30)
        listener, serving = (psutil.Process(int((tmp_path / name).read_text())) for name in ("listener", "serving"))
        started.append(serving)
        assert listener.pid == worker.pid
        # Adopted by the listener, a subreaper, rather than by PID 1: it stays in the worker's tree, and runs on.
        assert left.ppid() == listener.pid
        assert not wait_until(lambda: not alive(left), timeout=2)

        serving.kill()  # the model's worker ended (MMS unregistered the model, or it crashed)
        assert wait_until(lambda: not alive(left), timeout=30)
        assert worker.poll() is None  # the listener lives on
    finally:
        worker.kill()
        worker.wait()
