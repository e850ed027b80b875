"""Publishing inference pipelines: a manifest (``openmme.endpoint.pipeline_manifest``) checked, then written once.

``openmme pipeline publish`` builds the manifest of a pipeline from its steps and, before it uploads anything,
checks what an endpoint would meet:

1. **Every step resolves.** An archive step is an object of the prefix; an alias step has a document there
   (``.openmme/aliases/<alias>.json``, not removed); a ``{TargetModel}`` step is checked with the model given as
   ``check_target``, which must resolve too. A step that does not is named, with every other one that does not.
2. **The pipeline loads and answers.** ``openmme serve`` is started on the prefix for the check (the embedded
   endpoint of ``openmme transform``, answering as a real-time endpoint, not as batch transform) with
   ``--pipeline-file NAME=<the manifest, in a temporary file>``, so the endpoint runs exactly the bytes about to
   be uploaded, each step loaded as any model (a script step's ``code/requirements.txt`` built as it would be
   when serving). The sample is invoked with the pipeline's TargetModel and must be answered 200; anything else
   fails the publish with the endpoint's own message, which names the failing step. A step still loading (429
   ModelNotReady, e.g. while its environment builds) is asked again until ``check_timeout`` runs out.
3. **The manifest is written once.** A create-only PutObject (``If-None-Match: *``): a manifest, like an archive,
   is immutable once an endpoint has read it, so a different manifest under a taken name is refused (publish it
   under a new name and move an alias to it), unless ``force``; ``force`` replaces only the manifest that was read
   (``If-Match`` its ETag), never one written meanwhile. The same bytes again are no change: publishing is
   idempotent.

Every refusal leaves the prefix as it was. Errors are ``PublishError``s (the package's tree), plus:

    PublishError
    ├── PipelineRefused       (ValueError)       bad name, invalid manifest, a step that does not resolve
    └── ModelCheckFailed
        └── PipelineCheckFailed                  the check endpoint did not answer the sample 200
"""

from __future__ import annotations

import json
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openmme.endpoint.alias_state import AliasInvalid, check_alias_name
from openmme.endpoint.names import TARGET_MODEL, S3Location
from openmme.endpoint.pipeline_manifest import (
    PIPELINE_SUFFIX,
    TARGET_STEP,
    PipelineInvalid,
    PipelineManifest,
    Step,
    check_step_model,
)
from openmme.publish._errors import ArtifactExists, InvalidTargetModel, ModelCheckFailed, ModelNotFound, PublishError
from openmme.publish._s3 import (
    check_target_model,
    object_size,
    parse_prefix,
    put_json_if,
    read_object,
    require_bucket,
    s3_client,
    suggest_name,
)
from openmme.publish.aliases import AliasNotFound, get_alias

__all__ = [
    "DEFAULT_CHECK_TIMEOUT_S",
    "PipelineCheckFailed",
    "PipelineRefused",
    "PipelineReport",
    "ResolvedStep",
    "SampleAnswer",
    "get_pipeline",
    "publish_pipeline",
    "resolve_steps",
    "steps_with_accepts",
]

# The check's whole budget for the sample's answer: the endpoint's default --environment-build-timeout (600 s) for
# a script step whose requirements are built, plus the loads of the other steps.
DEFAULT_CHECK_TIMEOUT_S = 900.0
# One request's limit: the endpoint answers 429 after its wait budget (60 s by default) while a step loads.
_REQUEST_TIMEOUT_S = 300.0
_RETRY_PAUSE_S = 1.0
_SHOWN_ANSWER_CHARS = 120


class PipelineRefused(PublishError, ValueError):
    """The pipeline cannot be published as asked: its name, its manifest, or a step that does not resolve.
    Nothing was written."""


class PipelineCheckFailed(ModelCheckFailed):
    """The check endpoint did not answer the sample end to end (or did not start); ``status`` and ``code`` are
    its answer's (0 and "" when there was none). Nothing was written."""

    def __init__(self, message: str, status: int = 0, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class ResolvedStep:
    """One step of a manifest and what it names in the prefix: ``kind`` is ``archive``, ``alias``, ``missing``,
    or ``unchecked`` (a ``{TargetModel}`` step with no model given to check it with)."""

    index: int
    of: int
    step: Step
    model: str  # the model it was checked with: the step's own, or the check target for {TargetModel}
    kind: str
    detail: str

    @property
    def found(self) -> bool:
        return self.kind in {"archive", "alias"}

    def describe(self) -> str:
        """One line: ``step 2 of 3: booster.tar.gz (archive, 1234 bytes)``."""
        named = self.step.model if self.model == self.step.model else f"{self.step.model} → {self.model}"
        accept = f", answers in {self.step.accept}" if self.step.accept else ""
        return (
            f"step {self.index} of {self.of}: {named} ({self.kind}{', ' if self.detail else ''}{self.detail}{accept})"
        )


@dataclass(frozen=True)
class SampleAnswer:
    """The check endpoint's 200 answer to the sample."""

    target_model: str
    content_type: str | None
    body: bytes

    def preview(self) -> str:
        """The answer's first characters on one line (its lines joined by `` | ``)."""
        text = self.body.decode("utf-8", errors="replace").strip().replace("\n", " | ")
        return text if len(text) <= _SHOWN_ANSWER_CHARS else text[: _SHOWN_ANSWER_CHARS - 3] + "..."


@dataclass(frozen=True)
class PipelineReport:
    """What ``publish_pipeline`` did: ``outcome`` is ``published``, ``replaced`` (``force``) or ``unchanged`` (the
    prefix held these very bytes; then nothing was resolved or checked)."""

    uri: str
    manifest: PipelineManifest
    outcome: str
    steps: tuple[ResolvedStep, ...] = ()
    answer: SampleAnswer | None = None

    @property
    def target_model(self) -> str:
        """What clients invoke: the manifest's name, followed by a model when it has a ``{TargetModel}`` step."""
        name = self.manifest.name
        return f"{name}/<model> (e.g. {name}/houston/model.tar.gz)" if self.manifest.takes_target else name


# ---- reading ------------------------------------------------------------------------------------------------


def get_pipeline(prefix: str, name: str, *, client: Any | None = None) -> PipelineManifest:
    """The manifest ``name`` of ``prefix``; ModelNotFound when there is none, StoreError when it cannot be read."""
    client = client or s3_client()
    location = parse_prefix(prefix)
    name = _checked_name(name)
    found = read_object(client, location.child(name))
    if found is None:
        raise ModelNotFound(f"{location} has no pipeline {name}")
    try:
        return PipelineManifest.from_bytes(found[0], name)
    except PipelineInvalid as exc:
        raise PipelineRefused(f"{location.child(name)} is not a manifest an endpoint can run: {exc}") from exc


def resolve_steps(
    prefix: str, manifest: PipelineManifest, *, check_target: str | None = None, client: Any | None = None
) -> tuple[ResolvedStep, ...]:
    """What each step of ``manifest`` names in ``prefix``, in order; a step that names nothing is ``missing``.

    An alias-shaped name is looked up as an alias first, as the endpoint resolves a TargetModel."""
    client = client or s3_client()
    location = parse_prefix(prefix)
    if check_target is not None:
        check_target = _checked_target(check_target)
    count = len(manifest.steps)
    resolved = []
    for index, step in enumerate(manifest.steps, 1):
        model = check_target if step.model == TARGET_STEP else step.model
        if model is None:
            resolved.append(ResolvedStep(index, count, step, step.model, "unchecked", "no --check-target given"))
            continue
        kind, detail = _find(client, location, model)
        resolved.append(ResolvedStep(index, count, step, model, kind, detail))
    return tuple(resolved)


# ---- publishing ---------------------------------------------------------------------------------------------


def steps_with_accepts(steps: Sequence[str], accepts: Mapping[int, str]) -> list[Step]:
    """``steps`` with the Accept of some of them (``{2: "text/csv"}``: step 2, counted from 1); PipelineRefused for
    a step that is not there, or the last one (its answer is the client's, in the client's Accept)."""
    for index in accepts:
        if not 1 <= index < len(steps):
            last = (
                f"; step {len(steps)} is the last, which answers in the client's Accept" if index == len(steps) else ""
            )
            raise PipelineRefused(
                f"an accept for step {index}: the steps that take one are 1 to {len(steps) - 1}{last}"
            )
    return [Step(model, accepts.get(index)) for index, model in enumerate(steps, 1)]


def publish_pipeline(
    prefix: str,
    name: str,
    steps: Sequence[str | Step],
    *,
    sample: bytes | None = None,
    content_type: str | None = None,
    accept: str | None = None,
    check_target: str | None = None,
    serve_args: Sequence[str] = (),
    check: bool = True,
    force: bool = False,
    check_timeout: float = DEFAULT_CHECK_TIMEOUT_S,
    client: Any | None = None,
) -> PipelineReport:
    """Check the pipeline ``name`` of ``steps`` and write its manifest to ``<prefix><name>`` (see the module).

    ``sample`` (sent as ``content_type``, text/csv by default, answered in ``accept``) is required unless
    ``check=False``, which skips the endpoint but still resolves every step. ``check_target``: the model a
    ``{TargetModel}`` step is checked with. ``serve_args``: more flags for the check's ``openmme serve``. Raises
    PipelineRefused, PipelineCheckFailed, ArtifactExists, InvalidPrefix, BucketNotFound, StoreError; nothing is
    written unless it returns."""
    manifest = _manifest(name, steps)
    body = manifest.to_json().encode()
    if check and sample is None:
        raise PipelineRefused(f"pipeline {manifest.name}: give a sample request to check it with (or skip the check)")
    if check and manifest.takes_target and check_target is None:
        raise PipelineRefused(
            f"pipeline {manifest.name} runs in front of the model a request names ({TARGET_STEP}): give a model of"
            " the prefix to check it with (--check-target houston/model.tar.gz)"
        )
    if check_target is not None and not manifest.takes_target:
        raise PipelineRefused(f"pipeline {manifest.name} has no {TARGET_STEP} step to check with {check_target}")
    client = client or s3_client()
    location = parse_prefix(prefix)
    require_bucket(client, location)
    destination = location.child(manifest.name)
    existing = read_object(client, destination)
    if existing is not None and existing[0] == body:
        return PipelineReport(str(destination), manifest, "unchanged")
    if existing is not None and not force:
        raise _taken(client, location, manifest.name)

    resolved = resolve_steps(prefix, manifest, check_target=check_target, client=client)
    missing = [step for step in resolved if step.kind == "missing"]
    if missing:
        raise PipelineRefused(
            "; ".join(
                f"pipeline {manifest.name!r} step {step.index} of {step.of} ({step.model!r}): {step.detail}"
                for step in missing
            )
            + "; nothing was written"
        )
    answer = None
    if check:
        assert sample is not None
        request = _Sample(sample, content_type or "text/csv", accept)
        answer = _check(prefix, manifest, body, request, check_target, serve_args, check_timeout)

    if existing is None:
        if put_json_if(client, destination, body, IfNoneMatch="*"):
            return PipelineReport(str(destination), manifest, "published", resolved, answer)
        now = read_object(client, destination)  # someone published this name while the check ran
        if now is not None and now[0] == body:
            return PipelineReport(str(destination), manifest, "unchanged", resolved, answer)
        raise _taken(client, location, manifest.name)
    if put_json_if(client, destination, body, IfMatch=existing[1]):
        return PipelineReport(str(destination), manifest, "replaced", resolved, answer)
    raise _taken(client, location, manifest.name, meanwhile=True)


# ---- the check ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sample:
    body: bytes
    content_type: str
    accept: str | None


def _check(
    prefix: str,
    manifest: PipelineManifest,
    body: bytes,
    sample: _Sample,
    check_target: str | None,
    serve_args: Sequence[str],
    timeout: float,
) -> SampleAnswer:
    """The sample invoked through an endpoint of its own serving ``body`` as the pipeline ``manifest.name``."""
    from openmme.transform.embedded import embedded_endpoint

    target = f"{manifest.name}/{check_target}" if manifest.takes_target else manifest.name
    with tempfile.TemporaryDirectory(prefix="openmme-pipeline-") as scratch:
        manifest_file = Path(scratch) / "manifest.pipeline.json"
        manifest_file.write_bytes(body)
        pipeline_file = f"{manifest.name}={manifest_file}"
        try:
            # A real-time endpoint's answers (not batch transform's): what the steps will pass each other when served.
            endpoint_args = [*serve_args, "--pipeline-file", pipeline_file]
            with embedded_endpoint(prefix, endpoint_args, environment={}) as endpoint:
                return _invoke(endpoint.invocations_url, target, sample, timeout)
        except RuntimeError as exc:  # the endpoint did not start; its log is named
            raise PipelineCheckFailed(f"pipeline {manifest.name}: {exc}; nothing was written") from exc


def _invoke(url: str, target: str, sample: _Sample, timeout: float) -> SampleAnswer:
    """POST the sample as boto3's InvokeEndpoint would; asked again while a step is still loading (429)."""
    headers = {TARGET_MODEL: target, "Content-Type": sample.content_type}
    if sample.accept:
        headers["Accept"] = sample.accept
    deadline = time.monotonic() + timeout
    while True:
        request = urllib.request.Request(url, data=sample.body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=_REQUEST_TIMEOUT_S) as response:
                return SampleAnswer(target, response.headers.get("Content-Type"), response.read())
        except urllib.error.HTTPError as error:
            status, code, message = error.code, *_error_of(error.headers, error.read())
        except OSError as exc:
            raise PipelineCheckFailed(f"the check endpoint did not answer TargetModel {target}: {exc}") from exc
        if status != 429 or time.monotonic() >= deadline:
            waited = " (still loading after the check's time limit)" if status == 429 else ""
            raise PipelineCheckFailed(
                f"the sample was not answered through TargetModel {target}: {code} ({status}){waited}:"
                f" {message.rstrip('. ')}; nothing was written",
                status,
                code,
            )
        time.sleep(_RETRY_PAUSE_S)


def _error_of(headers: Any, body: bytes) -> tuple[str, str]:
    """The SageMaker error code and the endpoint's own message (for a pipeline, the one naming the step)."""
    code = str(headers.get("x-amzn-ErrorType", "")).split(":", 1)[0]
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    message = ""
    if isinstance(parsed, dict):
        message = str(parsed.get("message") or parsed.get("Message") or "")
        code = code or str(parsed.get("__type", "")).rsplit("#", 1)[-1]
    return code or "error", message or body.decode("utf-8", errors="replace").strip()[:300] or "no message"


# ---- S3 -----------------------------------------------------------------------------------------------------


def _find(client: Any, location: S3Location, model: str) -> tuple[str, str]:
    """(kind, detail) of what ``model`` names in the prefix: an alias with a document, else an archive."""
    if _is_alias_name(model):
        try:
            document = get_alias(str(location), model, client=client)
        except AliasNotFound:
            pass
        else:
            return "alias", f"generation {document.generation}: {document.summary()}"
    size = object_size(client, location.child(model))
    if size is not None:
        return "archive", f"{size} bytes"
    return "missing", f"not in {location} as an archive or an alias: publish it first"


def _taken(client: Any, location: S3Location, name: str, *, meanwhile: bool = False) -> ArtifactExists:
    suggestion = suggest_name(client, location, name)
    how = "was changed by someone else while this one was checked" if meanwhile else "holds a different manifest"
    return ArtifactExists(
        f"{location.child(name)} {how}; a pipeline manifest is immutable (endpoints keep the one they read):"
        f" publish it under a new name, e.g. {suggestion}, and move an alias to it (or replace it with --force)",
        suggestion,
    )


# ---- names --------------------------------------------------------------------------------------------------


def _manifest(name: str, steps: Sequence[str | Step]) -> PipelineManifest:
    """The manifest of ``steps``, validated as an endpoint reads it (from its JSON bytes)."""
    name = _checked_name(name)
    described = [Step(step).describe() if isinstance(step, str) else step.describe() for step in steps]
    try:
        built = PipelineManifest.parse({"steps": described}, name)
        return PipelineManifest.from_bytes(built.to_json().encode(), name)
    except PipelineInvalid as exc:
        raise PipelineRefused(f"{exc}; nothing was written") from exc


def _checked_name(name: str) -> str:
    if not name.endswith(PIPELINE_SUFFIX) or name.rsplit("/", 1)[-1] == PIPELINE_SUFFIX:
        raise PipelineRefused(
            f"a pipeline's name is its TargetModel and ends in {PIPELINE_SUFFIX} (e.g. churn{PIPELINE_SUFFIX}),"
            f" not {name!r}"
        )
    try:
        return check_target_model(name)
    except InvalidTargetModel as exc:
        raise PipelineRefused(f"pipeline {name!r}: {exc}") from exc


def _checked_target(model: str) -> str:
    """The model a ``{TargetModel}`` step is checked with: one a step may run."""
    try:
        return check_step_model(model, "the check target")
    except PipelineInvalid as exc:
        raise PipelineRefused(str(exc)) from exc


def _is_alias_name(name: str) -> bool:
    try:
        check_alias_name(name)
    except AliasInvalid:
        return False
    return True
