"""Optional AWS Signature Version 4 authentication of the front (``--auth sigv4``), with per-key TargetModel allow
patterns.

boto3's ``sagemaker-runtime`` client signs every request with SigV4 for the service ``sagemaker``. With
``--auth sigv4`` the front checks that signature itself against keys the operator hands out, so the unchanged
client works with those keys, and each key may invoke only the TargetModels its ``allow`` patterns match: the
self-hosted twin of IAM's ``sagemaker:TargetModel`` condition key.

One job per module:

    keys.py        the key file, the environment key, allow patterns              (no aiohttp)
    signature.py   SigV4 verification; botocore's signer computes the signature    (no aiohttp)
    replay.py      the opt-in memory of spent signatures (--auth-refuse-replays)   (no aiohttp)
    exposure.py    no unauthenticated endpoint off loopback; the start-up line     (no aiohttp)
    middleware.py  the aiohttp middleware: authenticate, authorize, refuse

``sigv4_middleware`` is imported from middleware.py when first asked for, so that the key checks ``openmme serve``
runs before anything starts, and any user of the verifier, import neither aiohttp nor the access log.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from openmme.endpoint.auth.exposure import check_exposure, describe, is_loopback
from openmme.endpoint.auth.keys import ACCESS_KEY_ENV, SECRET_KEY_ENV, AccessKey, AuthConfigError, KeyStore, load_keys
from openmme.endpoint.auth.replay import ReplayCache
from openmme.endpoint.auth.signature import Grant, SigV4Verifier

if TYPE_CHECKING:
    from openmme.endpoint.auth.middleware import sigv4_middleware

__all__ = [
    "ACCESS_KEY_ENV",
    "SECRET_KEY_ENV",
    "AccessKey",
    "AuthConfigError",
    "Grant",
    "KeyStore",
    "ReplayCache",
    "SigV4Verifier",
    "check_exposure",
    "describe",
    "is_loopback",
    "load_keys",
    "sigv4_middleware",
]


def __getattr__(name: str) -> object:
    if name == "sigv4_middleware":
        from openmme.endpoint.auth.middleware import sigv4_middleware

        return sigv4_middleware
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
