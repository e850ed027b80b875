"""Errors the endpoint answers with, each carrying its HTTP status and SageMaker error code.

botocore turns a response into a typed exception from the ``x-amzn-ErrorType`` header (or ``__type`` in the
body) and the body's ``message``; a ``ModelError`` also surfaces ``OriginalStatusCode`` and ``OriginalMessage``.
This module is the tree only, with no HTTP library: ``http_errors.render`` is the one place that shapes an error
into such a response (``status``, ``code`` in the header, ``body()``); bodies never carry a traceback.

    EndpointError                 500  InternalFailure
    ├── ValidationError           400  bad request, unknown endpoint, unknown or invalid TargetModel (a full s3:// URI)
    ├── Forbidden                 403  not authenticated or not authorized (auth/, with --auth sigv4)
    │   ├── InvalidSignature             InvalidSignatureException: wrong or expired signature (or a replay, opt-in)
    │   ├── MissingAuthenticationToken   MissingAuthenticationTokenException: no Authorization header
    │   ├── IncompleteSignature          IncompleteSignatureException: malformed, or leaves out what must be signed
    │   ├── UnrecognizedClient           UnrecognizedClientException: unknown access key id
    │   └── AccessDenied                 AccessDeniedException: the key may not invoke that TargetModel (or route)
    ├── ModelError                424  the model's handler failed, or its archive or code cannot be loaded; also a
    │                                  form body (OriginalStatusCode 415), refused at the front because MMS would eat it
    ├── RequestTimeout            408  the request's body did not arrive within --body-timeout; retry
    ├── Conflict                  409  POST /models for a model that is loaded already
    ├── ModelNotReady             429  the model is still loading after the wait budget; retry
    ├── ServiceUnavailable        503  overload, MMS is not up, or a load the host failed (its worker died); retry
    └── InsufficientMemory        507  no memory to load a model (SageMaker unloads others and retries)
        └── InsufficientStorage   507  no room on the cache disk for a model: the operator's to fix; retry later

507 is what SageMaker's multi-model contract has a container answer when it cannot hold a model "due to
insufficient memory or any other resource"; it is also HTTP's own "Insufficient Storage". The disk's refusal is
a subclass so that everything that waits out a 507 (asynchronous invocations, batch transform) waits it out too,
with its own code so that a caller and the request log tell a full disk from a full memory. botocore's model of
InvokeEndpoint declares neither: botocore raises a plain ``ClientError`` whose ``Error.Code`` is the code, and
its retry modes resend 500, 502, 503, 504 and 429, never 507 (a full disk does not empty within a retry's delay).
"""

from __future__ import annotations

__all__ = [
    "AccessDenied",
    "Conflict",
    "EndpointError",
    "Forbidden",
    "IncompleteSignature",
    "InsufficientMemory",
    "InsufficientStorage",
    "InvalidSignature",
    "MissingAuthenticationToken",
    "ModelError",
    "ModelNotReady",
    "RequestTimeout",
    "ServiceUnavailable",
    "UnrecognizedClient",
    "ValidationError",
]


class EndpointError(Exception):
    """Base class: an unexpected failure of the endpoint itself."""

    status = 500
    code = "InternalFailure"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> dict[str, object]:
        return {"__type": self.code, "message": self.message}


class ValidationError(EndpointError):
    status = 400
    code = "ValidationError"


class ModelError(EndpointError):
    """The model failed; ``original_status`` and ``original_message`` are what the handler answered."""

    status = 424
    code = "ModelError"

    def __init__(self, message: str, original_status: int = 500, original_message: str | None = None) -> None:
        super().__init__(message)
        self.original_status = original_status
        self.original_message = message if original_message is None else original_message

    def body(self) -> dict[str, object]:
        return {
            **super().body(),
            "OriginalStatusCode": self.original_status,
            "OriginalMessage": self.original_message,
        }


class Forbidden(EndpointError):
    """Refused by authentication (see auth/); the subclasses carry the codes AWS answers with."""

    status = 403
    code = "InvalidSignatureException"


class InvalidSignature(Forbidden):
    code = "InvalidSignatureException"


class MissingAuthenticationToken(Forbidden):
    code = "MissingAuthenticationTokenException"


class IncompleteSignature(Forbidden):
    code = "IncompleteSignatureException"


class UnrecognizedClient(Forbidden):
    code = "UnrecognizedClientException"


class AccessDenied(Forbidden):
    """Authenticated, but the key's allow patterns do not cover the request."""

    code = "AccessDeniedException"


class RequestTimeout(EndpointError):
    """The client sent its body too slowly; botocore retries the code (a transient error in its standard mode)."""

    status = 408
    code = "RequestTimeout"


class Conflict(EndpointError):
    status = 409
    code = "ConflictException"


class ModelNotReady(EndpointError):
    status = 429
    code = "ModelNotReadyException"


class ServiceUnavailable(EndpointError):
    status = 503
    code = "ServiceUnavailable"


class InsufficientMemory(EndpointError):
    status = 507
    code = "InsufficientMemory"


class InsufficientStorage(InsufficientMemory):
    """The cache disk has no room for a model: not the model's fault nor the caller's; retried later, it may fit."""

    code = "InsufficientStorage"
