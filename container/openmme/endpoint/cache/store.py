"""The model store on disk: archives fetched from the model source into it, safely extracted, and removed again.

Blocking work (the S3 download, tar, rmtree) runs in threads here; the cache decides *when* (budgets, single
flight). A model lands in the store with one rename of a fully extracted staging directory, so a failed or
refused archive leaves nothing behind. A disk that fills up on the way (the download, the extraction, the rename)
is the endpoint's storage error (InsufficientStorage, 507), never the archive's: nothing half-written stays, and
the next request tries again.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Protocol

from openmme.endpoint.cache.entry import Entry
from openmme.endpoint.errors import InsufficientStorage, ModelError, ValidationError
from openmme.endpoint.extract import ArchiveRefused, ExtractLimits, disk_full, extract_archive
from openmme.endpoint.names import S3Location
from openmme.endpoint.settings import Settings

__all__ = ["ModelStore", "Source", "disk_full_message"]


class Source(Protocol):
    """Where archives come from (``s3.ModelSource``; a directory in tests). Blocking."""

    @property
    def prefix(self) -> S3Location: ...

    def size(self, target: str) -> int: ...

    def download(self, target: str, destination: Path, max_bytes: int) -> int: ...


class ModelStore:
    """The extracted models under ``settings.models_dir``, fetched from ``source`` (None: SageMaker hands them over)."""

    def __init__(self, settings: Settings, source: Source | None) -> None:
        self.settings = settings
        self.source = source
        self._limits = ExtractLimits(
            settings.max_archive_bytes, settings.max_archive_members, settings.max_archive_ratio
        )

    def new_entry(self, target: str, name: str) -> Entry:
        assert self.source is not None
        return Entry(target, name, self.settings.models_dir / name, url=str(self.source.prefix.child(target)))

    async def size(self, target: str) -> int:
        assert self.source is not None
        return await asyncio.to_thread(self.source.size, target)

    async def fetch(self, entry: Entry) -> int:
        """Download and extract ``entry``'s archive into its place in the store; the bytes it takes there."""
        staging = self.settings.staging_dir / f"{entry.name}-{uuid.uuid4().hex[:8]}"
        try:
            return await asyncio.to_thread(self._download_and_extract, entry, staging)
        except OSError as exc:
            if not disk_full(exc):
                raise
            raise InsufficientStorage(disk_full_message(entry.target, os.strerror(exc.errno or 0))) from exc

    async def free_bytes(self) -> int:
        """Free bytes of the cache filesystem (``--cache-dir``'s, where downloads, extractions and models live)."""
        return await asyncio.to_thread(_free_bytes, self.settings.cache_dir)

    async def present(self, entry: Entry) -> bool:
        return await asyncio.to_thread(entry.path.is_dir)

    async def remove(self, entry: Entry) -> None:
        if entry.managed:
            await asyncio.to_thread(shutil.rmtree, entry.path, True)

    async def link(self, name: str, directory: Path) -> Path:
        """MMS loads only directories directly under its model store: link SageMaker's ``directory`` in."""
        link = self.settings.models_dir / name
        await asyncio.to_thread(_link_directory, link, directory)
        return link

    def _download_and_extract(self, entry: Entry, staging: Path) -> int:
        """Blocking: archive → staging dir → one rename into the model store. Leaves nothing on failure."""
        assert self.source is not None
        archive = staging.with_suffix(".tar.gz")
        staging.parent.mkdir(parents=True, exist_ok=True)
        try:
            started = time.perf_counter()
            self.source.download(entry.target, archive, self.settings.max_archive_bytes)
            entry.timings["download"] = time.perf_counter() - started
            started = time.perf_counter()
            try:
                size = extract_archive(archive, staging, self._limits)
            except ArchiveRefused as exc:
                raise ModelError(f"model {entry.target!r} refused: {exc}", original_status=400) from exc
            entry.timings["extract"] = time.perf_counter() - started
            if entry.path.exists():
                shutil.rmtree(entry.path)
            entry.path.parent.mkdir(parents=True, exist_ok=True)  # the whole store may have been deleted
            staging.rename(entry.path)
            return size
        finally:
            archive.unlink(missing_ok=True)
            shutil.rmtree(staging, ignore_errors=True)


def disk_full_message(target: str, why: str) -> str:
    """The one line a caller gets when the cache disk cannot hold ``target``: whose problem it is, and to retry."""
    return (
        f"no room on the endpoint's cache disk for model {target!r} ({why}): retry later; the endpoint's operator"
        " must free space on its --cache-dir"
    )


def _free_bytes(directory: Path) -> int:
    """Blocking: the free bytes of ``directory``'s filesystem; of its nearest existing parent's while it is not made
    yet (the download makes it)."""
    while not directory.exists() and directory.parent != directory:
        directory = directory.parent
    return shutil.disk_usage(directory).free


def _link_directory(link: Path, directory: Path) -> None:
    if not directory.is_dir():
        raise ValidationError(f"model directory {directory} does not exist")
    link.unlink(missing_ok=True)
    link.symlink_to(directory.resolve(), target_is_directory=True)
