"""The data plane: everything between a parsed request and its answer, with no HTTP in it.

An invocation is resolved to the archive it means (the TargetModel itself, validated; or, for an alias, the
version its document picks for this request: aliases.py), before the cache, which stays keyed by immutable
archive names; it is then run
through the cache (held loaded, loaded on a miss) and its backend, sent again once when the backend reports
``ModelLost`` (a worker died, or the host forgot the model), and recorded once: the metrics and one access-log
line, whatever the outcome and however many attempts it took; once answered, it is offered to data capture
(capture.py) when that is on, and, when its alias mirrors it to a shadow version, to the mirror (shadow.py). The
answer names the variant that answered (``x-Amzn-Invoked-Production-Variant``): the alias's version, or
``AllTraffic`` for an archive invoked by its name.

A pipeline (a TargetModel ending in ``.pipeline.json``, pipeline_manifest.py; or any TargetModel, with
``--pipeline``) runs its steps in order, each an ordinary model of the cache, as SageMaker runs a serial inference
pipeline's containers: the client's Content-Type goes to the first step and its Accept to the last, each step's
answer is the next one's body with its Content-Type, a step followed by another is asked in the Accept its manifest
entry names, else in its archive's default (``openmme.json``), else in none (the handler's default). CustomAttributes
and the InferenceId go to every step. An error names the step that failed.

The front (app.py) turns HTTP into an ``Invocation`` and an ``Answer`` or an ``EndpointError`` back into HTTP;
the container API's model calls (list, describe, load, unload) go through here too, so that the data plane is
the one caller of the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from openmme.endpoint.aliases import ALL_TRAFFIC, AliasTable, Resolution
from openmme.endpoint.cache.backend import ModelLost, Reply
from openmme.endpoint.cache.core import ModelCache
from openmme.endpoint.cache.entry import Entry
from openmme.endpoint.errors import (
    EndpointError,
    InsufficientMemory,
    ModelError,
    ServiceUnavailable,
    ValidationError,
)
from openmme.endpoint.logs import access_log, log_json
from openmme.endpoint.metrics import Metrics
from openmme.endpoint.names import CUSTOM_ATTRIBUTES, INFERENCE_ID, INVOKED_VARIANT, validate_target_model
from openmme.endpoint.pipeline_manifest import TARGET_STEP, PipelineManifest, is_pipeline, split_pipeline_target
from openmme.endpoint.pipelines import Pipelines
from openmme.endpoint.settings import MAX_BODY_BYTES
from openmme.endpoint.shadow import Mirror
from openmme.handlers import ERROR_HEADER

if TYPE_CHECKING:
    from openmme.endpoint.capture import Capturer

__all__ = [
    "FORM_TYPES",
    "Answer",
    "DataPlane",
    "Invocation",
    "PlannedStep",
    "ms_since",
    "reply_answer",
    "with_default_accept",
]

# Bodies MMS parses into form parameters instead of passing them on: the model would see no body at all.
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
# The load phases a missing request waited for, as access-log fields.
_PHASES = (("download", "download_ms"), ("extract", "extract_ms"), ("register", "load_ms"))


@dataclass(frozen=True)
class Invocation:
    """One request to the runtime API, as the front parsed it."""

    target: str | None  # the TargetModel as sent (None: not sent)
    headers: Mapping[str, str]  # the request headers the model may see
    content_type: str
    read_body: Callable[[], Awaitable[bytes]]  # read after the request is validated (it may be refused first)
    endpoint: str | None = None  # the EndpointName of the URL, if it named one
    variant: str | None = None  # the TargetVariant (X-Amzn-SageMaker-Target-Variant), if sent


@dataclass(frozen=True)
class PlannedStep:
    """One step of a pipeline, bound for one request: the archive it runs and how errors name it."""

    target: str
    accept: str | None  # asked of it when another step follows (None: its archive's default, else its handler's)
    where: str  # "step 2 of 3 of pipeline 'x.pipeline.json'"


@dataclass(frozen=True)
class Answer:
    """A prediction: the model's bytes and the runtime API's headers."""

    body: bytes
    content_type: str
    headers: Mapping[str, str]


class DataPlane:
    """Invocations and the container API's model calls, over the cache and its backend."""

    def __init__(
        self,
        cache: ModelCache,
        metrics: Metrics,
        capture: Capturer | None = None,
        aliases: AliasTable | None = None,
        pipelines: Pipelines | None = None,
    ) -> None:
        self.cache = cache
        self.pipelines = pipelines  # pipeline manifests (pipelines.py); None: TargetModels run alone
        self._prefetching: dict[str, asyncio.Task[None]] = {}  # later steps of cold pipelines, loading
        self.capture = capture  # data capture (capture.py), offered every answered invocation; None: off
        self.aliases = aliases  # the aliases of the prefix (aliases.py); None: no aliases
        self.mirror = Mirror(self._shadow_call, aliases, cache.settings.shadow_concurrency) if aliases else None
        self.settings = cache.settings
        self.backend = cache.backend
        self.metrics = metrics
        source = cache.store.source
        self.prefix = source.prefix if source is not None else None
        if aliases is not None and pipelines is not None:
            aliases.expand = self.pipeline_archives  # an alias version that is a pipeline: its steps load first

    async def invoke(self, call: Invocation) -> Answer:
        """One invocation: validate, resolve, hold the model loaded (loading it on a miss), predict, answer; logged
        and counted once whatever the outcome."""
        started = time.perf_counter()
        record: dict[str, object] = {
            "event": "invocation",
            "inference_id": call.headers.get(INFERENCE_ID),
            "target_model": call.target,
        }
        status = 500
        target: str | None = None
        resolution: Resolution | None = None
        try:
            if call.endpoint is not None and call.endpoint != self.settings.endpoint_name:
                raise ValidationError(
                    f"Endpoint {call.endpoint} not found; this server serves endpoint {self.settings.endpoint_name}."
                )
            resolution = self.resolve(call.target, call.headers, call.variant)
            target = resolution.target
            if resolution.alias is not None:
                record["variant"], record["version"] = resolution.variant, target
            _refuse_form(call.content_type, target)
            body = await call.read_body()
            answer = await self._execute(target, body, call.headers, record, resolution.variant)
            status = 200
            if self.capture is not None:
                self.capture.offer(target, call.headers, body, answer.body, answer.content_type)
            if resolution.shadow is not None and self.mirror is not None:
                self.mirror.offer(resolution, body, call.headers, answer)
            return answer
        except EndpointError as error:
            status = error.status
            record["error"] = error.code
            raise
        finally:
            record["status"] = status
            record["total_ms"] = ms_since(started)
            seconds = time.perf_counter() - started
            self.metrics.invocation(target, status, seconds)
            if resolution is not None and resolution.alias is not None and self.aliases is not None:
                self.aliases.record(resolution, status, seconds)
            log_json(access_log, record)

    def resolve(
        self, target: str | None, headers: Mapping[str, str] | None = None, variant: str | None = None
    ) -> Resolution:
        """What a TargetModel means for this request, checked as SageMaker checks it: an alias's version (picked
        by its weights, the request's sticky key, or ``variant``, its TargetVariant), or the archive it names."""
        name = validate_target_model(target, self.prefix)
        if self.aliases is not None:
            headers = headers or {}
            chosen = self.aliases.resolve(name, headers.get(INFERENCE_ID), headers.get(CUSTOM_ATTRIBUTES), variant)
            if chosen is not None:
                return chosen
        if variant is not None and variant != ALL_TRAFFIC:
            raise ValidationError(
                f"TargetVariant {variant} is not a variant of TargetModel {name}: an archive invoked by its name has"
                f" one variant, {ALL_TRAFFIC} (variants are an alias's versions)"
            )
        return Resolution(name)

    def _prefetch(self, steps: list[PlannedStep]) -> None:
        """Start loading every later step that is not loaded, while the first ones load or run: a cold pipeline
        then waits for its slowest step's load, not for the sum of them. A load that fails here is answered when
        its step is reached."""
        for step in steps[1:]:
            if self.cache.is_ready(step.target) or step.target in self._prefetching:
                continue
            task = asyncio.create_task(self._load_quietly(step.target), name=f"prefetch {step.target}")
            self._prefetching[step.target] = task
            task.add_done_callback(functools.partial(self._prefetched, step.target))

    def _prefetched(self, target: str, _: asyncio.Task[None]) -> None:
        self._prefetching.pop(target, None)

    async def _load_quietly(self, target: str) -> None:
        with contextlib.suppress(EndpointError, OSError):
            async with self.cache.use(target, counted=False):
                pass

    def _runs_pipeline(self, target: str) -> bool:
        """Whether ``target`` runs as a pipeline: it names one, or ``--pipeline`` puts every TargetModel behind
        one."""
        return self.pipelines is not None and (is_pipeline(target) or bool(self.pipelines.default))

    async def pipeline_archives(self, target: str) -> list[str]:
        """The archives ``target`` runs: its steps' (their aliases' versions as served now) when it is a pipeline,
        else itself (through ``--pipeline``'s steps when one is set)."""
        if not self._runs_pipeline(target):
            return [target]
        manifest, inner = await self._manifest_of(target)
        if inner is None and manifest.takes_target:
            return [step.model for step in manifest.steps if step.model != TARGET_STEP]  # warmed with no model
        return [step.target for step in self._bind(manifest, inner, {})]

    async def _shadow_call(self, target: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        """A mirrored invocation (shadow.py): through the cache and backend as any request, logged by the mirror."""
        return await self._execute(target, body, headers, {}, ALL_TRAFFIC)

    async def _execute(
        self, target: str, body: bytes, headers: Mapping[str, str], record: dict[str, object], variant: str
    ) -> Answer:
        """``target`` run alone, or, when it is a pipeline (or ``--pipeline`` names one), its steps in order."""
        if not self._runs_pipeline(target):
            return await self._run(target, body, headers, record, variant)
        manifest, inner = await self._manifest_of(target)
        steps = self._bind(manifest, inner, headers)
        return await self._run_steps(manifest, steps, body, headers, record, variant)

    async def _manifest_of(self, target: str) -> tuple[PipelineManifest, str | None]:
        """The manifest ``target`` runs through, and the model its ``{TargetModel}`` step stands for."""
        assert self.pipelines is not None
        if is_pipeline(target):
            name, inner = split_pipeline_target(target)
        else:
            name, inner = self.pipelines.default, target
        return await self.pipelines.manifest(name), inner

    def _bind(self, manifest: PipelineManifest, inner: str | None, headers: Mapping[str, str]) -> list[PlannedStep]:
        """The manifest's steps for this request: ``{TargetModel}`` filled in, an alias resolved to the version it
        picks for this request (as for a direct call of the alias)."""
        steps = manifest.bound(inner)
        planned = []
        for index, step in enumerate(steps, 1):
            where = f"step {index} of {len(steps)} of pipeline {manifest.name!r}"
            target = step.model
            if self.aliases is not None:
                chosen = self.aliases.resolve(target, headers.get(INFERENCE_ID), headers.get(CUSTOM_ATTRIBUTES), None)
                if chosen is not None:
                    target = chosen.target
            if is_pipeline(target):
                raise ValidationError(
                    f"{where} resolves to pipeline {target!r}: steps are models, pipelines do not nest"
                )
            planned.append(PlannedStep(target, step.accept, where))
        return planned

    async def _run_steps(
        self,
        manifest: PipelineManifest,
        steps: list[PlannedStep],
        body: bytes,
        headers: Mapping[str, str],
        record: dict[str, object],
        variant: str,
    ) -> Answer:
        """The steps in order, each answer the next one's request; the last one's answer is the pipeline's."""
        self._prefetch(steps)
        records: list[dict[str, object]] = []
        record["pipeline"], record["steps"] = manifest.name, records
        request = dict(headers)
        last = len(steps) - 1
        for index, step in enumerate(steps):
            step_headers = dict(request)
            if index < last:
                step_headers.pop("Accept", None)
                if step.accept is not None:
                    step_headers["Accept"] = step.accept
            step_record: dict[str, object] = {"model": step.target}
            records.append(step_record)
            try:
                reply = await self._call(step.target, body, step_headers, step_record)
                if index == last or reply.status != 200:  # the pipeline's answer, or the step's error raised
                    return reply_answer(step.target, reply, headers, variant, step.where)
            except EndpointError as error:
                raise _in_step(error, step) from error
            if len(reply.body) > MAX_BODY_BYTES:
                following = steps[index + 1]
                message = (
                    f"{step.where} ({step.target!r}) answered {len(reply.body)} bytes for step {index + 2}"
                    f" ({following.target!r}), over the {MAX_BODY_BYTES}-byte limit of one invocation"
                )
                raise ModelError(message, original_status=413)
            body = reply.body
            request["Content-Type"] = _content_type(reply)
        raise AssertionError("a pipeline has at least two steps")

    async def _run(
        self,
        target: str,
        body: bytes,
        headers: Mapping[str, str],
        record: dict[str, object],
        variant: str = ALL_TRAFFIC,
    ) -> Answer:
        """Through the cache to the model; sent again once when the backend lost the model meanwhile."""
        return reply_answer(target, await self._call(target, body, headers, record), headers, variant)

    async def _call(self, target: str, body: bytes, headers: Mapping[str, str], record: dict[str, object]) -> Reply:
        """The model's reply, whatever its status; the request is sent again once when the backend lost the model
        meanwhile. A request that asks no Accept (or ``*/*``) is asked the archive's default, when it sets one."""
        hit = self.cache.is_ready(target)
        record["cache"] = "hit" if hit else "miss"
        for attempt in range(2):
            waiting = time.perf_counter()
            async with self.cache.use(target, counted=attempt == 0) as entry:
                record["wait_ms"] = ms_since(waiting)
                if not hit:
                    _record_load(entry, record)
                predicting = time.perf_counter()
                headers = with_default_accept(headers, entry.default_accept)
                try:
                    route = self.backend.route(entry)
                except ModelLost:
                    continue  # its dense shard died just now: the model is loaded again on the next attempt
                try:
                    reply = await self.backend.call(entry, route, body, headers)
                except ModelLost:
                    record["predict_ms"] = ms_since(predicting)
                    continue  # its workers died, or the host forgot it: loaded again on the next attempt
                record["predict_ms"] = ms_since(predicting)
                return reply
        raise ServiceUnavailable(f"model {target!r} could not be kept loaded; retry")

    # ---- the container API's model calls ----------------------------------------------------------------

    def models(self) -> list[Entry]:
        return self.cache.models()

    def model(self, name: str) -> Entry | None:
        return self.cache.get(name)

    def is_loaded(self, name: str) -> bool:
        return self.cache.is_ready(name)

    def summary(self) -> dict[str, Any]:
        summary = self.cache.snapshot()
        if self.pipelines is not None:
            summary["pipelines"] = self.pipelines.describe()
        return summary

    async def shards(self) -> dict[str, Any]:
        """What each dense shard's worker says it holds and has loaded, by shard name."""
        return await self.backend.listings()

    def alias_figures(self) -> dict[str, Any]:
        """``GET /aliases``: the aliases served and their versions' figures (empty when aliases are off)."""
        return self.aliases.describe() if self.aliases is not None else {"aliases": {}, "versions": [], "shadows": []}

    async def close(self) -> None:
        """After the last request: let mirrored invocations finish, stop alias switches and step loads under way."""
        for task in list(self._prefetching.values()):
            task.cancel()
        if self.mirror is not None:
            await self.mirror.close()
        if self.aliases is not None:
            await self.aliases.close()

    async def add(self, name: str, url: str) -> None:
        """SageMaker's ``POST /models``: serve the directory it already downloaded."""
        await self.cache.register_local(name, url)

    async def unload(self, name: str) -> bool:
        return await self.cache.unload(name)


def _refuse_form(content_type: str, target: str) -> None:
    """A form body (curl's default for ``-d``) would reach the model as no body at all: refuse it as the model's
    415 would be answered, saying what to send instead."""
    if content_type not in FORM_TYPES:
        return
    message = (
        f"Content-Type {content_type} is not supported: a form body never reaches the model (curl -d sends one "
        "unless told otherwise). Send the body with its real type, e.g. curl -H 'Content-Type: text/csv' "
        "--data-binary @rows.csv, or ContentType='text/csv' in invoke_endpoint"
    )
    raise ModelError(
        f'Received client error (415) from model {target!r} with message "{message}".',
        original_status=415,
        original_message=message,
    )


def _record_load(entry: Entry, record: dict[str, object]) -> None:
    for phase, key in _PHASES:
        if phase in entry.timings:
            record[key] = round(entry.timings[phase] * 1000, 2)


def with_default_accept(headers: Mapping[str, str], default_accept: str | None) -> Mapping[str, str]:
    """``headers`` asking the archive's ``default_accept`` (its openmme.json's) when they ask no Accept or ``*/*``;
    unchanged when the archive sets none."""
    if default_accept is None or headers.get("Accept", "*/*") != "*/*":
        return headers
    return {**headers, "Accept": default_accept}


def ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


def _content_type(reply: Reply) -> str:
    return reply.headers.get("Content-Type", "application/octet-stream").split(";")[0]


def _in_step(error: EndpointError, step: PlannedStep) -> EndpointError:
    """``error`` (a step's load or call failed) with the step named, unless its message names it already."""
    if step.where in error.message:
        return error
    named = copy.copy(error)
    named.message = f"{step.where} ({step.target!r}): {error.message}"
    named.args = (named.message,)
    return named


def reply_answer(
    target: str, reply: Reply, request_headers: Mapping[str, str], variant: str, step: str | None = None
) -> Answer:
    """The runtime API's answer to the model's reply: the prediction (naming the ``variant`` that answered), or the
    right typed error (naming the pipeline ``step`` that answered it, if it is one)."""
    if reply.status == 200:
        headers = {INVOKED_VARIANT: variant}
        attributes = reply.headers.get(CUSTOM_ATTRIBUTES) or request_headers.get(CUSTOM_ATTRIBUTES)
        if attributes:
            headers[CUSTOM_ATTRIBUTES] = attributes
        if INFERENCE_ID in request_headers:
            headers[INFERENCE_ID] = request_headers[INFERENCE_ID]
        return Answer(reply.body, _content_type(reply), headers)
    message = reply.message
    if reply.headers.get(ERROR_HEADER) or reply.status not in (503, 507):
        side = "client" if 400 <= reply.status < 500 else "server"
        model = f"model {target!r}" if step is None else f"model {target!r} ({step})"
        raise ModelError(
            f'Received {side} error ({reply.status}) from {model} with message "{message}".',
            original_status=reply.status,
            original_message=message,
        )
    if reply.status == 507:
        raise InsufficientMemory(f"the model ran out of memory: {message}")
    raise ServiceUnavailable(f"the endpoint is overloaded, retry: {message}")
