"""Where models run, against real processes: the endpoint's ``--hosting``, an archive's ``openmme.json``
overriding it, dense memory measured per model, and a hot model spread over the shards."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any

import pytest
import xgboost

from openmme.endpoint.cache import mms_model_name
from openmme.publish import pack_directory
from openmme.publish.samples import make_rows, train_booster
from tests.conftest import Endpoint, EndpointFactory
from tests.support import expected

pytestmark = pytest.mark.integration

ROWS = make_rows(3, seed=11)


def archive(directory: Path, booster: xgboost.Booster, settings: str | None = None) -> bytes:
    directory.mkdir(parents=True)
    (directory / "xgboost-model").write_bytes(bytes(booster.save_raw("ubj")))
    if settings is not None:
        (directory / "openmme.json").write_text(settings)
    return pack_directory(directory)


def shards_of(endpoint: Endpoint) -> list[str]:
    """The dense shards whose worker runs: the front's own children, never MMS models (no Java hop)."""
    assert not [name for name in endpoint.mms_models() if name.startswith("openmme-shard-")]
    return [name for name in endpoint.worker_pids() if name.startswith("openmme-shard-")]


def test_an_archive_can_ask_for_isolated_hosting_on_a_dense_endpoint(
    start_endpoint: EndpointFactory, prefix: str, publish: Any, boosters: dict[str, xgboost.Booster], tmp_path: Path
) -> None:
    booster = boosters["binary:logistic"]
    publish(prefix, "shared.tar.gz", archive=archive(tmp_path / "shared", booster))
    publish(prefix, "alone.tar.gz", archive=archive(tmp_path / "alone", booster, '{"hosting": "isolated"}'))
    endpoint = start_endpoint(prefix, "--hosting", "dense", "--shards", "2")
    assert endpoint.predictions("shared.tar.gz", ROWS) == expected(booster, ROWS)
    assert endpoint.predictions("alone.tar.gz", ROWS) == expected(booster, ROWS)

    models = endpoint.models()
    assert (models["shared.tar.gz"]["hosting"], models["alone.tar.gz"]["hosting"]) == ("dense", "isolated")
    assert list(endpoint.model_pids()) == [mms_model_name("alone.tar.gz")]
    assert endpoint.loads(mms_model_name("alone.tar.gz")) == {"isolated": 1}
    assert "isolated" not in endpoint.loads(mms_model_name("shared.tar.gz"))
    assert sorted(shards_of(endpoint)) == ["openmme-shard-0", "openmme-shard-1"]


def test_an_isolated_endpoint_starts_shards_only_when_an_archive_asks_for_dense(
    start_endpoint: EndpointFactory, prefix: str, publish: Any, boosters: dict[str, xgboost.Booster], tmp_path: Path
) -> None:
    booster = boosters["reg:squarederror"]
    publish(prefix, "plain.tar.gz", archive=archive(tmp_path / "plain", booster))
    publish(prefix, "packed.tar.gz", archive=archive(tmp_path / "packed", booster, '{"hosting": "dense"}'))
    endpoint = start_endpoint(prefix, "--hosting", "isolated", "--shards", "1")
    assert endpoint.predictions("plain.tar.gz", ROWS) == expected(booster, ROWS)
    assert shards_of(endpoint) == []  # an isolated endpoint pays for no shard it does not use
    assert endpoint.predictions("packed.tar.gz", ROWS) == expected(booster, ROWS)
    assert shards_of(endpoint) == ["openmme-shard-0"]
    assert endpoint.shard_listings()["openmme-shard-0"]["models"].keys() == {mms_model_name("packed.tar.gz")}
    assert endpoint.models()["plain.tar.gz"]["hosting"] == "isolated"


def test_malformed_archive_settings_are_a_clear_model_error(
    start_endpoint: EndpointFactory, prefix: str, publish: Any, boosters: dict[str, xgboost.Booster], tmp_path: Path
) -> None:
    publish(prefix, "odd.tar.gz", archive=archive(tmp_path / "odd", boosters["binary:logistic"], '{"hosting": 3}'))
    endpoint = start_endpoint(prefix)
    client = endpoint.runtime()
    with pytest.raises(client.exceptions.ModelError, match=r"openmme\.json") as caught:
        endpoint.predictions("odd.tar.gz", ROWS, client=client)
    assert caught.value.response["OriginalStatusCode"] == 400
    assert endpoint.resident() == []


def test_dense_memory_is_measured_per_model_and_far_below_a_worker_each(
    start_endpoint: EndpointFactory, prefix: str, publish: Any, tmp_path: Path
) -> None:
    small = train_booster("binary:logistic", seed=1, rounds=5)
    large = train_booster("binary:logistic", seed=1, rounds=100)
    publish(prefix, "small.tar.gz", archive=archive(tmp_path / "small", small))
    publish(prefix, "large.tar.gz", archive=archive(tmp_path / "large", large))
    publish(prefix, "apart.tar.gz", archive=archive(tmp_path / "apart", large, '{"hosting": "isolated"}'))
    endpoint = start_endpoint(prefix, "--shards", "1")
    for target, booster in (("small.tar.gz", small), ("large.tar.gz", large), ("apart.tar.gz", large)):
        assert endpoint.predictions(target, ROWS) == expected(booster, ROWS)
    listing = endpoint.get("/models")
    memory = {model["modelName"]: model["memoryBytes"] for model in listing["models"]}
    assert 0 < memory["small.tar.gz"] < memory["large.tar.gz"] < memory["apart.tar.gz"] / 4
    # What the front accounts is what the shard's worker says it holds.
    held = endpoint.shard_listings()["openmme-shard-0"]["models"]
    assert held == {
        mms_model_name("small.tar.gz"): memory["small.tar.gz"],
        mms_model_name("large.tar.gz"): memory["large.tar.gz"],
    }
    (shard,) = listing["shards"]
    assert shard["baselineBytes"] > memory["large.tar.gz"]  # an interpreter with xgboost, paid once per shard


def test_a_hot_model_is_spread_over_the_shards(
    start_endpoint: EndpointFactory, prefix: str, publish: Any, boosters: dict[str, xgboost.Booster]
) -> None:
    booster = boosters["multi:softmax"]
    publish(prefix, "hot.tar.gz", booster)
    endpoint = start_endpoint(prefix, "--shards", "2")
    assert endpoint.predictions("hot.tar.gz", ROWS) == expected(booster, ROWS)
    assert len(endpoint.models()["hot.tar.gz"]["shards"]) == 1
    clients = [endpoint.runtime(retries=1) for _ in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda index: endpoint.predictions("hot.tar.gz", ROWS, client=clients[index % 8]), range(200))
        )
    assert answers == [expected(booster, ROWS)] * 200
    model = endpoint.models()["hot.tar.gz"]
    assert model["shards"] == [0, 1]
    held = endpoint.shard_listings()
    assert all(mms_model_name("hot.tar.gz") in listing["models"] for listing in held.values())
    assert model["memoryBytes"] == sum(listing["models"][mms_model_name("hot.tar.gz")] for listing in held.values())
    assert model["loads"] == 1  # one load; the second shard holds a replica of it
