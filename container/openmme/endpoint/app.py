"""The front, HTTP only: SageMaker's runtime API and its multi-model container contract, over the data plane
(dataplane.py: requests in as ``Invocation``, ``Answer`` or ``EndpointError`` out).

Routes
    GET    /ping                                  200 when MMS answers its own ping
    GET    /ready                                 200 when /ping is and the start-time pre-load is done, else 503
    GET    /metrics                               Prometheus metrics (see metrics.py)
    POST   /invocations                           TargetModel from X-Amzn-SageMaker-Target-Model
    POST   /endpoints/{EndpointName}/invocations  what boto3's sagemaker-runtime invoke_endpoint calls
    POST   /endpoints/{EndpointName}/async-invocations  invoke_endpoint_async: queued, 202 (asyncinvoke/)
    GET    /models                                every model known, with its state (and SageMaker's fields)
    POST   /models                                SageMaker: {"model_name", "url"} → load a local directory
    GET    /models/{name}                         one model, or 404
    DELETE /models/{name}                         unload now, or 404
    POST   /models/{name}/invoke                  SageMaker: invoke a loaded model, or 404
    GET    /shards                                what each dense shard's worker says it holds (openmme's)
    GET    /aliases                               the aliases served, and each version's figures (openmme's)

``/ping`` is SageMaker's health check: 200 as soon as the endpoint can serve, models still being pre-loaded
or not. ``/ready`` is for a router or Kubernetes that should send traffic only once the pre-loaded models are
in (``--preload``, ``--preload-top``); with no pre-load it answers as ``/ping`` does.

With ``--auth sigv4`` every route but ``/ping`` and ``/ready`` needs an AWS SigV4 signature (see the auth package).
An invocation whose headers or EndpointName break the bounds AWS enforces (limits.py) is refused next, as AWS
refuses it, before the data plane sees it.
The front imports no ML framework: it moves bytes between the client and MMS.
"""

from __future__ import annotations

import json
import logging

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from openmme.endpoint.asyncinvoke import FAILURE_LOCATION, OUTPUT_LOCATION, AsyncInvocations
from openmme.endpoint.auth import KeyStore, sigv4_middleware
from openmme.endpoint.cache.keeping import Preload
from openmme.endpoint.dataplane import Answer, DataPlane, Invocation
from openmme.endpoint.errors import ServiceUnavailable, ValidationError
from openmme.endpoint.http_errors import errors_middleware, render
from openmme.endpoint.limits import INVOKE_ENDPOINT, INVOKE_ENDPOINT_ASYNC, Limits, message
from openmme.endpoint.logs import access_log, log_json
from openmme.endpoint.metrics import Metrics
from openmme.endpoint.mms import MmsClient
from openmme.endpoint.names import CUSTOM_ATTRIBUTES, INFERENCE_ID, TARGET_MODEL, TARGET_VARIANT
from openmme.endpoint.settings import MAX_BODY_BYTES, Settings
from openmme.endpoint.slowclients import BODY_TIMEOUT, read_within

__all__ = ["FORWARDED", "INVOKE_LIMITS", "build_app", "check_limits", "read_body"]

log = logging.getLogger(__name__)

# Headers a model may see; everything else stays at the front.
FORWARDED = ("Content-Type", "Accept", CUSTOM_ATTRIBUTES, INFERENCE_ID)
# What AWS bounds in a call's headers and EndpointName (limits.py).
INVOKE_LIMITS = Limits(INVOKE_ENDPOINT)
ASYNC_LIMITS = Limits(INVOKE_ENDPOINT_ASYNC)

PLANE: web.AppKey[DataPlane] = web.AppKey("plane", DataPlane)
# None: MMS is not started (no Java runtime), and the front alone answers for the endpoint's health.
MMS: web.AppKey[MmsClient | None] = web.AppKey("mms")
SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
PRELOAD: web.AppKey[Preload] = web.AppKey("preload", Preload)
BODY: web.RequestKey[bytes] = web.RequestKey("body", bytes)
# Set by the server when --async-output-path turns asynchronous invocations on.
ASYNC: web.AppKey[AsyncInvocations] = web.AppKey("async", AsyncInvocations)


async def _mms_answers(app: web.Application) -> bool:
    mms = app[MMS]
    return mms is None or await mms.ping()


async def ping(request: web.Request) -> web.Response:
    if await _mms_answers(request.app):
        return web.Response(text="")
    return render(ServiceUnavailable("the model server is not answering"))


async def ready(request: web.Request) -> web.Response:
    """Readiness: healthy (as /ping) and done pre-loading; the pre-load's figures either way."""
    preload = request.app.get(PRELOAD)
    status = preload.status() if preload is not None else {"total": 0, "pending": 0}
    if not await _mms_answers(request.app):
        return render(ServiceUnavailable("the model server is not answering"))
    if status["pending"]:
        message = f"pre-loading: {status['pending']} of {status['total']} models pending"
        return web.json_response({"ready": False, "message": message, "preload": status}, status=503)
    return web.json_response({"ready": True, "preload": status})


async def invocations(request: web.Request) -> web.Response:
    return await _invoke(request, request.headers.get(TARGET_MODEL))


async def endpoint_invocations(request: web.Request) -> web.Response:
    return await _invoke(request, request.headers.get(TARGET_MODEL), endpoint=request.match_info["endpoint"])


async def endpoint_async_invocations(request: web.Request) -> web.Response:
    """SageMaker's InvokeEndpointAsync: the request is accepted and queued (on disk) and answered at once with
    where its result or failure will be written."""
    check_limits(request, ASYNC_LIMITS)
    invocations = request.app.get(ASYNC)
    if invocations is None:
        raise ValidationError(
            "asynchronous invocations are off on this endpoint: start it with --async-output-path s3://bucket/prefix"
        )
    accepted = await invocations.submit(request.headers, await read_body(request), request.match_info["endpoint"])
    headers = {OUTPUT_LOCATION: str(accepted.output), FAILURE_LOCATION: str(accepted.failure)}
    return web.json_response({"InferenceId": accepted.inference_id}, status=202, headers=headers)


async def container_invoke(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if not request.app[PLANE].is_loaded(name):
        raise web.HTTPNotFound(text=json.dumps({"message": f"model {name!r} is not loaded"}))
    return await _invoke(request, name)


async def read_body(request: web.Request) -> bytes:
    """The request body, refused before it is buffered whole when it exceeds SageMaker's 6 MiB. Read once and kept
    on the request: with --auth the middleware reads it first, to check the signature over it."""
    if BODY in request:
        return request[BODY]
    too_large = ValidationError(f"the request body exceeds the {MAX_BODY_BYTES}-byte limit of invoke_endpoint")
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise too_large
    request[BODY] = await read_within(request, _read_at_most(request, too_large))
    return request[BODY]


async def _read_at_most(request: web.Request, too_large: ValidationError) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(256 * 1024):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def check_limits(request: web.Request, limits: Limits = INVOKE_LIMITS, front: str | None = None) -> None:
    """ValidationError, as AWS words it, for a header or EndpointName over AWS's bounds, before anything else
    sees the request; the refusal is a line in the access log that names the members, not their values."""
    failed = limits.failures(request.headers, request.match_info.get("endpoint"))
    if not failed:
        return
    resource = request.match_info.route.resource
    record: dict[str, object] = {
        "event": "refused",
        "method": request.method,
        "route": resource.canonical if resource is not None else None,
        "status": ValidationError.status,
        "error": ValidationError.code,
        "members": list(failed),
    }
    if front is not None:
        record["front"] = front
    log_json(access_log, record)
    raise ValidationError(message(failed))


async def _invoke(request: web.Request, target: str | None, endpoint: str | None = None) -> web.Response:
    """One invocation: the request into an ``Invocation``, the data plane's ``Answer`` back into a response (its
    errors are rendered by the errors middleware)."""
    check_limits(request)
    headers = {key: request.headers[key] for key in FORWARDED if key in request.headers}
    variant = request.headers.get(TARGET_VARIANT)
    call = Invocation(target, headers, request.content_type, lambda: read_body(request), endpoint, variant)
    answer = await request.app[PLANE].invoke(call)
    return _response(answer)


def _response(answer: Answer) -> web.Response:
    return web.Response(body=answer.body, headers=answer.headers, content_type=answer.content_type)


async def list_models(request: web.Request) -> web.Response:
    """SageMaker's list shape (modelName, modelUrl, nextPageToken) with openmme's state and figures."""
    plane = request.app[PLANE]
    try:
        start = int(request.query.get("next_page_token", "0"))
        limit = int(request.query.get("limit", request.query.get("max_results", "1000")))
    except ValueError as exc:
        raise ValidationError("next_page_token and limit must be integers") from exc
    entries = plane.models()
    page = entries[start : start + max(limit, 1)]
    body: dict[str, object] = {"models": [entry.describe() for entry in page], **plane.summary()}
    if start + len(page) < len(entries):
        body["nextPageToken"] = str(start + len(page))
    return web.json_response(body)


async def describe_model(request: web.Request) -> web.Response:
    entry = request.app[PLANE].model(request.match_info["name"])
    if entry is None:
        raise web.HTTPNotFound(text=json.dumps({"message": "model not found"}), content_type="application/json")
    return web.json_response(entry.describe())


async def delete_model(request: web.Request) -> web.Response:
    if not await request.app[PLANE].unload(request.match_info["name"]):
        raise web.HTTPNotFound(text=json.dumps({"message": "model not loaded"}), content_type="application/json")
    return web.json_response({"status": "unloaded"})


async def add_model(request: web.Request) -> web.Response:
    """SageMaker's ``POST /models``: load a model directory it has already downloaded."""
    try:
        spec = json.loads(await read_body(request))
        name, url = str(spec["model_name"]), str(spec["url"])  # url kept as sent: GET /models answers it back
    except (ValueError, KeyError, TypeError) as exc:
        raise ValidationError('POST /models takes JSON {"model_name": ..., "url": ...}') from exc
    await request.app[PLANE].add(name, url)
    return web.json_response({"status": f"model {name} loaded"})


async def shards(request: web.Request) -> web.Response:
    return web.json_response({"shards": await request.app[PLANE].shards()})


async def aliases(request: web.Request) -> web.Response:
    return web.json_response(request.app[PLANE].alias_figures())


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def build_app(
    settings: Settings,
    plane: DataPlane,
    mms: MmsClient | None,
    metrics_: Metrics,
    keys: KeyStore | None = None,
    preload: Preload | None = None,
) -> web.Application:
    """The front; ``keys`` are what ``--auth sigv4`` checks signatures against (see the auth package), ``preload``
    the start-time pre-load ``/ready`` waits for."""
    middlewares: list[Middleware] = [errors_middleware]
    if settings.auth:
        middlewares.append(sigv4_middleware(settings, keys, read_body))
    # The body limit is enforced by read_body with SageMaker's error; aiohttp's own limit sits above it.
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY_BYTES + 1024 * 1024)
    app[PLANE], app[MMS], app[SETTINGS], app[METRICS] = plane, mms, settings, metrics_
    app[BODY_TIMEOUT] = settings.body_timeout
    if preload is not None:
        app[PRELOAD] = preload
    app.router.add_get("/ping", ping)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/invocations", invocations)
    app.router.add_post("/endpoints/{endpoint}/invocations", endpoint_invocations)
    app.router.add_post("/endpoints/{endpoint}/async-invocations", endpoint_async_invocations)
    app.router.add_get("/models", list_models)
    app.router.add_post("/models", add_model)
    app.router.add_post("/models/{name:.+}/invoke", container_invoke)
    app.router.add_get("/models/{name:.+}", describe_model)
    app.router.add_delete("/models/{name:.+}", delete_model)
    app.router.add_get("/shards", shards)
    app.router.add_get("/aliases", aliases)
    return app
