"""The front: SageMaker's runtime API and its multi-model container contract, over the cache and MMS.

Routes
    GET    /ping                                  200 when MMS answers its own ping
    GET    /metrics                               Prometheus metrics (see metrics.py)
    POST   /invocations                           TargetModel from X-Amzn-SageMaker-Target-Model
    POST   /endpoints/{EndpointName}/invocations  what boto3's sagemaker-runtime invoke_endpoint calls
    GET    /models                                every model known, with its state (and SageMaker's fields)
    POST   /models                                SageMaker: {"model_name", "url"} → load a local directory
    GET    /models/{name}                         one model, or 404
    DELETE /models/{name}                         unload now, or 404
    POST   /models/{name}/invoke                  SageMaker: invoke a loaded model, or 404

With ``--auth sigv4`` every route but ``/ping`` needs an AWS SigV4 signature (see auth.py).
The front imports no ML framework: it moves bytes between the client and MMS.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from openmme.endpoint.auth import KeyStore, sigv4_middleware
from openmme.endpoint.cache import ModelCache, State
from openmme.endpoint.errors import (
    EndpointError,
    InsufficientMemory,
    ModelError,
    ServiceUnavailable,
    ValidationError,
    render,
)
from openmme.endpoint.logs import access_log, log_json
from openmme.endpoint.metrics import Metrics
from openmme.endpoint.mms import MmsClient, MmsResponse
from openmme.endpoint.s3 import validate_target_model
from openmme.endpoint.settings import MAX_BODY_BYTES, Settings
from openmme.handlers import ERROR_HEADER

__all__ = ["build_app"]

log = logging.getLogger(__name__)

TARGET_MODEL = "X-Amzn-SageMaker-Target-Model"
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
INFERENCE_ID = "X-Amzn-SageMaker-Inference-Id"
INVOKED_VARIANT = "x-Amzn-Invoked-Production-Variant"
# Headers a model may see; everything else stays at the front.
FORWARDED = ("Content-Type", "Accept", CUSTOM_ATTRIBUTES, INFERENCE_ID)
# Bodies MMS parses into form parameters instead of passing them on: the model would see no body at all.
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")

CACHE: web.AppKey[ModelCache] = web.AppKey("cache", ModelCache)
MMS: web.AppKey[MmsClient] = web.AppKey("mms", MmsClient)
SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
BODY: web.RequestKey[bytes] = web.RequestKey("body", bytes)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place errors become responses: SageMaker-shaped JSON, never a traceback."""
    try:
        return await handler(request)
    except EndpointError as error:
        return render(error)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("unexpected failure on %s %s", request.method, request.path)
        return render(EndpointError("the endpoint failed unexpectedly; see its log"))


async def ping(request: web.Request) -> web.Response:
    if await request.app[MMS].ping():
        return web.Response(text="")
    return render(ServiceUnavailable("the model server is not answering"))


async def invocations(request: web.Request) -> web.Response:
    return await _invoke(request, request.headers.get(TARGET_MODEL))


async def endpoint_invocations(request: web.Request) -> web.Response:
    return await _invoke(request, request.headers.get(TARGET_MODEL), endpoint=request.match_info["endpoint"])


async def container_invoke(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    entry = request.app[CACHE].entries.get(name)
    if entry is None or entry.state is not State.READY:
        raise web.HTTPNotFound(text=json.dumps({"message": f"model {name!r} is not loaded"}))
    return await _invoke(request, name)


async def _read_body(request: web.Request) -> bytes:
    """The request body, refused before it is buffered whole when it exceeds SageMaker's 6 MiB. Read once and kept
    on the request: with --auth the middleware reads it first, to check the signature over it."""
    if BODY in request:
        return request[BODY]
    too_large = ValidationError(f"the request body exceeds the {MAX_BODY_BYTES}-byte limit of invoke_endpoint")
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(256 * 1024):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_large
        chunks.append(chunk)
    request[BODY] = b"".join(chunks)
    return request[BODY]


async def _invoke(request: web.Request, target: str | None, endpoint: str | None = None) -> web.Response:
    """One invocation: validate, hold the model loaded (loading it on a miss), predict, answer; logged and
    counted whatever the outcome."""
    started = time.perf_counter()
    cache, mms, settings = request.app[CACHE], request.app[MMS], request.app[SETTINGS]
    record: dict[str, object] = {
        "event": "invocation",
        "inference_id": request.headers.get(INFERENCE_ID),
        "target_model": target,
    }
    status = 500
    valid_target: str | None = None
    try:
        if endpoint is not None and endpoint != settings.endpoint_name:
            raise ValidationError(
                f"Endpoint {endpoint} not found; this server serves endpoint {settings.endpoint_name}."
            )
        valid_target = validate_target_model(target, cache.source.prefix if cache.source else None)
        _refuse_form(request.content_type, valid_target)
        body = await _read_body(request)
        headers = {key: request.headers[key] for key in FORWARDED if key in request.headers}
        hit = cache.is_ready(valid_target)
        record["cache"] = "hit" if hit else "miss"
        for _attempt in range(2):
            waiting = time.perf_counter()
            async with cache.use(valid_target) as entry:
                record["wait_ms"] = _ms_since(waiting)
                if not hit:
                    for phase, key in (("download", "download_ms"), ("extract", "extract_ms"), ("register", "load_ms")):
                        if phase in entry.timings:
                            record[key] = round(entry.timings[phase] * 1000, 2)
                predicting = time.perf_counter()
                route = cache.route(entry)
                if route is None:
                    continue  # its dense shard died just now: the model is loaded again on the next attempt
                request_to = _predict(mms, route.model, body, {**headers, **route.headers}, settings.response_timeout)
                response = await cache.call(entry, request_to, route.shard)
                record["predict_ms"] = _ms_since(predicting)
                if response is None:
                    continue  # the model's workers died and are being replaced: wait for them, then retry
                if response.status != 404 or response.headers.get(ERROR_HEADER):
                    result = _answer(valid_target, response, request.headers)
                    status = result.status
                    return result
            # MMS does not know the model (it was restarted, or raced an eviction): register it again.
            cache.reset(entry)
        raise ServiceUnavailable(f"model {valid_target!r} could not be kept loaded; retry")
    except EndpointError as error:
        status = error.status
        record["error"] = error.code
        raise
    finally:
        record["status"] = status
        record["total_ms"] = _ms_since(started)
        request.app[METRICS].invocation(valid_target, status, time.perf_counter() - started)
        log_json(access_log, record)


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


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


async def _predict(mms: MmsClient, name: str, body: bytes, headers: Mapping[str, str], timeout: float) -> MmsResponse:
    try:
        return await mms.predict(name, body, headers, timeout)
    except TimeoutError as exc:
        raise ModelError(
            f"the model did not answer within {timeout:g} s",
            original_status=408,
            original_message="timed out",
        ) from exc
    except aiohttp.ClientError as exc:
        raise ServiceUnavailable(f"the model server is not reachable: {exc}") from exc


def _answer(target: str, response: MmsResponse, request_headers: Mapping[str, str]) -> web.Response:
    """Turn MMS's answer into the runtime API's: the prediction, or the right typed error."""
    if response.status == 200:
        headers = {INVOKED_VARIANT: "AllTraffic"}
        attributes = response.headers.get(CUSTOM_ATTRIBUTES) or request_headers.get(CUSTOM_ATTRIBUTES)
        if attributes:
            headers[CUSTOM_ATTRIBUTES] = attributes
        if INFERENCE_ID in request_headers:
            headers[INFERENCE_ID] = request_headers[INFERENCE_ID]
        return web.Response(
            body=response.body,
            headers=headers,
            content_type=response.headers.get("Content-Type", "application/octet-stream").split(";")[0],
        )
    message = response.message
    if response.headers.get(ERROR_HEADER) or response.status not in (503, 507):
        side = "client" if 400 <= response.status < 500 else "server"
        raise ModelError(
            f'Received {side} error ({response.status}) from model {target!r} with message "{message}".',
            original_status=response.status,
            original_message=message,
        )
    if response.status == 507:
        raise InsufficientMemory(f"the model ran out of memory: {message}")
    raise ServiceUnavailable(f"the endpoint is overloaded, retry: {message}")


async def list_models(request: web.Request) -> web.Response:
    """SageMaker's list shape (modelName, modelUrl, nextPageToken) with openmme's state and figures."""
    cache = request.app[CACHE]
    try:
        start = int(request.query.get("next_page_token", "0"))
        limit = int(request.query.get("limit", request.query.get("max_results", "1000")))
    except ValueError as exc:
        raise ValidationError("next_page_token and limit must be integers") from exc
    entries = list(cache.entries.values())
    page = entries[start : start + max(limit, 1)]
    body: dict[str, object] = {"models": [entry.describe() for entry in page], **cache.snapshot()}
    if start + len(page) < len(entries):
        body["nextPageToken"] = str(start + len(page))
    return web.json_response(body)


async def describe_model(request: web.Request) -> web.Response:
    entry = request.app[CACHE].entries.get(request.match_info["name"])
    if entry is None:
        raise web.HTTPNotFound(text=json.dumps({"message": "model not found"}), content_type="application/json")
    return web.json_response(entry.describe())


async def delete_model(request: web.Request) -> web.Response:
    if not await request.app[CACHE].unload(request.match_info["name"]):
        raise web.HTTPNotFound(text=json.dumps({"message": "model not loaded"}), content_type="application/json")
    return web.json_response({"status": "unloaded"})


async def add_model(request: web.Request) -> web.Response:
    """SageMaker's ``POST /models``: load a model directory it has already downloaded."""
    try:
        spec = json.loads(await _read_body(request))
        name, url = str(spec["model_name"]), str(spec["url"])  # url kept as sent: GET /models answers it back
    except (ValueError, KeyError, TypeError) as exc:
        raise ValidationError('POST /models takes JSON {"model_name": ..., "url": ...}') from exc
    await request.app[CACHE].register_local(name, url)
    return web.json_response({"status": f"model {name} loaded"})


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def build_app(
    settings: Settings, cache: ModelCache, mms: MmsClient, metrics_: Metrics, keys: KeyStore | None = None
) -> web.Application:
    """The front; ``keys`` are what ``--auth sigv4`` checks signatures against (see auth.py)."""
    middlewares: list[Middleware] = [errors_middleware]
    if settings.auth:
        middlewares.append(sigv4_middleware(settings, keys, _read_body))
    # The body limit is enforced by _read_body with SageMaker's error; aiohttp's own limit sits above it.
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY_BYTES + 1024 * 1024)
    app[CACHE], app[MMS], app[SETTINGS], app[METRICS] = cache, mms, settings, metrics_
    app.router.add_get("/ping", ping)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/invocations", invocations)
    app.router.add_post("/endpoints/{endpoint}/invocations", endpoint_invocations)
    app.router.add_get("/models", list_models)
    app.router.add_post("/models", add_model)
    app.router.add_post("/models/{name:.+}/invoke", container_invoke)
    app.router.add_get("/models/{name:.+}", describe_model)
    app.router.add_delete("/models/{name:.+}", delete_model)
    return app
