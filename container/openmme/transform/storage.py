"""A job's objects in S3: the inputs (every object under a key prefix, or those a manifest lists), the output key of
each, the outputs an earlier run completed, the share of the inputs one worker of many takes, and the reads and
writes. boto3, blocking: the runner calls these in threads.

Names, as SageMaker batch transform gives them (CreateTransformJob's ``S3OutputPath``; the developer guide's "Use
Batch Transform"): the output of ``<input prefix><name>`` is ``<S3OutputPath>/<name>.out``. A prefix that does
not end in ``/`` (``s3://bucket/data/part-``) is a key prefix: ``<name>`` is then relative to its folder
(``part-0001.csv``), never a stump of a file name. A manifest's entries are relative to its ``prefix``, and so
are their outputs' names. Keys ending in ``/`` (folder markers) and keys under the output path (when it lies
inside the input prefix) are not inputs.

An output is written with one PutObject, which S3 makes visible whole or not at all, and carries the job's
``fingerprint`` (spec.py) in its metadata: an output that exists with the fingerprint of this job and input is
complete, and a re-run skips its input.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import botocore.exceptions

from openmme.endpoint.names import S3_MISSING_CODES, S3Location, s3_error_code
from openmme.transform.spec import TransformJob

__all__ = [
    "FINGERPRINT",
    "InputObject",
    "TransformStoreError",
    "completed_outputs",
    "fingerprint_of",
    "list_inputs",
    "output_location",
    "parse_manifest",
    "read",
    "remove",
    "shard",
    "write",
]

FINGERPRINT = "openmme-transform"  # the output's user metadata key (x-amz-meta-openmme-transform)


class TransformStoreError(RuntimeError):
    """S3 refused or failed a read, listing or write; the message says which and why."""


@dataclass(frozen=True)
class InputObject:
    location: S3Location
    relative: str  # the name under the input prefix: the output is <S3OutputPath>/<relative>.out
    size: int | None = None  # known from a listing; a manifest's entries are sized when read
    etag: str | None = None

    def __str__(self) -> str:
        return str(self.location)


def _translate(exc: Exception, doing: str) -> TransformStoreError:
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        return TransformStoreError(f"{doing}: S3 answered {code}: {error.get('Message') or code}")
    return TransformStoreError(f"{doing}: {exc}")


def _folder(key: str) -> str:
    return key[: key.rfind("/") + 1]


def _output_folder(output: S3Location) -> str:
    return output.key if not output.key or output.key.endswith("/") else output.key + "/"


def _is_output(key: str, outputs: str, base: str) -> bool:
    """Whether an input prefix's key is an output of the job (outputs written inside the inputs' folder): every key
    under an output folder of its own, or a ``.out`` key when outputs go beside the inputs."""
    if not key.startswith(outputs):
        return False
    return len(outputs) > len(base) or key.endswith(".out")


def list_inputs(client: Any, job: TransformJob) -> list[InputObject]:
    """The job's input objects, sorted by key."""
    if job.s3_data_type == "ManifestFile":
        return _manifest_inputs(client, job.input_location)
    return _prefix_inputs(client, job.input_location, exclude=job.output_location)


def _prefix_inputs(client: Any, prefix: S3Location, exclude: S3Location) -> list[InputObject]:
    base = _folder(prefix.key)
    outputs = _output_folder(exclude) if exclude.bucket == prefix.bucket else None
    found = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=prefix.bucket, Prefix=prefix.key):
            for item in page.get("Contents", []):
                key = str(item["Key"])
                if key.endswith("/") or (outputs is not None and _is_output(key, outputs, base)):
                    continue
                found.append(
                    InputObject(
                        S3Location(prefix.bucket, key), key[len(base) :], int(item["Size"]), str(item.get("ETag", ""))
                    )
                )
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise _translate(exc, f"listing {prefix}") from exc
    return sorted(found, key=lambda found_input: found_input.location.key)


def parse_manifest(text: bytes | str, where: str) -> tuple[S3Location, list[str]]:
    """A SageMaker manifest, ``[{"prefix": "s3://bucket/prefix/"}, "relative/key", ...]``: its prefix and entries."""
    try:
        entries = json.loads(text)
    except ValueError as exc:
        raise TransformStoreError(f"the manifest {where} is not JSON: {exc}") from exc
    head = entries[0] if isinstance(entries, list) and entries else None
    if not isinstance(head, dict) or not isinstance(head.get("prefix"), str) or not head["prefix"].startswith("s3://"):
        raise TransformStoreError(f'the manifest {where} must start with {{"prefix": "s3://bucket/prefix/"}}')
    relatives = entries[1:]
    if not all(isinstance(entry, str) and entry and not entry.startswith("/") for entry in relatives):
        raise TransformStoreError(f"the manifest {where} must list keys relative to its prefix, as strings")
    bucket, _, key = head["prefix"][len("s3://") :].partition("/")
    return S3Location(bucket, key), relatives


def _manifest_inputs(client: Any, manifest: S3Location) -> list[InputObject]:
    text, _ = read(client, manifest)
    prefix, relatives = parse_manifest(text, str(manifest))
    return [InputObject(prefix.child(relative), relative) for relative in relatives]


def output_location(job: TransformJob, item: InputObject) -> S3Location:
    output = job.output_location
    return S3Location(output.bucket, f"{_output_folder(output)}{item.relative}.out")


def shard(items: Sequence[InputObject], index: int, count: int) -> list[InputObject]:
    """The inputs worker ``index`` of ``count`` takes (a Kubernetes indexed Job's completion index): every
    ``count``-th of the sorted inputs from the ``index``-th, so that the shares differ by one object at most."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {index} of {count}: the index must be 0 to {count - 1}")
    return list(items[index::count])


def completed_outputs(client: Any, job: TransformJob) -> set[str]:
    """Keys of the objects under the output path now (a previous run's outputs, complete or not its job's)."""
    output = job.output_location
    keys: set[str] = set()
    try:
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=output.bucket, Prefix=_output_folder(output)):
            keys.update(str(item["Key"]) for item in page.get("Contents", []))
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise _translate(exc, f"listing the output path {output}") from exc
    return keys


def fingerprint_of(client: Any, location: S3Location) -> str | None:
    """The fingerprint an output carries, or None (no such object, or not written by a transform)."""
    try:
        head = client.head_object(Bucket=location.bucket, Key=location.key)
    except botocore.exceptions.ClientError as exc:
        if s3_error_code(exc) in S3_MISSING_CODES:
            return None
        raise _translate(exc, f"checking {location}") from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise _translate(exc, f"checking {location}") from exc
    value = head.get("Metadata", {}).get(FINGERPRINT)
    return str(value) if value else None


def etag_of(client: Any, location: S3Location) -> str:
    try:
        return str(client.head_object(Bucket=location.bucket, Key=location.key).get("ETag", ""))
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise _translate(exc, f"checking {location}") from exc


def read(client: Any, location: S3Location) -> tuple[bytes, str]:
    """An object's bytes and ETag."""
    try:
        response = client.get_object(Bucket=location.bucket, Key=location.key)
        return response["Body"].read(), str(response.get("ETag", ""))
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise _translate(exc, f"reading {location}") from exc


def write(client: Any, location: S3Location, body: bytes, content_type: str | None, fingerprint: str) -> None:
    """One PutObject: the output appears whole, or not at all."""
    extra = {"ContentType": content_type} if content_type else {}
    try:
        client.put_object(
            Bucket=location.bucket, Key=location.key, Body=body, Metadata={FINGERPRINT: fingerprint}, **extra
        )
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise _translate(exc, f"writing {location}") from exc


def remove(client: Any, location: S3Location) -> None:
    try:
        client.delete_object(Bucket=location.bucket, Key=location.key)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise _translate(exc, f"removing {location}") from exc
