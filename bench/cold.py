"""Cold start: the first request for a model the endpoint has never seen, split into the phases the endpoint
records (download, extract, MMS register, and the rest: first prediction, bookkeeping, the HTTP round trip);
the reload of a model unloaded from memory but still on disk; and, side by side, what the parts cost alone.

The yardstick is MMS alone (its own process, started here with openmme's MMS configuration and handler,
without the front) registering the same extracted model and answering its first prediction, plus one S3 GET
of the archive from this process. The goal compares the endpoint's cold start with that sum. The three are
measured in turn for each model (endpoint, GET, MMS alone), so that the machine's drift during the section,
or another process's burst, falls on both sides of the comparison.
"""

from __future__ import annotations

import statistics
import time
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from harness import BUCKET, delete, get_json, invoke_headers, post
from openmme.endpoint.extract import ExtractLimits, extract_archive
from openmme.endpoint.mms import MmsProcess
from openmme.endpoint.settings import Settings
from openmme.handlers import choose_handler

__all__ = ["MmsAlone", "run_cold"]

PHASES = ("download", "extract", "register")


def run_cold(
    front: str, targets: list[str], body: bytes, s3_client: Any, archive: bytes, workdir: Path
) -> dict[str, Any]:
    """``cold_start``, ``reload_from_disk``, ``s3_get`` and ``mms_alone``: medians over ``targets``."""
    cold, gets, alone, reloads = [], [], [], []
    with MmsAlone(workdir, archive, body) as mms:
        # Not counted: MMS's first registration after its start is slower (class loading, JIT), and the
        # endpoint's MMS has registered models before this section.
        mms.measure()
        s3_get(s3_client, f"models/{targets[0]}")  # opens the connection, as a live endpoint's already is
        for target in targets:
            cold.append(first_request(front, target, body))
            gets.append(s3_get(s3_client, f"models/{target}"))
            alone.append(mms.measure())
        for target in targets:
            reloads.append(reload_from_disk(front, target, body))
    return {
        "cold_start": _medians(cold),
        "s3_get": _medians(gets),
        "mms_alone": _medians(alone),
        "reload_from_disk": _medians(reloads),
    }


def first_request(front: str, target: str, body: bytes) -> dict[str, float]:
    """The first request for ``target`` (never seen before): total and the phases the endpoint recorded."""
    status, total = post(front + "/invocations", body, invoke_headers(target))
    assert status == 200, status
    timings = get_json(f"{front}/models/{target}")["timingsMs"]
    phases = {key: float(timings.get(key, 0.0)) for key in PHASES}
    phases["total"] = total * 1000
    phases["other"] = phases["total"] - sum(phases[key] for key in PHASES)
    return phases


def reload_from_disk(front: str, target: str, body: bytes) -> dict[str, float]:
    """Unload a model (``DELETE /models/{name}``, the state an eviction leaves) and time the request that
    loads it back from disk: no download, no extraction."""
    assert delete(f"{front}/models/{target}") == 200
    status, total = post(front + "/invocations", body, invoke_headers(target))
    assert status == 200, status
    model = get_json(f"{front}/models/{target}")
    assert model["downloads"] == 1, model  # still on disk: reloading must not fetch again
    return {"total": total * 1000, "register": float(model["timingsMs"]["register"])}


def s3_get(s3_client: Any, key: str) -> dict[str, float]:
    """One ``get_object`` + read of an archive from this process: the S3 part of the cold-start budget."""
    started = time.perf_counter()
    s3_client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return {"get": (time.perf_counter() - started) * 1000}


class MmsAlone:
    """MMS without the front: each ``measure`` registers a fresh copy of the model (synchronously, one worker,
    openmme's handler), sends its first prediction to ``/predictions``, and unregisters it."""

    def __init__(self, workdir: Path, archive: bytes, body: bytes) -> None:
        self.settings = Settings(cache_dir=workdir)
        self.process = MmsProcess(self.settings)
        self.archive = archive
        self.body = body
        self.count = 0

    def __enter__(self) -> MmsAlone:
        self.process.start()
        try:
            self._wait_until_up()
        except BaseException:
            self.process.stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.process.stop()

    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.process.config.inference_port}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.process.config.management_port}"

    def measure(self) -> dict[str, float]:
        name = f"alone-{self.count}"
        self.count += 1
        model_dir = self.settings.models_dir / name
        packed = self.settings.models_dir / f"{name}.tar.gz"
        packed.write_bytes(self.archive)
        extract_archive(packed, model_dir, ExtractLimits(max_bytes=0, max_members=100_000))
        packed.unlink()
        query = urllib.parse.urlencode(
            {
                "url": name,
                "model_name": name,
                "handler": choose_handler(model_dir),
                "initial_workers": "1",
                "synchronous": "true",
                "runtime": "python",
            }
        )
        status, register = post(f"{self.management_url}/models?{query}", b"", {})
        assert status == 200, status
        status, first = post(f"{self.inference_url}/predictions/{name}", self.body, {"Content-Type": "text/csv"})
        assert status == 200, status
        # Unregistered at once, so that every model registers into the same idle MMS.
        assert delete(f"{self.management_url}/models/{name}") == 200
        return {"register": register * 1000, "first_predict": first * 1000}

    def _wait_until_up(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.process.running():
                raise RuntimeError(f"MMS exited during start; see {self.process.log_path}")
            try:
                with urllib.request.urlopen(self.inference_url + "/ping", timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"MMS did not answer within {timeout:g} s; see {self.process.log_path}")


def _medians(samples: list[dict[str, float]]) -> dict[str, Any]:
    return {key: statistics.median(sample[key] for sample in samples) for key in samples[0]} | {"n": len(samples)}
