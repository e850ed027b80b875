"""The queue of accepted async requests on the endpoint's local disk: one small JSON record per request in
``<cache-dir>/async/pending/``, written whole before the call is answered and deleted once its result or failure
is in S3. What is in ``pending/`` at start is what a stopped or killed endpoint still owed.

Why here: the cache directory is owned by exactly one ``openmme serve`` (lock.py), so no second process can take
or delete a record, and a record needs no lease or claim; a restart on the same directory finds them all. (A queue
in S3 would outlive the machine, but replicas sharing it would need leases that S3 cannot give every store
cheaply.) A record is written to ``tmp/``, flushed to the disk and renamed into ``pending/``, so a crash leaves a
whole record or none. Blocking: the runner calls these in threads.

Records are named ``<microseconds since the epoch>-<id>.json``: listing them in name order is acceptance order.
A record that cannot be read is moved to ``corrupt/`` and logged, never run and never silently deleted.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from openmme.endpoint.asyncinvoke.request import AsyncRequest

__all__ = ["Journal"]

log = logging.getLogger(__name__)


class Journal:
    """The accepted, unfinished async requests, as files under ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.pending = directory / "pending"
        self.tmp = directory / "tmp"
        self.corrupt = directory / "corrupt"
        self._own = f"{os.getpid()}-"  # this process's partial records in tmp/

    def open(self) -> list[AsyncRequest]:
        """The requests still owed, oldest first; partial writes of a crashed run are cleared."""
        self._folders()
        for partial in self.tmp.iterdir():
            if not partial.name.startswith(self._own):  # another run's: it never made it to pending/
                partial.unlink(missing_ok=True)
        requests = []
        for path in sorted(self.pending.glob("*.json")):
            try:
                request, _ = AsyncRequest.from_json(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                self.corrupt.mkdir(exist_ok=True)
                path.replace(self.corrupt / path.name)
                log.error("async request record %s cannot be read (%s): moved to %s", path.name, exc, self.corrupt)
                continue
            requests.append(request)
        return requests

    def add(self, request: AsyncRequest, body: bytes | None) -> None:
        """Record ``request`` (and its inline body) durably: on the disk before this returns."""
        name = _name(request)
        self._folders()
        partial = self.tmp / f"{self._own}{name}"
        try:
            # Readable by this user only: a record holds the request's CustomAttributes and any inline body.
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(request.to_json(body))
                out.flush()
                os.fsync(out.fileno())
            partial.replace(self.pending / name)
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
        _sync_directory(self.pending)

    def body(self, request: AsyncRequest) -> bytes:
        """The inline body recorded with ``request``."""
        _, body = AsyncRequest.from_json((self.pending / _name(request)).read_text(encoding="utf-8"))
        if body is None:
            raise ValueError(f"async request {request.id} has no inline body")
        return body

    def remove(self, request: AsyncRequest) -> None:
        """Forget ``request``: its outcome is in S3."""
        (self.pending / _name(request)).unlink(missing_ok=True)
        _sync_directory(self.pending)

    def count(self) -> int:
        return sum(1 for _ in self.pending.glob("*.json"))

    def _folders(self) -> None:
        for folder in (self.pending, self.tmp):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)


def _name(request: AsyncRequest) -> str:
    return f"{round(request.accepted * 1_000_000):020d}-{request.id}.json"


def _sync_directory(directory: Path) -> None:
    """Flush a directory's entries (a rename or an unlink in it) to the disk."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
