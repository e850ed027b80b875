"""The dense shard service, driven through MMS's own Service/Context and wire codec: many boosters in one
worker, each answering exactly as in-process xgboost, loaded and unloaded by the front's operations."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import xgboost
from handler_harness import OBJECTIVES, MmsWorker, csv_body, save_ubj, train_booster

from openmme.handlers import ERROR_HEADER, MODEL_HEADER, OP_HEADER
from openmme.handlers.dense_service import DenseShard, heap_bytes


@pytest.fixture
def store(tmp_path: pathlib.Path) -> pathlib.Path:
    """A model store with the shard's own directory and one model directory per objective."""
    (tmp_path / "_shard").mkdir()
    for index, objective in enumerate(OBJECTIVES):
        booster, _ = train_booster(objective, seed=index)
        save_ubj(booster, tmp_path / f"m{index}" / "xgboost-model")
    return tmp_path


def shard_in(store: pathlib.Path) -> MmsWorker:
    return MmsWorker(DenseShard().handle, store / "_shard", model_name="openmme-shard-0")


def op(worker: MmsWorker, name: str, operation: str) -> dict[str, object]:
    reply = worker.invoke(b"", {MODEL_HEADER: name, OP_HEADER: operation})
    assert reply.status == 200, reply.text
    document: dict[str, object] = json.loads(reply.text)
    return document


def test_many_models_in_one_shard_each_answer_like_in_process_xgboost(store: pathlib.Path) -> None:
    worker = shard_in(store)
    for index in range(len(OBJECTIVES)):
        assert int(op(worker, f"m{index}", "load")["memoryBytes"]) > 0  # type: ignore[call-overload]
    for index, objective in enumerate(OBJECTIVES):
        booster, rows = train_booster(objective, seed=index)
        reply = worker.invoke(csv_body(rows), {MODEL_HEADER: f"m{index}", "Content-Type": "text/csv"})
        assert reply.status == 200, reply.text
        # The XGBoost service's answer (the SageMaker XGBoost container's JSON) of in-process predictions.
        assert reply.body == json.dumps(booster.predict(xgboost.DMatrix(rows)).tolist()).encode()
    assert sorted(op(worker, "", "list")["models"]) == [f"m{index}" for index in range(len(OBJECTIVES))]  # type: ignore[call-overload]


def test_load_is_idempotent_and_unload_forgets_the_model(store: pathlib.Path) -> None:
    worker = shard_in(store)
    first = op(worker, "m0", "load")["memoryBytes"]
    assert op(worker, "m0", "load")["memoryBytes"] == first
    assert op(worker, "m0", "unload")["memoryBytes"] == first
    assert op(worker, "", "list")["models"] == {}
    # Asked for after unloading: 404 without the model-error header, the front's cue to load it again.
    reply = worker.invoke(b"1,2,3,4", {MODEL_HEADER: "m0", "Content-Type": "text/csv"})
    assert reply.status == 404 and ERROR_HEADER not in reply.headers


def test_measured_memory_follows_the_model_size(store: pathlib.Path) -> None:
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(500, 8))
    big = xgboost.train({"max_depth": 6}, xgboost.DMatrix(rows, label=rows[:, 0]), num_boost_round=100)
    save_ubj(big, store / "big" / "xgboost-model")
    worker = shard_in(store)
    small = int(op(worker, "m0", "load")["memoryBytes"])  # type: ignore[call-overload]
    large = int(op(worker, "big", "load")["memoryBytes"])  # type: ignore[call-overload]
    assert large > 10 * small
    assert large > (store / "big" / "xgboost-model").stat().st_size / 4
    assert heap_bytes() > 0


def test_a_user_script_archive_is_never_loaded_into_a_shard(store: pathlib.Path) -> None:
    (store / "script" / "code").mkdir(parents=True)
    (store / "script" / "code" / "inference.py").write_text("import os\n")
    booster, _ = train_booster("binary:logistic")
    save_ubj(booster, store / "script" / "xgboost-model")
    worker = shard_in(store)
    reply = worker.invoke(b"", {MODEL_HEADER: "script", OP_HEADER: "load"})
    assert reply.status == 500 and reply.headers.get(ERROR_HEADER) == "1"
    assert "never loaded into a shared shard" in reply.text
    assert op(worker, "", "list")["models"] == {}


@pytest.mark.parametrize("name", ["../m0", "/etc", ".", "..", "a/b", ".hidden", ""])
def test_a_model_name_outside_the_store_is_refused(store: pathlib.Path, name: str) -> None:
    reply = shard_in(store).invoke(b"", {MODEL_HEADER: name, OP_HEADER: "load"})
    assert reply.status == 400 and reply.headers.get(ERROR_HEADER) == "1"


def test_a_broken_model_fails_its_load_with_the_reason_and_the_shard_keeps_serving(store: pathlib.Path) -> None:
    (store / "broken").mkdir()
    (store / "broken" / "xgboost-model").write_bytes(b'{"learner": ')
    worker = shard_in(store)
    op(worker, "m0", "load")
    reply = worker.invoke(b"", {MODEL_HEADER: "broken", OP_HEADER: "load"})
    assert reply.status == 500 and "not a valid XGBoost" in reply.text
    booster, rows = train_booster("binary:logistic", seed=0)
    served = worker.invoke(csv_body(rows), {MODEL_HEADER: "m0", "Content-Type": "text/csv", "Accept": "text/csv"})
    assert [float(value) for value in served.text.split(",")] == booster.predict(xgboost.DMatrix(rows)).tolist()
