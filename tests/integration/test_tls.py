"""``openmme serve --tls-cert --tls-key`` against a real endpoint: the unchanged boto3 client, trusting a
self-signed certificate made here (``verify=<cert file>``) and signing with SigV4, gets xgboost's predictions over
HTTPS; a client that does not trust the certificate, or speaks plain HTTP, gets nothing. And every wrong TLS
setting is a one-line refusal before anything starts."""

from __future__ import annotations

import dataclasses
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import botocore.exceptions
import pytest
import xgboost

from openmme.endpoint.auth import ACCESS_KEY_ENV, SECRET_KEY_ENV
from openmme.publish import publish_archive
from openmme.publish.samples import make_rows, sample_archive
from openmme.seaweed import EmbeddedS3
from tests.certificates import CertificateFiles, self_signed
from tests.conftest import BUCKET, Endpoint, Launcher, run_serve
from tests.support import expected

pytestmark = pytest.mark.integration

KEY = ("AKIDTLS", "tls-secret")
TARGET = "houston/model.tar.gz"


@pytest.fixture(scope="module")
def https(
    s3: EmbeddedS3, tmp_path_factory: pytest.TempPathFactory, boosters: dict[str, xgboost.Booster]
) -> Iterator[tuple[Endpoint, CertificateFiles]]:
    """An endpoint serving HTTPS with a self-signed certificate and checking SigV4 (one key, from the environment)."""
    prefix = f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}/"
    publish_archive(sample_archive(boosters["binary:logistic"]), prefix, TARGET)
    pair = self_signed(tmp_path_factory.mktemp("https"))
    launcher = Launcher(s3, tmp_path_factory)
    environ = {ACCESS_KEY_ENV: KEY[0], SECRET_KEY_ENV: KEY[1]}
    yield launcher.start(prefix, "--auth", "sigv4", name="secure", env=environ, tls=pair), pair
    launcher.close()


def test_boto3_trusting_the_certificate_gets_predictions_over_https(
    https: tuple[Endpoint, CertificateFiles], boosters: dict[str, xgboost.Booster]
) -> None:
    endpoint, pair = https
    rows = make_rows(3, seed=8)
    assert endpoint.verify == str(pair.cert)  # the client trusts the certificate, and only for that
    client = endpoint.runtime(retries=1, credentials=KEY)
    assert endpoint.predictions(TARGET, rows, "text/csv", client) == expected(boosters["binary:logistic"], rows)
    assert f"serving on https://127.0.0.1:{endpoint.url.rsplit(':', 1)[1]}" in endpoint.log()


def test_a_client_that_does_not_trust_it_or_speaks_plain_http_gets_nothing(
    https: tuple[Endpoint, CertificateFiles],
) -> None:
    endpoint, _ = https
    untrusting = dataclasses.replace(endpoint, verify=None)  # the system's CAs alone, as boto3 by default
    with pytest.raises(botocore.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        untrusting.invoke(TARGET, "1", client=untrusting.runtime(retries=1, credentials=KEY))
    with pytest.raises(OSError):  # a TLS port closes a plain-HTTP connection: no answer at all
        urllib.request.urlopen(endpoint.url.replace("https://", "http://") + "/ping", timeout=10)


# Starting: what `openmme serve` refuses before it starts or binds anything.


def test_one_tls_flag_without_the_other_exits_with_one_line(tmp_path: Path) -> None:
    pair = self_signed(tmp_path)
    result = run_serve("--cache-dir", str(tmp_path / "cache"), "--tls-cert", str(pair.cert))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "openmme serve: --tls-cert is set but --tls-key is not: HTTPS needs both (or neither, for plain HTTP)"
    ]
    assert not (tmp_path / "cache").exists()  # nothing was started
    result = run_serve("--cache-dir", str(tmp_path / "cache"), environ={"OPENMME_TLS_KEY": str(pair.key)})
    assert result.stderr.strip().splitlines() == [
        "openmme serve: --tls-key is set but --tls-cert is not: HTTPS needs both (or neither, for plain HTTP)"
    ]


def test_an_unreadable_tls_file_exits_with_one_line(tmp_path: Path) -> None:
    pair = self_signed(tmp_path)
    absent = tmp_path / "absent.key"
    result = run_serve("--cache-dir", str(tmp_path / "cache"), "--tls-cert", str(pair.cert), "--tls-key", str(absent))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"openmme serve: cannot read --tls-key {absent}: No such file or directory"
    ]
    assert not (tmp_path / "cache").exists()
