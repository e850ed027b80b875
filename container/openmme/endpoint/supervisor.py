"""``openmme serve``'s supervisor: a small parent that outlives the front, so that nothing the front's tree started
outlives either.

A model's code may start processes of its own (a helper server, a pool) that leave the model's worker: a double
fork, ``setsid``, SIGTERM ignored, no parent-death signal. Process groups, parent-death signals and a walk of the
front's tree all miss such a process once its parent has died: it is reparented, by default to PID 1. Cgroups would
hold it, but a writable per-process cgroup needs privileges (or cgroup v2 delegation) that neither these machines
nor an unprivileged container give; so would a PID namespace, which needs ``CLONE_NEWPID``. What works without
privileges is a *child subreaper* (``PR_SET_CHILD_SUBREAPER``): an orphan goes to the nearest subreaper among its
ancestors instead of PID 1.

So ``openmme serve`` forks before anything else: the parent is this supervisor, a subreaper that does nothing but
wait; the child is the front (asked to die with it: ``PR_SET_PDEATHSIG``). An isolated model's MMS worker is a
subreaper too (``openmme.handlers._lifetime``), which holds the processes its model starts while the model is
loaded. Whatever reaches the supervisor while the front lives was orphaned by a worker (or another of the front's
children) that died: it is killed (SIGKILL), within ``CHECK_INTERVAL_S``. When the front ends, however it ends
(SIGKILL, the OOM killer), every process left in its tree is killed, and the supervisor exits as the front did:
its exit code, or the same signal. SIGTERM, SIGINT, SIGHUP and SIGQUIT sent to the supervisor go to the front.

The front runs in a process group of its own, so that Ctrl-C at a terminal reaches it once (forwarded), not twice.
As a container's PID 1, the supervisor is also the init that reaps every orphan of the container. Not covered: a
SIGKILL of the supervisor itself. The front then dies (its parent-death signal), and with it MMS and every worker
(theirs); a process that left a worker's tree and cleared its own parent-death signal survives.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable

from openmme.handlers._lifetime import become_subreaper, die_with_parent, kill_adopted

__all__ = ["CHECK_INTERVAL_S", "run_supervised"]

# How often the supervisor looks for processes it adopted: being reparented sends the new parent no signal.
CHECK_INTERVAL_S = 0.5

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


def run_supervised(front: Callable[[], int]) -> int:
    """Run ``front`` in a child process under a supervisor; returns its exit code in the front (the child) and the
    front's exit code in the supervisor (which kills itself with the front's signal if a signal ended it). Where
    a subreaper is not available (not Linux), ``front`` runs in this process, as before."""
    if not become_subreaper():
        return front()
    supervisor = os.getpid()
    # Blocked before the fork, so that no SIGCHLD of a quick front is lost, and a SIGTERM that comes before the
    # supervisor forwards it waits until it does; the front unblocks them.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD, *FORWARDED})
    pid = os.fork()
    if pid == 0:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD, *FORWARDED})
        die_with_parent(lambda parent: parent == supervisor)
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)
        return front()
    return _supervise(pid)


def _supervise(front: int) -> int:
    for signum in FORWARDED:
        signal.signal(signum, lambda signum, frame: _forward(front, signum))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
    status = None
    while status is None:
        signal.sigtimedwait({signal.SIGCHLD}, CHECK_INTERVAL_S)
        status = _reap_all(front)
        # Anything else here was orphaned by a process of the front's tree that died: nothing of a dead worker's
        # runs on. (Killed one generation at a time: each round's kills reparent their children here.)
        kill_adopted(lambda pid: pid == front, timeout=1.0)
    for signum in FORWARDED:
        signal.signal(signum, signal.SIG_IGN)  # the front is gone: nothing to forward, nothing to stop the clean-up
    kill_adopted(lambda pid: False)
    if os.WIFSIGNALED(status):
        killed_by = os.WTERMSIG(status)
        sys.stdout.flush()
        sys.stderr.flush()
        with contextlib.suppress(OSError, ValueError):  # SIGKILL has no disposition to reset
            signal.signal(killed_by, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {killed_by})
        os.kill(os.getpid(), killed_by)  # ends here, unless this is a container's PID 1, which its own signal spares
        return 128 + killed_by  # a shell's code for it
    return os.waitstatus_to_exitcode(status)


def _forward(front: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(front, signum)


def _reap_all(front: int) -> int | None:
    """Reap every child that ended (this process runs no code of anyone else's, so ``waitpid(-1)`` takes no exit
    status from anyone); returns the front's wait status once it ended."""
    status = None
    while True:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return status
        if pid == 0:
            return status
        if pid == front:
            status = wait_status
