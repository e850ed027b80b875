"""The model cache against real processes: single flight, LRU eviction under the count, memory and disk
budgets, no lingering MMS workers, the wait budget, hostile archives, and SageMaker's container contract.

The cache's behaviour must not depend on where models run: tests taking the ``hosting`` fixture run once with
``--hosting dense`` and once with ``--hosting isolated``, and check what is loaded by asking MMS and the
dense shards themselves (``Endpoint.resident``), not the front's bookkeeping."""

from __future__ import annotations

import concurrent.futures
import json
import tarfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xgboost

from openmme.endpoint.cache import mms_model_name
from openmme.publish import pack_directory
from openmme.publish.samples import make_rows, sample_archive
from tests.conftest import EndpointFactory
from tests.support import CountingProxy, answer, csv_body, expected, make_tar, served_json, wait_until

pytestmark = pytest.mark.integration


def gets(proxy: CountingProxy, prefix: str, target: str) -> int:
    return proxy.count("GET", prefix.removeprefix("s3://") + target)


ROWS = make_rows(3, seed=5)


def test_max_models_evicts_the_least_recently_used_and_its_workers(
    start_endpoint: EndpointFactory,
    hosting: str,
    prefix: str,
    publish: Any,
    boosters: dict[str, xgboost.Booster],
    s3_proxy: CountingProxy,
) -> None:
    booster = boosters["binary:logistic"]
    targets = ["a/model.tar.gz", "b/model.tar.gz", "c/model.tar.gz"]
    for target in targets:
        publish(prefix, target, booster)
    endpoint = start_endpoint(prefix, "--hosting", hosting, "--max-models", "2", s3_url=s3_proxy.url)
    for target in targets:
        assert endpoint.predictions(target, ROWS) == expected(booster, ROWS)

    models = endpoint.models()
    assert {name: model["state"] for name, model in models.items()} == {
        "a/model.tar.gz": "on_disk",
        "b/model.tar.gz": "ready",
        "c/model.tar.gz": "ready",
    }
    evicted = mms_model_name("a/model.tar.gz")
    assert endpoint.resident() == sorted(mms_model_name(t) for t in targets[1:])
    assert wait_until(lambda: evicted not in endpoint.model_pids(), timeout=10)
    assert len(endpoint.model_pids()) == (2 if hosting == "isolated" else 0)
    assert endpoint.get("/models")["evictions"] == {"count": 1}

    # Back from disk: served again, not downloaded again; now b is the least recently used.
    assert endpoint.predictions("a/model.tar.gz", ROWS) == expected(booster, ROWS)
    assert gets(s3_proxy, prefix, "a/model.tar.gz") == 1
    states = {name: model["state"] for name, model in endpoint.models().items()}
    assert states == {"a/model.tar.gz": "ready", "b/model.tar.gz": "on_disk", "c/model.tar.gz": "ready"}
    assert endpoint.models()["a/model.tar.gz"]["loads"] == 2


def test_32_concurrent_first_requests_fetch_and_load_once(
    start_endpoint: EndpointFactory,
    hosting: str,
    prefix: str,
    publish: Any,
    boosters: dict[str, xgboost.Booster],
    s3_proxy: CountingProxy,
) -> None:
    booster = boosters["multi:softmax"]
    publish(prefix, "storm/model.tar.gz", booster)
    endpoint = start_endpoint(prefix, "--hosting", hosting, s3_url=s3_proxy.url)
    clients = [endpoint.runtime(retries=1) for _ in range(32)]
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        answers = list(
            pool.map(lambda client: endpoint.predictions("storm/model.tar.gz", ROWS, client=client), clients)
        )
    assert answers == [expected(booster, ROWS)] * 32
    assert gets(s3_proxy, prefix, "storm/model.tar.gz") == 1
    # Loaded once where it runs: one registration, or once into a shard (a hot model may also be spread to
    # the other shards, once each).
    loads = endpoint.loads(mms_model_name("storm/model.tar.gz"))
    assert loads and set(loads.values()) == {1}
    assert ("isolated" in loads) == (hosting == "isolated")


def test_a_load_longer_than_the_wait_budget_is_429_then_served(
    start_endpoint: EndpointFactory, hosting: str, prefix: str, publish: Any, boosters: dict[str, xgboost.Booster]
) -> None:
    booster = boosters["reg:squarederror"]
    publish(prefix, "slow/model.tar.gz", booster)
    # A dense cold load takes a few milliseconds: a budget shorter than the download alone.
    endpoint = start_endpoint(prefix, "--hosting", hosting, "--wait-budget", "0.001")
    client = endpoint.runtime(retries=1)
    with pytest.raises(client.exceptions.ModelNotReadyException):
        endpoint.predictions("slow/model.tar.gz", ROWS, client=client)
    # The load went on without the client: once ready, the next request is served from it.
    assert wait_until(lambda: endpoint.models()["slow/model.tar.gz"]["state"] == "ready", timeout=60)
    assert endpoint.predictions("slow/model.tar.gz", ROWS, client=client) == expected(booster, ROWS)
    assert endpoint.models()["slow/model.tar.gz"]["loads"] == 1


def test_memory_budget_unloads_idle_models(
    start_endpoint: EndpointFactory, hosting: str, prefix: str, publish: Any, boosters: dict[str, xgboost.Booster]
) -> None:
    booster = boosters["binary:logistic"]
    publish(prefix, "m1.tar.gz", booster)
    publish(prefix, "m2.tar.gz", booster)
    # A budget smaller than any worker: each load leaves only the newest model (never one in use) loaded.
    endpoint = start_endpoint(prefix, "--hosting", hosting, "--memory-budget", "1MB")
    assert endpoint.predictions("m1.tar.gz", ROWS) == expected(booster, ROWS)
    assert endpoint.predictions("m2.tar.gz", ROWS) == expected(booster, ROWS)
    assert wait_until(lambda: endpoint.models()["m1.tar.gz"]["state"] == "on_disk", timeout=10)
    listing = endpoint.get("/models")
    assert listing["evictions"].get("memory", 0) >= 1
    assert listing["loadedModels"] == 1
    assert endpoint.resident() == [mms_model_name("m2.tar.gz")]


def test_disk_budget_removes_least_recently_used_archives(
    start_endpoint: EndpointFactory,
    hosting: str,
    prefix: str,
    publish: Any,
    boosters: dict[str, xgboost.Booster],
    s3_proxy: CountingProxy,
) -> None:
    booster = boosters["binary:logistic"]
    for name in ("d1", "d2", "d3"):
        publish(prefix, f"{name}.tar.gz", booster)
    size = len(sample_archive(booster)) * 0 + 22_000  # extracted size of one sample, about 22 kB
    endpoint = start_endpoint(prefix, "--hosting", hosting, "--disk-budget", str(int(size * 2.5)), s3_url=s3_proxy.url)
    for name in ("d1", "d2", "d3"):
        assert endpoint.predictions(f"{name}.tar.gz", ROWS) == expected(booster, ROWS)
    models = endpoint.models()
    assert "d1.tar.gz" not in models  # gone from disk and from memory
    assert {models["d2.tar.gz"]["state"], models["d3.tar.gz"]["state"]} == {"ready"}
    assert not (endpoint.cache_dir / "models" / mms_model_name("d1.tar.gz")).exists()
    assert mms_model_name("d1.tar.gz") not in endpoint.resident()
    assert endpoint.get("/models")["diskBytes"] <= int(size * 2.5)
    # Needed again: downloaded again.
    assert endpoint.predictions("d1.tar.gz", ROWS) == expected(booster, ROWS)
    assert gets(s3_proxy, prefix, "d1.tar.gz") == 2


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


HOSTILE = {
    "dotdot": [(_member("../../escaped-dotdot"), b"owned")],
    "absolute": [(_member("/tmp/openmme-escaped-absolute"), b"owned")],
    "symlink": [
        (_member("link", tarfile.SYMTYPE, "../../.."), None),
        (_member("link/escaped-symlink"), b"owned"),
    ],
    "hardlink": [(_member("hard", tarfile.LNKTYPE, "/etc/passwd"), None)],
    "device": [(_member("dev", tarfile.CHRTYPE), None)],
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_archives_are_refused_and_write_nothing_outside_the_cache(
    start_endpoint: EndpointFactory, prefix: str, publish: Any, kind: str, tmp_path: Path
) -> None:
    publish(prefix, f"{kind}.tar.gz", archive=make_tar(HOSTILE[kind]))
    endpoint = start_endpoint(prefix)
    outside = endpoint.cache_dir.parent
    before = sorted(path.name for path in outside.rglob("*") if endpoint.cache_dir not in path.parents)
    client = endpoint.runtime()
    with pytest.raises(client.exceptions.ModelError) as caught:
        endpoint.predictions(f"{kind}.tar.gz", ROWS, client=client)
    assert caught.value.response["OriginalStatusCode"] == 400
    assert "refused" in caught.value.response["Error"]["Message"]
    after = sorted(path.name for path in outside.rglob("*") if endpoint.cache_dir not in path.parents)
    assert after == before
    assert not Path("/tmp/openmme-escaped-absolute").exists()
    assert not any("escaped" in path.name for path in endpoint.cache_dir.parent.parent.rglob("escaped*"))
    staged = list((endpoint.cache_dir / "staging").iterdir())
    assert staged == []
    assert kind + ".tar.gz" not in endpoint.models()


def test_an_archive_without_a_model_is_a_clear_model_error(
    start_endpoint: EndpointFactory, prefix: str, publish: Any, tmp_path: Path
) -> None:
    (tmp_path / "README.txt").write_text("no model here")
    publish(prefix, "empty.tar.gz", archive=pack_directory(tmp_path))
    endpoint = start_endpoint(prefix)
    client = endpoint.runtime()
    with pytest.raises(client.exceptions.ModelError, match="xgboost-model"):
        endpoint.predictions("empty.tar.gz", ROWS, client=client)
    assert endpoint.resident() == []


def test_a_corrupt_booster_fails_to_load_with_the_handlers_reason(
    start_endpoint: EndpointFactory, hosting: str, prefix: str, publish: Any, tmp_path: Path
) -> None:
    (tmp_path / "xgboost-model").write_bytes(b'{"learner": ')
    publish(prefix, "corrupt.tar.gz", archive=pack_directory(tmp_path))
    endpoint = start_endpoint(prefix, "--hosting", hosting)
    client = endpoint.runtime()
    with pytest.raises(client.exceptions.ModelError, match="failed to load") as caught:
        endpoint.predictions("corrupt.tar.gz", ROWS, client=client)
    assert "xgboost-model" in caught.value.response["Error"]["Message"]
    assert endpoint.resident() == []
    assert wait_until(lambda: endpoint.model_pids() == {}, timeout=10)


INFERENCE_PY = """
import json
import os

import numpy as np


def model_fn(model_dir):
    return np.load(os.path.join(model_dir, "weights.npy"))


def input_fn(body, content_type):
    assert content_type == "text/csv", content_type
    text = body.decode() if isinstance(body, bytes) else body
    return np.array([[float(v) for v in line.split(",")] for line in text.splitlines()])


def predict_fn(rows, weights):
    return rows @ weights


def output_fn(prediction, accept):
    return json.dumps({"scores": prediction.tolist()}), "application/json"
"""


def test_a_user_script_model_serves_isolated_even_when_it_asks_for_dense(
    start_endpoint: EndpointFactory, prefix: str, publish: Any, tmp_path: Path
) -> None:
    weights = np.array([0.5, -1.0, 2.0, 0.0, 1.0, 3.0])
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "inference.py").write_text(INFERENCE_PY)
    (tmp_path / "openmme.json").write_text('{"hosting": "dense"}')
    np.save(tmp_path / "weights.npy", weights)
    publish(prefix, "script/model.tar.gz", archive=pack_directory(tmp_path))
    endpoint = start_endpoint(prefix, "--hosting", "dense")
    response = endpoint.invoke("script/model.tar.gz", csv_body(ROWS))
    assert response["ContentType"] == "application/json"
    scores = json.loads(response["Body"].read())["scores"]
    assert scores == (np.array([[float(v) for v in row] for row in ROWS]) @ weights).tolist()
    described = endpoint.models()["script/model.tar.gz"]
    assert (described["handler"], described["hosting"], described["shards"]) == ("script_service", "isolated", [])
    # Its own MMS model and worker process, and in no shard.
    name = mms_model_name("script/model.tar.gz")
    assert name in endpoint.mms_models() and name in endpoint.model_pids()
    assert endpoint.loads(name) == {"isolated": 1}


def _post(url: str, payload: dict[str, str] | None = None, method: str = "POST") -> tuple[int, bytes]:
    data = json.dumps(payload).encode() if payload is not None else b""
    request = urllib.request.Request(url, data=data if method == "POST" else None, method=method)
    request.add_header("Content-Type", "application/json" if payload is not None else "text/csv")
    status, body, _ = answer(request, timeout=120)
    return status, body


def test_sagemaker_container_contract(
    start_endpoint: EndpointFactory, hosting: str, tmp_path: Path, boosters: dict[str, xgboost.Booster]
) -> None:
    booster = boosters["binary:logistic"]
    model_dir = tmp_path / "opt" / "ml" / "models" / "abc123" / "model"
    model_dir.mkdir(parents=True)
    (model_dir / "xgboost-model").write_bytes(bytes(booster.save_raw("ubj")))
    # SageMaker-hosted: no prefix; SageMaker downloads and calls POST /models.
    endpoint = start_endpoint("", "--hosting", hosting)

    status, _ = _post(endpoint.url + "/models", {"model_name": "abc123", "url": str(model_dir)})
    assert status == 200
    assert _post(endpoint.url + "/models", {"model_name": "abc123", "url": str(model_dir)})[0] == 409
    assert endpoint.get("/models/abc123")["state"] == "ready"

    request = urllib.request.Request(
        endpoint.url + "/models/abc123/invoke", data=csv_body(ROWS).encode(), headers={"Content-Type": "text/csv"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert served_json(response.read()) == expected(booster, ROWS)

    assert _post(endpoint.url + "/models/abc123", method="DELETE")[0] == 200
    assert _post(endpoint.url + "/models/abc123", method="DELETE")[0] == 404
    assert _post(endpoint.url + "/models/abc123", method="GET")[0] == 404
    assert _post(endpoint.url + "/models/abc123/invoke", None)[0] == 404
    assert endpoint.resident() == []
    assert model_dir.joinpath("xgboost-model").exists()  # SageMaker's files are SageMaker's to delete


def test_worker_processes_left_behind_by_mms_are_stopped(
    start_endpoint: EndpointFactory, hosting: str, prefix: str, publish: Any, boosters: dict[str, xgboost.Booster]
) -> None:
    import subprocess
    import sys

    booster = boosters["binary:logistic"]
    publish(prefix, "live.tar.gz", booster)
    endpoint = start_endpoint(prefix, "--hosting", hosting)
    assert endpoint.predictions("live.tar.gz", ROWS) == expected(booster, ROWS)
    workers = endpoint.worker_pids()
    java = next(
        child
        for child in endpoint.front().children()
        if any(arg.startswith("-Djava.io.tmpdir=") for arg in child.cmdline())
    )
    tmp_dir = next(arg for arg in java.cmdline() if arg.startswith("-Djava.io.tmpdir=")).split("=", 1)[1]
    # A process that looks to openmme exactly like a worker MMS failed to stop for a model it no longer has.
    looks_like_a_worker = ["--sock-name", f"{tmp_dir}/.mms.sock.9999", "--model-name", "ghost-model"]
    ghost = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", *looks_like_a_worker])
    try:
        assert ghost.wait(timeout=30) is not None  # stopped by the endpoint's housekeeping, within seconds
    finally:
        if ghost.poll() is None:
            ghost.kill()
    assert endpoint.worker_pids() == workers  # the live model's workers (or its shards) are untouched
    assert endpoint.resident() == [mms_model_name("live.tar.gz")]
    assert endpoint.predictions("live.tar.gz", ROWS) == expected(booster, ROWS)
