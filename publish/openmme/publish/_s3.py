"""S3 plumbing shared by publishing, listing and removing models.

Names are checked with the endpoint's own rules (``openmme.endpoint.s3``), so ``publish`` accepts exactly the
prefixes and TargetModel names ``openmme serve`` does. S3 errors are translated into ``PublishError``s in one
place, ``translate``. Writes go through boto3's managed transfers (``upload_fileobj`` and ``copy``), which split
large objects into parts and abort the multipart upload when a transfer fails or is interrupted, so a failed
publish leaves neither an object nor an unfinished upload behind.

Multipart thresholds (the defaults of every publishing function; tests lower them):

- **Uploads: one PUT up to 64 MiB, then 16 MiB parts.** Models for multi-model endpoints are small (an
  XGBoost booster per city is KBs to a few MBs), and one PUT is one request and atomic: nothing is left in the
  bucket if the publisher dies half-way, whereas a killed multipart upload lingers (and is billed) until a
  lifecycle rule aborts it. One S3 connection carries roughly 85-90 MB/s (AWS's performance guidelines), so a
  64 MiB PUT takes under a second and parallel parts could save little below that; above it, 16 MiB parts (in
  the 8-16 MB range AWS recommends) are sent ten at a time and a failed part is retried alone. boto3 raises the
  part size by itself when an object would need more than 10,000 parts.
- **Copies: one CopyObject up to 256 MiB, then 64 MiB parts.** A copy moves no bytes through the publisher,
  so request count is what matters for small artifacts; CopyObject's own limit is 5 GiB, but one large copy is
  one slow server-side request, while UploadPartCopy runs ten parts at once. A 5 GiB artifact copies as 80
  parts.

Against the embedded SeaweedFS on loopback (2 cores) multipart was never faster (a single 128 MiB PUT ran at
~140 MiB/s, 8 MiB parts at ~90 MiB/s): locally the thresholds only decide request counts.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

import boto3
import botocore.exceptions
from boto3.s3.transfer import TransferConfig

from openmme.endpoint.errors import ValidationError
from openmme.endpoint.names import S3_MISSING_CODES, S3Location, s3_error_code, validate_target_model
from openmme.endpoint.pipeline_manifest import PIPELINE_SUFFIX
from openmme.publish._errors import (
    ArtifactExists,
    BucketNotFound,
    InvalidPrefix,
    InvalidTargetModel,
    PublishError,
    StoreError,
)
from openmme.publish.progress import Progress

__all__ = [
    "COPY_MULTIPART_CHUNKSIZE",
    "COPY_MULTIPART_THRESHOLD",
    "UPLOAD_MULTIPART_CHUNKSIZE",
    "UPLOAD_MULTIPART_THRESHOLD",
    "check_target_model",
    "copy_object",
    "create_bucket",
    "object_size",
    "parse_object_uri",
    "parse_prefix",
    "put_json_if",
    "read_object",
    "refuse_existing",
    "require_bucket",
    "s3_client",
    "suggest_name",
    "target_model_for",
    "translate",
    "upload",
]

MiB = 1024 * 1024
UPLOAD_MULTIPART_THRESHOLD = 64 * MiB
UPLOAD_MULTIPART_CHUNKSIZE = 16 * MiB
COPY_MULTIPART_THRESHOLD = 256 * MiB
COPY_MULTIPART_CHUNKSIZE = 64 * MiB

# S3's minimum part size; boto3 would silently use it for anything smaller.
_MIN_PART = 5 * MiB

_NO_BUCKET = {"NoSuchBucket"}
_PRECONDITION_FAILED = {"PreconditionFailed", "412"}
_NOT_IMPLEMENTED = {"NotImplemented", "501"}
_DENIED = {"403", "AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
# Bucket names as S3 (including legacy us-east-1 names and S3-compatible stores) accepts them: letters, digits,
# dots, hyphens, underscores. Anything else (a space, a second scheme, a port) is a typo worth stopping at.
_BUCKET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]")
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")
_VERSION = re.compile(r"^(?P<stem>.*)-v(?P<number>\d+)$")


def s3_client() -> Any:
    """An S3 client from the standard AWS settings (``AWS_ENDPOINT_URL_S3``, credentials, region, profiles)."""
    return boto3.session.Session().client("s3")


def parse_prefix(prefix: str) -> S3Location:
    """``s3://bucket/prefix/`` as the endpoint reads it; InvalidPrefix otherwise."""
    try:
        location = S3Location.parse_prefix(prefix)
    except ValueError as exc:
        raise InvalidPrefix(str(exc)) from exc
    if not _BUCKET_NAME.fullmatch(location.bucket):
        raise InvalidPrefix(f"{location.bucket!r} is not a valid S3 bucket name (in {prefix!r})")
    return location


def parse_object_uri(uri: str) -> S3Location:
    """``s3://bucket/key`` of one object (a training job's artifact); ValueError for anything else."""
    location = S3Location.parse_prefix(uri)
    key = location.key[:-1] if location.key.endswith("/") and not uri.endswith("/") else location.key
    if not key or key.endswith("/"):
        raise ValueError(f"{uri!r} names an S3 prefix, not one object")
    return S3Location(location.bucket, key)


def check_target_model(target: str) -> str:
    """``target`` unchanged when the endpoint accepts it as a TargetModel; InvalidTargetModel otherwise."""
    try:
        return validate_target_model(target)
    except ValidationError as exc:
        raise InvalidTargetModel(str(exc)) from exc


def target_model_for(name: str) -> str:
    """The TargetModel a publish NAME stands for: a name ending in .tar.gz/.tgz is one, else ``NAME/model.tar.gz``.

    So ``houston`` and ``houston/model.tar.gz`` publish the same key, as SageMaker's examples lay a prefix out.
    """
    return name if name.endswith(_ARCHIVE_SUFFIXES) else f"{name.rstrip('/')}/model.tar.gz"


def translate(exc: botocore.exceptions.BotoCoreError | botocore.exceptions.ClientError, doing: str) -> PublishError:
    """The one place an S3 failure becomes a PublishError; ``doing`` says what was being done, for the message."""
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        message = str(error.get("Message", "")) or code
        if code in _NO_BUCKET:
            return BucketNotFound(f"{doing}: the bucket does not exist")
        if code in _DENIED:
            return StoreError(f"{doing}: access denied ({code}); check the credentials and their permissions")
        return StoreError(f"{doing}: S3 answered {code}: {message}")
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return StoreError(f"{doing}: no AWS credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile)")
    return StoreError(f"{doing}: {exc}")


def create_bucket(prefix: str, *, client: Any | None = None) -> None:
    """Create the bucket of ``prefix`` unless it exists (for local S3 servers; real buckets are provisioned)."""
    client = client or s3_client()
    bucket = parse_prefix(prefix).bucket
    try:
        client.head_bucket(Bucket=bucket)
    except botocore.exceptions.ClientError:
        try:
            client.create_bucket(Bucket=bucket)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise translate(exc, f"creating bucket {bucket}") from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise translate(exc, f"checking bucket {bucket}") from exc


def require_bucket(client: Any, location: S3Location) -> None:
    """BucketNotFound unless ``location``'s bucket exists.

    HeadBucket needs s3:ListBucket, which a least-privilege publisher may lack: a 403 lets the write decide.
    """
    try:
        client.head_bucket(Bucket=location.bucket)
    except botocore.exceptions.ClientError as exc:
        code = s3_error_code(exc)
        if code in S3_MISSING_CODES | _NO_BUCKET:
            raise BucketNotFound(f"bucket {location.bucket!r} of {location} does not exist") from exc
        if code not in _DENIED:
            raise translate(exc, f"checking bucket {location.bucket}") from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise translate(exc, f"checking bucket {location.bucket}") from exc


def object_size(client: Any, location: S3Location) -> int | None:
    """The size of the object at ``location``, or None when there is none."""
    try:
        head = client.head_object(Bucket=location.bucket, Key=location.key)
    except botocore.exceptions.ClientError as exc:
        if s3_error_code(exc) in S3_MISSING_CODES:
            return None
        raise translate(exc, f"checking {location}") from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise translate(exc, f"checking {location}") from exc
    return int(head["ContentLength"])


def read_object(client: Any, location: S3Location) -> tuple[bytes, str] | None:
    """The object at ``location``, whole, and its ETag; None when there is none."""
    try:
        response = client.get_object(Bucket=location.bucket, Key=location.key)
        return bytes(response["Body"].read()), str(response.get("ETag", ""))
    except botocore.exceptions.ClientError as exc:
        if s3_error_code(exc) in S3_MISSING_CODES:
            return None
        raise translate(exc, f"reading {location}") from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise translate(exc, f"reading {location}") from exc


def put_json_if(
    client: Any,
    location: S3Location,
    body: bytes,
    *,
    unsupported: Callable[[S3Location], PublishError] | None = None,
    **condition: str,
) -> bool:
    """A conditional PutObject of a JSON ``body`` (``IfNoneMatch="*"`` or ``IfMatch=<ETag>``); False when its
    precondition failed. A store that answers it does not implement the condition raises ``unsupported(location)``
    when given (else the error is translated as any other)."""
    try:
        client.put_object(
            Bucket=location.bucket, Key=location.key, Body=body, ContentType="application/json", **condition
        )
    except botocore.exceptions.ClientError as exc:
        code = s3_error_code(exc)
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        if code in _PRECONDITION_FAILED or status == "412":
            return False
        if unsupported is not None and (code in _NOT_IMPLEMENTED or status == "501"):
            raise unsupported(location) from exc
        raise translate(exc, f"writing {location}") from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise translate(exc, f"writing {location}") from exc
    return True


def suggest_name(client: Any, prefix: S3Location, target: str) -> str:
    """A free TargetModel next to ``target``: ``houston/model.tar.gz`` → ``houston/model-v2.tar.gz`` (or v3 …),
    ``churn.pipeline.json`` → ``churn-v2.pipeline.json``."""
    suffix = next((s for s in (*_ARCHIVE_SUFFIXES, ".tar", PIPELINE_SUFFIX) if target.endswith(s)), "")
    stem = target[: len(target) - len(suffix)]
    versioned = _VERSION.match(stem)
    number = int(versioned["number"]) + 1 if versioned else 2
    stem = versioned["stem"] if versioned else stem
    for candidate_number in range(number, number + 20):
        candidate = f"{stem}-v{candidate_number}{suffix}"
        if object_size(client, prefix.child(candidate)) is None:
            return candidate
    # Twenty versions taken: a timestamp is free in practice and sorts by age.
    return f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}{suffix}"


def refuse_existing(client: Any, prefix: S3Location, target: str) -> None:
    """ArtifactExists when ``<prefix><target>`` exists: published models are never replaced silently."""
    if object_size(client, prefix.child(target)) is None:
        return
    suggestion = suggest_name(client, prefix, target)
    raise ArtifactExists(
        f"{prefix.child(target)} exists; endpoints keep serving the copy they cached, so publish a changed model "
        f"under a new name, e.g. {suggestion} (or replace it with --overwrite)",
        suggestion,
    )


def _transfer_config(threshold: int, chunksize: int) -> TransferConfig:
    if chunksize < _MIN_PART:
        raise ValueError(f"multipart_chunksize must be at least {_MIN_PART} bytes (S3's minimum part size)")
    return TransferConfig(multipart_threshold=max(threshold, 1), multipart_chunksize=chunksize)


@contextlib.contextmanager
def _transfer(progress: Progress | None, label: str, size: int, failure: str) -> Iterator[Callable[[int], None] | None]:
    """Around one transfer: the progress bar (its callback is yielded) and S3 errors translated as ``failure``."""
    if progress is not None:
        progress.start(label, size)
    try:
        yield progress.advance if progress is not None else None
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise translate(exc, failure) from exc
    finally:
        if progress is not None:
            progress.finish()


def upload(
    client: Any,
    source: IO[bytes],
    size: int,
    destination: S3Location,
    *,
    multipart_threshold: int,
    multipart_chunksize: int,
    progress: Progress | None,
) -> None:
    """Write ``source`` (``size`` bytes) to ``destination``; on failure nothing is left (boto3 aborts parts)."""
    config = _transfer_config(multipart_threshold, multipart_chunksize)
    with _transfer(progress, f"uploading {destination}", size, f"uploading {destination}") as callback:
        client.upload_fileobj(source, destination.bucket, destination.key, Config=config, Callback=callback)


def copy_object(
    client: Any,
    source: S3Location,
    size: int,
    destination: S3Location,
    *,
    multipart_threshold: int,
    multipart_chunksize: int,
    progress: Progress | None,
) -> None:
    """Server-side copy of ``source`` (``size`` bytes) to ``destination``, in parts above the threshold."""
    config = _transfer_config(multipart_threshold, multipart_chunksize)
    with _transfer(progress, f"copying to {destination}", size, f"copying {source} to {destination}") as callback:
        client.copy(
            {"Bucket": source.bucket, "Key": source.key},
            destination.bucket,
            destination.key,
            Config=config,
            Callback=callback,
        )
