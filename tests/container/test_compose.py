"""Each compose file brought up for real and checked from the host through 127.0.0.1: the sample models answer
boto3 as in-process xgboost; Prometheus (the observability profile, built from Debian's package) scrapes every
endpoint and loads the alert rules; the scale-out stack survives a replica killed; the batch transform's outputs
are complete and correct; nothing is left after ``down -v``. Grafana cannot be pulled or rebuilt here: its part of
the profile is checked statically."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from openmme.ports import free_port
from openmme.publish.samples import make_rows
from tests.container.conftest import ROOT, Stack, docker, runtime, wait_for_ping
from tests.support import csv_body, expected, served_json

pytestmark = pytest.mark.container

ROWS = make_rows(4, seed=21)


def up(stack: Stack, *services: str) -> None:
    stack.compose("up", "-d", "--no-build", "--pull", "never", *services)


def prometheus(stack: Stack, path: str) -> Any:
    url = f"http://127.0.0.1:{stack.ports['OPENMME_PROMETHEUS_PORT']}{path}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())["data"]


def assert_prometheus_watches(stack: Stack, endpoints: int, invocations: int) -> None:
    """Prometheus scrapes ``endpoints`` endpoints, all up, has loaded the alert rules of deploy/alerts.yml, and
    has seen the ``invocations`` made so far (bounded wait: one scrape every 5 s)."""
    rules = {
        rule["alert"] for rule in yaml.safe_load((ROOT / "deploy" / "alerts.yml").read_text())["groups"][0]["rules"]
    }
    deadline = time.monotonic() + 120
    while True:
        try:
            targets = prometheus(stack, "/api/v1/targets")["activeTargets"]
            loaded = {rule["name"] for group in prometheus(stack, "/api/v1/rules")["groups"] for rule in group["rules"]}
            query = "/api/v1/query?query=sum(openmme_invocation_seconds_count)"
            seen = sum(float(sample["value"][1]) for sample in prometheus(stack, query)["result"])
            if (
                [target["health"] for target in targets] == ["up"] * endpoints
                and rules <= loaded
                and seen >= invocations
            ):
                return
        except OSError:
            targets, loaded, seen = [], set(), 0.0  # Prometheus still starting
        if time.monotonic() > deadline:
            raise AssertionError(f"Prometheus: targets {targets}, rules missing {rules - loaded}, invocations {seen}")
        time.sleep(1)


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
    single.ports["OPENMME_PROMETHEUS_PORT"] = free_port()
    single.profiles = ("observability",)
    up(single, "s3", "publish-samples", "endpoint", "prometheus")  # all but Grafana, which cannot be had here
    try:
        wait_for_ping(single.url)
        assert_samples_answer(single)
        assert single.published_host_ips() == {"127.0.0.1"}
        assert_prometheus_watches(single, endpoints=1, invocations=3)
    except Exception as exc:
        raise AssertionError(f"{exc}\n{single.logs()}") from exc
    assert_down_leaves_nothing(single)


def test_scale_out_survives_a_killed_replica(stack: Callable[[Path], Stack]) -> None:
    scale_out = stack(ROOT / "deploy" / "compose.scale-out.yml")
    scale_out.ports["OPENMME_PROMETHEUS_PORT"] = free_port()
    scale_out.profiles = ("observability",)
    up(scale_out)
    try:
        wait_for_ping(scale_out.url, timeout=300)
        before = assert_samples_answer(scale_out)
        assert all(before.values()), before
        assert scale_out.published_host_ips() == {"127.0.0.1"}
        assert_prometheus_watches(scale_out, endpoints=3, invocations=3)
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
    """Grafana cannot be pulled or rebuilt here: its part of the profile is checked statically."""
    config = yaml.safe_load(
        docker("compose", "-f", str(ROOT / file), "--profile", "observability", "config", "--no-interpolate")
    )
    assert "prometheus" in config["services"]
    for dashboard in (ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"):
        assert json.loads(dashboard.read_text())["panels"]
