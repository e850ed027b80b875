"""One ``openmme serve`` per cache directory: an exclusive lock on a file inside it, held while the front runs.

A front empties its cache directory's model store at start and writes MMS's files there: a second front on the
same directory (the default, ``/tmp/openmme``, is shared) would delete the running one's models. The lock is
taken before anything in the directory is touched; the kernel drops it when the process ends, however it ends
(SIGKILL included), so a dead front's lock never stands in a new one's way. The file also holds the owner's
PID, for the message that turns a second front away.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType

__all__ = ["LOCK_FILE_NAME", "CacheDirError", "CacheDirInUse", "CacheDirLock"]

LOCK_FILE_NAME = ".openmme.lock"


class CacheDirError(Exception):
    """The cache directory cannot be this process's: the message says why, in one line."""


class CacheDirInUse(CacheDirError):
    """Another running process holds the cache directory."""


class CacheDirLock:
    """The exclusive, process-lifetime ownership of one cache directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / LOCK_FILE_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the directory (creating it if needed), or raise CacheDirInUse naming the PID that holds it."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            # Not truncated on open: the holder's PID stays readable. Not inherited by child processes (MMS),
            # which would otherwise keep holding the lock after the front died.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise CacheDirError(f"cannot use the cache directory {self.directory}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise CacheDirInUse(
                f"the cache directory {self.directory} is in use by another openmme serve "
                f"(PID {holder or 'unknown'}); give each endpoint its own --cache-dir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        # The file stays: removing it would let two processes lock two different files of the same name.
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> CacheDirLock:
        self.acquire()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.release()


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""
