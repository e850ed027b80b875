"""Helpers for the tests: a counting S3 proxy, hostile-archive builders, polling, CSV rows and the
predictions (and answer bytes) they must get."""

from __future__ import annotations

import http.client
import http.server
import io
import json
import subprocess
import sys
import tarfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import xgboost

ROOT = Path(__file__).resolve().parent.parent


class CountingProxy(http.server.ThreadingHTTPServer):
    """A plain HTTP reverse proxy to the S3 server that counts requests by method and path."""

    daemon_threads = True

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.requests: Counter[tuple[str, str]] = Counter()
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _ProxyHandler)

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


def container_json(booster: xgboost.Booster, rows: np.ndarray) -> bytes:
    """The SageMaker XGBoost container's JSON answer for ``rows`` (its default): the bare array of the
    booster's in-process predictions, ``json.dumps(predictions.tolist())``."""
    return json.dumps(booster.predict(xgboost.DMatrix(rows)).tolist()).encode()


def container_csv(booster: xgboost.Booster, rows: np.ndarray) -> bytes:
    """The SageMaker XGBoost container's ``text/csv`` answer for ``rows``: ONE line,
    ``",".join(map(str, predictions.tolist()))``."""
    return ",".join(map(str, booster.predict(xgboost.DMatrix(rows)).tolist())).encode()


def run_bench_smoke(script: str, output: Path, timeout: float = 300) -> None:
    """Run ``bench/<script>.py --smoke --output <output>`` as its own process; fails with its output's tail."""
    completed = subprocess.run(
        [sys.executable, str(ROOT / "bench" / f"{script}.py"), "--smoke", "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
