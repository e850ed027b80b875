"""AWS Signature Version 4 verification of a request, the signature computed by botocore's own signer.

The canonical request, the string to sign and the signature are botocore's: ``botocore.auth.SigV4Auth``, the
signer every boto3 client runs (and moto verifies incoming requests with), is handed an ``AWSRequest`` rebuilt
from the request as it arrived (method, request target still percent-encoded, body) with only the headers the
client says it signed, and the date and region it claims. So openmme and the client agree on every encoding rule
by construction: a path segment travels encoded once and is signed encoded twice (EndpointName ``a b`` travels as
``/endpoints/a%20b/invocations``), dot segments and repeated slashes are dropped, the query is sorted as sent
(not re-encoded: every AWS SDK sends it encoded as it signed it), runs of spaces in a header value count as one.
The one departure: botocore, as a client, never signs ``User-Agent`` and a few hop-by-hop headers; as a verifier,
openmme takes the signed headers the Authorization header lists, whatever they are.

What openmme checks itself, in this order, and what a failure answers (403, SageMaker's error shape, AWS's codes;
botocore raises a ``ClientError`` whose ``Error.Code`` is the code):

    no Authorization header (presigned query URLs included)          MissingAuthenticationTokenException
    Authorization not ``AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…``; scope not
      ``<date>/<region>/sagemaker/aws4_request``; no X-Amz-Date; host, x-amz-date or an X-Amzn-SageMaker-*
      header sent but not signed; a signed header absent; an unsigned or streaming payload
                                                                      IncompleteSignatureException
    unknown access key id                                             UnrecognizedClientException
    X-Amz-Date more than 5 minutes from now, either way               InvalidSignatureException ("Signature expired")
    signature (compared in constant time), or x-amz-content-sha256, does not match
                                                                      InvalidSignatureException
    with --auth-refuse-replays only: the same signature seen before   InvalidSignatureException

Only header authentication is implemented; presigned URLs (``X-Amz-Signature`` in the query) are not.
The region in the credential scope is not checked against anything (an endpoint has no region of its own); it
is part of what is signed.

Replays: as on AWS, a signature is good for any number of requests within its 5-minute window. SigV4 has no
nonce and X-Amz-Date has one-second resolution, so a client sending the same request twice within a second sends
the same signature twice, and AWS serves both; so does openmme. What keeps an eavesdropper from replaying a
captured request is TLS (``--tls-cert``/``--tls-key``, or a TLS proxy in front), which keeps it from being
captured. ``--auth-refuse-replays`` is the stricter defence for plain HTTP: each endpoint process remembers the
signatures it accepted until they expire (replay.py) and refuses one seen before, at the price of refusing a
legitimate identical request signed within the same second (unless each carries its own, signed, InferenceId).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import botocore.auth
import botocore.awsrequest
import botocore.credentials
from multidict import MultiMapping

from openmme.endpoint.auth.keys import AccessKey, KeyStore
from openmme.endpoint.auth.replay import ReplayCache
from openmme.endpoint.errors import (
    IncompleteSignature,
    InvalidSignature,
    MissingAuthenticationToken,
    UnrecognizedClient,
)
from openmme.endpoint.names import SAGEMAKER_HEADER_PREFIX

__all__ = [
    "MAX_SKEW_S",
    "SERVICE",
    "Claim",
    "Credential",
    "Grant",
    "SigV4Verifier",
    "expected_signature",
    "parse_authorization",
]

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "sagemaker"
TERMINATOR = "aws4_request"
MAX_SKEW_S = 300.0  # AWS's window: X-Amz-Date may be 5 minutes off the server's clock, either way.
AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
UNSIGNED_PAYLOADS = ("UNSIGNED-PAYLOAD", "STREAMING-")
# Where a request target in origin form is put to make the URL botocore reads the path and query from; the host
# botocore signs is the request's own (Host is always signed), never this one.
_URL_BASE = "http://openmme.invalid"

Headers = MultiMapping[str]


@dataclass(frozen=True)
class Credential:
    """What the Authorization header claims."""

    access_key_id: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str


def parse_authorization(value: str) -> Credential:
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise IncompleteSignature(f"Authorization must use {ALGORITHM}")
    parts: dict[str, str] = {}
    for item in rest.split(","):
        name, equals, content = item.strip().partition("=")
        if not equals or name in parts:
            raise IncompleteSignature(f"Authorization header is malformed near {name!r}")
        parts[name] = content
    if set(parts) != {"Credential", "SignedHeaders", "Signature"}:
        raise IncompleteSignature("Authorization must carry Credential, SignedHeaders and Signature")
    scope = parts["Credential"].rsplit("/", 4)
    if len(scope) != 5 or not all(scope) or scope[4] != TERMINATOR:
        raise IncompleteSignature("Credential must be <access key id>/<yyyymmdd>/<region>/<service>/aws4_request")
    if scope[3] != SERVICE:
        raise IncompleteSignature(f"Credential should be scoped to correct service: '{SERVICE}'")
    signed = tuple(parts["SignedHeaders"].split(";"))
    if not all(re.fullmatch(r"[a-z0-9!#$%&'*+.^_`|~-]+", name) for name in signed):
        raise IncompleteSignature("SignedHeaders must be lowercase header names separated by ';'")
    if not re.fullmatch(r"[0-9a-f]{64}", parts["Signature"]):
        raise IncompleteSignature("Signature must be 64 lowercase hexadecimal digits")
    return Credential(scope[0], scope[1], scope[2], scope[3], signed, parts["Signature"])


class _ClaimedHeadersSigner(botocore.auth.SigV4Auth):  # type: ignore[misc]  # botocore ships no types
    """botocore's signer over exactly the headers the request carries: those its Authorization header lists."""

    def headers_to_sign(self, request: Any) -> Any:
        return request.headers


def expected_signature(
    credential: Credential, secret: str, amz_date: str, method: str, raw_target: str, headers: Headers, body: bytes
) -> str:
    """The signature botocore computes for the request as it arrived, over the headers ``credential`` lists.

    ``raw_target`` is the request target as sent: path and query, still percent-encoded (or an absolute URL)."""
    url = _URL_BASE + raw_target if raw_target.startswith("/") else raw_target
    request = botocore.awsrequest.AWSRequest(method=method.upper(), url=url, data=body)
    for name in credential.signed_headers:
        values = headers.getall(name, [])
        if not values:
            raise IncompleteSignature(f"signed header {name} is not in the request")
        for value in values:
            if not _is_utf8(value):
                raise InvalidSignature(f"signed header {name} is not UTF-8 text")
            request.headers[name] = value  # HTTPHeaders appends: every value of a repeated header is signed
    if not _is_utf8(raw_target):
        raise InvalidSignature("the request path is not UTF-8 text")
    request.context["timestamp"] = amz_date
    signer = _ClaimedHeadersSigner(
        botocore.credentials.Credentials(credential.access_key_id, secret), credential.service, credential.region
    )
    canonical = signer.canonical_request(request)
    return str(signer.signature(signer.string_to_sign(request, canonical), request))


def _is_utf8(text: str) -> bool:
    """False for text decoded with ``surrogateescape`` from bytes that are not UTF-8 (botocore encodes as UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class Claim:
    """A request whose Authorization header names a known key and whose date is current; signature unchecked."""

    key: AccessKey
    credential: Credential
    amz_date: str
    expires_at: float


@dataclass(frozen=True)
class Grant:
    """A request whose signature is right: made with ``key``, valid until ``expires_at``."""

    key: AccessKey
    signature: str
    expires_at: float


class SigV4Verifier:
    """Checks requests against a key store; ``clock`` is the time (seconds since the epoch) requests are judged at."""

    def __init__(
        self, keys: KeyStore, replay: ReplayCache | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        """``replay``: the memory that refuses a signature seen before (``--auth-refuse-replays``); None: a
        signature is good for its whole 5-minute window, as on AWS."""
        self.keys = keys
        self.replay = replay
        self.clock = clock

    def verify(self, method: str, raw_target: str, headers: Headers, body: bytes) -> Grant:
        """Every check, the signature spent: what the middleware does, less authorization."""
        grant = self.check_signature(self.check_headers(headers), method, raw_target, headers, body)
        self.spend(grant)
        return grant

    def check_headers(self, headers: Headers) -> Claim:
        """What can be refused before the body is read: no or malformed Authorization, unknown key, stale date."""
        authorization = headers.get("Authorization")
        if authorization is None:
            raise MissingAuthenticationToken("Missing Authentication Token (presigned URLs are not supported)")
        credential = parse_authorization(authorization)
        signed = set(credential.signed_headers)
        must_sign = {"host", "x-amz-date"} | {
            name.lower() for name in headers if name.lower().startswith(SAGEMAKER_HEADER_PREFIX)
        }
        if not must_sign <= signed:
            raise IncompleteSignature(f"these headers must be signed: {';'.join(sorted(must_sign - signed))}")
        key = self.keys.get(credential.access_key_id)
        if key is None:
            raise UnrecognizedClient("The security token included in the request is invalid.")
        amz_date = headers.get("X-Amz-Date", "")
        try:
            signed_at = datetime.strptime(amz_date, AMZ_DATE_FORMAT).replace(tzinfo=UTC).timestamp()
        except ValueError:
            raise IncompleteSignature("X-Amz-Date must be a basic ISO 8601 UTC time (20240131T235959Z)") from None
        if credential.date != amz_date[:8]:
            raise InvalidSignature("Date in Credential scope does not match YYYYMMDD from X-Amz-Date")
        now = self.clock()
        if signed_at < now - MAX_SKEW_S:
            raise InvalidSignature(
                f"Signature expired: {amz_date} is now earlier than {_amz(now - MAX_SKEW_S)} ({_amz(now)} - 5 min.)"
            )
        if signed_at > now + MAX_SKEW_S:
            raise InvalidSignature(
                f"Signature not yet current: {amz_date} is still later than {_amz(now + MAX_SKEW_S)} "
                f"({_amz(now)} + 5 min.)"
            )
        return Claim(key, credential, amz_date, signed_at + MAX_SKEW_S)

    def check_signature(self, claim: Claim, method: str, raw_target: str, headers: Headers, body: bytes) -> Grant:
        declared = headers.get("x-amz-content-sha256")
        if declared is not None and declared.startswith(UNSIGNED_PAYLOADS):
            raise IncompleteSignature("unsigned and streaming payloads are not accepted: sign the body")
        # botocore signs a declared hash as it is: that it is the body's is for the verifier to check.
        if declared is not None and declared != hashlib.sha256(body).hexdigest():
            raise InvalidSignature("x-amz-content-sha256 does not match the request body")
        credential = claim.credential
        expected = expected_signature(
            credential, claim.key.secret_access_key, claim.amz_date, method, raw_target, headers, body
        )
        if not hmac.compare_digest(expected, credential.signature):
            raise InvalidSignature(
                "The request signature we calculated does not match the signature you provided. "
                "Check your AWS Secret Access Key and signing method."
            )
        return Grant(claim.key, credential.signature, claim.expires_at)

    def spend(self, grant: Grant) -> None:
        """With a replay memory: remember the signature until it expires; refuse it if it was seen already.

        Two requests that are byte for byte the same and signed within the same second carry the same signature:
        the second is refused too. boto3 signs ``InferenceId`` (``X-Amzn-SageMaker-Inference-Id``), so a client
        that sends identical requests that fast gives each its own id."""
        if self.replay is not None and not self.replay.spend(grant.signature, grant.expires_at, self.clock()):
            raise InvalidSignature(
                "This signature has been used already: a replay, or the same request signed twice in one second "
                "(give each request its own InferenceId)"
            )


def _amz(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime(AMZ_DATE_FORMAT)
