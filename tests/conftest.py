"""Shared fixtures: a real SeaweedFS for the session, real endpoints (``openmme serve`` + MMS) per test or
module, sample models published into per-test prefixes, and a counting proxy in front of S3 so that tests can
assert how many times an archive was really fetched."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import numpy as np
import psutil
import pytest
import xgboost
from hypothesis import settings as hypothesis_settings

from openmme.demo import wait_for_ping
from openmme.endpoint.dense import SHARD_PREFIX
from openmme.handlers import HOSTINGS
from openmme.ports import free_port
from openmme.publish import publish_archive
from openmme.publish.samples import sample_archive, train_booster
from openmme.seaweed import EmbeddedS3
from tests.certificates import CertificateFiles
from tests.support import CountingProxy, alive, csv_body, served_csv, served_json

BUCKET = "models"

# Property tests explore anew on a developer's machine; in CI the same examples every run, and no database
# left in the checkout.
hypothesis_settings.register_profile("openmme", database=None, derandomize=bool(os.environ.get("CI")))
hypothesis_settings.load_profile("openmme")


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedS3]:
    server = EmbeddedS3(tmp_path_factory.mktemp("seaweed"))
    with server, server.environ():
        server.client().create_bucket(Bucket=BUCKET)  # type: ignore[attr-defined]
        yield server
    assert server.process is None


@pytest.fixture(scope="session")
def s3_client(s3: EmbeddedS3) -> Any:
    return s3.client()


@pytest.fixture
def s3_proxy(s3: EmbeddedS3) -> Iterator[CountingProxy]:
    proxy = CountingProxy(s3.ports["s3"])
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    yield proxy
    proxy.shutdown()
    proxy.server_close()


@pytest.fixture
def prefix(s3: EmbeddedS3) -> str:
    """A fresh, empty model prefix for one test."""
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}/"


@dataclass
class Endpoint:
    url: str
    name: str
    prefix: str
    cache_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    children: list[psutil.Process] = field(default_factory=list)
    verify: str | None = None  # the certificate a client trusts, for an endpoint serving HTTPS

    def runtime(self, retries: int | None = None, credentials: tuple[str, str] = ("test", "test")) -> Any:
        """The unchanged boto3 sagemaker-runtime client, pointed at this endpoint, signing with ``credentials``
        (access key id, secret access key); over HTTPS it trusts the endpoint's certificate."""
        config = botocore.config.Config(retries={"total_max_attempts": retries}) if retries else None
        return boto3.client(
            "sagemaker-runtime",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=credentials[0],
            aws_secret_access_key=credentials[1],
            verify=self.verify,
            config=config,
        )

    def invoke(
        self,
        target: str | None,
        body: str | bytes,
        content_type: str = "text/csv",
        accept: str | None = None,
        client: Any = None,
        **params: Any,
    ) -> Any:
        """boto3's ``invoke_endpoint`` on this endpoint, and its response (the Body unread): TargetModel
        ``target`` (None: left out), ``body`` sent as ``content_type``, ``accept`` if given, and any other
        parameter of the call in ``params`` (``InferenceId``, ``CustomAttributes``, another ``EndpointName``;
        None leaves one out). ``client``: one of ``runtime()``'s; by default one that makes a single attempt, so
        that no retry hides a failed request from a test."""
        arguments = {
            "EndpointName": self.name,
            "TargetModel": target,
            "ContentType": content_type,
            "Accept": accept,
            "Body": body,
            **params,
        }
        client = client or self.runtime(retries=1)
        return client.invoke_endpoint(**{name: value for name, value in arguments.items() if value is not None})

    def predictions(self, target: str, rows: np.ndarray, accept: str | None = None, client: Any = None) -> list[float]:
        """What ``target`` predicts for ``rows`` (sent as CSV), read from the answer SageMaker's XGBoost container
        gives: its JSON array by default, its one CSV line with ``accept="text/csv"``."""
        body = self.invoke(target, csv_body(rows), accept=accept, client=client)["Body"].read()
        return served_csv(body) if accept == "text/csv" else served_json(body)

    def predictor(self, serializer: Any, deserializer: Any) -> Any:
        """The SageMaker SDK v2 ``Predictor`` of this endpoint, as the MME examples build it."""
        import sagemaker
        from sagemaker.predictor import Predictor

        session = sagemaker.Session(
            boto_session=boto3.Session(aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"),
            sagemaker_runtime_client=self.runtime(),
        )
        return Predictor(self.name, sagemaker_session=session, serializer=serializer, deserializer=deserializer)

    def get(self, path: str) -> Any:
        """GET a path of the front and parse its JSON."""
        with urllib.request.urlopen(self.url + path, timeout=30, context=self.ssl_context()) as response:
            return json.loads(response.read() or b"null")

    def ssl_context(self) -> ssl.SSLContext | None:
        """For urllib: trusting this endpoint's certificate if it serves HTTPS."""
        return ssl.create_default_context(cafile=self.verify) if self.verify else None

    def ping(self) -> int:
        """The status of ``GET /ping``; 0 when nothing answers."""
        try:
            with urllib.request.urlopen(self.url + "/ping", timeout=5, context=self.ssl_context()) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return error.code
        except OSError:
            return 0

    def models(self) -> dict[str, dict[str, Any]]:
        return {model["modelName"]: model for model in self.get("/models")["models"]}

    def mms_address(self, api: str) -> str:
        """MMS's ``inference`` or ``management`` address, read from its config.properties."""
        properties = (self.cache_dir / "mms" / "config.properties").read_text()
        return next(line.split("=", 1)[1] for line in properties.splitlines() if line.startswith(api))

    def mms_models(self) -> list[str]:
        """What MMS itself has registered (dense shards included), asked on its management port."""
        with urllib.request.urlopen(self.mms_address("management") + "/models", timeout=30) as response:
            return [model["modelName"] for model in json.loads(response.read())["models"]]

    def shard_listings(self) -> dict[str, dict[str, Any]]:
        """What each dense shard's worker says it holds and has loaded (``list``, relayed by ``GET /shards``)."""
        listings: dict[str, dict[str, Any]] = self.get("/shards")["shards"]
        return listings

    def resident(self) -> list[str]:
        """The models really loaded, whatever their hosting: the isolated ones MMS has registered, and the
        ones every dense shard's worker says it holds."""
        names = set(self.mms_models())
        for listing in self.shard_listings().values():
            names.update(listing["models"])
        return sorted(names)

    def loads(self, name: str) -> Counter[str]:
        """How many times MMS model ``name`` was loaded, by where: "isolated" (registrations in MMS's access
        log) or the shard whose worker loaded it."""
        counts: Counter[str] = Counter()
        counts["isolated"] = sum(f"&model_name={name}&" in line for line in self.mms_access_log().splitlines())
        for shard, listing in self.shard_listings().items():
            counts[shard] = listing["loads"].get(name, 0)
        return +counts

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def mms_access_log(self) -> str:
        logs = self.cache_dir / "mms" / "logs" / "access_log.log"
        return logs.read_text(errors="replace") if logs.exists() else ""

    def front(self) -> psutil.Process:
        """The front: ``openmme serve`` (``process``) is its supervisor, which runs it as its child, a fork of its own
        (see openmme.endpoint.supervisor); a process the supervisor adopted has another command line."""
        supervisor = psutil.Process(self.process.pid)
        (front,) = [child for child in supervisor.children() if child.cmdline() == supervisor.cmdline()]
        return front

    def model_pids(self) -> dict[str, list[int]]:
        """Worker processes of isolated models (``worker_pids`` without the dense shards')."""
        return {name: pids for name, pids in self.worker_pids().items() if not name.startswith(SHARD_PREFIX)}

    def worker_pids(self) -> dict[str, list[int]]:
        """MMS worker processes of this endpoint, by MMS model name (read from their command lines)."""
        workers: dict[str, list[int]] = {}
        for child in psutil.Process(self.process.pid).children(recursive=True):
            try:
                cmdline = child.cmdline()
            except psutil.Error:
                continue
            if "--model-name" in cmdline:
                workers.setdefault(cmdline[cmdline.index("--model-name") + 1], []).append(child.pid)
        return workers

    def stop(self) -> None:
        if self.process.poll() is None:
            self.children = psutil.Process(self.process.pid).children(recursive=True)
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


EndpointFactory = Callable[..., Endpoint]


class Launcher:
    """Starts ``openmme serve`` as its own process, as an operator does; ``close`` stops every one and checks that
    each exited 0 and left no process behind. The one way the tests start an endpoint."""

    def __init__(self, s3: EmbeddedS3, tmp_path_factory: pytest.TempPathFactory) -> None:
        self.s3 = s3
        self.tmp_path_factory = tmp_path_factory
        self.started: list[Endpoint] = []

    def start(
        self,
        prefix: str,
        *args: str,
        s3_url: str | None = None,
        name: str = "test-endpoint",
        env: dict[str, str] | None = None,
        port: int | None = None,
        tls: CertificateFiles | None = None,
    ) -> Endpoint:
        """``port``: a given port (a replacement for a stopped replica, say); by default a free one. ``tls``: serve
        HTTPS with this certificate and key (``--tls-cert``, ``--tls-key``); clients of the returned endpoint
        trust the certificate."""
        workdir = self.tmp_path_factory.mktemp("endpoint")
        port = port or free_port()
        # One front process unless a test asks for more (--fronts): the default depends on the machine's cores.
        env = {"OPENMME_FRONTS": "1", **os.environ, **self.s3.environment(), **(env or {})}
        if s3_url:
            env["AWS_ENDPOINT_URL_S3"] = s3_url
        log_path = workdir / "endpoint.log"
        command = [
            sys.executable,
            "-m",
            "openmme.cli",
            "serve",
            *(["--model-prefix", prefix] if prefix else []),
            "--endpoint-name",
            name,
            "--port",
            str(port),
            "--cache-dir",
            str(workdir / "cache"),
            *(["--tls-cert", str(tls.cert), "--tls-key", str(tls.key)] if tls else []),
            *args,
        ]
        with log_path.open("ab") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        endpoint = Endpoint(
            url, name, prefix, workdir / "cache", process, log_path, verify=str(tls.cert) if tls else None
        )
        self.started.append(endpoint)
        try:
            wait_for_ping(endpoint.url, process, timeout=120, context=endpoint.ssl_context())
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{endpoint.log()[-4000:]}") from exc
        return endpoint

    def close(self) -> None:
        for endpoint in self.started:
            endpoint.stop()
            assert endpoint.process.returncode == 0, endpoint.log()[-4000:]
            left = [child.pid for child in endpoint.children if alive(child)]
            assert left == [], f"processes left behind by the endpoint: {left}"


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts (``tests.support.sleeper``); whatever is still running at its end is killed."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


@pytest.fixture(params=HOSTINGS)
def hosting(request: pytest.FixtureRequest) -> str:
    """Each hosting mode in turn, for the tests that must hold in both (``--hosting``)."""
    return str(request.param)


@pytest.fixture
def start_endpoint(s3: EmbeddedS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EndpointFactory]:
    launcher = Launcher(s3, tmp_path_factory)
    yield launcher.start
    launcher.close()


@dataclass
class Published:
    target_model: str
    booster: xgboost.Booster


@pytest.fixture(scope="session")
def boosters() -> dict[str, xgboost.Booster]:
    """One small trained booster per objective the suite covers."""
    return {
        objective: train_booster(objective, seed=index)
        for index, objective in enumerate(("binary:logistic", "multi:softmax", "reg:squarederror"))
    }


@pytest.fixture
def publish(s3_client: Any) -> Callable[..., Published]:
    """Publish a booster (or raw archive bytes) under a prefix as a TargetModel."""

    def publish_model(
        prefix: str, target: str, booster: xgboost.Booster | None = None, archive: bytes | None = None
    ) -> Published:
        assert (booster is None) != (archive is None)
        data = archive if archive is not None else sample_archive(booster)  # type: ignore[arg-type]
        publish_archive(data, prefix, target, overwrite=True, client=s3_client)
        return Published(target, booster)  # type: ignore[arg-type]

    return publish_model


def run_serve(
    *args: str, environ: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``openmme serve`` run to its end, for the refusals it must exit with before it starts or binds anything:
    this process's environment without any ``OPENMME_`` setting, plus ``environ``. ``--mms-start-timeout 0``: should
    a check ever let start-up through, it still ends before the front could bind."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("OPENMME_")}
    command = [sys.executable, "-m", "openmme.cli", "serve", *args, "--mms-start-timeout", "0"]
    return subprocess.run(command, env={**env, **(environ or {})}, capture_output=True, text=True, timeout=timeout)
