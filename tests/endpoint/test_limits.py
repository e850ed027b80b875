"""The limits table against the installed botocore's sagemaker-runtime model: the same members, bounds and
patterns; every bound checked at its edge (the longest value accepted, one more refused; the lowest and highest
number accepted, one past refused); every pattern against values Java's ``Pattern.matches`` accepts and refuses,
written by hand (a pattern not listed here fails the test); AWS's message, and botocore's reading of the error."""

from __future__ import annotations

from typing import Any

import botocore.loaders
import botocore.parsers
import botocore.session
import pytest

from openmme.endpoint.asyncinvoke.request import INLINE_MAX_BYTES
from openmme.endpoint.errors import ValidationError
from openmme.endpoint.http_errors import render
from openmme.endpoint.limits import INVOKE_ENDPOINT, INVOKE_ENDPOINT_ASYNC, Bound, Limits, java_regex
from openmme.endpoint.settings import MAX_BODY_BYTES

MODEL: dict[str, Any] = botocore.loaders.Loader().load_service_model("sagemaker-runtime", "service-2")
OPERATIONS = {
    "InvokeEndpointInput": (INVOKE_ENDPOINT, MAX_BODY_BYTES),
    "InvokeEndpointAsyncInput": (INVOKE_ENDPOINT_ASYNC, INLINE_MAX_BYTES),
}
# What a shape may say about its values; anything else (an enum, say) is a bound this module does not enforce.
KNOWN_TRAITS = {"type", "min", "max", "pattern", "sensitive", "documentation"}

# Each pattern of the model, with values Java's Pattern.matches accepts and refuses (Java's \S and POSIX classes
# are ASCII-only, its . stops at every line terminator it knows, and matches() must match the whole value).
PATTERNS: dict[str, tuple[list[str], list[str]]] = {
    r"\p{ASCII}*": (["", "text/csv; charset=utf-8", "trace=1;a=\x00\x7f"], ["é", "trace=1;note=été", "a\x80"]),
    r"\A\S[\p{Print}]*\z": (
        ["a", "houston/model v2.tar.gz", "~!@#$%^&*()", "é-then-ascii", "\u00a0x"],
        ["", " leading", "\tx", "a\tb", "trailing-é", "line\n", "x\x7f"],
    ),
    r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*": (
        ["prod", "a", "A1", "a--b-c"],
        ["", "my_endpoint", "-a", "a-", "a.b", "café", "a b"],
    ),
    ".*": (["", "anything at all", "été", "\t"], ["a\nb", "a\rb", "a\x85b", "a\u2028b", "a\u2029"]),
    r"^[a-zA-Z0-9]([\-a-zA-Z0-9]*[a-zA-Z0-9])?$": (["a", "a-b", "a--b", "Ab9"], ["", "a-", "-a", "a_b", "a\n"]),
    r"^(NEW_SESSION)$|^[a-zA-Z0-9](-*[a-zA-Z0-9])*$": (
        ["NEW_SESSION", "s-1", "abc"],
        ["", "NEW_SESSION2", "new_session", "NEW_SESSION\n", "-s"],
    ),
    r"^(https|s3)://([^/]+)/?(.*)$": (
        ["s3://bucket/key", "s3://bucket", "https://host/a/b?c", "s3://b/"],
        ["http://bucket/key", "s3:///key", "file:///etc/passwd", "S3://b/k", "s3://b/k\n"],
    ),
    r"^(?!s3:|https:)[a-zA-Z0-9!_.*'()/-]+$": (
        ["a/b", "x!_.*'()-/", "s3", "https"],
        ["", "s3:x", "https:x", "a b", "a:b", "é"],
    ),
    r"^(?!.*\..*\.)[a-zA-Z0-9][a-zA-Z0-9-_\.]*$": (
        ["a", "a.b", "a-_b", "9.out"],
        ["", "a.b.c", "_a", ".a", "a b", "a..b"],
    ),
}
# What a value needs before its filler to satisfy its member's pattern.
PREFIXES = {"InputLocation": "s3://bucket/"}


def from_model(shape_name: str) -> tuple[Bound, ...]:
    """The Bounds botocore's model states for the header and URI members of an input shape."""
    bounds = []
    for member, reference in MODEL["shapes"][shape_name]["members"].items():
        if reference.get("location") not in {"header", "uri"}:
            continue
        shape = MODEL["shapes"][reference["shape"]]
        assert set(shape) <= KNOWN_TRAITS, (member, set(shape) - KNOWN_TRAITS)
        bounds.append(
            Bound(
                member,
                reference["location"],
                reference["locationName"],
                shape["type"],
                shape.get("min"),
                shape.get("max"),
                shape.get("pattern"),
                shape.get("sensitive", False),
            )
        )
    return tuple(bounds)


def all_bounds() -> list[tuple[str, Bound]]:
    return [(shape, bound) for shape, (table, _) in OPERATIONS.items() for bound in table]


def failures(shape: str, bound: Bound, value: str) -> list[str]:
    """AWS's sentences for ``value`` sent as ``bound``'s member of ``shape``."""
    limits = Limits(OPERATIONS[shape][0])
    failed = limits.failures({}, value) if bound.location == "uri" else limits.failures({bound.name: value})
    label = bound.member[0].lower() + bound.member[1:]
    assert set(failed) <= {label}
    return failed.get(label, [])


def sample(bound: Bound, length: int) -> str:
    prefix = PREFIXES.get(bound.member, "")
    return prefix + "a" * (length - len(prefix))


@pytest.mark.parametrize("shape", OPERATIONS)
def test_the_table_is_botocores_model_exactly(shape: str) -> None:
    table, body_limit = OPERATIONS[shape]
    assert table == from_model(shape)
    members = MODEL["shapes"][shape]["members"]
    payload = MODEL["shapes"][shape]["payload"]
    # Nothing but headers, the URI and the body, whose limit is enforced where it is read.
    assert {name for name, reference in members.items() if reference.get("location") not in {"header", "uri"}} == {
        payload
    }
    assert MODEL["shapes"][members[payload]["shape"]]["max"] == body_limit


@pytest.mark.parametrize(("shape", "bound"), [item for item in all_bounds() if item[1].type == "string"])
def test_a_string_is_accepted_at_its_bounds_and_refused_past_them(shape: str, bound: Bound) -> None:
    assert bound.max is not None
    assert failures(shape, bound, sample(bound, bound.max)) == []
    label = bound.member[0].lower() + bound.member[1:]
    too_long = sample(bound, bound.max + 1)
    shown = "Value" if bound.sensitive else f"Value '{too_long}'"
    assert failures(shape, bound, too_long) == [
        f"{shown} at '{label}' failed to satisfy constraint: Member must have length less than or equal to {bound.max}"
    ]
    if bound.min:
        if bound.min > len(PREFIXES.get(bound.member, "")):  # a value this short can satisfy the pattern
            assert failures(shape, bound, sample(bound, bound.min)) == []
        too_short = "a" * (bound.min - 1)
        assert (
            f"Value '{too_short}' at '{label}' failed to satisfy constraint: Member must have length greater than or "
            f"equal to {bound.min}"
        ) in failures(shape, bound, too_short)


@pytest.mark.parametrize(("shape", "bound"), [item for item in all_bounds() if item[1].type == "integer"])
def test_a_number_is_accepted_at_its_bounds_and_refused_past_them(shape: str, bound: Bound) -> None:
    assert bound.min is not None and bound.max is not None
    assert failures(shape, bound, str(bound.min)) == failures(shape, bound, str(bound.max)) == []
    label = bound.member[0].lower() + bound.member[1:]
    assert failures(shape, bound, str(bound.min - 1)) == [
        f"Value '{bound.min - 1}' at '{label}' failed to satisfy constraint: Member must have value greater than or "
        f"equal to {bound.min}"
    ]
    assert failures(shape, bound, str(bound.max + 1)) == [
        f"Value '{bound.max + 1}' at '{label}' failed to satisfy constraint: Member must have value less than or "
        f"equal to {bound.max}"
    ]


def test_every_pattern_of_the_model_has_cases_here() -> None:
    stated = {bound.pattern for _, bound in all_bounds() if bound.pattern is not None}
    assert stated == set(PATTERNS)


@pytest.mark.parametrize(("shape", "bound"), [item for item in all_bounds() if item[1].pattern is not None])
def test_each_pattern_accepts_and_refuses_as_java_does(shape: str, bound: Bound) -> None:
    assert bound.pattern is not None
    accepted, refused = PATTERNS[bound.pattern]
    sentence = f"Member must satisfy regular expression pattern: {bound.pattern}"
    for value in accepted:
        if (bound.min or 0) <= len(value) <= (bound.max or 0):
            assert failures(shape, bound, value) == [], value
    for value in refused:
        assert any(line.endswith(sentence) for line in failures(shape, bound, value)), value


@pytest.mark.parametrize(
    "pattern",
    [r"\p{Alpha}+", r"\w+", r"\d", r"\s*", r"a{2}", r"[a&&b]", r"[[a]b]", r"(?i)a", r"(?:a)", r"a*?", r"a++", "a\\"],
)
def test_a_java_construct_not_translated_is_refused_not_guessed(pattern: str) -> None:
    with pytest.raises(ValueError, match="in "):
        java_regex(pattern)


def test_the_error_is_worded_and_shaped_as_aws_and_botocore_reads_it_as_a_validation_error() -> None:
    limits = Limits(INVOKE_ENDPOINT)
    with pytest.raises(ValidationError) as raised:
        limits.check({"X-Amzn-SageMaker-Inference-Id": "x" * 65, "X-Amzn-SageMaker-Custom-Attributes": "é"}, "prod")
    assert raised.value.message == (
        "2 validation errors detected: Value at 'customAttributes' failed to satisfy constraint: Member must "
        "satisfy regular expression pattern: \\p{ASCII}*; Value '" + "x" * 65 + "' at 'inferenceId' failed to "
        "satisfy constraint: Member must have length less than or equal to 64"
    )
    limits.check({"X-Amzn-SageMaker-Inference-Id": "x" * 64, "Accept": "*/*"}, "prod")  # within every bound

    response = render(raised.value)
    operation = botocore.session.get_session().get_service_model("sagemaker-runtime").operation_model("InvokeEndpoint")
    parsed = botocore.parsers.RestJSONParser().parse(
        {"status_code": response.status, "headers": dict(response.headers), "body": response.body},
        operation.output_shape,
    )
    assert parsed["Error"] == {"Code": "ValidationError", "Message": raised.value.message}
    assert parsed["ResponseMetadata"]["HTTPStatusCode"] == 400
