"""What each part of openmme drags in when imported, checked in a fresh interpreter: the leaves (names, errors, limits)
and the publishing side never load aiohttp; the auth package's checks load neither aiohttp nor the model cache."""

from __future__ import annotations

import subprocess
import sys

import pytest

# The cache proper (its package's leaves, entry/events/backend, are light and may be imported by anyone), the
# hosting backends and MMS's client.
HEAVY = ("aiohttp", "openmme.endpoint.cache.core", "openmme.endpoint.hosting", "openmme.endpoint.mms")


def loaded_after(code: str) -> set[str]:
    """Which of HEAVY are in sys.modules after running ``code`` in a new interpreter."""
    probe = f"{code}\nimport sys\nprint('loaded:' + ','.join(name for name in {HEAVY!r} if name in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    last = result.stdout.splitlines()[-1]
    assert last.startswith("loaded:"), result.stdout
    return set(filter(None, last.removeprefix("loaded:").split(",")))


@pytest.mark.parametrize(
    "code",
    [
        "import openmme.endpoint.errors",
        "import openmme.endpoint.names",
        "import openmme.endpoint.limits",
        "import openmme.publish, openmme.publish.catalog, openmme.publish.check",
        # The models and publish commands, run far enough to import what they use (an invalid prefix stops them).
        "from openmme.cli import main\n"
        "assert main(['models', 'list', '--prefix', 'nope']) == 1\n"
        "assert main(['publish', 'path', '.', '--prefix', 'nope', '--name', 'x']) == 1",
        # The auth package and its checks (the middleware, aiohttp-aware, is loaded only when asked for).
        "import openmme.endpoint.auth\nfrom openmme.endpoint.auth import SigV4Verifier, KeyStore, load_keys",
    ],
)
def test_leaves_publishing_and_auth_checks_import_neither_aiohttp_nor_the_cache(code: str) -> None:
    assert loaded_after(code) == set()


def test_the_middleware_needs_aiohttp_but_not_the_cache() -> None:
    assert loaded_after("from openmme.endpoint.auth import sigv4_middleware") == {"aiohttp"}


def test_metrics_and_logs_depend_on_the_cache_events_not_the_cache() -> None:
    assert loaded_after("import openmme.endpoint.metrics, openmme.endpoint.logs") == set()
