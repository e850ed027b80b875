"""Scale-out: three real openmme replicas behind real nginx, configured by ``openmme.router.nginx_config``.

Each model loads on exactly one replica (consistent hashing on the TargetModel header); a replica that stops has its
models served by the others without client errors (nginx retries on the next replica) and takes its share back when
it returns on the same address; the single-node suite's boto3 tests pass through the router unchanged.
"""

from __future__ import annotations

import os
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import xgboost

from openmme.ports import free_port
from openmme.publish import publish_archive
from openmme.publish.samples import make_rows, sample_archive
from openmme.router import RouterOptions, nginx_config
from openmme.seaweed import EmbeddedS3
from tests.conftest import Endpoint, Launcher
from tests.integration import test_invoke as single_node
from tests.integration.test_invoke import OBJECTIVES, target_for
from tests.support import Nginx, csv_body, expected, needs_nginx, served_json

pytestmark = [pytest.mark.integration, needs_nginx]

REPLICAS = 3
MODELS = 30
ROWS = make_rows(3, seed=11)


def model_name(index: int) -> str:
    return f"affinity/m{index:02d}/model.tar.gz"


def booster_of(index: int, boosters: dict[str, xgboost.Booster]) -> xgboost.Booster:
    return boosters[OBJECTIVES[index % len(OBJECTIVES)]]


@dataclass
class Cluster:
    prefix: str
    replicas: list[Endpoint]
    router: Endpoint
    launcher: Launcher

    def invoke(self, target: str) -> tuple[list[float], str]:
        """Predictions for ROWS from ``target`` through the router, and the replica (host:port) that answered."""
        request = urllib.request.Request(
            self.router.url + "/invocations",
            data=csv_body(ROWS).encode(),
            headers={"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": target},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            return served_json(response.read()), response.headers["X-Openmme-Replica"]

    def loaded(self) -> dict[str, set[str]]:
        """Models in state ready, by replica address (host:port)."""
        return {
            replica.url.removeprefix("http://"): {
                name for name, model in replica.models().items() if model["state"] == "ready"
            }
            for replica in self.replicas
            if replica.process.poll() is None
        }


@pytest.fixture(scope="module")
def cluster(
    s3: EmbeddedS3, tmp_path_factory: pytest.TempPathFactory, boosters: dict[str, xgboost.Booster]
) -> Iterator[Cluster]:
    prefix = f"s3://models/{uuid.uuid4().hex[:10]}/"
    for index in range(MODELS):
        publish_archive(sample_archive(booster_of(index, boosters)), prefix, model_name(index))
    for objective, booster in boosters.items():
        publish_archive(sample_archive(booster), prefix, target_for(objective))
    launcher = Launcher(s3, tmp_path_factory)
    replicas = [launcher.start(prefix, "--max-models", "40") for _ in range(REPLICAS)]
    workdir, port = tmp_path_factory.mktemp("nginx"), free_port()
    options = RouterOptions(
        listen=f"127.0.0.1:{port}",
        worker_processes="1",
        prefix_paths=str(workdir),
        # As root nginx's workers would run as nobody, who cannot write this test's private temp directory.
        user="root" if os.geteuid() == 0 else None,
        tries=REPLICAS,
    )
    config = nginx_config([replica.url.removeprefix("http://") for replica in replicas], options)
    nginx = Nginx(workdir, config, port)
    # The router as an Endpoint, so that the single-node tests run against it unchanged.
    first = replicas[0]
    router = Endpoint(nginx.url, first.name, prefix, first.cache_dir, nginx.process, nginx.workdir / "error.log")
    try:
        yield Cluster(prefix, replicas, router, launcher)
    finally:
        nginx.stop()
        launcher.close()


@pytest.fixture(scope="module")
def module_endpoint(cluster: Cluster) -> Endpoint:
    return cluster.router


# The single-node suite's client-facing tests, run here through the router (its /models listing test is left out:
# /models answers for one replica, whichever the router picked).
test_boto3_csv_without_accept_gets_the_containers_json = (
    single_node.test_boto3_csv_without_accept_gets_the_containers_json
)
test_boto3_accept_csv_gets_the_containers_one_line = single_node.test_boto3_accept_csv_gets_the_containers_one_line
test_boto3_json_predictions_equal_in_process_xgboost = single_node.test_boto3_json_predictions_equal_in_process_xgboost
test_sagemaker_sdk_predictor_gets_the_same_answer = single_node.test_sagemaker_sdk_predictor_gets_the_same_answer
test_plain_http_invocations_route_with_target_model_header = (
    single_node.test_plain_http_invocations_route_with_target_model_header
)
test_custom_attributes_and_inference_id_are_echoed = single_node.test_custom_attributes_and_inference_id_are_echoed
test_unknown_endpoint_name_is_a_validation_error = single_node.test_unknown_endpoint_name_is_a_validation_error
test_missing_target_model_is_a_validation_error = single_node.test_missing_target_model_is_a_validation_error
test_path_tricks_in_target_model_are_validation_errors = (
    single_node.test_path_tricks_in_target_model_are_validation_errors
)
test_target_model_not_in_prefix_is_a_validation_error = (
    single_node.test_target_model_not_in_prefix_is_a_validation_error
)
test_body_over_six_mib_is_a_validation_error = single_node.test_body_over_six_mib_is_a_validation_error
test_a_body_just_under_six_mib_is_served_whole = single_node.test_a_body_just_under_six_mib_is_served_whole
test_bad_rows_are_a_model_error_with_the_original_status = (
    single_node.test_bad_rows_are_a_model_error_with_the_original_status
)
test_unsupported_content_type_or_accept_is_a_model_error_415 = (
    single_node.test_unsupported_content_type_or_accept_is_a_model_error_415
)
test_endpoint_is_still_healthy_after_the_errors = single_node.test_endpoint_is_still_healthy_after_the_errors


def test_each_model_loads_on_exactly_one_replica(cluster: Cluster, boosters: dict[str, xgboost.Booster]) -> None:
    answered_by: dict[str, set[str]] = {}
    for _round in range(2):
        for index in range(MODELS):
            predictions, replica = cluster.invoke(model_name(index))
            assert predictions == expected(booster_of(index, boosters), ROWS)
            answered_by.setdefault(model_name(index), set()).add(replica)
    # Every request for a model went to one replica, and that is where the model is loaded, nowhere else.
    assert all(len(replicas) == 1 for replicas in answered_by.values()), answered_by
    loaded = cluster.loaded()
    affinity = {name for models in loaded.values() for name in models if name.startswith("affinity/")}
    assert affinity == set(answered_by)
    for name, (replica,) in answered_by.items():
        assert [address for address, models in loaded.items() if name in models] == [replica]
    # Steady state: the replicas' loaded models add up to the distinct models invoked (these 30, plus whatever
    # the boto3 tests above loaded, each once too).
    assert sum(len(models) for models in loaded.values()) == len(set().union(*loaded.values()))
    assert all(len({n for n in models if n.startswith("affinity/")}) >= 3 for models in loaded.values()), loaded


def test_a_stopped_replica_is_covered_by_the_others_and_takes_its_share_back(
    cluster: Cluster, boosters: dict[str, xgboost.Booster]
) -> None:
    owners = {model_name(index): cluster.invoke(model_name(index))[1] for index in range(MODELS)}
    victim = max(cluster.replicas, key=lambda replica: len(cluster.loaded()[replica.url.removeprefix("http://")]))
    address = victim.url.removeprefix("http://")
    victims_models = {name for name, owner in owners.items() if owner == address}

    # Clients keep invoking every model while the replica stops; none of them may see an error.
    errors: list[str] = []
    answers: list[str] = []
    stop = threading.Event()

    def client(offset: int) -> None:
        index = offset
        while not stop.is_set():
            name = model_name(index % MODELS)
            try:
                predictions, replica = cluster.invoke(name)
                assert predictions == expected(booster_of(index % MODELS, boosters), ROWS)
                answers.append(replica)
            except Exception as exc:
                errors.append(f"{name}: {exc!r}")
            index += 1

    clients = [threading.Thread(target=client, args=(offset * 7,)) for offset in range(2)]
    for thread in clients:
        thread.start()
    time.sleep(1.0)
    victim.stop()
    during = len(answers)
    # Long enough for every one of the stopped replica's models to be asked for and loaded elsewhere.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(answers) < during + 2 * MODELS:
        time.sleep(0.2)
    stop.set()
    for thread in clients:
        thread.join(150)
    assert errors == []
    assert victim.process.returncode == 0

    survivors = cluster.loaded()
    assert address not in survivors
    for name in victims_models:
        holders = [replica for replica, models in survivors.items() if name in models]
        assert len(holders) == 1, (name, holders)
    for name, owner in owners.items():
        if owner != address:
            assert cluster.invoke(name)[1] == owner, name  # the others' models did not move

    # The replica comes back on the same address; after nginx's fail_timeout the ring gives it its share back.
    port = int(address.rsplit(":", 1)[1])
    replacement = cluster.launcher.start(cluster.prefix, "--max-models", "40", port=port)
    cluster.replicas[cluster.replicas.index(victim)] = replacement
    time.sleep(RouterOptions().fail_timeout + 1)
    for name, owner in owners.items():
        assert cluster.invoke(name)[1] == owner, name
    assert {n for n in cluster.loaded()[address] if n.startswith("affinity/")} == victims_models
