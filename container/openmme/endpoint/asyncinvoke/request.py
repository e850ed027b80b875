"""What one ``InvokeEndpointAsync`` call asks for, parsed and checked as SageMaker checks it (botocore's
sagemaker-runtime model: ``POST /endpoints/{EndpointName}/async-invocations``, everything in headers, an optional
inline body), the model it names (openmme's rule: the API has no TargetModel), and the S3 objects its result and
its failure are written to. Pure: no I/O, no clock of its own.

The model an async request invokes, first found of:
    1. ``TargetModel=<key>`` among the request's CustomAttributes (``;``-separated ``key=value`` items; the key's
       case does not matter), e.g. ``CustomAttributes="TargetModel=houston/model.tar.gz"``;
    2. the ``X-Amzn-SageMaker-Target-Model`` header (what a client that can set headers sends for invoke_endpoint);
    3. ``--async-default-model``.
The CustomAttributes reach the model unchanged, as on SageMaker.

Objects: ``<S3OutputPath>[/<S3OutputPathExtension>]/<id>.out`` (or ``/<Filename>``) for the result, and
``<S3FailurePath>[/<S3OutputPathExtension>]/<id>-error.out`` (or ``/<Filename>-error.out``) for a failure.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from openmme.endpoint.errors import ValidationError
from openmme.endpoint.names import CUSTOM_ATTRIBUTES, INFERENCE_ID, TARGET_MODEL, S3Location, async_target_model

__all__ = [
    "ACCEPT",
    "CONTENT_TYPE",
    "DEFAULT_REQUEST_TTL_S",
    "DEFAULT_TIMEOUT_S",
    "FAILURE_LOCATION",
    "FILENAME",
    "INLINE_MAX_BYTES",
    "INPUT_LOCATION",
    "INVOCATION_TIMEOUT",
    "MAX_INPUT_BYTES",
    "OUTPUT_LOCATION",
    "OUTPUT_PATH_EXTENSION",
    "REQUEST_TTL",
    "AsyncRequest",
    "Destinations",
    "parse_request",
]

# Request headers, spelled as botocore sends them.
CONTENT_TYPE = "X-Amzn-SageMaker-Content-Type"
ACCEPT = "X-Amzn-SageMaker-Accept"
INPUT_LOCATION = "X-Amzn-SageMaker-InputLocation"
OUTPUT_PATH_EXTENSION = "X-Amzn-SageMaker-S3OutputPathExtension"
FILENAME = "X-Amzn-SageMaker-Filename"
REQUEST_TTL = "X-Amzn-SageMaker-RequestTTLSeconds"
INVOCATION_TIMEOUT = "X-Amzn-SageMaker-InvocationTimeoutSeconds"
# Response headers (the InferenceId goes in the JSON body).
OUTPUT_LOCATION = "X-Amzn-SageMaker-OutputLocation"
FAILURE_LOCATION = "X-Amzn-SageMaker-FailureLocation"

MAX_INPUT_BYTES = 1024**3  # SageMaker's asynchronous payload limit, 1 GB (taken as GiB)
INLINE_MAX_BYTES = 128_000  # an inline Body (botocore's AsyncBodyBlob)
DEFAULT_REQUEST_TTL_S, REQUEST_TTL_RANGE = 21_600, (60, 21_600)  # 6 hours
DEFAULT_TIMEOUT_S, TIMEOUT_RANGE = 900, (1, 3_600)  # InvocationTimeoutSeconds: 15 minutes
MAX_INFERENCE_ID = 64
MAX_KEY_BYTES = 1024  # S3's longest key

_EXTENSION = re.compile(r"(?!s3:|https:)[a-zA-Z0-9!_.*'()/-]{1,512}")
_FILENAME = re.compile(r"(?!.*\..*\.)[a-zA-Z0-9][a-zA-Z0-9_.-]{0,31}")


@dataclass(frozen=True)
class Destinations:
    """The endpoint's side of AsyncInferenceConfig: where results and failures go, and the model of a request
    that names none."""

    endpoint_name: str
    output: S3Location  # S3OutputPath, as a prefix
    failure: S3Location  # S3FailurePath, as a prefix
    default_model: str = ""


@dataclass(frozen=True)
class AsyncRequest:
    """An accepted async invocation: what it runs and where its outcome goes. ``inline``: the Body came with the
    call (kept in the queue's record, not here); otherwise ``input`` is read when it runs."""

    id: str  # openmme's: names the queue's record and, unless a Filename was given, the result objects
    inference_id: str
    target: str
    headers: Mapping[str, str]  # what the model sees: Content-Type, Accept, CustomAttributes, InferenceId
    input: S3Location | None
    inline: bool
    output: S3Location
    failure: S3Location
    accepted: float  # seconds since the epoch: a queue's age survives restarts
    ttl: int  # RequestTTLSeconds
    timeout: int  # InvocationTimeoutSeconds

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")

    def to_json(self, body: bytes | None) -> str:
        """The queue's record of the request, with the inline ``body`` (base64) when there is one."""
        record: dict[str, Any] = dataclasses.asdict(self)
        record["headers"] = dict(self.headers)
        for name in ("input", "output", "failure"):
            location = getattr(self, name)
            record[name] = None if location is None else [location.bucket, location.key]
        record["body"] = None if body is None else base64.b64encode(body).decode("ascii")
        return json.dumps({"version": 1, **record}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> tuple[AsyncRequest, bytes | None]:
        """A record written by ``to_json``, and its inline body; ValueError when it is not one."""
        try:
            record = json.loads(text)
            if record.pop("version") != 1:
                raise ValueError("an unknown record version")
            body = record.pop("body")
            for name in ("input", "output", "failure"):
                if record[name] is not None:
                    record[name] = S3Location(*record[name])
            request = cls(**record)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not an async request record: {exc}") from exc
        return request, None if body is None else base64.b64decode(body)


def parse_request(
    headers: Mapping[str, str], body: bytes, endpoint: str, destinations: Destinations, request_id: str, now: float
) -> tuple[AsyncRequest, bytes | None]:
    """An ``InvokeEndpointAsync`` call (its headers, any inline ``body``, the EndpointName of its URL) as the
    request to queue, and the inline body; ValidationError, naming what to change, when SageMaker would refuse
    it or when it names no model."""
    if endpoint != destinations.endpoint_name:
        served = destinations.endpoint_name
        raise ValidationError(f"Endpoint {endpoint} not found; this server serves endpoint {served}.")
    location = headers.get(INPUT_LOCATION)
    if location and body:
        raise ValidationError("InputLocation and Body are mutually exclusive: give exactly one of them")
    if not location and not body:
        raise ValidationError("InvokeEndpointAsync needs an InputLocation (s3://bucket/key of the body) or a Body")
    if len(body) > INLINE_MAX_BYTES:
        raise ValidationError(f"an inline Body is at most {INLINE_MAX_BYTES} bytes; upload it and give InputLocation")
    target = async_target_model(headers.get(CUSTOM_ATTRIBUTES), headers.get(TARGET_MODEL), destinations.default_model)
    if target is None:
        raise ValidationError(
            "InvokeEndpointAsync names no model: add TargetModel=<key> to CustomAttributes, e.g. "
            "CustomAttributes='TargetModel=houston/model.tar.gz' (the key relative to the model prefix), or start "
            "the endpoint with --async-default-model"
        )
    inference_id = headers.get(INFERENCE_ID) or request_id
    if len(inference_id) > MAX_INFERENCE_ID or not inference_id.isprintable() or inference_id[0].isspace():
        raise ValidationError(f"InferenceId must be 1 to {MAX_INFERENCE_ID} printable characters, not starting blank")
    output, failure = _destinations(destinations, request_id, headers.get(OUTPUT_PATH_EXTENSION), headers.get(FILENAME))
    model_headers = {"Content-Type": headers[CONTENT_TYPE]} if headers.get(CONTENT_TYPE) else {}
    if headers.get(ACCEPT):
        model_headers["Accept"] = headers[ACCEPT]
    if headers.get(CUSTOM_ATTRIBUTES):
        model_headers[CUSTOM_ATTRIBUTES] = headers[CUSTOM_ATTRIBUTES]
    model_headers[INFERENCE_ID] = inference_id
    request = AsyncRequest(
        id=request_id,
        inference_id=inference_id,
        target=target,
        headers=model_headers,
        input=_input_location(location) if location else None,
        inline=not location,
        output=output,
        failure=failure,
        accepted=now,
        ttl=_seconds(headers, REQUEST_TTL, "RequestTTLSeconds", DEFAULT_REQUEST_TTL_S, REQUEST_TTL_RANGE),
        timeout=_seconds(headers, INVOCATION_TIMEOUT, "InvocationTimeoutSeconds", DEFAULT_TIMEOUT_S, TIMEOUT_RANGE),
    )
    return request, body if not location else None


def _input_location(uri: str) -> S3Location:
    if not uri.startswith("s3://"):
        raise ValidationError(f"InputLocation must be an s3:// URI (s3://bucket/key): {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket or not key or key.endswith("/"):
        raise ValidationError(f"InputLocation must name an object, s3://bucket/key: {uri!r}")
    return S3Location(bucket, key)


def _destinations(
    destinations: Destinations, request_id: str, extension: str | None, filename: str | None
) -> tuple[S3Location, S3Location]:
    folder = ""
    if extension:
        segments = extension.strip("/").split("/")
        if not _EXTENSION.fullmatch(extension) or any(segment in {"", ".", ".."} for segment in segments):
            raise ValidationError(
                f"S3OutputPathExtension must be 1 to 512 of a-z A-Z 0-9 ! _ . * ' ( ) / - with no empty, '.' or "
                f"'..' segment: {extension!r}"
            )
        folder = "/".join(segments) + "/"
    if filename and not _FILENAME.fullmatch(filename):
        raise ValidationError(
            f"Filename must be 1 to 32 of a-z A-Z 0-9 _ . - starting with a letter or digit, one '.' at most: "
            f"{filename!r}"
        )
    output = destinations.output.child(folder + (filename or f"{request_id}.out"))
    failure = destinations.failure.child(folder + (f"{filename}-error.out" if filename else f"{request_id}-error.out"))
    if max(len(output.key.encode()), len(failure.key.encode())) > MAX_KEY_BYTES:
        raise ValidationError(f"the result's S3 key would be longer than S3's {MAX_KEY_BYTES} bytes")
    return output, failure


def _seconds(headers: Mapping[str, str], header: str, name: str, default: int, bounds: tuple[int, int]) -> int:
    text = headers.get(header)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValidationError(f"{name} must be a whole number of seconds: {text!r}") from None
    if not bounds[0] <= value <= bounds[1]:
        raise ValidationError(f"{name} must be between {bounds[0]} and {bounds[1]} seconds: {value}")
    return value
