"""Helpers for the tests: a counting S3 proxy, hostile-archive builders, polling, whether a process is alive,
sleeping stand-in processes, a urllib request's answer whatever its status, CSV rows and the predictions (and
answer bytes) they must get, nginx as a test's own process, the front's real route table, and the benchmarks'
smoke runs."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import importlib.util
import io
import json
import os
import pty
import select
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import psutil
import pytest
import xgboost
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    from openmme.endpoint.auth import KeyStore
    from openmme.endpoint.settings import Settings
    from tests.conftest import Endpoint

ROOT = Path(__file__).resolve().parent.parent


def tool(name: str) -> str | None:
    """The command ``name``: on PATH, else in /usr/local/bin, where scripts/install puts what no package gives."""
    return shutil.which(name) or shutil.which(name, path="/usr/local/bin")


def needs_tool(name: str) -> pytest.MarkDecorator:
    """Off CI a machine without the command ``name`` skips the tests marked with this; CI installs it
    (scripts/install), so there a missing ``name`` fails them instead."""
    return pytest.mark.skipif(
        tool(name) is None and not os.environ.get("CI"),
        reason=f"{name} is not installed (scripts/install adds it)",
    )


needs_nginx = needs_tool("nginx")


def alive(process: psutil.Process | int) -> bool:
    """Whether a process (or the process of a PID) still runs: exited, reaped or a zombie is not alive."""
    try:
        if isinstance(process, int):
            process = psutil.Process(process)
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def sleeper(started: list[subprocess.Popen[bytes]], *argv: str) -> subprocess.Popen[bytes]:
    """A process that sleeps, with ``argv`` in its command line (to look like an MMS process); added to ``started``
    (the ``sleepers`` fixture's list, which kills whatever is still running at the test's end)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", *argv])
    started.append(process)
    return process


def answer(request: urllib.request.Request | str, timeout: float = 60) -> tuple[int, bytes, dict[str, str]]:
    """Status, body and headers of a request over urllib, whatever the status."""
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


class CountingProxy(http.server.ThreadingHTTPServer):
    """A plain HTTP reverse proxy to the S3 server that counts requests by method and path."""

    daemon_threads = True

    def __init__(self, upstream_port: int, port: int = 0) -> None:
        self.upstream_port = upstream_port
        self.requests: Counter[tuple[str, str]] = Counter()
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _ProxyHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def count(self, method: str, key_suffix: str) -> int:
        with self.lock:
            return sum(n for (m, path), n in self.requests.items() if m == method and path.endswith(key_suffix))


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    server: CountingProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length", 0) or 0)
        body = self.rfile.read(length) if length else None
        with self.server.lock:
            self.server.requests[(self.command, self.path.split("?")[0])] += 1
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=60)
        try:
            upstream.request(self.command, self.path, body=body, headers=dict(self.headers))
            response = upstream.getresponse()
            payload = response.read()
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in {"transfer-encoding", "connection", "content-length"}:
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
        finally:
            upstream.close()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward


def make_tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    """A tar.gz built member by member, for hostile archives."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buffer.getvalue()


def scrape(endpoint: Endpoint) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics: (name, sorted labels) → value."""
    with urllib.request.urlopen(endpoint.url + "/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_until(condition: Callable[[], bool], timeout: float = 30.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def csv_body(rows: np.ndarray) -> str:
    """Rows as CSV; repr() round-trips float32 values exactly, so the endpoint sees what xgboost sees here."""
    return "\n".join(",".join(repr(float(value)) for value in row) for row in rows)


def expected(booster: xgboost.Booster, rows: np.ndarray) -> list[float]:
    """What the booster predicts in-process for ``rows``: the answer every served prediction must equal."""
    return [float(value) for value in booster.predict(xgboost.DMatrix(rows))]


def served_json(body: bytes) -> list[float]:
    """The predictions of a default answer (JSON): the bare array SageMaker's XGBoost container answers."""
    values = json.loads(body)
    assert isinstance(values, list), values
    return [float(value) for value in values]


def served_csv(body: bytes) -> list[float]:
    """The predictions of an ``Accept: text/csv`` answer: one comma-separated line for single-output models, as
    SageMaker's XGBoost container answers."""
    text = body.decode()
    assert "\n" not in text
    return [float(value) for value in text.split(",")]


def container_json(booster: xgboost.Booster, rows: np.ndarray) -> bytes:
    """The SageMaker XGBoost container's JSON answer for ``rows`` (its default): the bare array of the
    booster's in-process predictions, ``json.dumps(predictions.tolist())``."""
    return json.dumps(booster.predict(xgboost.DMatrix(rows)).tolist()).encode()


def container_csv(booster: xgboost.Booster, rows: np.ndarray) -> bytes:
    """The SageMaker XGBoost container's ``text/csv`` answer for ``rows``: ONE line,
    ``",".join(map(str, predictions.tolist()))``."""
    return ",".join(map(str, booster.predict(xgboost.DMatrix(rows)).tolist())).encode()


class Nginx:
    """nginx as a test's own process, on ``config`` (which must listen on 127.0.0.1:``port``): its own prefix
    directory (``workdir``, for its pid file, logs and temp files); started at once, ready when it answers HTTP
    on ``port``; stopped by its PID."""

    def __init__(self, workdir: Path, config: str, port: int, timeout: float = 30.0) -> None:
        self.workdir = workdir
        self.url = f"http://127.0.0.1:{port}"
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "nginx.conf").write_text(config)
        command = ["nginx", "-p", str(workdir), "-c", str(workdir / "nginx.conf"), "-g", "daemon off;"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            self._wait_up(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(self.url + "/", timeout=2).close()
                return
            except urllib.error.HTTPError:
                return  # an answer, whatever its status: nginx is up
            except OSError as exc:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nginx did not start: {self.error_log()}") from exc
                time.sleep(0.05)

    def error_log(self) -> str:
        log = self.workdir / "error.log"
        return log.read_text(errors="replace")[-4000:] if log.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(30)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def front_routes() -> list[tuple[str, str, str]]:
    """The front's route table, asked of ``build_app``: (method, path as aiohttp states it, handler name)."""
    from openmme.endpoint.app import build_app
    from openmme.endpoint.settings import Settings

    unused: Any = None  # build_app only stores the cache, MMS client and metrics for the handlers
    app = build_app(Settings.from_sources([], {}), unused, unused, unused)
    return [
        (route.method, route.resource.canonical, route.handler.__name__)
        for route in app.router.routes()
        if route.resource is not None
    ]


def front_app(settings: Settings, keys: KeyStore | None, handler_for: Callable[[str], Handler]) -> web.Application:
    """The front exactly as ``build_app`` builds it for ``settings`` (its routes, its middlewares, the auth one
    included with ``keys``) but with every route's handler replaced by ``handler_for(<the real handler's name>)``:
    for tests of what happens around a handler (authentication, error rendering) without a cache or MMS behind it.

    The stand-in is an innermost middleware that answers instead of the route's handler, so the middlewares see
    the real route (``request.match_info``) and the cache, MMS and metrics the real handlers would use are never
    touched."""
    from openmme.endpoint.app import build_app

    unused: Any = None
    app = build_app(settings, unused, unused, unused, keys)

    @web.middleware
    async def stand_in(request: web.Request, handler: Handler) -> web.StreamResponse:
        if isinstance(request.match_info, web.UrlMappingMatchInfo) and request.match_info.http_exception is None:
            return await handler_for(request.match_info.route.handler.__name__)(request)
        return await handler(request)  # no route: aiohttp's own 404 or 405

    app.middlewares.append(stand_in)
    return app


def bench_module(name: str) -> ModuleType:
    """bench/<name>.py imported as a module (bench/ is a folder of scripts that import each other by bare name)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # where dataclasses look their module up while it runs
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "bench"))


def run_bench_smoke(script: str, output: Path, results_dir: Path | None = None, timeout: float = 300) -> None:
    """Run ``bench/<script>.py --smoke --output <output>`` as its own process, with ``--results-dir`` if given
    (so that a test reads the results JSON this run wrote, never one left in the checkout); fails with its
    output's tail."""
    command = [sys.executable, str(ROOT / "bench" / f"{script}.py"), "--smoke", "--output", str(output)]
    if results_dir is not None:
        command += ["--results-dir", str(results_dir)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]


# A process a model's code leaves behind, made as hard to end as a process without privileges can make itself: run
# as `python -c ESCAPEE PID_FILE` (from a model's code: with subprocess.run, which returns once it is in place).
# It forks, calls setsid(), forks again (its parent exits: it is an orphan), ignores SIGTERM, clears its
# parent-death signal and sleeps; its PID goes to PID_FILE.
ESCAPEE = """
import ctypes, os, signal, sys, time
pid_file = sys.argv[1]
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        ctypes.CDLL(None).prctl(1, 0, 0, 0, 0)  # PR_SET_PDEATHSIG: none
        with open(pid_file + ".tmp", "w") as staged:
            staged.write(str(os.getpid()))
        os.replace(pid_file + ".tmp", pid_file)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        while True:
            time.sleep(3600)
    os._exit(0)
os.wait()
while not os.path.exists(pid_file):
    time.sleep(0.01)
"""


def escapee(pid_file: Path, timeout: float = 60) -> psutil.Process:
    """The process ESCAPEE left running, once its PID is in ``pid_file``: a ``psutil.Process``, whose
    ``is_running`` (and ``alive``) compares its start time too, so a reused PID is not taken for it."""
    assert wait_until(pid_file.exists, timeout=timeout), f"no escapee wrote {pid_file}"
    return psutil.Process(int(pid_file.read_text()))


def kill_escapee(process: psutil.Process | None) -> None:
    """Clean-up after a test: kill the escapee if it still runs (by its PID, checked to still be it)."""
    if process is not None and alive(process):
        with contextlib.suppress(psutil.Error):
            process.kill()


def run_on_a_terminal(command: list[str]) -> tuple[subprocess.Popen[bytes], bytes, str]:
    """``command`` run with its stderr on a pseudo-terminal (as a person's shell gives it) and its stdout on a pipe:
    the process, once it closed the terminal, what it wrote there, and its stdout. The caller waits for it."""
    primary, secondary = pty.openpty()
    try:
        process = subprocess.Popen(command, stderr=secondary, stdout=subprocess.PIPE, env=os.environ.copy())
        os.close(secondary)
        terminal = b""
        while True:
            ready, _, _ = select.select([primary], [], [], 60)
            try:
                chunk = os.read(primary, 4096) if ready else b""
            except OSError:  # the child closed the terminal
                chunk = b""
            if not chunk:
                break
            terminal += chunk
        assert process.stdout is not None
        out = process.stdout.read().decode()
        process.stdout.close()
    finally:
        os.close(primary)
    return process, terminal, out
