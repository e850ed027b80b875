"""SigV4 verification without an endpoint: requests signed by botocore exactly as boto3's sagemaker-runtime client
signs them (captured from a real client just before it would send), checked by openmme's verifier (whose
signature botocore computes); key files, the exposure rule, and the middleware on a small aiohttp app with the
front's routes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import stat
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import boto3
import botocore.auth
import botocore.awsrequest
import botocore.credentials
import botocore.exceptions
import pytest
import yarl
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from openmme.endpoint.app import read_body
from openmme.endpoint.auth import (
    AccessKey,
    AuthConfigError,
    KeyStore,
    ReplayCache,
    SigV4Verifier,
    check_exposure,
    describe,
    is_loopback,
    load_keys,
)
from openmme.endpoint.auth.signature import Credential, expected_signature
from openmme.endpoint.errors import (
    AccessDenied,
    Forbidden,
    IncompleteSignature,
    InvalidSignature,
    MissingAuthenticationToken,
    ServiceUnavailable,
    UnrecognizedClient,
)
from openmme.endpoint.http_errors import render
from openmme.endpoint.settings import Settings
from openmme.ports import free_port
from tests.support import front_app, front_routes

HOUSTON = AccessKey("AKIDHOUSTON", "houston-secret/+=", ("houston/*",))
ADMIN = AccessKey("AKIDADMIN", "admin-secret", ("*",))
KEYS = KeyStore([HOUSTON, ADMIN])
URL = "http://127.0.0.1:8080"


@dataclass(frozen=True)
class Sent:
    """A request as it goes over the wire: method, request target (still percent-encoded), headers, body."""

    method: str
    target: str
    headers: CIMultiDict[str]
    body: bytes

    def with_header(self, name: str, value: str | None, add: bool = False) -> Sent:
        headers = CIMultiDict(self.headers)
        if add:
            headers.add(name, value or "")
        elif value is None:
            del headers[name]
        else:
            headers[name] = value
        return replace(self, headers=headers)


def on_the_wire(request: Any) -> Sent:
    """What urllib3 sends for a botocore request: its headers plus Host (urllib3 adds it, botocore signs it)."""
    parts = urlsplit(request.url)
    headers: CIMultiDict[str] = CIMultiDict(Host=parts.netloc)
    for name, value in request.headers.items():
        headers.add(name, value.decode() if isinstance(value, bytes) else value)
    body = request.body or b""
    return Sent(request.method, parts.path + (f"?{parts.query}" if parts.query else ""), headers, body)


@pytest.fixture(scope="module")
def boto3_sends() -> Iterator[Callable[..., Sent]]:
    """invoke_endpoint through the unchanged boto3 client; the request is captured instead of sent."""
    captured: list[Sent] = []

    def capture(request: Any, **_: Any) -> botocore.awsrequest.AWSResponse:
        captured.append(on_the_wire(request))
        return botocore.awsrequest.AWSResponse(request.url, 200, {}, None)

    def invoke(key: AccessKey = HOUSTON, **params: Any) -> Sent:
        client = boto3.client(
            "sagemaker-runtime",
            endpoint_url=URL,
            region_name="eu-west-3",
            aws_access_key_id=key.access_key_id,
            aws_secret_access_key=key.secret_access_key,
        )
        client.meta.events.register("before-send", capture)
        defaults = {"EndpointName": "prod", "TargetModel": "houston/model.tar.gz", "ContentType": "text/csv"}
        client.invoke_endpoint(**{**defaults, "Body": b"0.3,-1.0,0.75", **params})
        return captured.pop()

    yield invoke


def sign(method: str, path: str, key: AccessKey, body: bytes = b"", headers: dict[str, str] | None = None) -> Sent:
    """A request to a route boto3 has no operation for, signed by botocore's SigV4Auth (what clients run)."""
    request = botocore.awsrequest.AWSRequest(method, URL + path, headers=headers or {}, data=body)
    credentials = botocore.credentials.Credentials(key.access_key_id, key.secret_access_key)
    botocore.auth.SigV4Auth(credentials, "sagemaker", "us-east-1").add_auth(request)
    return on_the_wire(request.prepare())


def verify(sent: Sent, verifier: SigV4Verifier | None = None) -> AccessKey:
    return (verifier or SigV4Verifier(KEYS)).verify(sent.method, sent.target, sent.headers, sent.body).key


# The signature botocore computes, against AWS's own example.


def test_signature_matches_aws_published_example() -> None:
    """AWS's SigV4 test suite, "get-vanilla": a known answer independent of botocore, for the request openmme hands
    botocore's signer."""
    headers = CIMultiDict({"Host": "example.amazonaws.com", "X-Amz-Date": "20150830T123600Z"})
    expected = "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
    credential = Credential("AKIDEXAMPLE", "20150830", "us-east-1", "service", ("host", "x-amz-date"), expected)
    secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
    assert expected_signature(credential, secret, "20150830T123600Z", "GET", "/", headers, b"") == expected


# boto3's own requests pass; every kind of tampering does not.


@pytest.mark.parametrize(
    ("endpoint_name", "target"),
    [
        ("prod", "houston/model.tar.gz"),
        ("a b/c%d~e+f=g:h&i?j#k", "houston/model a+b%.tar.gz"),
        ("café", "houston/v2/naïve model.tar.gz"),
    ],
)
def test_boto3_invoke_endpoint_passes(boto3_sends: Callable[..., Sent], endpoint_name: str, target: str) -> None:
    sent = boto3_sends(EndpointName=endpoint_name, TargetModel=target, CustomAttributes="trace=1")
    if endpoint_name != "prod":
        assert "%" in sent.target  # the name travels percent-encoded, and is signed encoded once more
    assert verify(sent) == HOUSTON


def test_botocore_signed_get_with_query_passes() -> None:
    sent = sign("GET", "/models?next_page_token=2&limit=5", ADMIN)
    assert verify(sent) == ADMIN
    reordered = replace(sent, target="/models?limit=5&next_page_token=2")
    assert verify(reordered) == ADMIN  # the query's pairs are sorted, not compared as sent


def test_botocore_signed_post_with_content_sha256_header_passes() -> None:
    body = b'{"model_name": "m", "url": "/opt/ml/models/m/model"}'
    sent = sign("POST", "/models", ADMIN, body, {"X-Amz-Content-SHA256": hashlib.sha256(body).hexdigest()})
    assert verify(sent) == ADMIN


# openmme agrees with botocore on the requests where a copy of the algorithm would go wrong: botocore computes both.

TRICKY_SIGNED = [
    # Repeated keys (sorted by value too), encoded keys and values, a key without "=", an empty value.
    ("GET", "/models?limit=5&next_page_token=2&limit=1&a%20b=c%2Fd%2B&e=&f&%C3%A9=%E2%82%AC", {}),
    # Spaces, "%", "~" and an encoded "/" in a path segment: sent encoded once, signed encoded twice.
    ("POST", "/endpoints/a%20b%25c~d%2Fe/invocations", {"X-Amzn-SageMaker-Target-Model": "houston/m.tar.gz"}),
    ("POST", "/models/houston/a%20b%25%2520.tar.gz/invoke", {}),
    # Dot segments and repeated slashes are dropped from the path botocore signs, not from the one sent.
    ("POST", "/models/houston//x/./y/../m.tar.gz/invoke", {}),
    # Runs of spaces and tabs inside a header value count as one space; the ends are trimmed.
    (
        "POST",
        "/invocations",
        {"X-Amzn-SageMaker-Target-Model": "houston/a  b.tar.gz", "X-Amzn-SageMaker-Custom-Attributes": "a   b \t c"},
    ),
]


@pytest.mark.parametrize(("method", "path", "headers"), TRICKY_SIGNED)
def test_openmme_agrees_with_botocore_on_tricky_requests(method: str, path: str, headers: dict[str, str]) -> None:
    """Signed by botocore, verified by openmme (the signature botocore's again): directly, then sent byte for byte
    to a real server, where the path and headers are what aiohttp hands over."""
    sent = sign(method, path, ADMIN, b"1,2" if method == "POST" else b"", headers)
    assert verify(sent) == ADMIN
    assert type(refused(replace(sent, body=sent.body + b"0"))) is InvalidSignature  # and still tells them apart
    [(status, _)] = exchange(signed_app({}), [sent])
    assert status == 200


def test_openmme_agrees_with_boto3_on_a_unicode_endpoint_name_over_the_wire(
    boto3_sends: Callable[..., Sent],
) -> None:
    """invoke_endpoint as boto3 sends it, through a real server: the path aiohttp hands over still encoded, and a
    TargetModel, CustomAttributes and InferenceId with non-ASCII text and runs of spaces decoded as UTF-8."""
    sent = boto3_sends(
        EndpointName="café 日本 50%",
        TargetModel="houston/naïve   model.tar.gz",
        CustomAttributes="trace=1;   note=été",
        InferenceId="req  ü",
        Body=b"1,2",
    )
    assert "caf%C3%A9%20%E6%97%A5%E6%9C%AC%2050%25" in sent.target
    assert verify(sent) == HOUSTON
    [(status, body)] = exchange(signed_app({}), [sent])
    assert (status, body) == (200, {"route": "endpoint_invocations", "body": "1,2"})


def refused(sent: Sent, verifier: SigV4Verifier | None = None) -> Forbidden:
    with pytest.raises(Forbidden) as raised:
        verify(sent, verifier)
    return raised.value


def test_a_signed_header_that_is_not_utf8_is_refused_not_a_failure(boto3_sends: Callable[..., Sent]) -> None:
    """aiohttp decodes header bytes that are not UTF-8 with surrogateescape; botocore signs UTF-8 text only."""
    sent = boto3_sends().with_header("X-Amzn-SageMaker-Target-Model", "houston/caf\udce9.tar.gz")
    error = refused(sent)
    assert type(error) is InvalidSignature
    assert "not UTF-8" in error.message


def test_wrong_secret_is_an_invalid_signature(boto3_sends: Callable[..., Sent]) -> None:
    error = refused(boto3_sends(AccessKey(HOUSTON.access_key_id, "not-the-secret")))
    assert type(error) is InvalidSignature
    assert "does not match" in error.message


def test_unknown_access_key_is_an_unrecognized_client(boto3_sends: Callable[..., Sent]) -> None:
    assert type(refused(boto3_sends(AccessKey("AKIDSTRANGER", "secret")))) is UnrecognizedClient


def test_tampered_body_is_an_invalid_signature(boto3_sends: Callable[..., Sent]) -> None:
    sent = boto3_sends()
    assert type(refused(replace(sent, body=b"9,9,9"))) is InvalidSignature


@pytest.mark.parametrize(
    ("name", "value", "add"),
    [
        ("X-Amzn-SageMaker-Target-Model", "chicago/model.tar.gz", False),  # another model with the same signature
        ("X-Amzn-SageMaker-Target-Model", "chicago/model.tar.gz", True),  # a second value appended
        ("Content-Type", "application/json", False),
        ("Host", "127.0.0.1:9090", False),
        ("X-Amz-Date", "20200101T000000Z", False),
    ],
)
def test_tampered_header_is_an_invalid_signature(
    boto3_sends: Callable[..., Sent], name: str, value: str, add: bool
) -> None:
    sent = boto3_sends().with_header(name, value, add)
    assert type(refused(sent)) is InvalidSignature


def test_tampered_method_or_path_is_an_invalid_signature(boto3_sends: Callable[..., Sent]) -> None:
    sent = boto3_sends()
    assert type(refused(replace(sent, target="/endpoints/other/invocations"))) is InvalidSignature
    assert type(refused(replace(sent, method="PUT"))) is InvalidSignature


def test_missing_authorization_is_a_missing_token(boto3_sends: Callable[..., Sent]) -> None:
    error = refused(boto3_sends().with_header("Authorization", None))
    assert type(error) is MissingAuthenticationToken
    assert render(error).headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"


@pytest.mark.parametrize("name", ["X-Amz-Date", "Content-Type", "Host"])
def test_missing_signed_header_is_an_incomplete_signature(boto3_sends: Callable[..., Sent], name: str) -> None:
    assert type(refused(boto3_sends().with_header(name, None))) is IncompleteSignature


def test_unsigned_sagemaker_header_is_refused(boto3_sends: Callable[..., Sent]) -> None:
    """A header that changes what runs (here the one echoed to the model) must be covered by the signature."""
    sent = boto3_sends().with_header("X-Amzn-SageMaker-Custom-Attributes", "injected=1")
    error = refused(sent)
    assert type(error) is IncompleteSignature
    assert "x-amzn-sagemaker-custom-attributes" in error.message


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer abc",
        "AWS4-HMAC-SHA256 Credential=AKIDHOUSTON/20240101/us-east-1/sagemaker/aws4_request",
        "AWS4-HMAC-SHA256 Credential=AKIDHOUSTON/20240101/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-date, "
        "Signature=" + "0" * 64,
        "AWS4-HMAC-SHA256 Credential=AKIDHOUSTON/20240101/us-east-1/sagemaker/aws4_request, "
        "SignedHeaders=host;x-amz-date, Signature=xyz",
    ],
)
def test_malformed_authorization_is_an_incomplete_signature(
    boto3_sends: Callable[..., Sent], authorization: str
) -> None:
    assert type(refused(boto3_sends().with_header("Authorization", authorization))) is IncompleteSignature


def test_signature_older_or_newer_than_five_minutes_is_expired(boto3_sends: Callable[..., Sent]) -> None:
    sent = boto3_sends()
    signed_at = datetime.strptime(sent.headers["X-Amz-Date"], "%Y%m%dT%H%M%S%z").timestamp()
    assert verify(sent, SigV4Verifier(KEYS, clock=lambda: signed_at + 299)) == HOUSTON
    assert verify(sent, SigV4Verifier(KEYS, clock=lambda: signed_at - 299)) == HOUSTON
    late = refused(sent, SigV4Verifier(KEYS, clock=lambda: signed_at + 301))
    assert type(late) is InvalidSignature
    assert late.message.startswith("Signature expired")
    early = refused(sent, SigV4Verifier(KEYS, clock=lambda: signed_at - 301))
    assert type(early) is InvalidSignature
    assert early.message.startswith("Signature not yet current")


def test_a_signature_is_good_for_its_whole_window_as_on_aws(boto3_sends: Callable[..., Sent]) -> None:
    """SigV4 has no nonce: the same request sent again within its 5 minutes is served (identical requests within
    one second carry identical signatures)."""
    sent = boto3_sends()
    verifier = SigV4Verifier(KEYS)
    assert [verify(sent, verifier) for _ in range(20)] == [HOUSTON] * 20


def test_replayed_signature_is_refused_when_asked(boto3_sends: Callable[..., Sent]) -> None:
    sent = boto3_sends()
    memory = ReplayCache()
    verifier = SigV4Verifier(KEYS, memory)
    grant = verifier.verify(sent.method, sent.target, sent.headers, sent.body)
    error = refused(sent, verifier)
    assert type(error) is InvalidSignature
    assert "used already" in error.message
    # A request the endpoint failed to serve gives its signature back: botocore's retry may carry the same one.
    memory.give_back(grant.signature)
    assert verify(sent, verifier) == HOUSTON
    assert len(memory) == 1


def test_payload_hash_header_must_match_and_be_signed_content() -> None:
    body = b"1,2,3"
    sent = sign("POST", "/invocations", ADMIN, body, {"X-Amz-Content-SHA256": hashlib.sha256(b"other").hexdigest()})
    assert "x-amz-content-sha256" in refused(sent).message
    unsigned = sign("POST", "/invocations", ADMIN, body, {"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    assert type(refused(unsigned)) is IncompleteSignature


def test_every_refusal_is_a_403_in_sagemakers_error_shape() -> None:
    for error in (InvalidSignature("x"), IncompleteSignature("x"), UnrecognizedClient("x"), AccessDenied("x")):
        response = render(error)
        assert response.status == 403
        assert response.headers["x-amzn-ErrorType"] == error.code
        assert response.body is not None
        assert json.loads(bytes(response.body)) == {"__type": error.code, "message": "x"}


# Replay memory.


def test_replay_cache_forgets_expired_signatures_and_stays_bounded() -> None:
    cache = ReplayCache(capacity=3)
    assert cache.spend("a", expires_at=100.0, now=0.0)
    assert not cache.spend("a", expires_at=100.0, now=50.0)
    assert cache.spend("a", expires_at=300.0, now=101.0)  # expired, so forgotten: usable again
    for name, expiry in (("b", 200.0), ("c", 250.0), ("d", 400.0)):
        assert cache.spend(name, expires_at=expiry, now=102.0)
    assert len(cache) == 3
    assert cache.forgotten == 1
    assert cache.spend("b", expires_at=200.0, now=103.0)  # the soonest to expire was the one forgotten
    assert not cache.spend("d", expires_at=400.0, now=103.0)


def test_replay_cache_keeps_its_heap_bounded_when_signatures_are_given_back() -> None:
    cache = ReplayCache(capacity=10)
    for index in range(1000):
        assert cache.spend(f"s{index}", expires_at=1e9, now=0.0)
        cache.give_back(f"s{index}")
    assert len(cache) == 0
    assert len(cache._heap) <= 20


# Allow patterns.


@pytest.mark.parametrize(
    ("target", "allowed"),
    [
        ("houston/model.tar.gz", True),
        ("houston/v2/model.tar.gz", True),  # * spans /
        ("houstonia/model.tar.gz", False),
        ("Houston/model.tar.gz", False),  # case matters, as S3 keys do
        ("chicago/model.tar.gz", False),
        ("houston", False),
    ],
)
def test_allow_patterns_are_globs_over_the_target_model(target: str, allowed: bool) -> None:
    assert HOUSTON.may_invoke(target) is allowed
    assert ADMIN.may_invoke(target)


def test_several_patterns_any_may_match() -> None:
    key = AccessKey("AKID", "s", ("houston/*", "m-1?.tar.gz", "exact.tar.gz"))
    assert [key.may_invoke(t) for t in ("houston/a", "m-17.tar.gz", "m-170.tar.gz", "exact.tar.gz")] == [
        True,
        True,
        False,
        True,
    ]
    assert not key.unrestricted and ADMIN.unrestricted


# Keys from a file or the environment; the exposure rule.


def settings(*argv: str) -> Settings:
    return Settings.from_sources(list(argv), {})


def write_keys(tmp_path: Path, document: object) -> Path:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(document))
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    return path


def test_keys_file_is_loaded_with_allow_patterns(tmp_path: Path) -> None:
    path = write_keys(
        tmp_path,
        {
            "keys": [
                {"access_key_id": "AKIDHOUSTON", "secret_access_key": "s1", "allow": ["houston/*"]},
                {"access_key_id": "AKIDADMIN", "secret_access_key": "s2", "allow": ["*"]},
            ]
        },
    )
    keys = load_keys(settings("--auth", "sigv4", "--auth-keys-file", str(path)), {})
    assert keys is not None and len(keys) == 2
    assert keys.get("AKIDHOUSTON") == AccessKey("AKIDHOUSTON", "s1", ("houston/*",))
    assert keys.get("AKIDNOBODY") is None


def test_environment_key_may_invoke_everything() -> None:
    environ = {"OPENMME_AUTH_ACCESS_KEY_ID": "AKIDENV", "OPENMME_AUTH_SECRET_ACCESS_KEY": "env-secret"}
    keys = load_keys(Settings.from_sources([], {"OPENMME_AUTH": "SIGV4"}), environ)
    assert keys is not None
    assert keys.get("AKIDENV") == AccessKey("AKIDENV", "env-secret", ("*",))


def test_secrets_never_appear_in_reprs() -> None:
    assert "houston-secret" not in repr(HOUSTON)
    assert "houston-secret" not in repr(KEYS.get("AKIDHOUSTON"))


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "must be a JSON object"),
        ({"keys": []}, "no access keys"),
        ({"keys": [{"access_key_id": "A", "secret_access_key": "TOPSECRET"}]}, "exactly the fields"),
        ({"keys": [{"access_key_id": "A", "secret_access_key": "TOPSECRET", "allow": []}]}, "non-empty list"),
        ({"keys": [{"access_key_id": "A", "secret_access_key": "TOPSECRET", "alow": ["*"]}]}, "exactly the fields"),
        ({"keys": [{"access_key_id": "A/B", "secret_access_key": "TOPSECRET", "allow": ["*"]}]}, "access_key_id"),
        ({"keys": [{"access_key_id": "A", "secret_access_key": "", "allow": ["*"]}]}, "secret_access_key"),
        ({"keys": [{"access_key_id": "A", "secret_access_key": "TOPSECRET", "allow": ["*"]}] * 2}, "given twice"),
    ],
)
def test_bad_keys_files_are_refused_without_showing_secrets(tmp_path: Path, document: object, message: str) -> None:
    path = write_keys(tmp_path, document)
    with pytest.raises(AuthConfigError, match=message) as raised:
        load_keys(settings("--auth", "sigv4", "--auth-keys-file", str(path)), {})
    assert "TOPSECRET" not in str(raised.value)


def test_keys_file_that_is_not_json_or_missing_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text('{"keys": [{"secret_access_key": "TOPSECRET",}]}')
    with pytest.raises(AuthConfigError, match="not JSON") as raised:
        load_keys(settings("--auth", "sigv4", "--auth-keys-file", str(path)), {})
    assert "TOPSECRET" not in str(raised.value)
    with pytest.raises(AuthConfigError, match="cannot read"):
        load_keys(settings("--auth", "sigv4", "--auth-keys-file", str(tmp_path / "absent.json")), {})


def test_auth_needs_keys_and_keys_need_auth(tmp_path: Path) -> None:
    assert load_keys(settings(), {}) is None
    with pytest.raises(AuthConfigError, match="needs keys"):
        load_keys(settings("--auth", "sigv4"), {})
    with pytest.raises(AuthConfigError, match="set together"):
        load_keys(settings("--auth", "sigv4"), {"OPENMME_AUTH_ACCESS_KEY_ID": "AKID"})
    with pytest.raises(AuthConfigError, match="--auth is not"):
        load_keys(settings("--auth-keys-file", str(tmp_path / "keys.json")), {})
    with pytest.raises(AuthConfigError, match="--auth is not"):
        load_keys(settings(), {"OPENMME_AUTH_ACCESS_KEY_ID": "AKID", "OPENMME_AUTH_SECRET_ACCESS_KEY": "s"})


def test_auth_setting_takes_only_known_schemes(capsys: pytest.CaptureFixture[str]) -> None:
    assert settings("--auth", "sigv4").auth == "sigv4"
    assert settings("--auth", "none").auth == ""
    with pytest.raises(SystemExit):
        settings("--auth", "basic")
    assert "--auth" in capsys.readouterr().err


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True),
                                                ("[::1]", True), ("localhost", True), ("0.0.0.0", False),
                                                ("", False), ("::", False), ("10.0.0.5", False),
                                                ("myhost", False)])  # fmt: skip
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_non_loopback_without_auth_needs_the_explicit_flag() -> None:
    check_exposure(settings())
    check_exposure(settings("--host", "::1"))
    with pytest.raises(AuthConfigError, match=re.escape("refusing to listen on 0.0.0.0 without authentication")):
        check_exposure(settings("--host", "0.0.0.0"))
    check_exposure(settings("--host", "0.0.0.0", "--allow-unauthenticated-remote"))
    check_exposure(Settings.from_sources(["--host", "0.0.0.0"], {"OPENMME_ALLOW_UNAUTHENTICATED_REMOTE": "true"}))
    check_exposure(settings("--host", "0.0.0.0", "--auth", "sigv4"))


def test_start_message_says_how_the_endpoint_is_protected() -> None:
    level, message = describe(settings(), None)
    assert "no authentication" in message and "127.0.0.1" in message and "only this machine" in message
    level, message = describe(settings("--host", "0.0.0.0", "--allow-unauthenticated-remote"), None)
    assert level >= 30 and "something in front must authenticate" in message
    level, message = describe(settings("--auth", "sigv4"), KEYS)
    assert level < 30 and "2 key(s)" in message and "seen before" not in message
    assert (
        "a signature seen before is refused" in describe(settings("--auth", "sigv4", "--auth-refuse-replays"), KEYS)[1]
    )
    # Signed but in clear on the network: said at start, with what to do.
    level, message = describe(settings("--auth", "sigv4", "--host", "0.0.0.0"), KEYS)
    assert level >= 30 and "plain HTTP on 0.0.0.0" in message and "--tls-cert" in message
    tls = settings("--auth", "sigv4", "--host", "0.0.0.0", "--tls-cert", "c.pem", "--tls-key", "k.pem")
    assert describe(tls, KEYS)[0] < 30


def test_refusing_replays_is_an_opt_in_flag_or_variable() -> None:
    assert settings().auth_refuse_replays is False
    assert settings("--auth-refuse-replays").auth_refuse_replays is True
    assert Settings.from_sources([], {"OPENMME_AUTH_REFUSE_REPLAYS": "true"}).auth_refuse_replays is True


# The middleware, on a real aiohttp server with the front's routes and stub handlers.


def signed_app(
    replies: dict[str, Callable[[], web.StreamResponse]], exempt_metrics: bool = False, refuse_replays: bool = False
) -> web.Application:
    configured = settings(
        "--auth",
        "sigv4",
        *(["--auth-exempt-metrics"] if exempt_metrics else []),
        *(["--auth-refuse-replays"] if refuse_replays else []),
    )

    def route(name: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            body = await read_body(request)  # the handler still gets the body the middleware read
            reply = replies.get(name)
            return reply() if reply else web.json_response({"route": name, "body": body.decode()})

        return handle

    # The front as build_app makes it (its routes and middlewares), each handler standing in by its name.
    return front_app(configured, KEYS, route)


def exchange(app: web.Application, requests: list[Sent]) -> list[tuple[int, dict[str, Any]]]:
    """Send pre-built requests byte for byte (the path is not re-encoded) and collect status and JSON body."""

    async def run() -> list[tuple[int, dict[str, Any]]]:
        answers = []
        async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as session:
            base = f"http://127.0.0.1:{server.port}"
            for sent in requests:
                headers = CIMultiDict(sent.headers)
                headers["Host"] = urlsplit(URL).netloc  # what was signed; the server is elsewhere
                url = yarl.URL(base + sent.target, encoded=True)
                async with session.request(sent.method, url, headers=headers, data=sent.body) as response:
                    text = await response.text()
                    is_json = response.content_type == "application/json"
                    answers.append((response.status, json.loads(text) if is_json else {"text": text}))
        return answers

    return asyncio.run(run())


def test_middleware_passes_boto3_and_hands_the_body_to_the_handler(boto3_sends: Callable[..., Sent]) -> None:
    sent = boto3_sends(EndpointName="a b/c", TargetModel="houston/x y.tar.gz", Body=b"1,2")
    [(status, body)] = exchange(signed_app({}), [sent])
    assert (status, body) == (200, {"route": "endpoint_invocations", "body": "1,2"})


def test_middleware_refuses_unsigned_but_not_ping_and_serves_a_request_sent_again(
    boto3_sends: Callable[..., Sent],
) -> None:
    sent = boto3_sends()
    unsigned = sent.with_header("Authorization", None)
    ping = Sent("GET", "/ping", CIMultiDict(), b"")
    metrics = Sent("GET", "/metrics", CIMultiDict(), b"")
    answers = exchange(signed_app({}), [ping, metrics, unsigned, sent, sent])
    assert [status for status, _ in answers] == [200, 403, 403, 200, 200]
    assert answers[1][1]["__type"] == answers[2][1]["__type"] == "MissingAuthenticationTokenException"
    assert [status for status, _ in exchange(signed_app({}, exempt_metrics=True), [metrics])] == [200]
    replayed = exchange(signed_app({}, refuse_replays=True), [sent, sent])
    assert [status for status, _ in replayed] == [200, 403]
    assert replayed[1][1]["__type"] == "InvalidSignatureException"
    assert "used already" in replayed[1][1]["message"]


def test_middleware_checks_the_target_model_against_the_keys_patterns(boto3_sends: Callable[..., Sent]) -> None:
    denied = boto3_sends(TargetModel="chicago/model.tar.gz")
    requests = [
        boto3_sends(TargetModel="houston/model.tar.gz"),
        denied,
        boto3_sends(ADMIN, TargetModel="chicago/model.tar.gz"),
        sign("POST", "/models/houston/m.tar.gz/invoke", HOUSTON, b"1"),
        sign("POST", "/models/chicago/m.tar.gz/invoke", HOUSTON, b"1"),
        sign("GET", "/models", HOUSTON),  # management needs an unrestricted key
        sign("DELETE", "/models/houston/m.tar.gz", HOUSTON),
        sign("GET", "/models", ADMIN),
        sign("GET", "/metrics", HOUSTON),
        sign("GET", "/metrics", ADMIN),
        sign("GET", "/nowhere", ADMIN),
        denied,  # a refused request did not use up its signature: refused again for the same reason
    ]
    answers = exchange(signed_app({}), requests)
    assert [status for status, _ in answers] == [200, 403, 200, 200, 403, 403, 403, 200, 403, 200, 404, 403]
    assert answers[1][1]["__type"] == answers[-1][1]["__type"] == "AccessDeniedException"
    assert "chicago/model.tar.gz" in answers[1][1]["message"]


def test_an_async_invocation_is_checked_against_the_model_it_names(boto3_sends: Callable[..., Sent]) -> None:
    """InvokeEndpointAsync has no TargetModel: the key's patterns apply to the one its CustomAttributes name."""

    def async_call(key: AccessKey, attributes: str) -> Sent:
        headers = {"X-Amzn-SageMaker-Custom-Attributes": attributes, "X-Amzn-SageMaker-InputLocation": "s3://b/in"}
        return sign("POST", "/endpoints/prod/async-invocations", key, b"", headers)

    requests = [
        async_call(HOUSTON, "TargetModel=houston/model.tar.gz"),
        async_call(HOUSTON, "x=1;TargetModel=chicago/model.tar.gz"),
        async_call(ADMIN, "TargetModel=chicago/model.tar.gz"),
    ]
    answers = exchange(signed_app({}), requests)
    assert [status for status, _ in answers] == [200, 403, 200]
    assert "chicago/model.tar.gz" in answers[1][1]["message"]


def test_a_request_the_endpoint_failed_gives_its_signature_back(boto3_sends: Callable[..., Sent]) -> None:
    """botocore retries a 503 and, within the same second, sends the identical signature: it must be served."""
    failures = iter([True, False])

    def flaky() -> web.StreamResponse:
        if next(failures):
            raise ServiceUnavailable("overloaded")
        return web.json_response({"route": "invocations"})

    sent = boto3_sends()
    answers = exchange(signed_app({"endpoint_invocations": flaky}, refuse_replays=True), [sent, sent, sent])
    assert [status for status, _ in answers] == [503, 200, 403]


def test_replay_window_starts_at_the_signature_date(boto3_sends: Callable[..., Sent]) -> None:
    sent = boto3_sends()
    signed_at = datetime.strptime(sent.headers["X-Amz-Date"], "%Y%m%dT%H%M%S%z").timestamp()
    now = [time.time()]
    verifier = SigV4Verifier(KEYS, ReplayCache(), clock=lambda: now[0])
    verify(sent, verifier)
    now[0] = signed_at + 300  # still valid, still remembered
    assert "used already" in refused(sent, verifier).message
    now[0] = signed_at + 301  # expired: refused as such, whatever the replay memory holds
    assert refused(sent, verifier).message.startswith("Signature expired")


# The unchanged boto3 client, sending for real to the middleware on a real server.


@contextlib.contextmanager
def serving(app: web.Application) -> Iterator[str]:
    """``app`` on 127.0.0.1 in a thread of its own, for a blocking client; yields its URL."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    port = free_port()
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.run_until_complete(runner.cleanup())
        loop.close()


def send_twenty_identical(app: web.Application) -> tuple[list[int | str], set[str]]:
    """The same invoke_endpoint 20 times in a row through boto3: each outcome (200, or the error code botocore
    raised) and the distinct signatures sent. Started just after a second begins, so that the 20 share their
    X-Amz-Date, hence their signature, as a fast client's identical requests do."""
    signatures: set[str] = set()
    outcomes: list[int | str] = []
    with serving(app) as url:
        client = boto3.client(
            "sagemaker-runtime",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id=HOUSTON.access_key_id,
            aws_secret_access_key=HOUSTON.secret_access_key,
        )
        client.meta.events.register(
            "before-send", lambda request, **_: signatures.add(request.headers["Authorization"].decode()[-64:])
        )
        time.sleep(1 - time.time() % 1)
        for _ in range(20):
            try:
                response = client.invoke_endpoint(
                    EndpointName="prod", TargetModel="houston/model.tar.gz", ContentType="text/csv", Body=b"1,2,3"
                )
                assert json.loads(response["Body"].read())["body"] == "1,2,3"
                outcomes.append(response["ResponseMetadata"]["HTTPStatusCode"])
            except botocore.exceptions.ClientError as error:
                outcomes.append(error.response["Error"]["Code"])
    return outcomes, signatures


def test_boto3_sending_the_same_request_twenty_times_gets_twenty_answers() -> None:
    outcomes, signatures = send_twenty_identical(signed_app({}))
    assert outcomes == [200] * 20
    assert len(signatures) < 20  # some were byte-for-byte the same signed request, and all were served


def test_with_refuse_replays_only_the_first_of_each_signature_is_served() -> None:
    outcomes, signatures = send_twenty_identical(signed_app({}, refuse_replays=True))
    assert outcomes.count(200) == len(signatures) < 20
    assert outcomes.count("InvalidSignatureException") == 20 - len(signatures)


def test_the_routes_whose_target_model_the_middleware_checks_are_the_fronts() -> None:
    from openmme.endpoint.auth.middleware import HEADER_TARGET_ROUTES, PATH_TARGET_ROUTE

    served = {(method, path) for method, path, _ in front_routes()}
    assert {("POST", path) for path in HEADER_TARGET_ROUTES} | {("POST", PATH_TARGET_ROUTE)} <= served
