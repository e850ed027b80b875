"""Optional AWS Signature Version 4 authentication of the front, with per-key TargetModel allow patterns.

boto3's ``sagemaker-runtime`` client signs every request with SigV4 for the service ``sagemaker``. With
``--auth sigv4`` the front checks that signature itself against keys the operator hands out, so the unchanged
client works with those keys, and each key may invoke only the TargetModels its ``allow`` patterns match: the
self-hosted twin of IAM's ``sagemaker:TargetModel`` condition key.

What is checked, in this order, and what a failure answers (403, SageMaker's error shape, AWS's codes; botocore
raises a ``ClientError`` whose ``Error.Code`` is the code):

    no Authorization header (presigned query URLs included)          MissingAuthenticationTokenException
    Authorization not ``AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…``; scope not
      ``<date>/<region>/sagemaker/aws4_request``; no X-Amz-Date; host, x-amz-date or an X-Amzn-SageMaker-*
      header sent but not signed; a signed header absent; an unsigned or streaming payload
                                                                      IncompleteSignatureException
    unknown access key id                                             UnrecognizedClientException
    X-Amz-Date more than 5 minutes from now, either way               InvalidSignatureException ("Signature expired")
    signature, or x-amz-content-sha256, does not match                InvalidSignatureException
    with --auth-refuse-replays only: the same signature seen before   InvalidSignatureException
    the key's allow patterns do not match the TargetModel             AccessDeniedException

Only header authentication is implemented; presigned URLs (``X-Amz-Signature`` in the query) are not.
The region in the credential scope is not checked against anything (an endpoint has no region of its own); it
is part of what is signed.

The canonical URI is the path exactly as the client sent it, dot segments and repeated slashes removed, then
percent-encoded once more. botocore (like the SigV4 spec for every service but S3) signs path segments encoded
twice: EndpointName ``a b`` travels as ``/endpoints/a%20b/invocations`` and is signed as
``/endpoints/a%2520b/invocations``. The TargetModel travels in a header, signed as it is sent.

Replays: as on AWS, a signature is good for any number of requests within its 5-minute window. SigV4 has no
nonce and X-Amz-Date has one-second resolution, so a client sending the same request twice within a second sends
the same signature twice, and AWS serves both; so does openmme. What keeps an eavesdropper from replaying a
captured request is TLS (``--tls-cert``/``--tls-key``, or a TLS proxy in front), which keeps it from being
captured. ``--auth-refuse-replays`` is the stricter defence for plain HTTP: each endpoint process remembers the
signatures it accepted until they expire (in memory; replicas and restarts do not share it) and refuses one seen
before, at the price of refusing a legitimate identical request signed within the same second (unless each carries
its own, signed, InferenceId). A request the endpoint failed to serve (429 or 5xx) then gives its signature back,
because botocore's retry of it carries the identical signature when it falls within the same second.
"""

from __future__ import annotations

import fnmatch
import hashlib
import heapq
import hmac
import ipaddress
import json
import logging
import re
import stat
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import quote, unquote, urlsplit

from aiohttp import web
from aiohttp.typedefs import Middleware
from multidict import MultiMapping

from openmme.endpoint.errors import (
    AccessDenied,
    EndpointError,
    Forbidden,
    IncompleteSignature,
    InvalidSignature,
    MissingAuthenticationToken,
    UnrecognizedClient,
)
from openmme.endpoint.logs import access_log, log_json
from openmme.endpoint.settings import Settings

__all__ = [
    "ACCESS_KEY_ENV",
    "SECRET_KEY_ENV",
    "AccessKey",
    "AuthConfigError",
    "Credential",
    "Grant",
    "KeyStore",
    "ReplayCache",
    "SigV4Verifier",
    "canonical_query",
    "canonical_request",
    "canonical_uri",
    "check_exposure",
    "describe",
    "is_loopback",
    "load_keys",
    "parse_authorization",
    "signature",
    "sigv4_middleware",
]

log = logging.getLogger(__name__)

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "sagemaker"
TERMINATOR = "aws4_request"
MAX_SKEW_S = 300.0  # AWS's window: X-Amz-Date may be 5 minutes off the server's clock, either way.
REPLAY_CAPACITY = 100_000  # ~20 MB of remembered signatures; a 10-minute window at ~170 requests/s.
AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
UNSIGNED_PAYLOADS = ("UNSIGNED-PAYLOAD", "STREAMING-")
ACCESS_KEY_ENV = "OPENMME_AUTH_ACCESS_KEY_ID"
SECRET_KEY_ENV = "OPENMME_AUTH_SECRET_ACCESS_KEY"
TARGET_MODEL_HEADER = "X-Amzn-SageMaker-Target-Model"
# Routes whose TargetModel is in the header, and the container contract's invoke with the model in the path.
HEADER_TARGET_ROUTES = frozenset({"/invocations", "/endpoints/{endpoint}/invocations"})
PATH_TARGET_ROUTE = "/models/{name}/invoke"

Headers = MultiMapping[str]


class AuthConfigError(ValueError):
    """Authentication is configured wrongly (or not at all where it must be): ``openmme serve`` will not start."""


@dataclass(frozen=True)
class AccessKey:
    """One key pair and the TargetModel patterns (shell-style globs, ``*`` spans ``/``) it may invoke."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    allow: tuple[str, ...] = ("*",)

    def may_invoke(self, target: str) -> bool:
        return any(fnmatch.fnmatchcase(target, pattern) for pattern in self.allow)

    @property
    def unrestricted(self) -> bool:
        """Allowed every model: such a key may also list, load and unload models and read metrics."""
        return "*" in self.allow


class KeyStore:
    """The keys requests may be signed with, by access key id."""

    def __init__(self, keys: Iterable[AccessKey]) -> None:
        self._keys: dict[str, AccessKey] = {}
        for key in keys:
            if key.access_key_id in self._keys:
                raise AuthConfigError(f"access key {key.access_key_id} is given twice")
            self._keys[key.access_key_id] = key
        if not self._keys:
            raise AuthConfigError("no access keys: --auth sigv4 would refuse every request")

    def get(self, access_key_id: str) -> AccessKey | None:
        return self._keys.get(access_key_id)

    def __len__(self) -> int:
        return len(self._keys)

    @classmethod
    def from_json(cls, text: str, source: str) -> KeyStore:
        """``{"keys": [{"access_key_id": …, "secret_access_key": …, "allow": ["houston/*"]}]}``."""
        try:
            document = json.loads(text)
        except ValueError as exc:  # the message names a position, never the file's content
            raise AuthConfigError(f"{source} is not JSON: {exc}") from None
        if not isinstance(document, dict) or set(document) != {"keys"} or not isinstance(document["keys"], list):
            raise AuthConfigError(f'{source} must be a JSON object {{"keys": [...]}}')
        return cls(_key_from(entry, f"{source} key #{index + 1}") for index, entry in enumerate(document["keys"]))

    def __iter__(self) -> Iterator[AccessKey]:
        return iter(self._keys.values())


def _key_from(entry: object, where: str) -> AccessKey:
    fields = {"access_key_id", "secret_access_key", "allow"}
    if not isinstance(entry, dict) or set(entry) != fields:
        raise AuthConfigError(f"{where} must have exactly the fields {sorted(fields)}")
    key_id, secret, allow = entry["access_key_id"], entry["secret_access_key"], entry["allow"]
    if not isinstance(key_id, str) or not re.fullmatch(r"[\x21-\x7e]+", key_id) or "/" in key_id:
        raise AuthConfigError(f"{where}: access_key_id must be printable ASCII without spaces or '/'")
    if not isinstance(secret, str) or not secret:
        raise AuthConfigError(f"{where} ({key_id}): secret_access_key must be a non-empty string")
    if not isinstance(allow, list) or not allow or not all(isinstance(p, str) and p for p in allow):
        raise AuthConfigError(f'{where} ({key_id}): allow must be a non-empty list of patterns (["*"]: every model)')
    return AccessKey(key_id, secret, tuple(allow))


def load_keys(settings: Settings, environ: Mapping[str, str]) -> KeyStore | None:
    """The keys ``--auth sigv4`` checks against: ``--auth-keys-file`` and/or one key from the environment (allowed
    every model). None without ``--auth``; keys without ``--auth`` are an error rather than silently unused."""
    key_id, secret = environ.get(ACCESS_KEY_ENV, ""), environ.get(SECRET_KEY_ENV, "")
    if not settings.auth:
        if settings.auth_keys_file is not None or key_id or secret:
            given = "--auth-keys-file" if settings.auth_keys_file is not None else ACCESS_KEY_ENV
            raise AuthConfigError(f"{given} is set but --auth is not: pass --auth sigv4 to check signatures")
        return None
    keys: list[AccessKey] = []
    if settings.auth_keys_file is not None:
        path = settings.auth_keys_file
        try:
            text = path.read_text()
            mode = path.stat().st_mode
        except OSError as exc:
            raise AuthConfigError(f"cannot read --auth-keys-file {path}: {exc.strerror}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("%s holds secret keys but others may read it: chmod 600 it", path)
        keys.extend(KeyStore.from_json(text, str(path)))
    if key_id or secret:
        if not (key_id and secret):
            raise AuthConfigError(f"{ACCESS_KEY_ENV} and {SECRET_KEY_ENV} must be set together")
        keys.append(_key_from({"access_key_id": key_id, "secret_access_key": secret, "allow": ["*"]}, ACCESS_KEY_ENV))
    if not keys:
        raise AuthConfigError(
            f"--auth sigv4 needs keys: --auth-keys-file PATH, or {ACCESS_KEY_ENV} and {SECRET_KEY_ENV}"
        )
    return KeyStore(keys)


def is_loopback(host: str) -> bool:
    """Only this machine can reach ``host``. Names other than ``localhost`` count as reachable from outside."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> None:
    """Refuse to serve a non-loopback address with no authentication unless the operator says so explicitly.

    ``--tls-cert`` changes nothing here: TLS hides and protects what travels, but without client certificates it
    does not say who calls; an unauthenticated endpoint over HTTPS is open to anyone who reaches it."""
    if settings.auth or settings.allow_unauthenticated_remote or is_loopback(settings.host):
        return
    raise AuthConfigError(
        f"refusing to listen on {settings.host or 'every address'} without authentication: pass --auth sigv4 "
        "with keys, or --allow-unauthenticated-remote when something in front authenticates callers"
    )


def describe(settings: Settings, keys: KeyStore | None) -> tuple[int, str]:
    """The start-up line about authentication, with its log level."""
    if keys is not None:
        metrics = "open" if settings.auth_exempt_metrics else "signed"
        replays = "; a signature seen before is refused" if settings.auth_refuse_replays else ""
        message = f"authentication: AWS SigV4 with {len(keys)} key(s); /ping open, /metrics {metrics}{replays}"
        if settings.tls_cert is not None or is_loopback(settings.host):
            return logging.INFO, message
        return logging.WARNING, (
            f"{message}; plain HTTP on {settings.host or 'every address'}: anyone on the path can read requests and "
            "predictions and replay a captured request for 5 minutes, unless a TLS proxy in front terminates "
            "HTTPS (else --tls-cert/--tls-key)"
        )
    if is_loopback(settings.host):
        return logging.INFO, (
            f"no authentication (see --auth): listening on {settings.host} only, so only this machine can call it"
        )
    return logging.WARNING, (
        f"no authentication on {settings.host or 'every address'} (--allow-unauthenticated-remote): anyone who "
        "reaches it can invoke, load and unload models; something in front must authenticate callers"
    )


# The algorithm: pure functions, each one step of AWS's description of SigV4.


@dataclass(frozen=True)
class Credential:
    """What the Authorization header claims."""

    access_key_id: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/{TERMINATOR}"


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


def canonical_uri(raw_path: str) -> str:
    """The path as sent (percent-encoded), without dot segments or empty segments, percent-encoded again."""
    segments: list[str] = []
    for segment in raw_path.split("/"):
        if segment == "..":
            if segments:
                segments.pop()
        elif segment not in ("", "."):
            segments.append(segment)
    path = "/" + "/".join(segments) + ("/" if segments and raw_path.endswith("/") else "")
    return quote(path, safe="/~")


def canonical_query(raw_query: str) -> str:
    """Names and values decoded, re-encoded the one way SigV4 allows (``%20``, never ``+``), sorted."""
    pairs = []
    for item in raw_query.split("&"):
        if item:
            name, _, value = item.partition("=")
            pairs.append((quote(unquote(name), safe="-_.~"), quote(unquote(value), safe="-_.~")))
    return "&".join(f"{name}={value}" for name, value in sorted(pairs))


def canonical_request(
    method: str, raw_target: str, headers: Headers, signed_headers: Iterable[str], payload_hash: str
) -> str:
    """``raw_target`` is the request target as sent: path and query, still percent-encoded."""
    if not raw_target.startswith("/"):  # absolute-form target (through a proxy)
        parts = urlsplit(raw_target)
        raw_target = parts.path + ("?" + parts.query if parts.query else "")
    path, _, query = raw_target.partition("?")
    signed = list(signed_headers)
    lines = []
    for name in signed:
        values = headers.getall(name, [])
        if not values:
            raise IncompleteSignature(f"signed header {name} is not in the request")
        lines.append(f"{name}:{','.join(' '.join(value.split()) for value in values)}\n")
    return "\n".join(
        [method.upper(), canonical_uri(path), canonical_query(query), "".join(lines), ";".join(signed), payload_hash]
    )


def signature(secret: str, amz_date: str, scope: str, canonical: str) -> str:
    """HMAC-SHA256 of the string to sign, with the key derived from the secret through date, region, service."""
    string_to_sign = "\n".join(
        [ALGORITHM, amz_date, scope, hashlib.sha256(canonical.encode("utf-8", "surrogateescape")).hexdigest()]
    )
    key = ("AWS4" + secret).encode()
    for part in scope.split("/"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


class ReplayCache:
    """Signatures accepted and not yet expired, in memory (per process), at most ``capacity``.

    When more signatures are live than that, the one that expires first is forgotten early (and counted in
    ``forgotten``): a replay of it would pass. That takes more than ``capacity`` signed requests in ten minutes.
    """

    def __init__(self, capacity: int = REPLAY_CAPACITY) -> None:
        self.capacity = capacity
        self.forgotten = 0
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._expiry)

    def spend(self, signature_: str, expires_at: float, now: float) -> bool:
        """Remember the signature; False when it was remembered already (a replay)."""
        self._drop_expired(now)
        if signature_ in self._expiry:
            return False
        if len(self._expiry) >= self.capacity:
            self._forget_soonest()
        self._expiry[signature_] = expires_at
        heapq.heappush(self._heap, (expires_at, signature_))
        if len(self._heap) > 2 * max(self.capacity, len(self._expiry)):  # entries of given-back signatures
            self._heap = [(expiry, sig) for sig, expiry in self._expiry.items()]
            heapq.heapify(self._heap)
        return True

    def give_back(self, signature_: str) -> None:
        """Forget a signature spent on a request the endpoint failed to serve: its retry may carry it again."""
        self._expiry.pop(signature_, None)

    def _drop_expired(self, now: float) -> None:
        while self._heap and self._heap[0][0] < now:
            expiry, sig = heapq.heappop(self._heap)
            if self._expiry.get(sig) == expiry:
                del self._expiry[sig]

    def _forget_soonest(self) -> None:
        while self._heap:
            expiry, sig = heapq.heappop(self._heap)
            if self._expiry.get(sig) == expiry:
                del self._expiry[sig]
                self.forgotten += 1
                if self.forgotten == 1 or self.forgotten % 10_000 == 0:
                    log.warning("replay cache full: %d live signatures forgotten early so far", self.forgotten)
                return


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
            name.lower() for name in headers if name.lower().startswith("x-amzn-sagemaker-")
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
        payload_hash = hashlib.sha256(body).hexdigest()
        declared = headers.get("x-amz-content-sha256")
        if declared is not None and declared.startswith(UNSIGNED_PAYLOADS):
            raise IncompleteSignature("unsigned and streaming payloads are not accepted: sign the body")
        if declared is not None and declared != payload_hash:
            raise InvalidSignature("x-amz-content-sha256 does not match the request body")
        canonical = canonical_request(method, raw_target, headers, claim.credential.signed_headers, payload_hash)
        expected = signature(claim.key.secret_access_key, claim.amz_date, claim.credential.scope, canonical)
        if not hmac.compare_digest(expected, claim.credential.signature):
            raise InvalidSignature(
                "The request signature we calculated does not match the signature you provided. "
                "Check your AWS Secret Access Key and signing method."
            )
        return Grant(claim.key, claim.credential.signature, claim.expires_at)

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


def authorize(key: AccessKey, request: web.Request) -> None:
    """Invocations: the key's patterns must match the TargetModel. Everything else: the key must be unrestricted."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else None
    if route in HEADER_TARGET_ROUTES:
        target = request.headers.get(TARGET_MODEL_HEADER)
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
    """Authenticate and authorize every request but ``/ping`` (and ``/metrics`` with ``--auth-exempt-metrics``);
    with ``--auth-refuse-replays``, refuse a signature seen before.

    ``read_body`` reads the body once, bounded, and keeps it for the handler: the signature covers it."""
    if keys is None:
        raise AuthConfigError("--auth sigv4 needs a key store")
    checker = verifier or SigV4Verifier(keys, ReplayCache() if settings.auth_refuse_replays else None)
    open_paths = {"/ping"} | ({"/metrics"} if settings.auth_exempt_metrics else set())

    @web.middleware
    async def sigv4(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path in open_paths:
            return await handler(request)
        try:
            claim = checker.check_headers(request.headers)
            body = await read_body(request)
            grant = checker.check_signature(claim, request.method, request.raw_path, request.headers, body)
            authorize(grant.key, request)
            checker.spend(grant)  # after authorize: a refused request does not use up its signature
        except Forbidden as error:
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
            raise
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


def _retryable(status: int) -> bool:
    return status == 429 or status >= 500
