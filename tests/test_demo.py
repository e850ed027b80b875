"""The README's first command, ``openmme demo``: real SeaweedFS, real endpoint, answers equal to in-process
xgboost; and SIGTERM (as a process manager or ``timeout`` sends it) stops everything it started."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from openmme.ports import free_port

pytestmark = pytest.mark.integration


def test_the_demo_serves_the_samples_and_sigterm_stops_everything_it_started(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "openmme.cli", "demo", "--keep-running", "--port", str(free_port())]
    demo = subprocess.Popen(
        [*command, "--workdir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
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
        started = psutil.Process(demo.pid).children(recursive=True)
        assert any("weed" in " ".join(child.cmdline()) for child in started)
        assert any("serve" in child.cmdline() for child in started)

        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=90) == 0  # asked to stop while it was up: a normal end, like Ctrl-C
        _, alive = psutil.wait_procs(started, timeout=30)
        assert [process.pid for process in alive if process.status() != psutil.STATUS_ZOMBIE] == []
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        demo.stdout.close()
