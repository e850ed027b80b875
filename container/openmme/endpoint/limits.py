"""The limits AWS enforces on what an invocation sends: the length, value and pattern bounds botocore's
``sagemaker-runtime`` model states for the members of ``InvokeEndpointInput`` and ``InvokeEndpointAsyncInput``
sent as headers or in the URI, checked once per request at the front (and at an edge front) before the data
plane, and refused as AWS refuses them::

    ValidationError 400: 1 validation error detected: Value 'x…' at 'customAttributes' failed to satisfy
    constraint: Member must have length less than or equal to 1024

(the member in lowerCamelCase; a member the model marks sensitive, CustomAttributes, is named without its value;
several failures are counted and joined by ``; ``). The bodies' limits are read_body's (app.py) and the async
request's (asyncinvoke/request.py).

The bounds are a table copied from botocore's model, not read from it at start-up: a botocore upgrade never
changes what a running endpoint accepts unseen, no front process pays for loading the model, and
tests/endpoint/test_limits.py fails when the table and the installed botocore's model differ. The model's patterns
are Java regexes, matched whole (``Pattern.matches``: AWS refuses ``my_endpoint`` for ``^[a-zA-Z0-9](-*[a-zA-Z0-9])*``
although the pattern has no ``$``); ``java_regex`` translates the constructs they use and refuses any other.
A leaf: it imports nothing of the endpoint but the error tree.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from openmme.endpoint.errors import ValidationError

__all__ = ["INVOKE_ENDPOINT", "INVOKE_ENDPOINT_ASYNC", "Bound", "Limits", "java_regex", "message"]


@dataclass(frozen=True)
class Bound:
    """One member's bounds, as botocore's model states them."""

    member: str  # the member of the input shape, e.g. "CustomAttributes"
    location: str  # "header", or "uri" (the URL's label)
    name: str  # the header's name, or the URI label's
    type: str = "string"  # or "integer" (sent as a decimal header)
    min: int | None = None  # a string's length, an integer's value
    max: int | None = None
    pattern: str | None = None  # in Java's regex dialect, as the model writes it
    sensitive: bool = False  # AWS leaves its value out of the message


_NAME = r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*"
_ASCII = r"\p{ASCII}*"
_PRINTABLE = r"\A\S[\p{Print}]*\z"

INVOKE_ENDPOINT: tuple[Bound, ...] = (
    Bound("EndpointName", "uri", "EndpointName", max=63, pattern=_NAME),
    Bound("ContentType", "header", "Content-Type", max=1024, pattern=_ASCII),
    Bound("Accept", "header", "Accept", max=1024, pattern=_ASCII),
    Bound("CustomAttributes", "header", "X-Amzn-SageMaker-Custom-Attributes", max=1024, pattern=_ASCII, sensitive=True),
    Bound("TargetModel", "header", "X-Amzn-SageMaker-Target-Model", min=1, max=1024, pattern=_PRINTABLE),
    Bound("TargetVariant", "header", "X-Amzn-SageMaker-Target-Variant", max=63, pattern=_NAME),
    Bound("TargetContainerHostname", "header", "X-Amzn-SageMaker-Target-Container-Hostname", max=63, pattern=_NAME),
    Bound("InferenceId", "header", "X-Amzn-SageMaker-Inference-Id", min=1, max=64, pattern=_PRINTABLE),
    Bound("EnableExplanations", "header", "X-Amzn-SageMaker-Enable-Explanations", min=1, max=64, pattern=".*"),
    Bound(
        "InferenceComponentName",
        "header",
        "X-Amzn-SageMaker-Inference-Component",
        max=63,
        pattern=r"^[a-zA-Z0-9]([\-a-zA-Z0-9]*[a-zA-Z0-9])?$",
    ),
    Bound(
        "SessionId",
        "header",
        "X-Amzn-SageMaker-Session-Id",
        max=256,
        pattern=r"^(NEW_SESSION)$|^[a-zA-Z0-9](-*[a-zA-Z0-9])*$",
    ),
    Bound("PrefixAwareId", "header", "X-Amzn-SageMaker-Prefix-Aware-Id", min=1, max=64, pattern=_PRINTABLE),
)

INVOKE_ENDPOINT_ASYNC: tuple[Bound, ...] = (
    Bound("EndpointName", "uri", "EndpointName", max=63, pattern=_NAME),
    Bound("ContentType", "header", "X-Amzn-SageMaker-Content-Type", max=1024, pattern=_ASCII),
    Bound("Accept", "header", "X-Amzn-SageMaker-Accept", max=1024, pattern=_ASCII),
    Bound("CustomAttributes", "header", "X-Amzn-SageMaker-Custom-Attributes", max=1024, pattern=_ASCII, sensitive=True),
    Bound("InferenceId", "header", "X-Amzn-SageMaker-Inference-Id", min=1, max=64, pattern=_PRINTABLE),
    Bound(
        "InputLocation",
        "header",
        "X-Amzn-SageMaker-InputLocation",
        min=1,
        max=1024,
        pattern=r"^(https|s3)://([^/]+)/?(.*)$",
    ),
    Bound(
        "S3OutputPathExtension",
        "header",
        "X-Amzn-SageMaker-S3OutputPathExtension",
        min=1,
        max=512,
        pattern=r"^(?!s3:|https:)[a-zA-Z0-9!_.*'()/-]+$",
    ),
    Bound(
        "Filename",
        "header",
        "X-Amzn-SageMaker-Filename",
        min=1,
        max=32,
        pattern=r"^(?!.*\..*\.)[a-zA-Z0-9][a-zA-Z0-9-_\.]*$",
    ),
    Bound("RequestTTLSeconds", "header", "X-Amzn-SageMaker-RequestTTLSeconds", "integer", min=60, max=21600),
    Bound(
        "InvocationTimeoutSeconds", "header", "X-Amzn-SageMaker-InvocationTimeoutSeconds", "integer", min=1, max=3600
    ),
)

# Java's escapes the model's patterns use, in Python's dialect, outside and inside a character class. Java's \S
# and POSIX classes are ASCII-only (no UNICODE_CHARACTER_CLASS flag), its \z is Python's \Z, and its . excludes
# every line terminator Java knows.
_ESCAPES = {
    r"\p{ASCII}": (r"[\x00-\x7f]", r"\x00-\x7f"),
    r"\p{Print}": (r"[\x20-\x7e]", r"\x20-\x7e"),
    r"\S": (r"[^ \t\n\x0b\f\r]", None),
    r"\A": (r"\A", None),
    r"\z": (r"\Z", None),
    r"\.": (r"\.", r"\."),
    r"\-": (r"\-", r"\-"),
}
_JAVA_DOT = r"[^\n\r\x85\u2028\u2029]"
_QUANTIFIERS = "*+?"
_LITERAL = frozenset(string.ascii_letters + string.digits + "_/:'!-")  # the same character in both dialects
_IN_CLASS = _LITERAL | frozenset(".*()")


def java_regex(pattern: str) -> re.Pattern[str]:
    """A Java regex of the model, compiled to match as Java does; ValueError for a construct it does not know
    (a new one in a botocore update must be translated here by hand, not guessed)."""
    out: list[str] = []
    in_class = quantified = False
    i = 0
    while i < len(pattern):
        char, token = pattern[i], pattern[i]
        if char == "\\":
            token = pattern[i : pattern.find("}", i) + 1] if pattern.startswith("\\p{", i) else pattern[i : i + 2]
            outside, inside = _ESCAPES.get(token, (None, None))
            translated = inside if in_class else outside
            if translated is None:
                raise ValueError(f"unknown Java regex escape {token!r} in {pattern!r}")
        elif in_class:
            in_class = char != "]"
            if char not in _IN_CLASS and char != "]" and not (char == "^" and out[-1] == "["):
                raise ValueError(f"unknown Java regex construct {char!r} in a class of {pattern!r}")
            translated = char
        elif char == "[":
            if pattern.startswith(("[]", "[^]"), i):
                raise ValueError(f"a class opening with ']' in {pattern!r}")
            in_class, translated = True, char
        elif char == ".":
            translated = _JAVA_DOT
        elif char in _QUANTIFIERS:
            if quantified:
                raise ValueError(f"a lazy or possessive quantifier in {pattern!r}")
            translated = char
        elif pattern.startswith("(?", i):
            token = translated = pattern[i : i + 3]
            if token != "(?!":
                raise ValueError(f"unknown Java regex group {token!r} in {pattern!r}")
        elif char in _LITERAL or char in "^$()|":
            translated = char
        else:
            raise ValueError(f"unknown Java regex construct {char!r} in {pattern!r}")
        quantified = not in_class and char in _QUANTIFIERS
        out.append(translated)
        i += len(token)
    if in_class:
        raise ValueError(f"an unclosed class in {pattern!r}")
    try:
        return re.compile("".join(out))
    except re.error as exc:
        raise ValueError(f"{pattern!r} is not a regex Python knows: {exc}") from exc


class _Rule:
    """One bound, ready for the request path."""

    __slots__ = ("bound", "high", "integer", "label", "low", "matches", "name", "regex")

    def __init__(self, bound: Bound) -> None:
        self.bound = bound
        self.name = bound.name
        self.label = bound.member[0].lower() + bound.member[1:]  # as AWS names a member in its messages
        self.low = bound.min if bound.min is not None else 0
        self.high = bound.max if bound.max is not None else 2**63
        self.regex = java_regex(bound.pattern) if bound.pattern is not None else None
        self.integer = bound.type == "integer"
        # The same test as the regex's, for the pattern of most headers: a fifth of its time on the warm path.
        self.matches: Callable[[str], object] | None = str.isascii if bound.pattern == _ASCII else None
        if self.regex is not None and self.matches is None:
            self.matches = self.regex.fullmatch

    def accepts(self, value: str) -> bool:
        if self.integer:
            try:
                number = int(value)
            except ValueError:
                return True  # not a number at all: the request's parser says so (asyncinvoke/request.py)
            return self.low <= number <= self.high
        return self.low <= len(value) <= self.high and (self.matches is None or bool(self.matches(value)))

    def failures(self, value: str) -> list[str]:
        """AWS's sentences for each constraint ``value`` fails."""
        bound = self.bound
        constraints: list[str] = []
        size = int(value) if self.integer else len(value)
        what = "value" if self.integer else "length"
        if bound.min is not None and size < bound.min:
            constraints.append(f"Member must have {what} greater than or equal to {bound.min}")
        if bound.max is not None and size > bound.max:
            constraints.append(f"Member must have {what} less than or equal to {bound.max}")
        if self.regex is not None and self.regex.fullmatch(value) is None:
            constraints.append(f"Member must satisfy regular expression pattern: {bound.pattern}")
        shown = "Value" if bound.sensitive else f"Value '{value}'"
        return [f"{shown} at '{self.label}' failed to satisfy constraint: {constraint}" for constraint in constraints]


class Limits:
    """The bounds of one operation (``INVOKE_ENDPOINT``, ``INVOKE_ENDPOINT_ASYNC``), compiled once."""

    def __init__(self, bounds: tuple[Bound, ...]) -> None:
        rules = [_Rule(bound) for bound in bounds]
        self.headers = tuple(rule for rule in rules if rule.bound.location == "header")
        [self.endpoint] = [rule for rule in rules if rule.bound.location == "uri"]  # the URL's only label

    def failures(self, headers: Mapping[str, str], endpoint: str | None = None) -> dict[str, list[str]]:
        """Each member that breaks a bound, lowerCamelCase, with AWS's sentences for it; empty when none does.
        ``endpoint``: the EndpointName of the URL, when it has one."""
        failed: dict[str, list[str]] = {}
        if endpoint is not None and not self.endpoint.accepts(endpoint):
            failed[self.endpoint.label] = self.endpoint.failures(endpoint)
        for rule in self.headers:
            value = headers.get(rule.name)
            if value is not None and not rule.accepts(value):
                failed[rule.label] = rule.failures(value)
        return failed

    def check(self, headers: Mapping[str, str], endpoint: str | None = None) -> None:
        """ValidationError, in AWS's words, when a member breaks a bound."""
        failed = self.failures(headers, endpoint)
        if failed:
            raise ValidationError(message(failed))


def message(failed: Mapping[str, list[str]]) -> str:
    """AWS's message for the failures of ``Limits.failures``."""
    sentences = [sentence for sentences in failed.values() for sentence in sentences]
    noun = "error" if len(sentences) == 1 else "errors"
    return f"{len(sentences)} validation {noun} detected: " + "; ".join(sentences)
