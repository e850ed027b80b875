"""The client side of a transform: requests to a running endpoint, as boto3's ``invoke_endpoint`` sends them, on
aiohttp so that many are in flight from one thread.

An endpoint is a URL: one ``openmme serve``, a router over replicas (nginx, an ingress), or a remote endpoint that
checks signatures. When it does (``--auth sigv4``, ``openmme.endpoint.auth``), every request is signed with AWS
Signature Version 4 for the service ``sagemaker`` by botocore's own signer, exactly as boto3 signs, with the
credentials given or the standard AWS settings' (as boto3 finds them). Whether it does is asked once, before the
job (``probe``: an unsigned request refused with 403); an endpoint that checks nothing gets unsigned requests,
since a signature hashes the whole body, which costs a transform's client a tenth of its CPU. With an
``EndpointName`` the path is boto3's ``/endpoints/<name>/invocations``; without, the front's ``/invocations``.

Errors come back in SageMaker's shape (``x-amzn-ErrorType`` or ``__type``, ``message``, and a ModelError's
``OriginalStatusCode``/``OriginalMessage``) and are raised as ``InvocationError``. What may pass by itself is
retried, up to ``InvocationsMaxRetries`` times with exponential back-off (0.5 s, 1 s, 2 s, plus jitter), as
SageMaker batch transform retries failing invocations: 429 (ModelNotReadyException: still loading), 500, 502,
503, 504, 507, a refused or broken connection, a time-out (``InvocationsTimeoutInSeconds``). A ModelError (424,
the model refused or failed the records), a ValidationError (400) or a refusal (403) is the same every time.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import botocore.auth
import botocore.awsrequest
import botocore.credentials
import botocore.session
from yarl import URL

from openmme.endpoint.names import TARGET_MODEL, TARGET_VARIANT

__all__ = [
    "DEFAULT_CONCURRENCY",
    "Answer",
    "EndpointTarget",
    "EndpointUnreachable",
    "InvocationError",
    "Invoker",
    "concurrency_from",
]

RETRIED = frozenset({429, 500, 502, 503, 504, 507})
BACKOFF_S = 0.5
DEFAULT_CONCURRENCY = 4  # when the endpoint does not say
MAX_CONCURRENCY = 64
SERVICE = "sagemaker"


@dataclass(frozen=True)
class EndpointTarget:
    """Where requests go. ``url``: the endpoint's base URL (``http://127.0.0.1:8080``); ``name``: its
    ``EndpointName`` (None: the ``/invocations`` route, which any name reaches); ``verify``: a CA bundle to trust for
    HTTPS (True: the system's; False: none); ``credentials``: (access key id, secret[, session token]) to sign with
    (None: the standard AWS settings; none found: unsigned); ``region``: the signing region (None: the standard
    settings', else us-east-1); ``sign``: whether to sign (None: when the endpoint checks signatures, which
    ``Invoker.probe`` finds out)."""

    url: str
    name: str | None = None
    verify: str | bool = True
    credentials: tuple[str, ...] | None = field(default=None, repr=False)
    region: str | None = None
    sign: bool | None = None

    @property
    def invocations_url(self) -> str:
        base = self.url.rstrip("/")
        if self.name is None:
            return base + "/invocations"
        return f"{base}/endpoints/{urllib.parse.quote(self.name, safe='')}/invocations"


@dataclass(frozen=True)
class Answer:
    body: bytes
    content_type: str | None
    attempts: int = 1  # requests it took: 1, plus the retries


class InvocationError(Exception):
    """An invocation that failed, for good or after its retries: the endpoint's status, SageMaker error code and
    message (a ModelError's message is the model's own, ``OriginalMessage``)."""

    def __init__(self, status: int, code: str, message: str, original_status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.original_status = original_status
        self.attempts = 1  # requests it took: 1, plus the retries

    @property
    def retryable(self) -> bool:
        return self.status in RETRIED or self.status == 0

    @property
    def model_error(self) -> bool:
        """The model refused or failed the records (ModelError): a record's fault, worth finding."""
        return self.code == "ModelError"

    def __str__(self) -> str:
        if self.model_error and self.original_status is not None:
            return f"ModelError (OriginalStatusCode {self.original_status}): {self.message}"
        return f"{self.code} ({self.status}): {self.message}" if self.status else f"{self.code}: {self.message}"


class EndpointUnreachable(RuntimeError):
    """No endpoint answers at the URL, before the job sends anything."""


def _error_of(status: int, headers: Any, body: bytes) -> InvocationError:
    """An error response in SageMaker's shape (or anything else a proxy in front may answer) as InvocationError."""
    code = str(headers.get("x-amzn-ErrorType", "")).split(":", 1)[0]
    message, original_status = "", None
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        code = code or str(parsed.get("__type", "")).rsplit("#", 1)[-1]
        message = str(parsed.get("message") or parsed.get("Message") or "")
        if "OriginalMessage" in parsed:
            message = str(parsed["OriginalMessage"])
        if isinstance(parsed.get("OriginalStatusCode"), int):
            original_status = parsed["OriginalStatusCode"]
    if not message:
        message = body.decode("utf-8", errors="replace").strip()[:300] or "no message"
    return InvocationError(status, code or f"HTTP {status}", message, original_status)


def concurrency_from(execution_parameters: Any, shards: Any) -> int:
    """Requests to keep in flight, from what the endpoint says of itself: SageMaker's ``/execution-parameters``
    (``MaxConcurrentTransforms``) when it answers that, else two per dense shard of ``/shards`` (one being
    predicted, one on its way, so a shard never waits for the network), else DEFAULT_CONCURRENCY."""
    if isinstance(execution_parameters, dict):
        value = execution_parameters.get("MaxConcurrentTransforms")
        if isinstance(value, int) and value > 0:
            return min(value, MAX_CONCURRENCY)
    if isinstance(shards, dict) and isinstance(shards.get("shards"), dict) and shards["shards"]:
        return min(2 * len(shards["shards"]), MAX_CONCURRENCY)
    return DEFAULT_CONCURRENCY


class Invoker:
    """Invocations of one TargetModel on one endpoint; an async context manager (its connection pool)."""

    def __init__(
        self,
        endpoint: EndpointTarget,
        target_model: str,
        *,
        content_type: str | None,
        accept: str | None,
        timeout_s: float,
        target_variant: str | None = None,
        max_retries: int,
        connections: int = MAX_CONCURRENCY,
    ) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self._connections = connections
        self._headers = {TARGET_MODEL: target_model}
        if content_type:
            self._headers["Content-Type"] = content_type
        if accept:
            self._headers["Accept"] = accept
        if target_variant:
            self._headers[TARGET_VARIANT] = target_variant
        self._signer = _signer(endpoint)
        self._sign = endpoint.sign is not False  # until the probe knows better
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Invoker:
        verify = self.endpoint.verify
        tls: ssl.SSLContext | bool = ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify
        connector = aiohttp.TCPConnector(limit=self._connections, ssl=tls)
        self._session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def invoke(self, body: bytes) -> Answer:
        """The model's answer for ``body``; InvocationError when it failed for good or after its retries."""
        attempt = 0
        while True:
            attempt += 1
            try:
                answer = await self._post(body)
                return Answer(answer.body, answer.content_type, attempt)
            except InvocationError as error:
                if not error.retryable or attempt > self.max_retries:
                    error.attempts = attempt
                    raise
            await asyncio.sleep(BACKOFF_S * 2 ** (attempt - 1) * random.uniform(1.0, 1.5))

    async def _post(self, body: bytes) -> Answer:
        assert self._session is not None, "use the Invoker as an async context manager"
        url = self.endpoint.invocations_url
        headers = self._signed("POST", url, body, self._headers)
        try:
            async with self._session.post(
                URL(url, encoded=True), data=body, headers=headers, skip_auto_headers=("Content-Type",)
            ) as response:
                payload = await response.read()
                if response.status == 200:
                    return Answer(payload, response.headers.get("Content-Type"))
                raise _error_of(response.status, response.headers, payload)
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            raise InvocationError(0, "ConnectionError", f"{url}: {reason}") from exc

    async def probe(self) -> int:
        """Asked once, before the job: whether the endpoint checks signatures (an unsigned request refused with 403
        says so; then every request is signed, else none is: signing hashes every body) and the concurrency it
        suggests (``concurrency_from``). EndpointUnreachable when nothing answers at all."""
        status, parameters = await self._get("/execution-parameters", signed=False)
        if status == 0:
            raise EndpointUnreachable(f"nothing answers at {self.endpoint.url}: is the endpoint up, and the URL right?")
        if self.endpoint.sign is None:
            self._sign = status == 403 and self._signer is not None
        if status == 403 and self._sign:
            status, parameters = await self._get("/execution-parameters", signed=True)
        shards = None
        if status != 200 or not parameters:
            _, shards = await self._get("/shards", signed=self._sign)
        return concurrency_from(parameters if status == 200 else None, shards)

    async def _get(self, path: str, signed: bool) -> tuple[int, Any]:
        """``GET <url><path>``: its status and parsed JSON (None if not JSON), or (0, None) when it fails."""
        assert self._session is not None, "use the Invoker as an async context manager"
        url = self.endpoint.url.rstrip("/") + path
        headers = self._signed("GET", url, b"", {}) if signed else {}
        try:
            async with self._session.get(URL(url, encoded=True), headers=headers) as response:
                body = await response.read()
        except (aiohttp.ClientError, TimeoutError):
            return 0, None
        try:
            return response.status, json.loads(body)
        except ValueError:
            return response.status, None

    def _signed(self, method: str, url: str, body: bytes, headers: dict[str, str]) -> dict[str, str]:
        if self._signer is None or not self._sign:
            return dict(headers)
        request = botocore.awsrequest.AWSRequest(method=method, url=url, data=body, headers=dict(headers))
        self._signer.add_auth(request)
        return {name: str(value) for name, value in request.headers.items()}


def _signer(endpoint: EndpointTarget) -> botocore.auth.SigV4Auth | None:
    """botocore's SigV4 signer with the endpoint's credentials, or the standard settings'; None when there are none."""
    session = botocore.session.Session()
    region = endpoint.region or session.get_config_variable("region") or "us-east-1"
    if endpoint.credentials is not None:
        credentials = botocore.credentials.Credentials(*endpoint.credentials)
    else:
        found = session.get_credentials()
        if found is None:
            return None
        credentials = found  # refreshable ones renew themselves while a long job signs
    return botocore.auth.SigV4Auth(credentials, SERVICE, region)
