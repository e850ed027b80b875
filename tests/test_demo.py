"""The README's first command, ``openmme demo``: real SeaweedFS, real endpoint, answers equal to in-process
xgboost; what ``--keep-running`` prints works as printed; and SIGTERM (as a process manager or ``timeout``
sends it) stops everything it started and removes its files, the ones SeaweedFS puts in /tmp included."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from openmme.ports import free_port

pytestmark = pytest.mark.integration


def weed_grpc_sockets(weed: psutil.Process) -> list[Path]:
    """The sockets ``weed`` makes in /tmp for its gRPC ports, read from its own command line."""
    ports = dict(re.findall(r"^-(\w+)\.port\.grpc=(\d+)$", "\n".join(weed.cmdline()), re.MULTILINE))
    assert set(ports) == {"master", "volume", "filer", "s3"}, weed.cmdline()
    return [Path(f"/tmp/seaweedfs-{server}-grpc-{port}.sock") for server, port in ports.items()]


def test_the_demo_serves_the_samples_prints_what_works_and_sigterm_removes_everything_it_started() -> None:
    command = [sys.executable, "-m", "openmme.cli", "demo", "--keep-running", "--port", str(free_port())]
    demo = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert demo.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 240
    try:
        for line in demo.stdout:
            lines.append(line)
            if "The endpoint is up" in line or time.monotonic() > deadline:
                break
        output = "".join(lines)
        assert "The endpoint is up" in output, output
        assert output.count("= in-process xgboost") == 3, output
        assert "export AWS_ENDPOINT_URL_S3=" in output  # how to publish into the demo's S3
        assert "EndpointName: openmme-demo" in output
        workdir = Path(re.search(r"working in (\S+)", output).group(1))  # type: ignore[union-attr]
        requests_log = Path(re.search(r"Request log .*: (\S+)", output).group(1))  # type: ignore[union-attr]
        invocations = [json.loads(line) for line in requests_log.read_text().splitlines()]
        assert sum(record["event"] == "invocation" for record in invocations) == 6  # 2 per sample

        # The boto3 lines, pasted as printed.
        boto3_lines = output.split("or with boto3 (paste into python):\n", 1)[1].split("\nThe demo's S3", 1)[0]
        pasted = subprocess.run([sys.executable, "-c", boto3_lines], capture_output=True, text=True, timeout=60)
        assert pasted.returncode == 0, pasted.stderr
        assert 0.0 <= float(pasted.stdout) <= 1.0  # houston is binary:logistic

        started = psutil.Process(demo.pid).children(recursive=True)
        weed = next(child for child in started if "weed" in " ".join(child.cmdline()))
        sockets = weed_grpc_sockets(weed)
        assert any(path.exists() for path in sockets)
        assert any("serve" in child.cmdline() for child in started)

        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=90) == 0  # asked to stop while it was up: a normal end, like Ctrl-C
        _, alive = psutil.wait_procs(started, timeout=30)
        assert [process.pid for process in alive if process.status() != psutil.STATUS_ZOMBIE] == []
        assert not workdir.exists()
        assert [path for path in sockets if path.exists()] == []
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        demo.stdout.close()
