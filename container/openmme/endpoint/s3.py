"""The model source: TargetModel names resolved under the endpoint's S3 prefix, and archives fetched from it
(``S3Location`` and the TargetModel rules live in names.py; ``S3Location`` is re-exported here).

The S3 endpoint and credentials come from the standard AWS settings (``AWS_ENDPOINT_URL_S3``,
``AWS_ACCESS_KEY_ID``, profiles …), so any S3 works. The functions here block: the cache calls them through
``asyncio.to_thread``.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from openmme.endpoint.errors import EndpointError, ServiceUnavailable, ValidationError
from openmme.endpoint.names import (
    S3_MISSING_CODES,
    SUGGESTION_CANDIDATES,
    S3Location,
    closest_target_model,
    listed_target_models,
    s3_error_code,
)

__all__ = ["ModelSource", "PrefixUnreachable", "PrefixUnusable", "S3Location", "check_prefix", "make_client"]

log = logging.getLogger(__name__)

_CHUNK = 1024 * 1024
# How long the names a "did you mean" chooses from are reused: a burst of misses lists the prefix once, and a
# model published since is suggested at most this late.
SUGGESTION_NAMES_TTL_S = 30.0
_NO_BUCKET = {"NoSuchBucket"}
_DENIED = {"AccessDenied", "403"}
_BAD_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}


def make_client(connect_timeout: float, read_timeout: float, max_attempts: int, pool: int) -> Any:
    """An S3 client from the standard AWS settings, with its own time-outs (seconds), attempts per call (the
    first included) and connection pool: the model source's, and data capture's (capture.py) apart from it."""
    config = botocore.config.Config(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"mode": "standard", "max_attempts": max_attempts},
        max_pool_connections=pool,
    )
    return boto3.session.Session().client("s3", config=config)


class PrefixUnusable(Exception):
    """The model prefix cannot serve (its bucket is missing, there are no credentials, listing it is denied …); the
    message is one line: the cause, and what to do."""


class PrefixUnreachable(PrefixUnusable):
    """S3 could not be reached (yet): worth trying again, as when S3 starts beside the endpoint."""

    def __init__(self, endpoint_url: str, reason: str) -> None:
        super().__init__(f"cannot reach S3 at {endpoint_url} ({reason})")
        self.endpoint_url = endpoint_url
        self.reason = reason


def check_prefix(prefix: S3Location, client: Any) -> None:
    """One ListObjectsV2 of at most one key under ``prefix``, as ``openmme serve`` does before it starts: returns
    when the bucket exists and the credentials may list the prefix (what aliases and a "did you mean" read);
    raises PrefixUnusable saying what to do, or PrefixUnreachable when S3 does not answer (or answers 5xx)."""
    url = client.meta.endpoint_url
    try:
        client.list_objects_v2(Bucket=prefix.bucket, Prefix=prefix.key, MaxKeys=1)
    except (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError) as exc:
        raise PrefixUnusable(
            f"no AWS credentials to read {prefix} with ({exc}): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY,"
            " or AWS_PROFILE"
        ) from exc
    except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError) as exc:
        raise PrefixUnreachable(url, str(exc)) from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise PrefixUnusable(f"cannot list {prefix} at {url}: {exc}") from exc
    except botocore.exceptions.ClientError as exc:
        code = s3_error_code(exc)
        if code in _NO_BUCKET:
            raise PrefixUnusable(
                f"bucket {prefix.bucket!r} does not exist ({code}) at {url}: create it or fix --model-prefix"
            ) from exc
        if code in _BAD_CREDENTIALS:
            raise PrefixUnusable(
                f"S3 at {url} refuses the credentials ({code}): fix AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY,"
                " or AWS_PROFILE"
            ) from exc
        if code in _DENIED:
            raise PrefixUnusable(
                f"the credentials may not list {prefix} ({code}) at {url}: allow them s3:ListBucket on bucket"
                f" {prefix.bucket!r} and s3:GetObject on the prefix"
            ) from exc
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if status >= 500:
            raise PrefixUnreachable(url, f"{code or status}: {exc}") from exc
        raise PrefixUnusable(f"S3 at {url} refuses to list {prefix} ({code or status}): fix --model-prefix") from exc


class ModelSource:
    """Reads model archives from one S3 prefix."""

    def __init__(self, prefix: S3Location, client: Any | None = None) -> None:
        self.prefix = prefix
        self._client = client or make_client(connect_timeout=5, read_timeout=60, max_attempts=3, pool=32)
        self._names: tuple[float, list[str]] | None = None  # (listed at, the prefix's TargetModels), for suggestions
        self._names_lock = threading.Lock()  # one listing at a time; the misses waiting for it reuse it

    def size(self, target: str) -> int:
        """The archive's size in bytes; ValidationError when the prefix holds no such model."""
        location = self.prefix.child(target)
        try:
            head = self._client.head_object(Bucket=location.bucket, Key=location.key)
        except botocore.exceptions.ClientError as exc:
            raise self._translate(exc, target) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise ServiceUnavailable(f"the model store {self.prefix} cannot be reached: {exc}") from exc
        return int(head["ContentLength"])

    def download(self, target: str, destination: Path, max_bytes: int) -> int:
        """Stream the archive into ``destination``; returns the bytes written."""
        location = self.prefix.child(target)
        written = 0
        try:
            response = self._client.get_object(Bucket=location.bucket, Key=location.key)
            if max_bytes and int(response["ContentLength"]) > max_bytes:
                response["Body"].close()
                raise ValidationError(f"archive {location} is larger than the {max_bytes}-byte limit")
            with destination.open("wb") as out:
                for chunk in response["Body"].iter_chunks(_CHUNK):
                    out.write(chunk)
                    written += len(chunk)
        except botocore.exceptions.ClientError as exc:
            raise self._translate(exc, target) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise ServiceUnavailable(f"the model store {self.prefix} cannot be reached: {exc}") from exc
        return written

    def read(self, target: str, max_bytes: int) -> bytes:
        """A small object of the prefix (a pipeline manifest), whole; ValidationError when the prefix holds no such
        object or it is larger than ``max_bytes``."""
        location = self.prefix.child(target)
        try:
            response = self._client.get_object(Bucket=location.bucket, Key=location.key)
            if int(response["ContentLength"]) > max_bytes:
                response["Body"].close()
                raise ValidationError(f"{location} is larger than the {max_bytes}-byte limit")
            return bytes(response["Body"].read())
        except botocore.exceptions.ClientError as exc:
            raise self._translate(exc, target) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise ServiceUnavailable(f"the model store {self.prefix} cannot be reached: {exc}") from exc

    def _held_names(self) -> list[str]:
        """The TargetModels of the prefix a "did you mean" chooses from: its first ``SUGGESTION_CANDIDATES`` in key
        order (one ListObjectsV2 page), listed again at most every ``SUGGESTION_NAMES_TTL_S``. Only a
        miss asks for them, never an invocation of a model the prefix holds; none when the listing fails."""
        with self._names_lock:
            if self._names is not None and time.monotonic() - self._names[0] < SUGGESTION_NAMES_TTL_S:
                return self._names[1]
            names: list[str] = []
            try:
                pages = self._client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.prefix.bucket,
                    Prefix=self.prefix.key,
                    PaginationConfig={"MaxItems": SUGGESTION_CANDIDATES},
                )
                names = [relative for relative, _ in listed_target_models(pages, self.prefix.key)]
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                log.info("no 'did you mean' for models missing from %s: listing it failed (%s)", self.prefix, exc)
            self._names = (time.monotonic(), names)
            return names

    def _translate(self, exc: botocore.exceptions.ClientError, target: str) -> EndpointError:
        code = s3_error_code(exc)
        if code in S3_MISSING_CODES:
            likely = closest_target_model(target, self._held_names())
            hint = f". Did you mean {likely!r}?" if likely else ""
            return ValidationError(f"model {target!r} is not in the model prefix {self.prefix}{hint}")
        if code in _NO_BUCKET:
            return ValidationError(f"the model prefix's bucket does not exist: {self.prefix}")
        if code in {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
            return ValidationError(f"the endpoint may not read {self.prefix.child(target)}: {code}")
        log.warning("S3 error for %s: %s", target, exc)
        return ServiceUnavailable(f"the model store {self.prefix} failed: {code or exc}")
