"""Keeping models hot, against real processes: a pinned model outlives a flood of other models under a small
``--max-models``; an idle model is unloaded after ``--idle-ttl`` and loaded again by its next request; and the
usage record a stopped endpoint leaves in its cache directory makes the next one pre-load the most used model,
beside a ``--preload`` one, while ``/ping`` answers 200 and ``/ready`` 503 until pre-loading is done; and pins
that cannot fit are refused in one line at start.

What only processes show is checked here (the shutdown's usage record, the workers that really hold a model,
the HTTP readiness signal); the rules themselves are tested in process (tests/endpoint/test_cache.py)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import xgboost

from openmme.endpoint.cache import mms_model_name
from openmme.publish import pack_directory, publish_archive
from openmme.publish.samples import make_rows, sample_archive
from openmme.seaweed import EmbeddedS3
from tests.conftest import BUCKET, Endpoint, EndpointFactory, Launcher, run_serve
from tests.support import answer, expected, wait_until

pytestmark = pytest.mark.integration

ROWS = make_rows(3, seed=17)
IDLE_TTL_S = 4.0
FLOOD = [f"flood/{index}.tar.gz" for index in range(4)]
# A script model whose load takes seconds: pre-loading it keeps /ready at 503 for a while after /ping is 200.
SLOW_LOAD = """
import time


def model_fn(model_dir):
    time.sleep(4)
    return None
"""


@pytest.fixture(scope="module")
def operated(
    s3: EmbeddedS3, tmp_path_factory: pytest.TempPathFactory, boosters: dict[str, xgboost.Booster]
) -> Iterator[Endpoint]:
    """Room for two models, one of them pinned, and idle models unloaded after a few seconds."""
    prefix = f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}/"
    for target in ("hot.tar.gz", "idle.tar.gz", *FLOOD):
        publish_archive(sample_archive(boosters["binary:logistic"]), prefix, target)
    launcher = Launcher(s3, tmp_path_factory)
    yield launcher.start(prefix, "--max-models", "2", "--pin", "hot.tar.gz", "--idle-ttl", str(IDLE_TTL_S))
    launcher.close()


def summary(endpoint: Endpoint) -> dict[str, Any]:
    listing: dict[str, Any] = endpoint.get("/models")
    return listing


def test_a_pinned_model_outlives_a_flood_of_others(operated: Endpoint, boosters: dict[str, xgboost.Booster]) -> None:
    booster = boosters["binary:logistic"]
    assert operated.predictions("hot.tar.gz", ROWS) == expected(booster, ROWS)
    evicted_before = summary(operated)["evictions"].get("count", 0)
    for target in FLOOD:  # the pinned model is the least recently used every time, and never leaves
        assert operated.predictions(target, ROWS) == expected(booster, ROWS)
        assert operated.models()["hot.tar.gz"]["state"] == "ready"
    hot = operated.models()["hot.tar.gz"]
    assert (hot["pinned"], hot["loads"], hot["downloads"]) == (True, 1, 1)
    assert mms_model_name("hot.tar.gz") in operated.resident()  # held by a worker, not only in the bookkeeping
    listing = summary(operated)
    assert listing["loadedModels"] <= 2 and listing["pinnedModels"] == 1
    assert listing["evictions"].get("count", 0) - evicted_before >= len(FLOOD) - 1
    assert operated.predictions("hot.tar.gz", ROWS) == expected(booster, ROWS)
    assert operated.models()["hot.tar.gz"]["loads"] == 1


def test_an_idle_model_is_unloaded_after_the_ttl_and_the_next_request_loads_it_again(
    operated: Endpoint, boosters: dict[str, xgboost.Booster]
) -> None:
    booster = boosters["binary:logistic"]
    assert operated.predictions("hot.tar.gz", ROWS) == expected(booster, ROWS)
    assert operated.predictions("idle.tar.gz", ROWS) == expected(booster, ROWS)
    answered = time.monotonic()
    idle_before = summary(operated)["evictions"].get("idle", 0)
    assert wait_until(lambda: operated.models()["idle.tar.gz"]["state"] == "on_disk", timeout=30)
    assert time.monotonic() - answered >= IDLE_TTL_S - 0.1
    assert summary(operated)["evictions"].get("idle", 0) == idle_before + 1
    assert mms_model_name("idle.tar.gz") not in operated.resident()
    assert operated.models()["hot.tar.gz"]["state"] == "ready"  # idle as long, but pinned
    assert answer(operated.url + "/ready")[0] == 200  # nothing to pre-load: ready as soon as it answers /ping

    assert operated.predictions("idle.tar.gz", ROWS) == expected(booster, ROWS)
    idle = operated.models()["idle.tar.gz"]
    assert (idle["state"], idle["loads"], idle["downloads"]) == ("ready", 2, 1)  # from disk, no second download


def test_the_most_used_models_of_the_last_run_and_the_named_ones_are_preloaded_before_ready(
    start_endpoint: EndpointFactory, prefix: str, publish: Any, boosters: dict[str, xgboost.Booster], tmp_path: Path
) -> None:
    booster = boosters["reg:squarederror"]
    for target in ("top.tar.gz", "other.tar.gz"):
        publish(prefix, target, booster)
    (tmp_path / "slow" / "code").mkdir(parents=True)
    (tmp_path / "slow" / "code" / "inference.py").write_text(SLOW_LOAD)
    publish(prefix, "slow.tar.gz", archive=pack_directory(tmp_path / "slow"))
    cache_dir = tmp_path / "cache"

    earlier = start_endpoint(prefix, "--cache-dir", str(cache_dir))
    for target in ("top.tar.gz", "other.tar.gz", "top.tar.gz", "top.tar.gz"):
        assert earlier.predictions(target, ROWS) == expected(booster, ROWS)
    earlier.stop()  # SIGTERM: the usage record is written on the way out
    assert earlier.process.returncode == 0
    record = json.loads((cache_dir / "usage.json").read_text())
    assert [(item["model"], item["requests"]) for item in record["models"]] == [("top.tar.gz", 3), ("other.tar.gz", 1)]

    endpoint = start_endpoint(prefix, "--cache-dir", str(cache_dir), "--preload", "slow.tar.gz", "--preload-top", "1")
    endpoint.cache_dir = cache_dir  # where its MMS's files are, for resident()
    status, body, _ = answer(endpoint.url + "/ready")
    assert endpoint.ping() == 200  # SageMaker's health check answers while models are still being pre-loaded
    assert status == 503 and json.loads(body)["preload"]["pending"] >= 1, body

    def ready() -> bool:
        return answer(endpoint.url + "/ready")[0] == 200

    assert wait_until(ready, timeout=90, interval=0.25)
    status, body, _ = answer(endpoint.url + "/ready")
    assert json.loads(body) == {
        "ready": True,
        "preload": {"total": 2, "pending": 0, "loaded": 2, "skipped": 0, "failed": 0},
    }
    models = endpoint.models()
    assert {name: (model["state"], model["loads"]) for name, model in models.items()} == {
        "slow.tar.gz": ("ready", 1),
        "top.tar.gz": ("ready", 1),
    }
    assert {mms_model_name("slow.tar.gz"), mms_model_name("top.tar.gz")} <= set(endpoint.resident())
    assert endpoint.predictions("top.tar.gz", ROWS) == expected(booster, ROWS)
    assert endpoint.models()["top.tar.gz"]["loads"] == 1  # the first request was a hit
    metrics = answer(endpoint.url + "/metrics")[1].decode()
    assert 'openmme_preload_models{state="loaded"} 2.0' in metrics


def test_pins_that_cannot_fit_are_refused_in_one_line_before_anything_starts(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    refused = run_serve("--pin", "a.tar.gz", "--pin", "b.tar.gz", "--max-models", "1", "--cache-dir", str(cache_dir))
    assert refused.returncode != 0
    assert refused.stderr == (
        "openmme serve: 2 pinned models do not fit --max-models 1; pin fewer, or raise --max-models to at least 3 to"
        " leave room for the models not pinned\n"
    )
    assert not cache_dir.exists()
