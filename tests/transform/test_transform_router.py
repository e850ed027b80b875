"""A transform through the scale-out router: real nginx (``openmme.router.nginx_config``) in front of three real
replicas. Each job's TargetModel is hashed onto one replica, which alone loads it; outputs equal in-process
xgboost; a replica that is stopped mid-way costs the job nothing (nginx moves its requests to the next replica)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
import xgboost

from openmme.ports import free_port
from openmme.publish import publish_archive
from openmme.publish.samples import sample_archive
from openmme.router import RouterOptions, nginx_config
from openmme.seaweed import EmbeddedS3
from openmme.transform import DataProcessing, EndpointTarget, TransformJob, run_transform
from tests.conftest import BUCKET, Endpoint, Launcher
from tests.support import Nginx, needs_nginx, wait_until
from tests.transform.conftest import (
    Area,
    id_rows,
    joined_lines,
    output_keys,
    output_text,
    parsed_output,
    put_lines,
)

pytestmark = [pytest.mark.integration, needs_nginx]

REPLICAS = 3
OBJECTIVES = ("binary:logistic", "reg:squarederror")


def target(objective: str) -> str:
    return f"{objective.replace(':', '-')}/model.tar.gz"


@dataclass
class Cluster:
    replicas: list[Endpoint]
    router: Nginx

    def holding(self, name: str) -> list[str]:
        """The running replicas where ``name`` is loaded."""
        running = [replica for replica in self.replicas if replica.process.poll() is None]
        return [replica.url for replica in running if replica.models().get(name, {}).get("state") == "ready"]


@pytest.fixture(scope="module")
def cluster(
    s3: EmbeddedS3, tmp_path_factory: pytest.TempPathFactory, boosters: dict[str, xgboost.Booster]
) -> Iterator[Cluster]:
    prefix = f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}/"
    for objective in OBJECTIVES:
        publish_archive(sample_archive(boosters[objective]), prefix, target(objective))
    launcher = Launcher(s3, tmp_path_factory)
    replicas = [launcher.start(prefix, "--shards", "1") for _ in range(REPLICAS)]
    workdir, port = tmp_path_factory.mktemp("nginx"), free_port()
    options = RouterOptions(
        listen=f"127.0.0.1:{port}",
        worker_processes="1",
        prefix_paths=str(workdir),
        user="root" if os.geteuid() == 0 else None,  # as root, nginx's workers would otherwise run as nobody
        tries=REPLICAS,
    )
    nginx = Nginx(workdir, nginx_config([replica.url.removeprefix("http://") for replica in replicas], options), port)
    try:
        yield Cluster(replicas, nginx)
    finally:
        nginx.stop()
        launcher.close()


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_a_transform_through_the_router_loads_its_model_on_one_replica(
    cluster: Cluster, s3_client: Any, area: Area, boosters: dict[str, xgboost.Booster], objective: str
) -> None:
    objects = {f"part-{index}.csv": id_rows(2000, seed=50 + index) for index in range(4)}
    for name, (lines, _) in objects.items():
        put_lines(s3_client, area, name, lines)
    job = TransformJob(
        target(objective),
        area.input,
        area.output,
        content_type="text/csv",
        split_type="Line",
        accept="text/csv",
        assemble_with="Line",
        max_payload_mb=1,
        max_concurrent_transforms=4,
        data_processing=DataProcessing("$[1:]", "$[0,-1]", "Input"),
    )
    summary = run_transform(job, EndpointTarget(cluster.router.url), client=s3_client)

    assert summary.ok and summary.count("transformed") == len(objects), [o.error for o in summary.failures]
    for name, (lines, rows) in objects.items():
        assert parsed_output(output_text(s3_client, area, name)) == joined_lines(boosters[objective], lines, rows)
    assert len(cluster.holding(target(objective))) == 1


def test_a_replica_stopped_mid_job_costs_the_job_nothing(
    cluster: Cluster, s3_client: Any, area: Area, boosters: dict[str, xgboost.Booster]
) -> None:
    objective = OBJECTIVES[0]
    objects = {f"part-{index}.csv": id_rows(150, seed=60 + index) for index in range(6)}
    for name, (lines, _) in objects.items():
        put_lines(s3_client, area, name, lines)
    job = TransformJob(
        target(objective),
        area.input,
        area.output,
        content_type="text/csv",
        split_type="Line",
        accept="text/csv",
        assemble_with="Line",
        batch_strategy="SingleRecord",  # many small requests: some are on their way when the replica goes
        max_concurrent_transforms=2,
        data_processing=DataProcessing("$[1:]", "$[0,-1]", "Input"),
    )
    (holder,) = cluster.holding(target(objective))
    replica = next(replica for replica in cluster.replicas if replica.url == holder)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(run_transform, job, EndpointTarget(cluster.router.url), client=s3_client)
        assert wait_until(lambda: len(output_keys(s3_client, area)) >= 1 or running.done(), timeout=120)
        replica.stop()  # SIGTERM: it finishes what it holds, then refuses; nginx sends the rest to its neighbour
        summary = running.result(timeout=240)

    assert not running.exception() and summary.ok, [o.error for o in summary.failures]
    for name, (lines, rows) in objects.items():
        assert parsed_output(output_text(s3_client, area, name)) == joined_lines(boosters[objective], lines, rows)
    assert len(cluster.holding(target(objective))) == 1  # its neighbour on the ring, now
