"""The container stage: the images and the compose files, run by a real Docker engine and checked from the host
through 127.0.0.1 only. Skipped without a Docker engine, except under CI=true, where a missing engine (or image)
fails. The images are built beforehand (scripts/test-containers builds them all, with the extra CA it needs)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
import xgboost

from openmme.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
# What the tests run (the compose files, and the images on their own), and scripts/test-containers builds.
IMAGES = (
    "openmme:local",
    "openmme:dense",
    "openmme-seaweedfs:local",
    "openmme-router:local",
    "openmme-prometheus:local",
)
S3_CREDENTIALS = {"aws_access_key_id": "openmme", "aws_secret_access_key": "openmme-local-secret"}


def docker(*args: str, timeout: float = 300, check: bool = True) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result.stdout


def _engine_problem() -> str | None:
    if shutil.which("docker") is None:
        return "no docker client on PATH"
    result = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        return f"no Docker engine answers: {result.stderr.strip()[-300:]}"
    if subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60).returncode != 0:
        return "no `docker compose` (Compose v2) plugin"
    return None


@pytest.fixture(scope="session", autouse=True)
def engine() -> None:
    problem = _engine_problem()
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and the container tests cannot run: {problem}")
        pytest.skip(f"container tests need a Docker engine: {problem}")
    missing = [image for image in IMAGES if not docker("images", "-q", image).strip()]
    if missing:
        pytest.fail(f"images not built: {', '.join(missing)} (scripts/test-containers builds them)")


def wait_for_ping(url: str, timeout: float = 180) -> float:
    """Seconds until ``url``/ping answers 200; AssertionError after ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            with urllib.request.urlopen(url + "/ping", timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url}/ping did not answer 200 within {timeout:g} s")


def runtime(url: str) -> Any:
    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def booster_of(archive: bytes) -> xgboost.Booster:
    """The booster of a model.tar.gz as the samples publish it."""
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        member = tar.extractfile("xgboost-model")
        assert member is not None
        booster = xgboost.Booster()
        booster.load_model(bytearray(member.read()))
        return booster


@dataclass
class Stack:
    """One compose file brought up under a project name of its own, with free host ports."""

    file: Path
    project: str = field(default_factory=lambda: f"openmme-test-{uuid.uuid4().hex[:8]}")
    ports: dict[str, int] = field(default_factory=dict)
    profiles: tuple[str, ...] = ()  # given to every command: `down` leaves a profile's containers without it

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        env = {**os.environ, **{name: str(port) for name, port in self.ports.items()}}
        options = [option for profile in self.profiles for option in ("--profile", profile)]
        command = ["docker", "compose", "-p", self.project, "-f", str(self.file), *options, *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
        return result.stdout

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['OPENMME_PORT']}"

    def s3(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{self.ports['OPENMME_S3_PORT']}",
            region_name="us-east-1",
            **S3_CREDENTIALS,
        )

    def sample_boosters(self) -> dict[str, xgboost.Booster]:
        """The published samples, read back from the stack's S3 (through its host port) and loaded here."""
        from openmme.publish.samples import SAMPLES

        s3 = self.s3()
        return {
            sample.target_model: booster_of(
                s3.get_object(Bucket="models", Key=f"demo/{sample.target_model}")["Body"].read()
            )
            for sample in SAMPLES
        }

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "60", check=False)[-6000:]

    def leftovers(self) -> dict[str, list[str]]:
        label = f"label=com.docker.compose.project={self.project}"
        return {
            kind: docker(kind, "ls", *(["-a"] if kind == "container" else []), "-q", "--filter", label).split()
            for kind in ("container", "volume", "network")
        }

    def published_host_ips(self) -> set[str]:
        ips = set()
        for container in self.compose("ps", "-q").split():
            bindings = json.loads(docker("inspect", "-f", "{{json .NetworkSettings.Ports}}", container)) or {}
            ips |= {binding["HostIp"] for spec in bindings.values() if spec for binding in spec}
        return ips


@pytest.fixture
def stack() -> Iterator[Any]:
    """``stack(file)``: a Stack of ``file`` with free host ports; every one made is taken down (volumes too)."""
    made: list[Stack] = []

    def make(file: Path) -> Stack:
        ports = {name: free_port() for name in ("OPENMME_PORT", "OPENMME_S3_PORT")}
        made.append(Stack(file, ports=ports))
        return made[-1]

    try:
        yield make
    finally:
        for each in made:
            each.compose("down", "-v", "--remove-orphans", "--timeout", "10", check=False)
