"""``openmme serve --tls-cert --tls-key`` against a real endpoint: the unchanged boto3 client, trusting a
self-signed certificate made here (``verify=<cert file>``) and signing with SigV4, gets xgboost's predictions over
HTTPS; a client that does not trust the certificate, or speaks plain HTTP, gets nothing. And every wrong TLS
setting is a one-line refusal before anything starts."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import psutil
import pytest
import xgboost

from openmme.endpoint.auth import ACCESS_KEY_ENV, SECRET_KEY_ENV
from openmme.ports import free_port
from openmme.publish import publish_archive
from openmme.publish.samples import make_rows, sample_archive
from openmme.seaweed import EmbeddedS3
from tests.certificates import CertificateFiles, self_signed
from tests.conftest import BUCKET, Endpoint
from tests.integration.test_auth import serve
from tests.integration.test_invoke import served_csv
from tests.support import csv_body, expected

pytestmark = pytest.mark.integration

KEY = ("AKIDTLS", "tls-secret")
TARGET = "houston/model.tar.gz"


def wait_for_https_ping(url: str, cafile: Path, process: subprocess.Popen[bytes], timeout: float) -> None:
    context = ssl.create_default_context(cafile=str(cafile))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the endpoint exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url + "/ping", timeout=2, context=context) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the endpoint did not answer /ping over HTTPS within {timeout:g} s")


@pytest.fixture(scope="module")
def https(
    s3: EmbeddedS3, tmp_path_factory: pytest.TempPathFactory, boosters: dict[str, xgboost.Booster]
) -> Iterator[tuple[Endpoint, CertificateFiles]]:
    """An endpoint serving HTTPS with a self-signed certificate and checking SigV4 (one key, from the environment)."""
    prefix = f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}/"
    publish_archive(sample_archive(boosters["binary:logistic"]), prefix, TARGET)
    workdir = tmp_path_factory.mktemp("https")
    pair = self_signed(workdir)
    port = free_port()
    command = [sys.executable, "-m", "openmme.cli", "serve", "--model-prefix", prefix, "--endpoint-name", "secure"]
    command += ["--port", str(port), "--cache-dir", str(workdir / "cache"), "--auth", "sigv4"]
    command += ["--tls-cert", str(pair.cert), "--tls-key", str(pair.key)]
    env = {**os.environ, **s3.environment(), ACCESS_KEY_ENV: KEY[0], SECRET_KEY_ENV: KEY[1]}
    log_path = workdir / "endpoint.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    endpoint = Endpoint(f"https://127.0.0.1:{port}", "secure", prefix, workdir / "cache", process, log_path)
    try:
        wait_for_https_ping(endpoint.url, pair.cert, process, timeout=120)
        yield endpoint, pair
    finally:
        endpoint.stop()
    assert endpoint.process.returncode == 0, endpoint.log()[-4000:]
    assert [child.pid for child in endpoint.children if alive(child)] == []


def alive(process: psutil.Process) -> bool:
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def runtime(endpoint: Endpoint, verify: Any) -> Any:
    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=endpoint.url,
        region_name="us-east-1",
        aws_access_key_id=KEY[0],
        aws_secret_access_key=KEY[1],
        verify=verify,
        config=botocore.config.Config(retries={"total_max_attempts": 1}),
    )


def test_boto3_trusting_the_certificate_gets_predictions_over_https(
    https: tuple[Endpoint, CertificateFiles], boosters: dict[str, xgboost.Booster]
) -> None:
    endpoint, pair = https
    rows = make_rows(3, seed=8)
    response = runtime(endpoint, verify=str(pair.cert)).invoke_endpoint(
        EndpointName=endpoint.name, TargetModel=TARGET, ContentType="text/csv", Accept="text/csv", Body=csv_body(rows)
    )
    assert served_csv(response["Body"].read()) == expected(boosters["binary:logistic"], rows)
    assert f"serving on https://127.0.0.1:{endpoint.url.rsplit(':', 1)[1]}" in endpoint.log()


def test_a_client_that_does_not_trust_it_or_speaks_plain_http_gets_nothing(
    https: tuple[Endpoint, CertificateFiles],
) -> None:
    endpoint, _ = https
    with pytest.raises(botocore.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        runtime(endpoint, verify=True).invoke_endpoint(
            EndpointName=endpoint.name, TargetModel=TARGET, ContentType="text/csv", Body="1"
        )
    with pytest.raises(OSError):  # a TLS port closes a plain-HTTP connection: no answer at all
        urllib.request.urlopen(endpoint.url.replace("https://", "http://") + "/ping", timeout=10)


# Starting: what `openmme serve` refuses before it starts or binds anything.


def test_one_tls_flag_without_the_other_exits_with_one_line(tmp_path: Path) -> None:
    pair = self_signed(tmp_path)
    result = serve(tmp_path, "--tls-cert", str(pair.cert))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "openmme serve: --tls-cert is set but --tls-key is not: HTTPS needs both (or neither, for plain HTTP)"
    ]
    assert not (tmp_path / "cache").exists()  # nothing was started
    result = serve(tmp_path, environ={"OPENMME_TLS_KEY": str(pair.key)})
    assert result.stderr.strip().splitlines() == [
        "openmme serve: --tls-key is set but --tls-cert is not: HTTPS needs both (or neither, for plain HTTP)"
    ]


def test_an_unreadable_tls_file_exits_with_one_line(tmp_path: Path) -> None:
    pair = self_signed(tmp_path)
    absent = tmp_path / "absent.key"
    result = serve(tmp_path, "--tls-cert", str(pair.cert), "--tls-key", str(absent))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"openmme serve: cannot read --tls-key {absent}: No such file or directory"
    ]
    assert not (tmp_path / "cache").exists()
