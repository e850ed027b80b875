"""``--tls-cert``/``--tls-key``: the context they make serves HTTPS that a client trusting the certificate
accepts, and every way of getting them wrong is one clear sentence naming the flag, before anything starts."""

from __future__ import annotations

import asyncio
import re
import ssl
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from openmme.endpoint.auth import AuthConfigError, check_exposure
from openmme.endpoint.settings import Settings
from openmme.endpoint.tls import TlsConfigError, tls_context
from openmme.ports import free_port
from tests.certificates import CertificateFiles, self_signed


def settings(*argv: str, environ: dict[str, str] | None = None) -> Settings:
    return Settings.from_sources(list(argv), environ or {})


@pytest.fixture
def pair(tmp_path: Path) -> CertificateFiles:
    return self_signed(tmp_path)


def refusal(*argv: str) -> str:
    with pytest.raises(TlsConfigError) as raised:
        tls_context(settings(*argv))
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_no_flags_is_plain_http() -> None:
    assert tls_context(settings()) is None


def test_flags_and_environment_make_a_server_context(pair: CertificateFiles) -> None:
    context = tls_context(settings("--tls-cert", str(pair.cert), "--tls-key", str(pair.key)))
    assert isinstance(context, ssl.SSLContext)
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    environ = {"OPENMME_TLS_CERT": str(pair.cert), "OPENMME_TLS_KEY": str(pair.key)}
    assert isinstance(tls_context(settings(environ=environ)), ssl.SSLContext)


def test_one_without_the_other_is_refused(pair: CertificateFiles) -> None:
    assert refusal("--tls-cert", str(pair.cert)) == (
        "--tls-cert is set but --tls-key is not: HTTPS needs both (or neither, for plain HTTP)"
    )
    assert refusal("--tls-key", str(pair.key)).startswith("--tls-key is set but --tls-cert is not")


def test_unreadable_or_wrong_files_are_refused_naming_the_flag(tmp_path: Path, pair: CertificateFiles) -> None:
    absent = tmp_path / "absent.pem"
    assert refusal("--tls-cert", str(absent), "--tls-key", str(pair.key)) == (
        f"cannot read --tls-cert {absent}: No such file or directory"
    )
    assert refusal("--tls-cert", str(pair.cert), "--tls-key", str(tmp_path)).startswith(
        f"cannot read --tls-key {tmp_path}: Is a directory"
    )
    assert "holds no PEM certificate" in refusal("--tls-cert", str(pair.key), "--tls-key", str(pair.key))
    assert "holds no PEM private key" in refusal("--tls-cert", str(pair.cert), "--tls-key", str(pair.cert))
    other = self_signed(tmp_path, "other")
    mismatch = refusal("--tls-cert", str(pair.cert), "--tls-key", str(other.key))
    assert re.fullmatch(r"--tls-cert \S+ and --tls-key \S+ are not a certificate and its private key \(.+\)", mismatch)


def test_an_encrypted_key_is_refused_without_asking_for_a_passphrase(tmp_path: Path) -> None:
    encrypted = self_signed(tmp_path, "locked", passphrase=b"secret")
    assert refusal("--tls-cert", str(encrypted.cert), "--tls-key", str(encrypted.key)).endswith(
        "is encrypted: give it unencrypted, readable by this user only"
    )


def test_tls_does_not_open_a_non_loopback_address_without_auth(pair: CertificateFiles) -> None:
    """TLS says who the server is, not who calls: unauthenticated HTTPS on 0.0.0.0 is still refused."""
    tls = ("--tls-cert", str(pair.cert), "--tls-key", str(pair.key))
    with pytest.raises(AuthConfigError, match=re.escape("refusing to listen on 0.0.0.0 without authentication")):
        check_exposure(settings("--host", "0.0.0.0", *tls))
    check_exposure(settings("--host", "0.0.0.0", "--auth", "sigv4", *tls))


def test_a_client_trusting_the_certificate_gets_https_and_others_are_refused(pair: CertificateFiles) -> None:
    context = tls_context(settings("--tls-cert", str(pair.cert), "--tls-key", str(pair.key)))
    app = web.Application()

    async def ping(request: web.Request) -> web.Response:
        return web.Response(text="pong")

    app.router.add_get("/ping", ping)

    async def run() -> tuple[str, str]:
        trusting = ssl.create_default_context(cafile=str(pair.cert))
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()  # as server.run does
        try:
            async with aiohttp.ClientSession() as session:
                url = f"https://127.0.0.1:{port}/ping"
                async with session.get(url, ssl=trusting) as response:
                    served = await response.text()
                with pytest.raises(aiohttp.ClientConnectorCertificateError) as raised:
                    await session.get(url)  # the system's CAs do not know a self-signed certificate
                return served, str(raised.value)
        finally:
            await runner.cleanup()

    served, refused = asyncio.run(run())
    assert served == "pong"
    assert "CERTIFICATE_VERIFY_FAILED" in refused
