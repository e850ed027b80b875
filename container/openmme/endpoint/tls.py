"""HTTPS for the front: the ``ssl.SSLContext`` built from ``--tls-cert`` and ``--tls-key``, checked before start.

TLS is what keeps a signed request from being read, and replayed within SigV4's 5-minute window, by anyone on the
path; it does not authenticate callers (that is ``--auth sigv4``), so it changes nothing in the exposure rule of
auth/exposure.py. A TLS-terminating proxy in front (nginx, an ingress) does the same job; see README, "Authentication".
"""

from __future__ import annotations

import ssl
from pathlib import Path

from openmme.endpoint.settings import Settings

__all__ = ["TlsConfigError", "tls_context"]


class TlsConfigError(ValueError):
    """``--tls-cert``/``--tls-key`` cannot be used: ``openmme serve`` will not start."""


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The server context for ``--tls-cert`` and ``--tls-key`` (both or neither); None for plain HTTP."""
    cert, key = settings.tls_cert, settings.tls_key
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        given, missing = ("--tls-cert", "--tls-key") if key is None else ("--tls-key", "--tls-cert")
        raise TlsConfigError(f"{given} is set but {missing} is not: HTTPS needs both (or neither, for plain HTTP)")
    cert_text, key_text = _read(cert, "--tls-cert"), _read(key, "--tls-key")
    if "-----BEGIN CERTIFICATE-----" not in cert_text:
        raise TlsConfigError(f"--tls-cert {cert} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    if "PRIVATE KEY-----" not in key_text:
        raise TlsConfigError(f"--tls-key {key} holds no PEM private key (-----BEGIN PRIVATE KEY-----)")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        # A callback that refuses: an encrypted key would otherwise make OpenSSL ask for a passphrase on the tty.
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except _EncryptedKey:
        raise TlsConfigError(f"--tls-key {key} is encrypted: give it unencrypted, readable by this user only") from None
    except ssl.SSLError as exc:
        raise TlsConfigError(
            f"--tls-cert {cert} and --tls-key {key} are not a certificate and its private key "
            f"({exc.reason or exc.strerror or 'OpenSSL refused them'})"
        ) from None
    return context


class _EncryptedKey(Exception):
    pass


def _no_passphrase() -> str:
    raise _EncryptedKey


def _read(path: Path, flag: str) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError as exc:
        raise TlsConfigError(f"cannot read {flag} {path}: {exc.strerror or exc}") from None
