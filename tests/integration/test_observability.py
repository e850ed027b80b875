"""Metrics, logs and the dashboard against a real endpoint: series with known labels are there at 0 from the
first scrape, counters move by exactly what happened, evictions carry their reason, histograms get samples, log
lines are JSON with the documented fields, and the dashboard asks only for metrics the server exports."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xgboost
from prometheus_client.parser import text_string_to_metric_families

from openmme.publish.samples import make_rows
from tests.conftest import Endpoint, EndpointFactory
from tests.support import csv_body, scrape, value

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent.parent
BODY = csv_body(make_rows(2, seed=21))


def log_lines(endpoint: Endpoint) -> list[dict[str, Any]]:
    lines = [line for line in endpoint.log().splitlines() if line.startswith("{")]
    return [json.loads(line) for line in lines]  # every JSON-looking line must parse


@pytest.fixture
def endpoint(
    start_endpoint: EndpointFactory, hosting: str, prefix: str, publish: Any, boosters: dict[str, xgboost.Booster]
) -> Endpoint:
    for name in ("first", "second"):
        publish(prefix, f"{name}/model.tar.gz", boosters["binary:logistic"])
    return start_endpoint(prefix, "--hosting", hosting, "--max-models", "1", "--metrics-model-labels", "1")


def test_a_miss_then_a_hit_move_the_counters_by_exactly_one(endpoint: Endpoint) -> None:
    before = scrape(endpoint)
    # The first scrape already has every series whose label values are known in advance, at 0.
    for status in ("200", "400", "424", "429", "500", "503", "507"):
        assert before[("openmme_invocations_total", (("status", status),))] == 0, status
        assert before[("openmme_invocation_seconds_count", (("status", status),))] == 0, status
    for reason in ("count", "memory", "disk", "request"):
        assert before[("openmme_model_evictions_total", (("reason", reason),))] == 0, reason
    for state in ("remote", "downloading", "on_disk", "loading", "ready", "unloading"):
        assert before[("openmme_models", (("state", state),))] == 0, state
    endpoint.invoke("first/model.tar.gz", BODY)
    after_miss = scrape(endpoint)
    endpoint.invoke("first/model.tar.gz", BODY)
    after_hit = scrape(endpoint)

    def moved(name: str, start: dict[Any, float], end: dict[Any, float], **labels: str) -> float:
        return value(end, name, **labels) - value(start, name, **labels)

    assert moved("openmme_model_cache_misses_total", before, after_miss) == 1
    assert moved("openmme_model_cache_hits_total", before, after_miss) == 0
    assert moved("openmme_model_cache_hits_total", after_miss, after_hit) == 1
    assert moved("openmme_model_cache_misses_total", after_miss, after_hit) == 0
    for histogram in (
        "openmme_model_download_seconds",
        "openmme_model_extract_seconds",
        "openmme_model_load_seconds",
        "openmme_model_loading_wait_seconds",
    ):
        assert moved(f"{histogram}_count", before, after_hit) == 1, histogram
        assert value(after_hit, f"{histogram}_sum") > 0, histogram
    assert moved("openmme_invocations_total", before, after_hit, status="200") == 2
    assert moved("openmme_invocation_seconds_count", before, after_hit, status="200") == 2
    assert value(after_hit, "openmme_loaded_models") == 1
    memory = value(after_hit, "openmme_model_memory_bytes")
    assert memory == endpoint.get("/models")["memoryBytes"] > 0
    shards = endpoint.get("/models")["shards"]
    if shards:  # dense: a small booster's heap, far below a worker process; the shards' own memory apart
        assert memory < 2**20
        for shard in shards:
            assert value(after_hit, "openmme_shard_memory_bytes", shard=shard["name"]) > 10 * 2**20
    else:  # isolated: the model's worker process
        assert memory > 10 * 2**20


def test_an_eviction_is_counted_with_its_reason_and_labels_stay_bounded(endpoint: Endpoint) -> None:
    endpoint.invoke("first/model.tar.gz", BODY)
    endpoint.invoke("second/model.tar.gz", BODY)  # --max-models 1: "first" must leave memory
    samples = scrape(endpoint)
    assert value(samples, "openmme_model_evictions_total", reason="count") == 1
    assert value(samples, "openmme_model_evictions_total", reason="memory") == 0
    assert value(samples, "openmme_model_unload_seconds_count") == 1
    assert value(samples, "openmme_loaded_models") == 1
    assert value(samples, "openmme_cached_models_on_disk") == 2
    assert value(samples, "openmme_models", state="on_disk") == 1
    # --metrics-model-labels 1: the first model keeps its name, the next is "other".
    assert value(samples, "openmme_model_invocations_total", model="first/model.tar.gz", status="200") == 1
    assert value(samples, "openmme_model_invocations_total", model="other", status="200") == 1
    assert value(samples, "openmme_model_loads_total", model="other") == 1
    assert not any(dict(labels).get("model") == "second/model.tar.gz" for _, labels in samples)


def test_log_lines_are_json_with_the_request_and_event_fields(endpoint: Endpoint) -> None:
    response = endpoint.invoke("first/model.tar.gz", BODY, InferenceId="req-0042")
    endpoint.invoke("first/model.tar.gz", BODY)
    endpoint.invoke("second/model.tar.gz", BODY)
    client = endpoint.runtime(retries=1)
    with pytest.raises(client.exceptions.ValidationError):
        endpoint.invoke("nowhere/model.tar.gz", BODY)
    assert response["ResponseMetadata"]["HTTPHeaders"]["x-amzn-sagemaker-inference-id"] == "req-0042"

    lines = log_lines(endpoint)
    requests = [line for line in lines if line["event"] == "invocation"]
    assert [(r["target_model"], r["status"], r.get("cache")) for r in requests] == [
        ("first/model.tar.gz", 200, "miss"),
        ("first/model.tar.gz", 200, "hit"),
        ("second/model.tar.gz", 200, "miss"),
        ("nowhere/model.tar.gz", 400, "miss"),
    ]
    first = requests[0]
    assert first["inference_id"] == "req-0042"
    for field in ("wait_ms", "download_ms", "extract_ms", "load_ms", "predict_ms", "total_ms"):
        assert isinstance(first[field], float), field
    assert "download_ms" not in requests[1] and requests[1]["predict_ms"] > 0
    assert requests[3]["error"] == "ValidationError"
    events = [(line["event"], line["target_model"]) for line in lines if line["event"] != "invocation"]
    assert ("loaded", "first/model.tar.gz") in events
    assert ("evicted", "first/model.tar.gz") in events
    assert ("load_failed", "nowhere/model.tar.gz") in events


def test_the_dashboard_asks_only_for_exported_metrics(endpoint: Endpoint) -> None:
    endpoint.invoke("first/model.tar.gz", BODY)
    endpoint.invoke("second/model.tar.gz", BODY)
    with urllib.request.urlopen(endpoint.url + "/metrics", timeout=10) as response:
        families = list(text_string_to_metric_families(response.read().decode()))
    # Family names too: a family may have no sample yet (the dense shards' on an isolated endpoint).
    exported = {family.name for family in families} | {name for name, _ in scrape(endpoint)}
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "openmme.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    asked = {name for expr in expressions for name in re.findall(r"\bopenmme_[a-z_]+\b", expr)}
    assert asked, "the dashboard has no openmme queries"
    # Series of features this endpoint does not run (aliases, shadows, async invocations) come with them;
    # tests/test_alerts.py checks the whole dashboard against an endpoint's series with every feature on.
    optional = re.compile(r"openmme_(alias|shadow|async)_")
    assert {name for name in asked - exported if not optional.match(name)} == set()
    assert len(dashboard["panels"]) >= 8


def test_the_hit_ratio_matches_what_was_served(endpoint: Endpoint) -> None:
    for target in ["first", "first", "first", "second", "second"]:
        endpoint.invoke(f"{target}/model.tar.gz", BODY)
    samples = scrape(endpoint)
    hits = value(samples, "openmme_model_cache_hits_total")
    misses = value(samples, "openmme_model_cache_misses_total")
    assert (hits, misses) == (3, 2)
    assert np.isclose(hits / (hits + misses), 0.6)
