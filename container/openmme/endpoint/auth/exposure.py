"""Who can reach the endpoint, and how it is protected: the rule that keeps an unauthenticated endpoint off the
network, and the start-up line that says what protects it."""

from __future__ import annotations

import ipaddress
import logging

from openmme.endpoint.auth.keys import AuthConfigError, KeyStore
from openmme.endpoint.settings import Settings

__all__ = ["check_exposure", "describe", "is_loopback"]


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
        message = (
            f"authentication: AWS SigV4 with {len(keys)} key(s); /ping and /ready open, /metrics {metrics}{replays}"
        )
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
