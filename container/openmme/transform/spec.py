"""A transform job's settings, named and checked as SageMaker's CreateTransformJob names and checks them (botocore's
``sagemaker`` service model), plus the one thing SageMaker cannot say: the ``TargetModel`` of a multi-model
endpoint.

``TransformJob.from_request`` takes CreateTransformJob's own request shape, so the arguments of a boto3
``create_transform_job`` call (with ``TargetModel`` added, and ``TargetVariant`` to pin one version of an alias)
run here unchanged. What a self-hosted job has no use
for (``TransformResources``, ``Tags``, ``ExperimentConfig``, a ``ModelName`` beside the ``TargetModel``) is
ignored; what it cannot honour (``KmsKeyId``, ``DataCaptureConfig``, ``Environment``, ``RecordIO``/``TFRecord``
splitting, augmented manifests, chunked payloads) is refused with the reason, before anything runs.

Departures from SageMaker's defaults and limits, each for a reason:

- ``BatchStrategy`` defaults to ``MultiRecord`` (SageMaker leaves it to the algorithm): fewer, fuller requests.
- ``MaxPayloadInMB`` is 1 to 6: openmme's invocations take at most 6 MiB (SageMaker's invoke_endpoint limit), so
  SageMaker's larger payloads (up to 100) and 0 (chunked streaming) cannot be sent.
- ``MaxConcurrentTransforms=0`` (the default) asks the endpoint, as SageMaker asks a container's
  ``/execution-parameters``; see ``invoker.Invoker.probe``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from openmme.endpoint.errors import ValidationError
from openmme.endpoint.names import S3Location, validate_target_model
from openmme.endpoint.settings import MAX_BODY_BYTES
from openmme.transform import jsonpath
from openmme.transform.records import CSV, JSON, JSON_LINES, kind_of

__all__ = ["MB", "DataProcessing", "TransformConfigError", "TransformJob"]

MB = 1024 * 1024  # SageMaker's MB in MaxPayloadInMB: its 6 MB default is invoke_endpoint's 6 MiB.
MAX_PAYLOAD_MB = MAX_BODY_BYTES // MB
DATA_TYPES = ("S3Prefix", "ManifestFile")
SPLIT_TYPES = ("None", "Line")
STRATEGIES = ("MultiRecord", "SingleRecord")
ASSEMBLY = ("None", "Line")
JOIN_SOURCES = ("None", "Input")
COMPRESSION = ("None", "Gzip")

# Parts of a CreateTransformJob request that mean nothing to a job run against a running endpoint.
_IGNORED = {"ModelName", "TransformResources", "Tags", "ExperimentConfig"}
_REFUSED = {
    "DataCaptureConfig": "batch data capture is not supported",
    "Environment": "the endpoint's environment is its own: set it where the endpoint runs",
}


class TransformConfigError(ValueError):
    """A setting SageMaker's CreateTransformJob would refuse, or openmme cannot honour; the message names it."""


@dataclass(frozen=True)
class DataProcessing:
    """CreateTransformJob's ``DataProcessing``."""

    input_filter: str = "$"
    output_filter: str = "$"
    join_source: str = "None"

    @property
    def join(self) -> bool:
        return self.join_source == "Input"


@dataclass(frozen=True)
class TransformJob:
    """One job: where the records come from and go, how they are cut into requests, and the model they go to."""

    target_model: str
    s3_uri: str
    s3_output_path: str
    s3_data_type: str = "S3Prefix"
    content_type: str | None = None
    compression_type: str = "None"
    split_type: str = "None"
    batch_strategy: str = "MultiRecord"
    max_payload_mb: int = MAX_PAYLOAD_MB
    max_concurrent_transforms: int = 0
    accept: str | None = None
    assemble_with: str = "None"
    data_processing: DataProcessing = field(default_factory=DataProcessing)
    invocations_timeout_s: int = 600
    invocations_max_retries: int = 3
    name: str = ""
    target_variant: str | None = None  # openmme's: one version of an alias (invoke_endpoint's TargetVariant)

    def __post_init__(self) -> None:
        _check(self)

    @property
    def input_filter(self) -> jsonpath.JsonPath:
        return jsonpath.parse(self.data_processing.input_filter)

    @property
    def output_filter(self) -> jsonpath.JsonPath:
        return jsonpath.parse(self.data_processing.output_filter)

    @property
    def input_kind(self) -> str:
        """How records are read: CSV (also when no ContentType is given: openmme reads such a body as CSV), JSON,
        JSON Lines, or OTHER (opaque)."""
        return kind_of(self.content_type, default=CSV)

    @property
    def max_payload_bytes(self) -> int:
        return self.max_payload_mb * MB

    @property
    def input_location(self) -> S3Location:
        return _location(self.s3_uri, "TransformInput.DataSource.S3DataSource.S3Uri")

    @property
    def output_location(self) -> S3Location:
        return _location(self.s3_output_path, "TransformOutput.S3OutputPath")

    def fingerprint(self, source_etag: str) -> str:
        """What an output object records of the job and input that made it: a re-run skips an object whose output
        carries the same fingerprint (same model, same shaping of records, same input bytes)."""
        made_by = {
            "TargetModel": self.target_model,
            "TargetVariant": self.target_variant,
            "ContentType": self.content_type,
            "CompressionType": self.compression_type,
            "SplitType": self.split_type,
            "BatchStrategy": self.batch_strategy,
            "Accept": self.accept,
            "AssembleWith": self.assemble_with,
            "DataProcessing": dataclasses.asdict(self.data_processing),
            "SourceETag": source_etag,
        }
        return hashlib.sha256(json.dumps(made_by, sort_keys=True).encode()).hexdigest()[:32]

    @classmethod
    def from_request(cls, request: Mapping[str, Any]) -> TransformJob:
        """A job from CreateTransformJob's request shape (boto3's ``create_transform_job`` arguments) plus
        ``TargetModel``."""
        unknown = set(request) - _KNOWN - _IGNORED
        if unknown:
            raise TransformConfigError(f"unknown CreateTransformJob fields: {', '.join(sorted(unknown))}")
        for name, reason in _REFUSED.items():
            if request.get(name):
                raise TransformConfigError(f"{name}: {reason}")
        if "TargetModel" not in request:
            raise TransformConfigError(
                "TargetModel is required: the model of the multi-model endpoint (its archive's key relative to the "
                "endpoint's model prefix, e.g. houston/model.tar.gz)"
            )
        transform_input = _section(request, "TransformInput")
        source = _section(
            _section(transform_input, "DataSource", "TransformInput."), "S3DataSource", "TransformInput.DataSource."
        )
        output = _section(request, "TransformOutput")
        if output.get("KmsKeyId"):
            raise TransformConfigError(
                "TransformOutput.KmsKeyId is not supported: the output bucket's default encryption applies"
            )
        processing = request.get("DataProcessing") or {}
        client = request.get("ModelClientConfig") or {}
        defaults = _defaults(cls)
        return cls(
            target_model=str(request["TargetModel"]),
            s3_uri=str(_required(source, "S3Uri", "TransformInput.DataSource.S3DataSource.")),
            s3_output_path=str(_required(output, "S3OutputPath", "TransformOutput.")),
            s3_data_type=str(source.get("S3DataType", defaults["s3_data_type"])),
            content_type=transform_input.get("ContentType"),
            compression_type=str(transform_input.get("CompressionType") or "None"),
            split_type=str(transform_input.get("SplitType") or "None"),
            batch_strategy=str(request.get("BatchStrategy") or defaults["batch_strategy"]),
            max_payload_mb=_integer(request, "MaxPayloadInMB", defaults["max_payload_mb"]),
            max_concurrent_transforms=_integer(request, "MaxConcurrentTransforms", 0),
            accept=output.get("Accept"),
            assemble_with=str(output.get("AssembleWith") or "None"),
            data_processing=DataProcessing(
                input_filter=str(processing.get("InputFilter") or "$"),
                output_filter=str(processing.get("OutputFilter") or "$"),
                join_source=str(processing.get("JoinSource") or "None"),
            ),
            invocations_timeout_s=_integer(client, "InvocationsTimeoutInSeconds", 600),
            invocations_max_retries=_integer(client, "InvocationsMaxRetries", 3),
            name=str(request.get("TransformJobName") or ""),
            target_variant=request.get("TargetVariant"),
        )

    def to_request(self) -> dict[str, Any]:
        """The job in CreateTransformJob's request shape (with ``TargetModel``): what ``from_request`` reads."""
        transform_input: dict[str, Any] = {
            "DataSource": {"S3DataSource": {"S3DataType": self.s3_data_type, "S3Uri": self.s3_uri}},
            "CompressionType": self.compression_type,
            "SplitType": self.split_type,
        }
        if self.content_type:
            transform_input["ContentType"] = self.content_type
        output: dict[str, Any] = {"S3OutputPath": self.s3_output_path, "AssembleWith": self.assemble_with}
        if self.accept:
            output["Accept"] = self.accept
        request: dict[str, Any] = {
            "TargetModel": self.target_model,
            "BatchStrategy": self.batch_strategy,
            "MaxPayloadInMB": self.max_payload_mb,
            "MaxConcurrentTransforms": self.max_concurrent_transforms,
            "TransformInput": transform_input,
            "TransformOutput": output,
            "DataProcessing": {
                "InputFilter": self.data_processing.input_filter,
                "OutputFilter": self.data_processing.output_filter,
                "JoinSource": self.data_processing.join_source,
            },
            "ModelClientConfig": {
                "InvocationsTimeoutInSeconds": self.invocations_timeout_s,
                "InvocationsMaxRetries": self.invocations_max_retries,
            },
        }
        if self.name:
            request["TransformJobName"] = self.name
        if self.target_variant:
            request["TargetVariant"] = self.target_variant
        return request


_KNOWN = {
    "TransformJobName",
    "TargetModel",
    "TargetVariant",
    "MaxConcurrentTransforms",
    "MaxPayloadInMB",
    "BatchStrategy",
    "ModelClientConfig",
    "TransformInput",
    "TransformOutput",
    "DataProcessing",
    *_REFUSED,
}


def _defaults(cls: type[TransformJob]) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def _section(request: Mapping[str, Any], name: str, parent: str = "") -> Mapping[str, Any]:
    value = request.get(name)
    if not isinstance(value, Mapping):
        raise TransformConfigError(f"{parent}{name} is required")
    return value


def _required(section: Mapping[str, Any], name: str, parent: str) -> Any:
    if not section.get(name):
        raise TransformConfigError(f"{parent}{name} is required")
    return section[name]


def _integer(section: Mapping[str, Any], name: str, default: int) -> int:
    value = section.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TransformConfigError(f"{name} must be an integer, not {value!r}")
    return value


def _location(uri: str, name: str) -> S3Location:
    if not uri.startswith("s3://"):
        raise TransformConfigError(f"{name}: {uri!r} is not an s3:// URI")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise TransformConfigError(f"{name}: {uri!r} names no bucket")
    return S3Location(bucket, key)


def _one_of(value: str, allowed: tuple[str, ...], name: str, refused: str = "") -> None:
    if value not in allowed:
        extra = f" ({refused})" if refused else ""
        raise TransformConfigError(f"{name}: {value!r} is not one of {', '.join(allowed)}{extra}")


def _check(job: TransformJob) -> None:
    try:
        validate_target_model(job.target_model)
    except ValidationError as exc:
        raise TransformConfigError(f"TargetModel: {exc}") from exc
    job.input_location  # noqa: B018 - each raises TransformConfigError when malformed
    job.output_location  # noqa: B018
    _one_of(job.s3_data_type, DATA_TYPES, "S3DataType", "openmme reads no augmented manifests")
    _one_of(job.split_type, SPLIT_TYPES, "SplitType", "openmme does not split RecordIO or TFRecord")
    _one_of(job.batch_strategy, STRATEGIES, "BatchStrategy")
    _one_of(job.assemble_with, ASSEMBLY, "AssembleWith")
    _one_of(job.compression_type, COMPRESSION, "CompressionType")
    _one_of(job.data_processing.join_source, JOIN_SOURCES, "DataProcessing.JoinSource")
    if not 1 <= job.max_payload_mb <= MAX_PAYLOAD_MB:
        raise TransformConfigError(
            f"MaxPayloadInMB: {job.max_payload_mb} is not 1 to {MAX_PAYLOAD_MB}: an invocation of openmme takes at "
            f"most {MAX_PAYLOAD_MB} MB (SageMaker's invoke_endpoint limit), and chunked payloads (0) are not supported"
        )
    if job.max_concurrent_transforms < 0:
        raise TransformConfigError("MaxConcurrentTransforms must be 0 (ask the endpoint) or more")
    if not 1 <= job.invocations_timeout_s <= 3600:
        raise TransformConfigError("ModelClientConfig.InvocationsTimeoutInSeconds must be 1 to 3600")
    if not 0 <= job.invocations_max_retries <= 3:
        raise TransformConfigError("ModelClientConfig.InvocationsMaxRetries must be 0 to 3")
    for name, text in (
        ("InputFilter", job.data_processing.input_filter),
        ("OutputFilter", job.data_processing.output_filter),
    ):
        try:
            path = jsonpath.parse(text)
        except jsonpath.JsonPathError as exc:
            raise TransformConfigError(f"DataProcessing.{name}: {exc}") from exc
        if job.input_kind == CSV and not path.index_only:
            raise TransformConfigError(
                f"DataProcessing.{name}: {text!r} names attributes, and a CSV record is an array of its fields: use "
                "index paths such as $[0], $[1:] or $[0,-1]"
            )
    processing = job.data_processing
    shaping = (
        processing.join
        or not jsonpath.parse(processing.input_filter).is_root
        or not jsonpath.parse(processing.output_filter).is_root
    )
    if shaping and job.input_kind not in (CSV, JSON, JSON_LINES):
        raise TransformConfigError(
            f"DataProcessing works on CSV and JSON records only, not {job.content_type} (SageMaker's guide: \"You "
            'can use input files in JSON and CSV format only")'
        )
    if shaping and job.input_kind in (CSV, JSON_LINES) and job.split_type != "Line":
        raise TransformConfigError(
            "DataProcessing on CSV or JSON Lines records needs SplitType Line (each line a record), as SageMaker "
            "requires"
        )
    if shaping and job.input_kind == CSV and job.assemble_with != "Line":
        raise TransformConfigError("DataProcessing on CSV records needs AssembleWith Line, as SageMaker requires")
