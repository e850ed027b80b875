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

The front (app.py) turns HTTP into an ``Invocation`` and an ``Answer`` or an ``EndpointError`` back into HTTP;
the container API's model calls (list, describe, load, unload) go through here too, so that the data plane is
the one caller of the cache.
"""

from __future__ import annotations

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
from openmme.endpoint.shadow import Mirror
from openmme.handlers import ERROR_HEADER

if TYPE_CHECKING:
    from openmme.endpoint.capture import Capturer

__all__ = ["Answer", "DataPlane", "Invocation"]

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
    ) -> None:
        self.cache = cache
        self.capture = capture  # data capture (capture.py), offered every answered invocation; None: off
        self.aliases = aliases  # the aliases of the prefix (aliases.py); None: no aliases
        self.mirror = Mirror(self._shadow_call, aliases, cache.settings.shadow_concurrency) if aliases else None
        self.settings = cache.settings
        self.backend = cache.backend
        self.metrics = metrics
        source = cache.store.source
        self.prefix = source.prefix if source is not None else None

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
            answer = await self._run(target, body, call.headers, record, resolution.variant)
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
            record["total_ms"] = _ms_since(started)
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

    async def _shadow_call(self, target: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        """A mirrored invocation (shadow.py): through the cache and backend as any request, logged by the mirror."""
        return await self._run(target, body, headers, {}, ALL_TRAFFIC)

    async def _run(
        self,
        target: str,
        body: bytes,
        headers: Mapping[str, str],
        record: dict[str, object],
        variant: str = ALL_TRAFFIC,
    ) -> Answer:
        """Through the cache to the model; sent again once when the backend lost the model meanwhile."""
        hit = self.cache.is_ready(target)
        record["cache"] = "hit" if hit else "miss"
        for attempt in range(2):
            waiting = time.perf_counter()
            async with self.cache.use(target, counted=attempt == 0) as entry:
                record["wait_ms"] = _ms_since(waiting)
                if not hit:
                    _record_load(entry, record)
                predicting = time.perf_counter()
                try:
                    route = self.backend.route(entry)
                except ModelLost:
                    continue  # its dense shard died just now: the model is loaded again on the next attempt
                try:
                    reply = await self.backend.call(entry, route, body, headers)
                except ModelLost:
                    record["predict_ms"] = _ms_since(predicting)
                    continue  # its workers died, or the host forgot it: loaded again on the next attempt
                record["predict_ms"] = _ms_since(predicting)
                return _answer(target, reply, headers, variant)
        raise ServiceUnavailable(f"model {target!r} could not be kept loaded; retry")

    # ---- the container API's model calls ----------------------------------------------------------------

    def models(self) -> list[Entry]:
        return self.cache.models()

    def model(self, name: str) -> Entry | None:
        return self.cache.get(name)

    def is_loaded(self, name: str) -> bool:
        return self.cache.is_ready(name)

    def summary(self) -> dict[str, Any]:
        return self.cache.snapshot()

    async def shards(self) -> dict[str, Any]:
        """What each dense shard's worker says it holds and has loaded, by shard name."""
        return await self.backend.listings()

    def alias_figures(self) -> dict[str, Any]:
        """``GET /aliases``: the aliases served and their versions' figures (empty when aliases are off)."""
        return self.aliases.describe() if self.aliases is not None else {"aliases": {}, "versions": [], "shadows": []}

    async def close(self) -> None:
        """After the last request: let mirrored invocations finish, stop alias switches under way."""
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


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


def _answer(target: str, reply: Reply, request_headers: Mapping[str, str], variant: str) -> Answer:
    """The runtime API's answer to the model's reply: the prediction (naming the ``variant`` that answered), or the
    right typed error."""
    if reply.status == 200:
        headers = {INVOKED_VARIANT: variant}
        attributes = reply.headers.get(CUSTOM_ATTRIBUTES) or request_headers.get(CUSTOM_ATTRIBUTES)
        if attributes:
            headers[CUSTOM_ATTRIBUTES] = attributes
        if INFERENCE_ID in request_headers:
            headers[INFERENCE_ID] = request_headers[INFERENCE_ID]
        content_type = reply.headers.get("Content-Type", "application/octet-stream").split(";")[0]
        return Answer(reply.body, content_type, headers)
    message = reply.message
    if reply.headers.get(ERROR_HEADER) or reply.status not in (503, 507):
        side = "client" if 400 <= reply.status < 500 else "server"
        raise ModelError(
            f'Received {side} error ({reply.status}) from model {target!r} with message "{message}".',
            original_status=reply.status,
            original_message=message,
        )
    if reply.status == 507:
        raise InsufficientMemory(f"the model ran out of memory: {message}")
    raise ServiceUnavailable(f"the endpoint is overloaded, retry: {message}")
