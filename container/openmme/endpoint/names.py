"""Names every part of openmme agrees on: SageMaker's HTTP header names, where models live in S3, and the rules a
TargetModel must follow. A leaf: it imports nothing of the endpoint but the error tree, so the front, the auth
checks, the model source and ``openmme publish`` all take these from here without pulling in anything else.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from openmme.endpoint.errors import ValidationError

__all__ = [
    "CUSTOM_ATTRIBUTES",
    "ERROR_TYPE",
    "INFERENCE_ID",
    "INVOKED_VARIANT",
    "MAX_TARGET_MODEL_LENGTH",
    "RESERVED_FOLDER",
    "S3_MISSING_CODES",
    "SAGEMAKER_HEADER_PREFIX",
    "SUGGESTION_CANDIDATES",
    "TARGET_MODEL",
    "TARGET_VARIANT",
    "S3Location",
    "async_target_model",
    "closest_target_model",
    "is_target_model",
    "listed_target_models",
    "s3_error_code",
    "validate_target_model",
]

# HTTP header names, spelled as SageMaker sends them (HTTP header names are case-insensitive).
TARGET_MODEL = "X-Amzn-SageMaker-Target-Model"
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
INFERENCE_ID = "X-Amzn-SageMaker-Inference-Id"
INVOKED_VARIANT = "x-Amzn-Invoked-Production-Variant"
TARGET_VARIANT = "X-Amzn-SageMaker-Target-Variant"
ERROR_TYPE = "x-amzn-ErrorType"
# Every request header of the runtime API starts so; with --auth sigv4 each one sent must be signed.
SAGEMAKER_HEADER_PREFIX = "x-amzn-sagemaker-"

MAX_TARGET_MODEL_LENGTH = 1024
# Where openmme keeps its own state in a model prefix (aliases: alias_state.py); never a TargetModel.
RESERVED_FOLDER = ".openmme/"


@dataclasses.dataclass(frozen=True)
class S3Location:
    """An object, or a key prefix, in a bucket."""

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
        raise ValidationError(f"the {TARGET_MODEL} header is required for a multi-model endpoint")
    if len(target) > MAX_TARGET_MODEL_LENGTH:
        raise ValidationError(f"TargetModel is longer than {MAX_TARGET_MODEL_LENGTH} characters")
    if not target.isprintable() or target.startswith(" "):
        raise ValidationError("TargetModel must be printable characters and must not start with a space")
    if target[:5].lower() == "s3://":
        raise ValidationError(_not_a_uri(target, prefix))
    if target.startswith("/") or "\\" in target:
        raise ValidationError(f"TargetModel must be a key relative to the model prefix: {target!r}")
    segments = target.split("/")
    if any(segment in {"", ".", ".."} for segment in segments):
        raise ValidationError(f"TargetModel must not contain empty, '.' or '..' path segments: {target!r}")
    if target.startswith(RESERVED_FOLDER):
        raise ValidationError(f"TargetModel must not be under {RESERVED_FOLDER}, openmme's own folder: {target!r}")
    return target


def is_target_model(relative: str) -> bool:
    """Whether a key relative to the prefix is one the endpoint accepts as a TargetModel (folder markers, ``a//b``
    and openmme's own folder never are)."""
    try:
        validate_target_model(relative)
    except ValidationError:
        return False
    return True


def listed_target_models(
    pages: Iterable[Mapping[str, Any]], key_prefix: str
) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """The TargetModels in ListObjectsV2 ``pages`` of ``key_prefix``: each listed key relative to the prefix that
    ``is_target_model``, with its listing item (size, last modified …)."""
    for page in pages:
        for item in page.get("Contents", []):
            relative = str(item["Key"])[len(key_prefix) :]
            if is_target_model(relative):
                yield relative, item


# The most names of a prefix a "did you mean" looks at (its first ones in key order): one ListObjectsV2 page, so a
# miss costs at most one request more (5,000 names took 1.2 s to list from the embedded S3, 1,000 a fifth of it).
SUGGESTION_CANDIDATES = 1_000
# How alike (difflib's ratio, 0 to 1) a name must be to the one asked for to be suggested: one letter wrong,
# missing or swapped in a name of five or more passes; two different short names (a, b; cat, dog) do not.
_ALIKE = 0.8
_ARCHIVE_SUFFIXES = ("/model.tar.gz", ".tar.gz", ".tgz")


def _stem(name: str) -> str:
    """A name without its archive suffix: houston/model.tar.gz, houston.tar.gz and houston all compare as houston."""
    for suffix in _ARCHIVE_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def closest_target_model(target: str, names: Iterable[str]) -> str | None:
    """The name among ``names`` (TargetModels a prefix holds, ``target`` not among them) that ``target`` most
    likely meant, for a "did you mean": ``target/model.tar.gz`` (a training job's folder given without its
    archive), else the most alike name, compared without archive suffixes; None when none is alike enough.
    Ties go to the first name."""
    candidates = [name for name in names if name != target]
    nested = f"{target}/model.tar.gz"
    if nested in candidates:
        return nested
    matcher = difflib.SequenceMatcher(b=_stem(target), autojunk=False)
    best, best_ratio = None, _ALIKE
    for name in candidates:
        matcher.set_seq1(_stem(name))
        if matcher.real_quick_ratio() < best_ratio or matcher.quick_ratio() < best_ratio:
            continue
        ratio = matcher.ratio()
        if ratio > best_ratio or (best is None and ratio == best_ratio):
            best, best_ratio = name, ratio
    return best


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


def async_target_model(custom_attributes: str | None, header: str | None, default: str) -> str | None:
    """The TargetModel an InvokeEndpointAsync call names, which has no field for one: a ``TargetModel=<key>`` item
    of its CustomAttributes (``;``-separated), else the TargetModel header, else ``--async-default-model``; None
    when none does (asyncinvoke/, and the SigV4 middleware's allow patterns)."""
    for item in (custom_attributes or "").split(";"):
        key, equals, value = item.partition("=")
        if equals and key.strip().lower() == "targetmodel" and value.strip():
            return value.strip()
    return header or default or None


# The error codes S3 servers answer for an object (or a HEAD of one) that does not exist.
S3_MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


def s3_error_code(exc: Any) -> str:
    """The ``Code`` of a botocore ``ClientError`` (``""`` when it has none)."""
    return str(exc.response.get("Error", {}).get("Code", ""))
