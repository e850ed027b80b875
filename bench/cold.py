"""Cold start: the first request for a model the endpoint has never seen, split into the phases the endpoint
records (download, extract, MMS register, and the rest: first prediction, bookkeeping, the HTTP round trip);
the reload of a model unloaded from memory but still on disk; and, side by side, what the parts cost alone.

The yardstick is MMS alone (its own process, started here with openmme's MMS configuration and handler,
without the front) registering the same extracted model and answering its first prediction, plus one S3 GET
of the archive from this process. The goal compares the endpoint's cold start with that sum.
"""

from __future__ import annotations

import io
import statistics
import tarfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from harness import BUCKET, delete, get_json, invoke_headers, post
from openmme.endpoint.mms import MmsProcess
from openmme.endpoint.settings import Settings
from openmme.handlers import choose_handler

__all__ = ["cold_start", "mms_alone", "reload_from_disk", "s3_get"]

PHASES = ("download", "extract", "register")


def cold_start(front: str, targets: list[str], body: bytes) -> dict[str, Any]:
    """First request for each of ``targets`` (none seen before), one at a time; medians over them."""
    samples = []
    for target in targets:
        status, total = post(front + "/invocations", body, invoke_headers(target))
        assert status == 200, status
        timings = get_json(f"{front}/models/{target}")["timingsMs"]
        phases = {key: timings.get(key, 0.0) for key in PHASES}
        phases["total"] = total * 1000
        phases["other"] = phases["total"] - sum(phases[key] for key in PHASES)
        samples.append(phases)
    return _medians(samples)


def reload_from_disk(front: str, targets: list[str], body: bytes) -> dict[str, Any]:
    """Unload each model (``DELETE /models/{name}``, the state an eviction leaves) and time the request that
    loads it back from disk: no download, no extraction."""
    samples = []
    for target in targets:
        assert delete(f"{front}/models/{target}") == 200
        status, total = post(front + "/invocations", body, invoke_headers(target))
        assert status == 200, status
        model = get_json(f"{front}/models/{target}")
        assert model["downloads"] == 1, model  # still on disk: reloading must not fetch again
        samples.append({"total": total * 1000, "register": model["timingsMs"]["register"]})
    return _medians(samples)


def s3_get(s3_client: Any, keys: list[str]) -> dict[str, Any]:
    """One ``get_object`` + read of each archive from this process: the S3 part of the cold-start budget."""
    s3_client.get_object(Bucket=BUCKET, Key=keys[0])["Body"].read()  # opens the connection, like a live endpoint's
    samples = []
    for key in keys:
        started = time.perf_counter()
        s3_client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        samples.append({"get": (time.perf_counter() - started) * 1000})
    return _medians(samples)


def mms_alone(workdir: Path, archive: bytes, body: bytes, count: int) -> dict[str, Any]:
    """MMS without the front: register an extracted model (synchronously, one worker, openmme's handler) and
    send its first prediction to ``/predictions``; ``count`` models in turn; medians."""
    settings = Settings(cache_dir=workdir)
    process = MmsProcess(settings)
    process.start()
    try:
        inference = f"http://127.0.0.1:{process.config.inference_port}"
        management = f"http://127.0.0.1:{process.config.management_port}"
        _wait_for_mms(inference, process)
        samples = []
        # One model more than measured, the first not counted: the endpoint's JVM has registered models before
        # its cold starts are timed, and MMS's first registration after start is slower (class loading, JIT).
        for index in range(count + 1):
            name = f"alone-{index}"
            model_dir = settings.models_dir / name
            with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
                tar.extractall(model_dir, filter="data")
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
            status, register = post(f"{management}/models?{query}", b"", {})
            assert status == 200, status
            status, first = post(f"{inference}/predictions/{name}", body, {"Content-Type": "text/csv"})
            assert status == 200, status
            # Unregistered at once, so every model registers into the same idle MMS, as the endpoint's do.
            assert delete(f"{management}/models/{name}") == 200
            if index:
                samples.append({"register": register * 1000, "first_predict": first * 1000})
    finally:
        process.stop()
    return _medians(samples)


def _wait_for_mms(inference: str, process: MmsProcess, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.running():
            raise RuntimeError(f"MMS exited during start; see {process.log_path}")
        try:
            with urllib.request.urlopen(inference + "/ping", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"MMS did not answer within {timeout:g} s; see {process.log_path}")


def _medians(samples: list[dict[str, float]]) -> dict[str, Any]:
    return {key: statistics.median(sample[key] for sample in samples) for key in samples[0]} | {"n": len(samples)}
