"""The embedded S3 server on its own: it starts whatever AWS settings the caller has, and stops fully."""

from __future__ import annotations

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
