"""MMS workers that die with their MMS: the launcher MMS starts its Python workers through.

An MMS 1.1 model worker is two processes: a *listener* that MMS's Java front starts
(``python mms/model_service_worker.py --sock-name … --model-name …``) and that waits on a unix socket, and the
*serving* process it forks for the Java front's connection, which loads the model and answers. Neither notices
on its own when the Java front dies (the listener blocks in ``accept``; the serving process only sees its
socket close when it next reads), so a Java front killed with SIGKILL used to leave every worker running.

The front points MMS's ``--python`` at a small script that runs this module with that interpreter; ``main``
then asks the kernel to SIGKILL the listener when its parent, the Java front, dies (``PR_SET_PDEATHSIG``), and
does the same for the serving process when its parent, the listener, dies; then it runs MMS's own worker
script unchanged, as ``__main__``. The signal is tied to the parent *thread*: the Java front starts a worker
from the thread that then runs it for the worker's whole life (MMS's ``WorkerThread``), and the listener forks
from its only thread.

The listener is also a *child subreaper* (``PR_SET_CHILD_SUBREAPER``): a process the model's code starts and
that outlives its parent (a helper server that double-forks, calls ``setsid`` and ignores SIGTERM) is adopted by
the listener instead of by PID 1, so it stays in the worker's tree while the model is loaded. The listener runs no
model code, so it may reap what it adopts without taking an exit status from the model's own ``subprocess``
calls (their processes are the serving process's children, not the listener's); once its serving process has
ended, it kills what it adopted (``_tend_adopted``). When the listener itself dies, what it held goes up to the
next subreaper: ``openmme serve``'s supervisor (``openmme.endpoint.supervisor``), which kills it.

Linux only; elsewhere the workers run as before, and the front's stop (and its next start) still stops them.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import multiprocessing
import os
import runpy
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["become_subreaper", "children_of", "die_with_parent", "kill_adopted", "main", "parent_death_setter"]

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36

# How often the listener looks for what it adopted: reparenting sends the new parent no signal.
ADOPTED_CHECK_INTERVAL_S = 0.5

# Set in the listener; the serving process forked from it inherits True, sets its own signal and clears it, so
# that processes a model's own code forks later are left as they are.
_arm_next_fork = False


@functools.cache
def parent_death_setter() -> Callable[[], bool] | None:
    """A function that asks the kernel to SIGKILL the calling process when its parent thread exits (True when
    set), or None where the kernel has no such request. Resolved ahead, so that the returned function does no
    lookup: it is also called between ``fork`` and ``exec``."""
    prctl = _prctl()
    if prctl is None:
        return None
    sigkill = int(signal.SIGKILL)

    def set_parent_death_signal() -> bool:
        return bool(prctl(_PR_SET_PDEATHSIG, sigkill, 0, 0, 0) == 0)

    return set_parent_death_signal


@functools.cache
def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


def become_subreaper() -> bool:
    """Make this process a child subreaper: an orphan among its descendants is reparented to it rather than to
    PID 1 (or an outer subreaper). No privilege needed, Linux 3.4 or newer; False where it is not available."""
    prctl = _prctl()
    return prctl is not None and prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def children_of(pid: int) -> list[int]:
    """The PIDs of ``pid``'s children now (empty when it has none, or is gone): ``/proc/PID/task/*/children``,
    else a scan of every process's parent."""
    tasks = Path(f"/proc/{pid}/task")
    try:
        files = [task / "children" for task in tasks.iterdir()]
    except OSError:
        return []
    try:
        return [int(child) for file in files for child in file.read_text().split()]
    except FileNotFoundError:  # a thread ended meanwhile, or a kernel without CONFIG_PROC_CHILDREN
        pass
    except OSError:
        return []
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # The field after the command name, which may hold spaces and parentheses: after the last ")".
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == pid:
                children.append(int(entry.name))
    return children


def kill_adopted(keep: Callable[[int], bool], timeout: float = 10.0) -> None:
    """SIGKILL every child of this process but those ``keep`` names, and what they leave behind, and reap them. For
    a subreaper: a descendant whose parent is killed is reparented here and killed in the next round, so nothing
    escapes by forking (``setsid`` and ignored signals do not help against SIGKILL). Gives up after ``timeout``
    (a process stuck in the kernel cannot be reaped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doomed = [pid for pid in children_of(os.getpid()) if not keep(pid)]
        if not doomed:
            return
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # Not a blocking wait: a process stuck in the kernel must not hold this loop past its deadline.
        reaped = [pid for pid in doomed if _reap(pid)]
        if len(reaped) < len(doomed):
            time.sleep(0.01)


def _reap(pid: int) -> bool:
    """Reap ``pid`` if it has ended (a child of this process's, never any other: see ``_tend_adopted``)."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:
        return True


def die_with_parent(is_parent: Callable[[int], bool]) -> None:
    """SIGKILL this process when its parent dies. The parent may have died just before the request was made (the
    kernel would then never send it): ``is_parent(os.getppid())`` checks, and this process ends at once if not."""
    setter = parent_death_setter()
    if setter is None or not setter():
        return
    if not is_parent(os.getppid()):
        os._exit(1)


def _is_java_front(tmp_dir: str) -> Callable[[int], bool]:
    """Whether a PID is the MMS Java front that started this worker: MMS passes its ``java.io.tmpdir`` to every
    worker as ``--tmp-dir``, and the front gives each MMS instance a private one."""
    marker = f"-Djava.io.tmpdir={tmp_dir}".encode()

    def is_front(pid: int) -> bool:
        try:
            return marker in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False

    return is_front


def _after_fork_in_child(listener: int) -> None:
    global _arm_next_fork
    if _arm_next_fork:
        _arm_next_fork = False
        die_with_parent(lambda pid: pid == listener)


def _argument(argv: list[str], flag: str) -> str:
    try:
        return argv[argv.index(flag) + 1]
    except (ValueError, IndexError):
        return ""


def _tend_adopted() -> None:
    """The listener's thread for what it adopts as a subreaper: reaped when it ends, killed once the serving
    process is gone (the model's worker has ended; nothing of the model's may run on).

    The listener's own children are its serving processes (``multiprocessing``'s, which it reaps itself) and
    the orphans it adopted. Only PIDs that are not serving processes are waited for, one by one, never
    ``waitpid(-1)``: that would take a serving process's exit status from ``multiprocessing``. A serving process
    is listed by ``multiprocessing`` just after its fork: a child is taken for an orphan only when two rounds
    in a row found it unlisted."""
    me = os.getpid()
    served = False
    unlisted: set[int] = set()
    while True:
        time.sleep(ADOPTED_CHECK_INTERVAL_S)
        children = children_of(me)
        serving = _serving()
        served = served or bool(serving)
        orphans = {pid for pid in children if pid not in serving} & unlisted
        unlisted = {pid for pid in children if pid not in serving}
        if served and not serving and orphans:
            kill_adopted(lambda pid: pid in _serving())
        for pid in orphans:
            _reap(pid)


def _serving() -> set[int]:
    """The listener's serving processes that are running (``multiprocessing`` reaps the ended ones here)."""
    return {process.pid for process in multiprocessing.active_children() if process.pid is not None}


def main() -> None:
    """``python -m openmme.handlers._lifetime <mms>/model_service_worker.py <its arguments>``."""
    global _arm_next_fork
    worker_script, *arguments = sys.argv[1:]
    tmp_dir = _argument(arguments, "--tmp-dir")
    if tmp_dir:
        die_with_parent(_is_java_front(tmp_dir))
    if become_subreaper():
        threading.Thread(target=_tend_adopted, name="adopted processes", daemon=True).start()
    listener = os.getpid()
    _arm_next_fork = True
    os.register_at_fork(after_in_child=lambda: _after_fork_in_child(listener))
    # As if MMS had started the script itself: its own directory first on sys.path (which it removes), its argv.
    # (Started with -P, nothing was put before the rest of sys.path in its place.)
    sys.argv = [worker_script, *arguments]
    sys.path.insert(0, str(Path(worker_script).resolve().parent))
    runpy.run_path(worker_script, run_name="__main__")


if __name__ == "__main__":
    main()
