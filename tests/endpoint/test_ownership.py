"""What a front owns and what it leaves: the cache directory's lock, the port check, the stop of what an earlier
front left running, and the launcher that makes MMS workers die with their parent. Real processes, no MMS."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from openmme.endpoint.lock import CacheDirError, CacheDirInUse, CacheDirLock
from openmme.endpoint.mms import MmsProcess
from openmme.endpoint.settings import Settings
from openmme.ports import free_port, listen_error
from tests.support import alive, sleeper, wait_until

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="flock, /proc and PR_SET_PDEATHSIG")


# ---- the cache directory's lock ----------------------------------------------------------------------------


def test_a_held_cache_dir_is_refused_naming_the_directory_and_the_holder(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    with CacheDirLock(directory), pytest.raises(CacheDirInUse) as refused:
        CacheDirLock(directory).acquire()
    assert str(refused.value) == (
        f"the cache directory {directory} is in use by another openmme serve (PID {os.getpid()}); "
        "give each endpoint its own --cache-dir"
    )
    with CacheDirLock(directory):  # released: free again
        pass


def test_a_cache_dir_that_cannot_be_made_is_said_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(CacheDirError) as refused:
        CacheDirLock(tmp_path / "file" / "cache").acquire()
    assert str(refused.value) == f"cannot use the cache directory {tmp_path / 'file' / 'cache'}: Not a directory"


def test_the_lock_of_a_killed_holder_is_free_at_once(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from openmme.endpoint.lock import CacheDirLock; "
            "CacheDirLock(Path(sys.argv[1])).acquire(); print('held', flush=True); time.sleep(120)",
            str(directory),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        with pytest.raises(CacheDirInUse, match=f"PID {holder.pid}"):
            CacheDirLock(directory).acquire()
        holder.kill()
        holder.wait()
        with CacheDirLock(directory):
            pass
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()


# ---- the port check ------------------------------------------------------------------------------------------


def test_listen_error_names_a_taken_port_and_passes_a_free_one() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        failure = listen_error("127.0.0.1", taken.getsockname()[1])
    assert failure is not None and failure.errno == errno.EADDRINUSE
    assert listen_error("127.0.0.1", free_port()) is None


# ---- what an earlier front left running ----------------------------------------------------------------------


@pytest.fixture
def mms_process(tmp_path: Path) -> Iterator[MmsProcess]:
    process = MmsProcess(Settings(cache_dir=tmp_path / "cache"))
    process.home.mkdir(parents=True)
    yield process
    shutil.rmtree(process.tmp_dir, ignore_errors=True)


def leave_behind(process: MmsProcess, pid: int, create_time: float, tmp_dir: Path) -> None:
    """Write the record a front writes when it starts MMS."""
    record = {"pid": pid, "create_time": create_time, "tmp_dir": str(tmp_dir)}
    process.record_path.write_text(json.dumps(record))


def test_an_earlier_fronts_mms_and_workers_are_stopped_and_its_temp_dir_removed(
    mms_process: MmsProcess, sleepers: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    earlier_tmp = tmp_path / "openmme-mms-earlier"
    earlier_tmp.mkdir()
    (earlier_tmp / ".mms.sock.9000").write_text("")
    java = sleeper(sleepers, f"-Djava.io.tmpdir={earlier_tmp}", "com.amazonaws.ml.mms.ModelServer")
    worker = sleeper(sleepers, "--sock-name", f"{earlier_tmp}/.mms.sock.9000", "--model-name", "m-1")
    other_worker = sleeper(sleepers, "--sock-name", f"{mms_process.tmp_dir}/.mms.sock.9000", "--model-name", "m")
    leave_behind(mms_process, java.pid, psutil.Process(java.pid).create_time(), earlier_tmp)

    assert sorted(mms_process.reap_leftovers()) == sorted([java.pid, worker.pid])
    assert java.wait(timeout=10) is not None and worker.wait(timeout=10) is not None
    assert alive(other_worker.pid)  # another instance's worker
    assert not earlier_tmp.exists()
    assert not mms_process.record_path.exists()


@pytest.mark.parametrize("mismatch", ["another start time", "another command line"])
def test_a_recorded_pid_that_is_now_another_process_is_left_alone(
    mms_process: MmsProcess, sleepers: list[subprocess.Popen[bytes]], tmp_path: Path, mismatch: str
) -> None:
    earlier_tmp = tmp_path / "openmme-mms-earlier"
    marker = f"-Djava.io.tmpdir={earlier_tmp}" if mismatch == "another start time" else "unrelated"
    unrelated = sleeper(sleepers, marker)
    created = psutil.Process(unrelated.pid).create_time()
    leave_behind(mms_process, unrelated.pid, created - 60 if mismatch == "another start time" else created, earlier_tmp)

    assert mms_process.reap_leftovers() == []
    assert alive(unrelated.pid)


# ---- workers die with their parent ---------------------------------------------------------------------------

# Stands for MMS's model_service_worker.py: a listener that forks a serving process (as MMS does, through
# multiprocessing), which forks a process of its own (as a model's code might).
WORKER_SCRIPT = """
import multiprocessing, os, sys, time
from pathlib import Path

out = Path(sys.argv[sys.argv.index("--out") + 1])


def serve():
    child = os.fork()
    if child == 0:
        time.sleep(120)
        os._exit(0)
    (out / "serving").write_text(f"{os.getpid()} {child}")
    time.sleep(120)


if __name__ == "__main__":
    (out / "listener").write_text(str(os.getpid()))
    multiprocessing.get_context("fork").Process(target=serve).start()
    time.sleep(120)
"""

# Stands for MMS's Java front: starts a worker through the launcher, the way the front configures MMS to.
JAVA_FRONT = """
import subprocess, sys, time
script, tmp_dir, out = sys.argv[2:5]
subprocess.Popen([sys.executable, "-P", "-m", "openmme.handlers._lifetime", script, "--tmp-dir", tmp_dir, "--out", out])
time.sleep(120)
"""


def test_a_worker_dies_with_its_java_front_and_a_serving_process_with_its_listener(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    script = tmp_path / "model_service_worker.py"
    script.write_text(WORKER_SCRIPT)
    tmp_dir = tmp_path / "mms-tmp"
    java = subprocess.Popen(
        [sys.executable, "-c", JAVA_FRONT, f"-Djava.io.tmpdir={tmp_dir}", str(script), str(tmp_dir), str(tmp_path)]
    )
    sleepers.append(java)
    assert wait_until(lambda: (tmp_path / "serving").exists() and (tmp_path / "listener").exists(), timeout=30)
    listener = int((tmp_path / "listener").read_text())
    serving, models_own = (int(pid) for pid in (tmp_path / "serving").read_text().split())
    try:
        assert psutil.Process(listener).ppid() == java.pid
        assert psutil.Process(serving).ppid() == listener

        java.kill()
        assert wait_until(lambda: not alive(listener) and not alive(serving), timeout=5)
        # A process the model's own code forked is not tied to the worker's life: left as it was.
        assert alive(models_own)
    finally:
        for pid in (listener, serving, models_own):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_worker_whose_java_front_is_already_gone_ends_at_once(tmp_path: Path) -> None:
    script = tmp_path / "model_service_worker.py"
    script.write_text(WORKER_SCRIPT)
    started = time.monotonic()
    # Its parent (this test) is not the Java front named by --tmp-dir: as if that front died before the worker
    # asked to die with it.
    launcher = [sys.executable, "-P", "-m", "openmme.handlers._lifetime", str(script)]
    finished = subprocess.run([*launcher, "--tmp-dir", str(tmp_path / "gone"), "--out", str(tmp_path)], timeout=30)
    assert finished.returncode == 1
    assert time.monotonic() - started < 10
    assert not (tmp_path / "listener").exists()  # MMS's worker script never ran
