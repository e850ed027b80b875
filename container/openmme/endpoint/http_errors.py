"""Endpoint errors as aiohttp responses: ``render`` and the errors middleware, the only aiohttp-aware error code.

A response is SageMaker's error shape, which botocore turns into a typed exception: the code in
``x-amzn-ErrorType`` and in the JSON body's ``__type``, a ``message`` (and, for a ModelError, the model's own
status and message). An unexpected exception is logged here with its traceback and answered as an
``InternalFailure`` without it.
"""

from __future__ import annotations

import json
import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from openmme.endpoint.errors import EndpointError
from openmme.endpoint.names import ERROR_TYPE

__all__ = ["errors_middleware", "render"]

log = logging.getLogger(__name__)


def render(error: EndpointError) -> web.Response:
    """The SageMaker-shaped JSON response for ``error``."""
    return web.Response(
        status=error.status,
        body=json.dumps(error.body()).encode(),
        content_type="application/json",
        headers={ERROR_TYPE: error.code},
    )


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
