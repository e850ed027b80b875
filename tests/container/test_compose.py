"""Each compose file brought up for real and checked from the host through 127.0.0.1: the sample models answer
boto3 as in-process xgboost; the scale-out stack survives a replica killed; the batch transform's outputs are
complete and correct; nothing is left after ``down -v``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from openmme.publish.samples import make_rows
from tests.container.conftest import ROOT, Stack, docker, runtime, wait_for_ping
from tests.support import csv_body, expected, served_json

pytestmark = pytest.mark.container

ROWS = make_rows(4, seed=21)


def up(stack: Stack, *services: str) -> None:
    stack.compose("up", "-d", "--no-build", "--pull", "never", *services)


def assert_samples_answer(stack: Stack, rows: np.ndarray = ROWS) -> dict[str, str]:
    """Every sample's predictions through boto3 equal in-process xgboost's; the replica that answered each (the
    last address of the router's X-Openmme-Replica header, which lists every replica tried; "" without a router)."""
    client = runtime(stack.url)
    replicas = {}
    for target, booster in stack.sample_boosters().items():
        response = client.invoke_endpoint(
            EndpointName="openmme-demo", TargetModel=target, ContentType="text/csv", Body=csv_body(rows)
        )
        assert served_json(response["Body"].read()) == expected(booster, rows), target
        tried = response["ResponseMetadata"]["HTTPHeaders"].get("x-openmme-replica", "")
        replicas[target] = tried.split(", ")[-1]
    return replicas


def assert_down_leaves_nothing(stack: Stack) -> None:
    stack.compose("down", "-v", "--remove-orphans", "--timeout", "10")
    assert stack.leftovers() == {"container": [], "volume": [], "network": []}


def test_docker_compose_serves_the_samples(stack: Callable[[Path], Stack]) -> None:
    single = stack(ROOT / "docker-compose.yml")
    up(single)
    try:
        wait_for_ping(single.url)
        assert_samples_answer(single)
        assert single.published_host_ips() == {"127.0.0.1"}
    except Exception as exc:
        raise AssertionError(f"{exc}\n{single.logs()}") from exc
    assert_down_leaves_nothing(single)


def test_scale_out_survives_a_killed_replica(stack: Callable[[Path], Stack]) -> None:
    scale_out = stack(ROOT / "deploy" / "compose.scale-out.yml")
    up(scale_out)
    try:
        wait_for_ping(scale_out.url, timeout=300)
        before = assert_samples_answer(scale_out)
        assert all(before.values()), before
        assert scale_out.published_host_ips() == {"127.0.0.1"}
        # The replica that serves the first sample, killed: nginx moves its models to the others.
        victim = next(iter(before.values()))
        victim_address = victim.split(":")[0]
        containers = {
            docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", cid).strip(): cid
            for cid in scale_out.compose("ps", "-q").split()
        }
        docker("kill", containers[victim_address])
        for _ in range(5):  # bounded: every request answered, none by the killed replica
            after = assert_samples_answer(scale_out)
            assert victim not in after.values(), after
    except Exception as exc:
        raise AssertionError(f"{exc}\n{scale_out.logs()}") from exc
    assert_down_leaves_nothing(scale_out)


def test_batch_transform_writes_every_output(stack: Callable[[Path], Stack]) -> None:
    transform = stack(ROOT / "deploy" / "compose.transform.yml")
    up(transform, "transform-0", "transform-1")
    try:
        workers = [transform.compose("ps", "-a", "-q", name).strip() for name in ("transform-0", "transform-1")]
        assert docker("wait", *workers, timeout=900).split() == ["0", "0"]
        booster = transform.sample_boosters()["houston/model.tar.gz"]
        s3 = transform.s3()
        outputs = sorted(item["Key"] for item in s3.list_objects_v2(Bucket="batch", Prefix="scores/")["Contents"])
        assert outputs == [f"scores/part-{part}.csv.out" for part in range(4)]
        for part in range(4):
            lines = s3.get_object(Bucket="batch", Key=f"scores/part-{part}.csv.out")["Body"].read().decode().split()
            rows = make_rows(2500, part)
            assert [line.split(",")[0] for line in lines] == [f"id-{part}-{i}" for i in range(2500)]
            assert [float(line.split(",")[1]) for line in lines] == expected(booster, rows)
    except Exception as exc:
        raise AssertionError(f"{exc}\n{transform.logs()}") from exc
    assert_down_leaves_nothing(transform)


@pytest.mark.parametrize("file", ["docker-compose.yml", "deploy/compose.scale-out.yml"])
def test_observability_profile_is_valid_without_running_grafana(file: str) -> None:
    """Grafana (and prom/prometheus) cannot be pulled here: the profile is checked statically."""
    config = yaml.safe_load(
        docker("compose", "-f", str(ROOT / file), "--profile", "observability", "config", "--no-interpolate")
    )
    assert "prometheus" in config["services"]
    for dashboard in (ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"):
        assert json.loads(dashboard.read_text())["panels"]
