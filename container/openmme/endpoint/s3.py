"""The model source: TargetModel names resolved under the endpoint's S3 prefix, and archives fetched from it.

The S3 endpoint and credentials come from the standard AWS settings (``AWS_ENDPOINT_URL_S3``,
``AWS_ACCESS_KEY_ID``, profiles …), so any S3 works. The functions here block: the cache calls them through
``asyncio.to_thread``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from openmme.endpoint.errors import EndpointError, ServiceUnavailable, ValidationError

__all__ = ["ModelSource", "S3Location", "validate_target_model"]

log = logging.getLogger(__name__)

_CHUNK = 1024 * 1024
_MISSING = {"404", "NoSuchKey", "NotFound"}
_NO_BUCKET = {"NoSuchBucket"}


@dataclasses.dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @classmethod
    def parse_prefix(cls, uri: str) -> S3Location:
        """``s3://bucket/some/prefix/`` → bucket and key prefix (always ending in ``/`` unless empty)."""
        if not uri.startswith("s3://"):
            raise ValueError(f"not an S3 URI: {uri!r} (expected s3://bucket/prefix/)")
        bucket, _, key = uri[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"no bucket in S3 URI: {uri!r}")
        if key and not key.endswith("/"):
            key += "/"
        return cls(bucket, key)

    def child(self, relative: str) -> S3Location:
        return S3Location(self.bucket, self.key + relative)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def validate_target_model(target: str | None, prefix: S3Location | None = None) -> str:
    """The TargetModel header as SageMaker checks it, plus no path tricks; returns it unchanged. ``prefix``, the
    endpoint's model prefix, lets the error for a full S3 URI name the relative TargetModel to give instead."""
    if target is None or target == "":
        raise ValidationError("the X-Amzn-SageMaker-Target-Model header is required for a multi-model endpoint")
    if len(target) > 1024:
        raise ValidationError("TargetModel is longer than 1024 characters")
    if not target.isprintable() or target.startswith(" "):
        raise ValidationError("TargetModel must be printable characters and must not start with a space")
    if target[:5].lower() == "s3://":
        raise ValidationError(_not_a_uri(target, prefix))
    if target.startswith("/") or "\\" in target:
        raise ValidationError(f"TargetModel must be a key relative to the model prefix: {target!r}")
    segments = target.split("/")
    if any(segment in {"", ".", ".."} for segment in segments):
        raise ValidationError(f"TargetModel must not contain empty, '.' or '..' path segments: {target!r}")
    return target


def _not_a_uri(uri: str, prefix: S3Location | None) -> str:
    """What to give instead of a full S3 URI: the key relative to the prefix, named when the URI is under it."""
    if prefix is None:
        return f"TargetModel must be the archive's key relative to the endpoint's model prefix, not an S3 URI: {uri!r}"
    relative = uri[len(str(prefix)) :] if uri.startswith(str(prefix)) else ""
    if relative:
        return (
            f"TargetModel must be relative to the endpoint's model prefix {prefix}, not a full S3 URI: "
            f"give TargetModel={relative!r}"
        )
    return (
        f"TargetModel must be relative to the endpoint's model prefix {prefix}, not a full S3 URI; {uri!r} is not an "
        "archive under it: publish the archive there (openmme publish) and give its key relative to the prefix"
    )


class ModelSource:
    """Reads model archives from one S3 prefix."""

    def __init__(self, prefix: S3Location, client: Any | None = None) -> None:
        self.prefix = prefix
        self._client = client or boto3.session.Session().client(
            "s3",
            config=botocore.config.Config(
                connect_timeout=5,
                read_timeout=60,
                retries={"mode": "standard", "max_attempts": 3},
                max_pool_connections=32,
            ),
        )

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

    def _translate(self, exc: botocore.exceptions.ClientError, target: str) -> EndpointError:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _MISSING:
            return ValidationError(f"model {target!r} is not in the model prefix {self.prefix}")
        if code in _NO_BUCKET:
            return ValidationError(f"the model prefix's bucket does not exist: {self.prefix}")
        if code in {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
            return ValidationError(f"the endpoint may not read {self.prefix.child(target)}: {code}")
        log.warning("S3 error for %s: %s", target, exc)
        return ServiceUnavailable(f"the model store {self.prefix} failed: {code or exc}")
