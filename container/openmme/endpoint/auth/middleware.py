"""The aiohttp middleware of ``--auth sigv4``: authenticate every request (signature.py), then authorize it against
the key's allow patterns, refusing in SageMaker's error shape (http_errors.py) with a JSON line in the access log.

Invocations (``/invocations``, ``/endpoints/{EndpointName}/invocations`` with the TargetModel header, and the
container contract's ``POST /models/{name}/invoke``) need a key whose patterns match the model; every other route
(listing, loading, unloading models, metrics) needs an unrestricted key. ``/ping`` and ``/ready`` are always
open, ``/metrics`` too with ``--auth-exempt-metrics``. A request the endpoint failed to serve (429 or 5xx) gives its
signature back to the replay memory: botocore's retry of it carries the identical signature when it falls within
the same second.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from openmme.endpoint.auth.keys import AccessKey, AuthConfigError, KeyStore
from openmme.endpoint.auth.replay import ReplayCache
from openmme.endpoint.auth.signature import Grant, SigV4Verifier
from openmme.endpoint.errors import AccessDenied, EndpointError, Forbidden
from openmme.endpoint.logs import access_log, log_json
from openmme.endpoint.names import CUSTOM_ATTRIBUTES, TARGET_MODEL, async_target_model
from openmme.endpoint.settings import Settings

__all__ = ["authorize", "sigv4_middleware"]

# Routes whose TargetModel is in the header, the container contract's invoke with the model in the path, and
# InvokeEndpointAsync's, whose model is named as names.async_target_model reads it.
HEADER_TARGET_ROUTES = frozenset({"/invocations", "/endpoints/{endpoint}/invocations"})
PATH_TARGET_ROUTE = "/models/{name}/invoke"
ASYNC_ROUTE = "/endpoints/{endpoint}/async-invocations"


def authorize(key: AccessKey, request: web.Request, async_default_model: str = "") -> None:
    """Invocations: the key's patterns must match the TargetModel. Everything else: the key must be unrestricted."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else None
    if route in HEADER_TARGET_ROUTES or route == ASYNC_ROUTE:
        target = request.headers.get(TARGET_MODEL)
        if route == ASYNC_ROUTE:
            target = async_target_model(request.headers.get(CUSTOM_ATTRIBUTES), target, async_default_model)
        if target is None:
            return  # nothing to invoke: the handler answers ValidationError
    elif route == PATH_TARGET_ROUTE and request.method == "POST":
        target = request.match_info["name"]
    elif key.unrestricted:
        return
    else:
        raise AccessDenied(
            f"access key {key.access_key_id} may only invoke models; {request.method} {request.path} "
            'needs a key whose allow patterns include "*"'
        )
    if not key.may_invoke(target):
        raise AccessDenied(f"access key {key.access_key_id} is not allowed to invoke TargetModel {target!r}")


def sigv4_middleware(
    settings: Settings,
    keys: KeyStore | None,
    read_body: Callable[[web.Request], Awaitable[bytes]],
    verifier: SigV4Verifier | None = None,
) -> Middleware:
    """Authenticate and authorize every request but ``/ping`` and ``/ready`` (health and readiness probes cannot
    sign; they name no model) and ``/metrics`` with ``--auth-exempt-metrics``;
    with ``--auth-refuse-replays``, refuse a signature seen before.

    ``read_body`` reads the body once, bounded, and keeps it for the handler: the signature covers it."""
    if keys is None:
        raise AuthConfigError("--auth sigv4 needs a key store")
    checker = verifier or SigV4Verifier(keys, ReplayCache() if settings.auth_refuse_replays else None)
    open_paths = {"/ping", "/ready"} | ({"/metrics"} if settings.auth_exempt_metrics else set())

    @web.middleware
    async def sigv4(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in open_paths:
            return await handler(request)
        try:
            grant = await _authenticate(checker, request, read_body)
            authorize(grant.key, request, settings.async_default_model)
            checker.spend(grant)  # after authorize: a refused request does not use up its signature
        except Forbidden as error:
            _log_refusal(request, error)
            raise  # rendered by the front's errors middleware, the outermost
        served = False
        try:
            response = await handler(request)
            served = not _retryable(response.status)
            return response
        except (web.HTTPException, EndpointError) as error:
            served = not _retryable(error.status)
            raise
        finally:
            if not served and checker.replay is not None:
                checker.replay.give_back(grant.signature)

    return sigv4


async def _authenticate(
    checker: SigV4Verifier, request: web.Request, read_body: Callable[[web.Request], Awaitable[bytes]]
) -> Grant:
    """The headers are checked before the body is read: a request refused for them is never buffered."""
    claim = checker.check_headers(request.headers)
    body = await read_body(request)
    return checker.check_signature(claim, request.method, request.raw_path, request.headers, body)


def _log_refusal(request: web.Request, error: Forbidden) -> None:
    key_id = re.search(r"Credential=([^/,\s]+)", request.headers.get("Authorization", ""))
    log_json(
        access_log,
        {
            "event": "refused",
            "method": request.method,
            "path": request.path,
            "access_key_id": key_id and key_id.group(1),
            "status": error.status,
            "error": error.code,
            "message": error.message,
        },
    )


def _retryable(status: int) -> bool:
    return status == 429 or status >= 500
