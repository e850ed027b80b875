"""Publishing models into an endpoint's S3 prefix, and listing what a prefix holds.

An endpoint serves whatever ``<prefix><TargetModel>`` archives exist: publishing a model is uploading one.
These functions are what ``openmme publish`` and ``openmme models`` call.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions

__all__ = [
    "ArtifactExists",
    "PublishedModel",
    "create_bucket",
    "list_models",
    "pack_directory",
    "publish_archive",
    "s3_client",
]


class ArtifactExists(FileExistsError):
    """The prefix already holds an artifact under that name (endpoints may be serving a cached copy)."""


@dataclass(frozen=True)
class PublishedModel:
    target_model: str
    size: int
    last_modified: datetime


def s3_client() -> Any:
    """An S3 client from the standard AWS settings (``AWS_ENDPOINT_URL_S3``, credentials, region)."""
    return boto3.session.Session().client("s3")


def _split(prefix: str) -> tuple[str, str]:
    if not prefix.startswith("s3://"):
        raise ValueError(f"not an S3 URI: {prefix!r} (expected s3://bucket/prefix/)")
    bucket, _, key = prefix[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in S3 URI: {prefix!r}")
    return bucket, key if not key or key.endswith("/") else key + "/"


def create_bucket(prefix: str, *, client: Any | None = None) -> None:
    """Create the bucket of ``prefix`` unless it exists (for local S3 servers; real buckets are provisioned)."""
    client = client or s3_client()
    bucket, _ = _split(prefix)
    try:
        client.head_bucket(Bucket=bucket)
    except botocore.exceptions.ClientError:
        client.create_bucket(Bucket=bucket)


def pack_directory(directory: Path) -> bytes:
    """A ``model.tar.gz`` of ``directory``'s contents at the archive root, as SageMaker training writes it."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(directory.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(directory)), recursive=False)
    return buffer.getvalue()


def publish_archive(
    archive: bytes, prefix: str, target_model: str, *, overwrite: bool = False, client: Any | None = None
) -> str:
    """Upload ``archive`` as ``<prefix><target_model>``; returns the TargetModel to invoke."""
    client = client or s3_client()
    bucket, key = _split(prefix)
    if not overwrite:
        try:
            client.head_object(Bucket=bucket, Key=key + target_model)
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in {"404", "NoSuchKey", "NotFound"}:
                raise
        else:
            raise ArtifactExists(
                f"{prefix}{target_model} exists; endpoints may be serving a cached copy, so publish a changed "
                "model under a new name (or pass overwrite)"
            )
    client.put_object(Bucket=bucket, Key=key + target_model, Body=archive)
    return target_model


def list_models(prefix: str, *, client: Any | None = None) -> Iterator[PublishedModel]:
    """Every archive under ``prefix``, named as TargetModel (relative to the prefix)."""
    client = client or s3_client()
    bucket, key = _split(prefix)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
        for item in page.get("Contents", []):
            relative = item["Key"][len(key) :]
            if relative and not relative.endswith("/"):
                yield PublishedModel(relative, int(item["Size"]), item["LastModified"])
