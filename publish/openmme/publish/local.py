"""Publishing local models: a ``model.tar.gz``, a model directory, or a bare model file.

``publish_path`` packages what it is given in the layout the handlers load (the directory's contents, or the
file, at the archive root, as SageMaker training writes ``model.tar.gz``), checks it by loading it with the
handler openmme will use (``openmme.publish.check``), refuses to replace an existing artifact, and uploads it.
``publish_archive`` uploads archive bytes as they are, unchecked (the tests use it for hostile archives).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from openmme.endpoint.names import S3Location
from openmme.handlers import HOSTINGS, SETTINGS_FILE_NAME
from openmme.publish._errors import ModelCheckFailed
from openmme.publish._s3 import (
    UPLOAD_MULTIPART_CHUNKSIZE,
    UPLOAD_MULTIPART_THRESHOLD,
    check_target_model,
    parse_prefix,
    refuse_existing,
    require_bucket,
    s3_client,
    upload,
)
from openmme.publish.check import CheckReport, check_archive
from openmme.publish.progress import Progress

__all__ = [
    "Publication",
    "pack_directory",
    "package",
    "publish_archive",
    "publish_path",
    "write_archive",
]

_ARCHIVE_NAMES = (".tar.gz", ".tgz", ".tar")
# Bytecode of the publisher's Python is useless (or stale) in the serving image.
_SKIPPED_NAMES = {"__pycache__", ".ipynb_checkpoints"}
_SKIPPED_SUFFIXES = (".pyc", ".pyo")


@dataclass(frozen=True)
class Publication:
    """A model now in the prefix."""

    target_model: str
    """The TargetModel to invoke it with."""
    uri: str
    """Where it is: ``s3://bucket/prefix/<target_model>``."""
    size: int
    """The archive's size in bytes."""
    source: str
    """What was published: a local path, or a training job's artifact URI."""
    check: CheckReport | None = None
    """What the pre-publish check found (None when it was skipped, and for training-job artifacts)."""


def _tar_filter(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    parts = Path(info.name).parts
    if any(part in _SKIPPED_NAMES for part in parts) or info.name.endswith(_SKIPPED_SUFFIXES):
        return None
    # The publisher's user and group names mean nothing where the model is served.
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def _is_settings(name: str) -> bool:
    return name.removeprefix("./") == SETTINGS_FILE_NAME


def _write_tar(source: Path, fileobj: IO[bytes], settings: bytes | None = None) -> None:
    # gzip's header gets no timestamp or file name, so packing the same files twice gives the same bytes.
    # dereference: a symlink in a model directory (to a booster elsewhere on disk) is packed as the file it
    # points to, since the endpoint refuses links that leave the archive.
    with (
        gzip.GzipFile(filename="", fileobj=fileobj, mode="wb", mtime=0) as compressed,
        tarfile.open(fileobj=compressed, mode="w", dereference=True) as tar,
    ):
        if source.is_dir():
            for child in sorted(source.iterdir()):
                if settings is None or not _is_settings(child.name):
                    tar.add(child, arcname=child.name, filter=_tar_filter)
        else:
            tar.add(source, arcname=source.name, filter=_tar_filter)
        if settings is not None:
            _add_bytes(tar, SETTINGS_FILE_NAME, settings)


def _rewrite_archive(archive: Path, destination: Path, settings: bytes) -> Path:
    """A copy of ``archive`` whose ``openmme.json`` is ``settings``; members are copied, never extracted."""
    try:
        with (
            tarfile.open(archive, mode="r:*") as source,
            destination.open("wb") as out,
            gzip.GzipFile(filename="", fileobj=out, mode="wb", mtime=0) as compressed,
            tarfile.open(fileobj=compressed, mode="w") as tar,
        ):
            for member in source:
                if not _is_settings(member.name):
                    tar.addfile(member, source.extractfile(member) if member.isfile() else None)
            _add_bytes(tar, SETTINGS_FILE_NAME, settings)
    except (OSError, tarfile.TarError) as exc:
        raise ModelCheckFailed(f"cannot rewrite {archive} with {SETTINGS_FILE_NAME}: {exc}") from exc
    return destination


def write_archive(source: Path, destination: Path) -> Path:
    """Pack ``source`` into ``destination`` (a ``model.tar.gz``): a directory's contents, or a file, at the root."""
    with destination.open("wb") as out:
        _write_tar(source, out)
    return destination


def pack_directory(directory: Path) -> bytes:
    """A ``model.tar.gz`` of ``directory``'s contents at the archive root, as SageMaker training writes it."""
    buffer = io.BytesIO()
    _write_tar(directory, buffer)
    return buffer.getvalue()


def _is_archive(path: Path) -> bool:
    if path.name.endswith(_ARCHIVE_NAMES):
        return True
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def package(local: Path, workdir: Path, hosting: str | None = None) -> Path:
    """The ``model.tar.gz`` to publish for ``local``: the archive itself, or one packed into ``workdir``.

    ``local`` is a tar(.gz) archive (used as it is), a directory (its contents go to the archive root: a booster,
    or ``code/inference.py`` with the files its ``model_fn`` reads) or a bare model file such as an XGBoost booster
    saved as JSON/UBJSON (packed alone at the root, under its own name). ``hosting`` (``dense`` or ``isolated``)
    goes into the archive's ``openmme.json``, replacing one it had.
    """
    if not local.exists():
        raise ModelCheckFailed(f"{local} does not exist")
    if hosting is not None and hosting not in HOSTINGS:
        raise ModelCheckFailed(f"hosting must be one of {', '.join(HOSTINGS)}, not {hosting!r}")
    settings = None if hosting is None else json.dumps({"hosting": hosting}).encode()
    if local.is_file() and _is_archive(local):
        return local if settings is None else _rewrite_archive(local, workdir / "model.tar.gz", settings)
    if local.is_dir() and not any(local.iterdir()):
        raise ModelCheckFailed(f"{local} is an empty directory")
    try:
        with (workdir / "model.tar.gz").open("wb") as out:
            _write_tar(local, out, settings)
        return workdir / "model.tar.gz"
    except OSError as exc:
        raise ModelCheckFailed(f"cannot package {local}: {exc}") from exc


def _destination(client: Any | None, prefix: str, target_model: str, overwrite: bool) -> tuple[Any, S3Location, str]:
    """The client, prefix and TargetModel of a publication, once the prefix's bucket exists and (unless
    ``overwrite``) the name is free; raises the publish errors otherwise."""
    client = client or s3_client()
    location = parse_prefix(prefix)
    target = check_target_model(target_model)
    require_bucket(client, location)
    if not overwrite:
        refuse_existing(client, location, target)
    return client, location, target


def publish_archive(
    archive: bytes,
    prefix: str,
    target_model: str,
    *,
    overwrite: bool = False,
    client: Any | None = None,
    multipart_threshold: int = UPLOAD_MULTIPART_THRESHOLD,
    multipart_chunksize: int = UPLOAD_MULTIPART_CHUNKSIZE,
    progress: Progress | None = None,
) -> str:
    """Upload ``archive`` as ``<prefix><target_model>``, unchecked; returns the TargetModel to invoke.

    Raises InvalidPrefix, InvalidTargetModel, BucketNotFound, ArtifactExists (unless ``overwrite``), StoreError.
    """
    client, location, target = _destination(client, prefix, target_model, overwrite)
    upload(
        client,
        io.BytesIO(archive),
        len(archive),
        location.child(target),
        multipart_threshold=multipart_threshold,
        multipart_chunksize=multipart_chunksize,
        progress=progress,
    )
    return target


def publish_path(
    local: Path,
    prefix: str,
    target_model: str,
    *,
    overwrite: bool = False,
    check: bool = True,
    sample: bytes | None = None,
    sample_content_type: str = "text/csv",
    hosting: str | None = None,
    client: Any | None = None,
    multipart_threshold: int = UPLOAD_MULTIPART_THRESHOLD,
    multipart_chunksize: int = UPLOAD_MULTIPART_CHUNKSIZE,
    progress: Progress | None = None,
) -> Publication:
    """Package ``local`` (see ``package``), check it, and upload it as ``<prefix><target_model>``.

    The check loads the model with the handler the endpoint will use and, given ``sample`` (request rows of
    ``sample_content_type``), predicts on it; ``check=False`` skips it (for a script whose libraries this
    machine lacks). ``hosting`` is written into the archive's ``openmme.json`` (see ``package``). Raises
    InvalidPrefix, InvalidTargetModel, BucketNotFound, ArtifactExists (unless ``overwrite``), ModelCheckFailed,
    StoreError; nothing is written unless everything passed.
    """
    # Refusals that need no packaging come first, so a taken name is reported at once.
    client, location, target = _destination(client, prefix, target_model, overwrite)
    with tempfile.TemporaryDirectory(prefix="openmme-publish-") as scratch:
        archive = package(Path(local), Path(scratch), hosting)
        report = check_archive(archive, sample=sample, content_type=sample_content_type) if check else None
        if not overwrite:
            # Again right before writing: the name may have been taken while packaging and checking.
            refuse_existing(client, location, target)
        size = archive.stat().st_size
        with archive.open("rb") as source:
            upload(
                client,
                source,
                size,
                location.child(target),
                multipart_threshold=multipart_threshold,
                multipart_chunksize=multipart_chunksize,
                progress=progress,
            )
    return Publication(target, str(location.child(target)), size, os.fspath(local), report)
