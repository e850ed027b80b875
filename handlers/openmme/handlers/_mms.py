"""The few things openmme's handler services need from an MMS 1.1.11 worker's request context.

How a request reaches a handler (read from MMS's ``service.py``, ``context.py`` and the Java front):
each request of a batch is a dict whose ``"body"`` is the HTTP body (bytes when MMS runs with
``decode_input_request=false``; otherwise MMS hands over a ``str`` for ``text/*`` and already-parsed
JSON for ``application/json``), and ``context.get_all_request_header(idx)`` holds the HTTP headers
*spelled as the client sent them*, plus one entry per body part (``"body": {"content-type": mime}``,
where mime has its parameters stripped). Hence the case-insensitive lookups here.

Errors are rendered in one place, ``reject``: status, ``ERROR_HEADER`` and a one-line body.
"""

from __future__ import annotations

import http
import logging
from typing import Any, Protocol

from openmme.handlers import ERROR_HEADER

__all__ = [
    "HandlerError",
    "MmsContext",
    "accepted_types",
    "media_type",
    "one_line",
    "reject",
    "request_body",
    "request_content_type",
    "request_header",
]

logger = logging.getLogger(__name__)

# Long enough for any useful message, short enough that a runaway repr cannot flood a response.
_MAX_MESSAGE_CHARS = 1000


class MmsContext(Protocol):
    """The part of ``mms.context.Context`` the handler services use."""

    @property
    def system_properties(self) -> dict[str, Any]: ...

    def get_all_request_header(self, idx: int) -> dict[str, Any]: ...

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None: ...

    def set_response_header(self, idx: int, key: str, value: str) -> None: ...

    def set_response_content_type(self, idx: int, value: str) -> None: ...


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


def request_content_type(context: MmsContext, idx: int) -> str | None:
    """Request ``idx``'s media type: the Content-Type header, else the type MMS recorded for the body."""
    found = media_type(request_header(context, idx, "Content-Type"))
    if found is not None:
        return found
    body_part = context.get_all_request_header(idx).get("body")
    if isinstance(body_part, dict):
        recorded = body_part.get("content-type")
        if isinstance(recorded, str):
            return media_type(recorded)
    return None


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
