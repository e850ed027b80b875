"""The embedded S3 server on its own: it starts whatever AWS settings the caller has, and stops fully, leaving
nothing in the machine's temp dir."""

from __future__ import annotations

import tempfile
from pathlib import Path

import psutil
import pytest

from openmme.seaweed import EmbeddedS3

pytestmark = pytest.mark.integration


def test_starts_with_foreign_aws_credentials_in_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As when a process already pointed at another S3 (the test session's, say) starts its own server.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "someone-else")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-this-servers-secret")
    server = EmbeddedS3(tmp_path)
    with server:
        assert server.process is not None
        pid = server.process.pid
        client = server.client()
        client.create_bucket(Bucket="bucket-one")  # type: ignore[attr-defined]
        client.put_object(Bucket="bucket-one", Key="k", Body=b"payload")  # type: ignore[attr-defined]
        assert client.get_object(Bucket="bucket-one", Key="k")["Body"].read() == b"payload"  # type: ignore[attr-defined]
    assert server.process is None
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_stop_leaves_nothing_in_the_machines_temp_dir(tmp_path: Path) -> None:
    server = EmbeddedS3(tmp_path)
    with server:
        assert server.process is not None
        pid = server.process.pid
        # weed makes its gRPC servers' sockets in /tmp whatever its flags say: they are there while it runs.
        made = [path for path in server.grpc_sockets() if path.exists()]
        assert made, server.grpc_sockets()
    assert [path for path in made if path.exists()] == []
    assert [path for path in server.grpc_sockets() if path.exists()] == []
    assert list(Path(tempfile.gettempdir()).glob(f"weed.*.{pid}")) == []  # its logs went to its directory
    assert list((tmp_path / "logs").glob(f"weed.*.{pid}"))
