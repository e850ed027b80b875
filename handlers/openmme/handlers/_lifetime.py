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

Linux only; elsewhere the workers run as before, and the front's stop (and its next start) still stops them.
"""

from __future__ import annotations

import ctypes
import functools
import os
import runpy
import signal
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["die_with_parent", "main", "parent_death_setter"]

_PR_SET_PDEATHSIG = 1

# Set in the listener; the serving process forked from it inherits True, sets its own signal and clears it, so
# that processes a model's own code forks later are left as they are.
_arm_next_fork = False


@functools.cache
def parent_death_setter() -> Callable[[], bool] | None:
    """A function that asks the kernel to SIGKILL the calling process when its parent thread exits (True when
    set), or None where the kernel has no such request. Resolved ahead, so that the returned function does no
    lookup: it is also called between ``fork`` and ``exec``."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    sigkill = int(signal.SIGKILL)

    def set_parent_death_signal() -> bool:
        return bool(prctl(_PR_SET_PDEATHSIG, sigkill, 0, 0, 0) == 0)

    return set_parent_death_signal


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


def main() -> None:
    """``python -m openmme.handlers._lifetime <mms>/model_service_worker.py <its arguments>``."""
    global _arm_next_fork
    worker_script, *arguments = sys.argv[1:]
    tmp_dir = _argument(arguments, "--tmp-dir")
    if tmp_dir:
        die_with_parent(_is_java_front(tmp_dir))
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
