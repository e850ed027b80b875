"""``openmme transform``'s command line: its flags (CreateTransformJob's fields, kebab-cased) and the job they make.

A job may also come whole from a file in CreateTransformJob's request shape (``--request job.json``: the
arguments of a boto3 ``create_transform_job`` call, plus ``TargetModel``); a flag given beside it wins over the
file. Light on imports: the CLI builds its parser with this module at every start.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from openmme.transform.spec import (
    ASSEMBLY,
    COMPRESSION,
    DATA_TYPES,
    JOIN_SOURCES,
    MAX_PAYLOAD_MB,
    SPLIT_TYPES,
    STRATEGIES,
    TransformConfigError,
    TransformJob,
)

__all__ = ["COMPLETION_INDEX_ENV", "add_arguments", "job_from_arguments", "shard_from_arguments"]

# What Kubernetes sets in each pod of an Indexed Job: the pod's completion index.
COMPLETION_INDEX_ENV = "JOB_COMPLETION_INDEX"

# Each flag's place in the CreateTransformJob request.
_FIELDS: dict[str, tuple[str, ...]] = {
    "target_model": ("TargetModel",),
    "target_variant": ("TargetVariant",),
    "job_name": ("TransformJobName",),
    "input": ("TransformInput", "DataSource", "S3DataSource", "S3Uri"),
    "s3_data_type": ("TransformInput", "DataSource", "S3DataSource", "S3DataType"),
    "content_type": ("TransformInput", "ContentType"),
    "compression_type": ("TransformInput", "CompressionType"),
    "split_type": ("TransformInput", "SplitType"),
    "batch_strategy": ("BatchStrategy",),
    "max_payload_in_mb": ("MaxPayloadInMB",),
    "max_concurrent_transforms": ("MaxConcurrentTransforms",),
    "output": ("TransformOutput", "S3OutputPath"),
    "accept": ("TransformOutput", "Accept"),
    "assemble_with": ("TransformOutput", "AssembleWith"),
    "input_filter": ("DataProcessing", "InputFilter"),
    "output_filter": ("DataProcessing", "OutputFilter"),
    "join_source": ("DataProcessing", "JoinSource"),
    "invocations_timeout": ("ModelClientConfig", "InvocationsTimeoutInSeconds"),
    "invocations_max_retries": ("ModelClientConfig", "InvocationsMaxRetries"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``openmme transform`` on ``parser``."""
    job = parser.add_argument_group("the job (CreateTransformJob's fields)")
    job.add_argument("--request", type=Path, metavar="FILE", help="CreateTransformJob request JSON (+ TargetModel)")
    job.add_argument("--target-model", metavar="NAME", help="the TargetModel (or alias) every record goes to")
    job.add_argument("--target-variant", metavar="VARIANT", help="with an alias: the one version to use")
    job.add_argument("--input", metavar="S3URI", help="S3Uri: s3://bucket/prefix/ (or the manifest)")
    job.add_argument("--s3-data-type", choices=DATA_TYPES, help="S3Prefix (default) or ManifestFile")
    job.add_argument("--output", metavar="S3URI", help="S3OutputPath: <output>/<name>.out for each <input><name>")
    job.add_argument("--content-type", help="ContentType of the records (none: read as CSV)")
    job.add_argument("--compression-type", choices=COMPRESSION, help="Gzip: inputs are gzip files (default None)")
    job.add_argument("--split-type", choices=SPLIT_TYPES, help="Line: a record per line; None (default): per object")
    job.add_argument("--batch-strategy", choices=STRATEGIES, help="records per request (default MultiRecord)")
    job.add_argument(
        "--max-payload-in-mb", type=int, metavar="MB", help=f"MaxPayloadInMB, 1 to {MAX_PAYLOAD_MB} (default 6)"
    )
    job.add_argument(
        "--max-concurrent-transforms", type=int, metavar="N", help="requests in flight (default 0: ask the endpoint)"
    )
    job.add_argument("--accept", help="Accept of every request, the outputs' type")
    job.add_argument("--assemble-with", choices=ASSEMBLY, help="Line: a newline after each record's output")
    job.add_argument("--input-filter", metavar="JSONPATH", help="DataProcessing.InputFilter, e.g. '$[1:]'")
    job.add_argument("--output-filter", metavar="JSONPATH", help="DataProcessing.OutputFilter, e.g. '$[0,-1]'")
    job.add_argument("--join-source", choices=JOIN_SOURCES, help="Input: each output joined to its input record")
    job.add_argument("--invocations-timeout", type=int, metavar="SECONDS", help="per request (default 600)")
    job.add_argument("--invocations-max-retries", type=int, metavar="N", help="0 to 3 (default 3)")
    job.add_argument("--job-name", help="TransformJobName, for the logs")

    endpoint = parser.add_argument_group("the endpoint: a running one (--endpoint-url), or one of its own")
    where = endpoint.add_mutually_exclusive_group(required=True)
    where.add_argument("--endpoint-url", metavar="URL", help="a running endpoint or router: http(s)://host:port")
    where.add_argument(
        "--model-prefix", metavar="S3URI", help="start an endpoint for the job on this model prefix, stop it after"
    )
    endpoint.add_argument("--endpoint-name", help="its EndpointName (default: none, the /invocations route)")
    endpoint.add_argument("--ca-bundle", metavar="PEM", help="a certificate to trust for an HTTPS endpoint")
    endpoint.add_argument("--region", help="the region requests are signed for (default: the AWS settings')")
    endpoint.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="with --model-prefix: a flag for its `openmme serve` (repeat it; e.g. --serve-arg=--hosting=isolated)",
    )

    scale = parser.add_argument_group("several workers (a Kubernetes indexed Job, compose services)")
    scale.add_argument(
        "--shard-index",
        type=int,
        metavar="I",
        help=f"this worker's share of the inputs, 0 to count-1 (default: ${COMPLETION_INDEX_ENV}, else 0)",
    )
    scale.add_argument("--shard-count", type=int, default=1, metavar="N", help="workers sharing the inputs (default 1)")


def job_from_arguments(args: argparse.Namespace) -> TransformJob:
    """The job the flags (over ``--request``'s file) describe; TransformConfigError when it is not a valid one."""
    request: dict[str, Any] = {}
    if args.request is not None:
        try:
            loaded = json.loads(args.request.read_text())
        except (OSError, ValueError) as exc:
            raise TransformConfigError(f"--request {args.request}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise TransformConfigError(f"--request {args.request}: not a JSON object")
        request = loaded
    for flag, path in _FIELDS.items():
        value = getattr(args, flag)
        if value is not None:
            section = request
            for name in path[:-1]:
                section = section.setdefault(name, {})
            section[path[-1]] = value
    missing = [
        f"--{flag.replace('_', '-')}" for flag in ("target_model", "input", "output") if not _given(request, flag)
    ]
    if missing:
        raise TransformConfigError(f"{', '.join(missing)} required (as flags, or in --request's file)")
    return TransformJob.from_request(request)


def _given(request: dict[str, Any], flag: str) -> bool:
    value: Any = request
    for name in _FIELDS[flag]:
        value = value.get(name) if isinstance(value, dict) else None
    return bool(value)


def shard_from_arguments(args: argparse.Namespace, environ: dict[str, str] | None = None) -> tuple[int, int]:
    """(index, count) of this worker: ``--shard-index`` or ``$JOB_COMPLETION_INDEX`` (else 0), ``--shard-count``."""
    environ = dict(os.environ) if environ is None else environ
    index = args.shard_index
    if index is None:
        try:
            index = int(environ.get(COMPLETION_INDEX_ENV, "0"))
        except ValueError as exc:
            raise TransformConfigError(f"${COMPLETION_INDEX_ENV} is not a number") from exc
    if args.shard_count < 1 or not 0 <= index < args.shard_count:
        raise TransformConfigError(f"--shard-index {index} is not 0 to --shard-count {args.shard_count} minus 1")
    return index, args.shard_count
