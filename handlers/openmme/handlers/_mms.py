"""The few things openmme's handler services need from an MMS 1.1.11 worker's request context.

How a request reaches a handler (read from MMS's ``service.py``, ``context.py`` and the Java front):
each request of a batch is a dict whose ``"body"`` is the HTTP body (bytes when MMS runs with
``decode_input_request=false``; otherwise MMS hands over a ``str`` for ``text/*`` and already-parsed
JSON for ``application/json``), and ``context.get_all_request_header(idx)`` holds the HTTP headers
*spelled as the client sent them*, plus one entry per body part (``"body": {"content-type": mime}``,
where mime has its parameters stripped). Hence the case-insensitive lookups here.

Errors are rendered in one place, ``reject``: status, ``ERROR_HEADER`` and a one-line body.

A model that fails to load cannot answer anyone: MMS's registration API only says "Failed to start
workers". So ``record_load_error`` also writes the one-line reason to
``$OPENMME_LOAD_ERRORS_DIR/<model name>.txt``, where the front that registered the model reads it.
"""

from __future__ import annotations

import http
import logging
import os
import pathlib
from typing import Any, Protocol

from openmme.handlers import ERROR_HEADER, UnsupportedArchive

__all__ = [
    "HandlerError",
    "HandlerService",
    "LoadError",
    "MmsContext",
    "accepted_types",
    "full_media_type",
    "media_parameters",
    "media_type",
    "one_line",
    "record_load_error",
    "reject",
    "request_body",
    "request_content_type",
    "request_content_type_header",
    "request_header",
]

logger = logging.getLogger(__name__)

# Long enough for any useful message, short enough that a runaway repr cannot flood a response.
_MAX_MESSAGE_CHARS = 1000

# Set by the front in MMS's environment (so in every worker's): where load failures are reported.
LOAD_ERRORS_DIR_ENV = "OPENMME_LOAD_ERRORS_DIR"


class MmsContext(Protocol):
    """The part of ``mms.context.Context`` the handler services use."""

    model_name: str

    @property
    def system_properties(self) -> dict[str, Any]: ...

    def get_all_request_header(self, idx: int) -> dict[str, Any]: ...

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None: ...

    def set_response_header(self, idx: int, key: str, value: str) -> None: ...

    def set_response_content_type(self, idx: int, value: str) -> None: ...


class LoadError(RuntimeError):
    """A model the handler cannot load, with a one-line message written for the operator."""


class HandlerError(Exception):
    """A request the handler refuses, with the HTTP status to answer and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def one_line(text: str) -> str:
    """The first non-blank line of ``text``, trimmed and capped: what a response body may carry."""
    for line in text.splitlines():
        if line.strip():
            line = line.strip()
            if len(line) > _MAX_MESSAGE_CHARS:
                line = line[: _MAX_MESSAGE_CHARS - 3] + "..."
            return line
    return ""


def request_header(context: MmsContext, idx: int, name: str) -> str | None:
    """The value of request ``idx``'s header ``name``, whatever case the client spelled it in."""
    wanted = name.lower()
    for key, value in context.get_all_request_header(idx).items():
        if isinstance(key, str) and key.lower() == wanted and isinstance(value, str):
            return value
    return None


def media_type(value: str | None) -> str | None:
    """``"Text/CSV; charset=utf-8"`` -> ``"text/csv"``; None for an absent or blank value."""
    if value is None:
        return None
    mime = value.split(";", 1)[0].strip().lower()
    return mime or None


def media_parameters(value: str | None) -> dict[str, str]:
    """``"text/csv; Label_Size=1; charset=UTF-8"`` -> ``{"label_size": "1", "charset": "utf-8"}``.

    Names and values are lower-cased (media-type parameters are compared case-insensitively in practice,
    and the SageMaker XGBoost container lower-cases the whole header); quotes around a value are dropped.
    """
    if not value:
        return {}
    parameters: dict[str, str] = {}
    for part in value.split(";")[1:]:
        name, separator, raw = part.partition("=")
        name = name.strip().lower()
        if name and separator:
            parameters[name] = raw.strip().strip('"').lower()
    return parameters


def request_content_type_header(context: MmsContext, idx: int) -> str | None:
    """Request ``idx``'s Content-Type as sent (parameters included), else the type MMS recorded for the body."""
    found = request_header(context, idx, "Content-Type")
    if media_type(found) is not None:
        return found
    body_part = context.get_all_request_header(idx).get("body")
    if isinstance(body_part, dict):
        recorded = body_part.get("content-type")
        if isinstance(recorded, str) and media_type(recorded) is not None:
            return recorded
    return None


def request_content_type(context: MmsContext, idx: int) -> str | None:
    """Request ``idx``'s media type: the Content-Type header, else the type MMS recorded for the body."""
    return media_type(request_content_type_header(context, idx))


# The bare names SageMaker's containers also accept for these two media types.
_BARE_NAMES = {"json": "application/json", "csv": "text/csv"}


def full_media_type(mime: str) -> str:
    """``json`` -> ``application/json`` and ``csv`` -> ``text/csv``; any other media type as it is."""
    return _BARE_NAMES.get(mime, mime)


def accepted_types(accept: str | None) -> list[str]:
    """The media types of an Accept header, in the client's order (quality values are ignored)."""
    if not accept:
        return []
    return [mime for mime in (media_type(part) for part in accept.split(",")) if mime is not None]


def request_body(request: dict[str, Any]) -> Any:
    """The body of one request of an MMS batch (``"body"``; ``"data"`` for a multipart form part)."""
    if "body" in request:
        return request["body"]
    if "data" in request:
        return request["data"]
    raise HandlerError(400, "the request has no body")


def reject(context: MmsContext, idx: int, status: int, message: str) -> str:
    """Mark request ``idx`` as failed with ``status`` and return the one-line body to answer with."""
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    body = one_line(message) or phrase
    logger.warning("request %d failed with %d: %s", idx, status, body)
    context.set_response_status(status, phrase, idx)
    context.set_response_header(idx, ERROR_HEADER, "1")
    context.set_response_content_type(idx, "text/plain")
    return body


def load_error_message(exc: BaseException) -> str:
    """The one-line reason a model failed to load: openmme's own errors say it all, others get their type."""
    message = one_line(str(exc))
    if isinstance(exc, (UnsupportedArchive, LoadError)) and message:
        return message
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def record_load_error(context: MmsContext, exc: BaseException) -> None:
    """Write why the model failed to load where the front looks for it (if it said where); never raises."""
    directory = os.environ.get(LOAD_ERRORS_DIR_ENV)
    name = str(getattr(context, "model_name", "") or "")
    # A model name is one path component; anything else would write outside the directory.
    if not directory or not name or pathlib.PurePath(name).name != name or name in (".", ".."):
        return
    try:
        pathlib.Path(directory, f"{name}.txt").write_text(load_error_message(exc) + "\n", encoding="utf-8")
    except OSError:
        logger.warning("could not record the load error of model %s in %s", name, directory, exc_info=True)


class HandlerService:
    """MMS's ``handle(data, context)`` contract, shared by the handler services.

    MMS calls ``handle`` with ``data=None`` once to load the model, then with a batch of requests. A model
    that fails to load records why (see ``record_load_error``) and raises, which fails the registration.
    """

    def initialize(self, context: MmsContext) -> None:
        raise NotImplementedError

    def is_loaded(self) -> bool:
        raise NotImplementedError

    def serve(self, data: list[dict[str, Any]], context: MmsContext) -> list[Any]:
        raise NotImplementedError

    def handle(self, data: list[dict[str, Any]] | None, context: MmsContext) -> list[Any] | None:
        """MMS's entry point: ``None`` loads the model, a batch gets one response per request."""
        if data is None or not self.is_loaded():
            try:
                self.initialize(context)
            except Exception as exc:
                # MMS answers the registration with "Failed to start workers" only: tell the front why.
                record_load_error(context, exc)
                raise
        return None if data is None else self.serve(data, context)
