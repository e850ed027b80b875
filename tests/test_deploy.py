"""The scale-out deployments without a Docker engine or a cluster: the router config docker-compose mounts is exactly
what ``openmme router-config`` writes, the compose services are valid ``serve`` invocations, the Kubernetes manifests
pass the Kubernetes schemas, and their resources match the budgets the container is given."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from openmme.cli import main, parser
from openmme.endpoint.names import S3Location
from openmme.endpoint.settings import Settings
from openmme.router import HEADER, RouterOptions, nginx_config
from openmme.transform.options import job_from_arguments, shard_from_arguments

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
HASH_VARIABLE = "$http_" + HEADER.lower().replace("-", "_")
TRANSFORM_JOB = "transform-job.yaml"
# What a pod needs beyond its model memory budget: MMS's JVM, the front, the handlers' processes.
POD_OVERHEAD = 2**30


def load_yaml(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict)
    return loaded


def quantity(text: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", text)
    assert match, text
    return int(match[1]) * units.get(match[2] or "", 1)


def router_config_cli(*args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["router-config", *args]) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def scale_out() -> dict[str, Any]:
    return load_yaml(ROOT / "deploy" / "compose.scale-out.yml")


def replicas_of(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: service for name, service in compose["services"].items() if name.startswith("replica-")}


def same_s3(service: dict[str, Any], directory: Path, single: dict[str, Any]) -> bool:
    """Whether a compose file of ``directory`` runs the S3 server as docker-compose.yml does: the same service, built
    from the same Dockerfile (each file names it relative to itself)."""
    service, single = dict(service), dict(single)
    build, single_build = service.pop("build"), single.pop("build")
    same_dockerfile = (directory / build["context"] / build["dockerfile"]).resolve() == (
        ROOT / single_build["context"] / single_build["dockerfile"]
    ).resolve()
    return same_dockerfile and service == single


def test_scale_out_compose_has_replicas_router_s3_and_publisher(scale_out: dict[str, Any]) -> None:
    default = {name for name, service in scale_out["services"].items() if "profiles" not in service}
    assert default == {"s3", "publish-samples", "replica-1", "replica-2", "replica-3", "router"}
    assert scale_out["services"]["prometheus"]["profiles"] == ["observability"]
    single = load_yaml(ROOT / "docker-compose.yml")
    assert same_s3(scale_out["services"]["s3"], ROOT / "deploy", single["services"]["s3"])
    assert scale_out["configs"] == single["configs"]
    publisher = dict(scale_out["services"]["publish-samples"])
    assert publisher.pop("build") == {"context": "..", "dockerfile": "container/Dockerfile"}
    assert (ROOT / "container" / "Dockerfile").exists()
    expected = dict(single["services"]["publish-samples"])
    expected.pop("build")
    assert publisher == expected
    ports = [port for service in scale_out["services"].values() for port in service.get("ports", [])]
    assert all(port.startswith("127.0.0.1:") for port in ports)


def test_scale_out_replicas_share_the_single_endpoints_budget(scale_out: dict[str, Any]) -> None:
    single = load_yaml(ROOT / "docker-compose.yml")["services"]["endpoint"]
    whole = Settings.from_sources(single["command"][1:], {k: str(v) for k, v in single["environment"].items()})
    replicas = [
        Settings.from_sources(service["command"][1:], {k: str(v) for k, v in service["environment"].items()})
        for service in replicas_of(scale_out).values()
    ]
    assert len({(r.model_prefix, r.endpoint_name, r.port) for r in replicas}) == 1
    assert replicas[0].model_prefix == whole.model_prefix
    # Within 5 % of the single endpoint, so that 1-vs-3 compares like with like.
    for budget in ("memory_budget", "disk_budget", "max_models"):
        total = sum(getattr(replica, budget) for replica in replicas)
        assert abs(total - getattr(whole, budget)) <= 0.05 * getattr(whole, budget), budget
    volumes = {service["volumes"][0] for service in replicas_of(scale_out).values()}
    assert len(volumes) == 3  # a cache each


def test_compose_router_config_is_what_the_generator_writes(scale_out: dict[str, Any]) -> None:
    router = scale_out["services"]["router"]
    mount, target, _mode = router["volumes"][0].split(":")
    assert target == "/etc/nginx/nginx.conf"
    listen = router["ports"][0].split(":")[-1]
    replicas = [
        f"{name}:{Settings.from_sources(service['command'][1:], {}).port}"
        for name, service in sorted(replicas_of(scale_out).items())
    ]
    checked_in = (ROOT / "deploy" / mount).read_text()
    assert checked_in == nginx_config(replicas, RouterOptions(listen=listen, tries=len(replicas)))
    assert checked_in == router_config_cli(*(f"--replica={r}" for r in replicas), "--listen", listen)
    assert set(router["depends_on"]) == set(replicas_of(scale_out))


def test_scale_out_prometheus_scrapes_each_replica_not_the_router(scale_out: dict[str, Any]) -> None:
    scrape = load_yaml(ROOT / "deploy" / "prometheus.scale-out.yml")
    (job,) = scrape["scrape_configs"]
    replicas = {
        f"{name}:{Settings.from_sources(service['command'][1:], {}).port}"
        for name, service in replicas_of(scale_out).items()
    }
    # One target per replica, so that `up` (OpenmmeReplicaDown in deploy/alerts.yml) says which one is down.
    (targets,) = [config["targets"] for config in job["static_configs"]]
    assert sorted(targets) == sorted(replicas)
    assert job["metrics_path"] == "/metrics"


def test_router_hashes_on_the_target_model_and_spreads_requests_without_it() -> None:
    config = nginx_config(["a:1", "b:2"])
    assert "hash $openmme_route_key consistent;" in config
    assert f"map {HASH_VARIABLE} $openmme_route_key" in config
    assert f"default {HASH_VARIABLE};" in config
    assert '"" $request_id;' in config
    assert "proxy_next_upstream error timeout http_502 http_504 non_idempotent;" in config
    assert "http_503" not in config  # overload stays on its replica (see openmme.router)
    assert "$openmme_slot" not in config


def test_hot_models_hash_on_the_model_and_a_random_slot() -> None:
    config = nginx_config(["a:1", "b:2", "c:3"], RouterOptions(hot_models=("hot/model.tar.gz",), hot_spread=3))
    assert f'"hot/model.tar.gz" "{HASH_VARIABLE}#$openmme_slot";' in config
    slots = re.findall(r"~\^([0-9a-f]) (\d);", config)
    assert [int(slot) for _, slot in slots] == [int(digit, 16) % 3 for digit, _ in slots]
    assert len(slots) == 16


@pytest.mark.parametrize(
    ("replicas", "options"),
    [
        ([], RouterOptions()),
        (["no-port"], RouterOptions()),
        (["a:1;evil"], RouterOptions()),
        (["a:1"], RouterOptions(hot_models=('x"; }',))),
        (["a:1"], RouterOptions(hot_spread=0)),
    ],
)
def test_router_config_refuses_what_would_break_or_inject_into_nginx(
    replicas: list[str], options: RouterOptions
) -> None:
    with pytest.raises(ValueError):
        nginx_config(replicas, options)


@pytest.mark.parametrize("manifest", sorted(path.name for path in K8S.glob("*.yaml") if path.stem != "kustomization"))
def test_kubernetes_manifests_pass_the_schemas(manifest: str) -> None:
    for document in yaml.safe_load_all((K8S / manifest).read_text()):
        kubernetes_validate.validate(document, kubernetes_validate.latest_version(), strict=True)


def test_kustomization_lists_every_manifest() -> None:
    listed = set(load_yaml(K8S / "kustomization.yaml")["resources"])
    # The transform Job is created on its own when a job is to run, not with every apply of the endpoint.
    assert listed == {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml", TRANSFORM_JOB}


def test_pod_resources_match_the_budgets_the_container_is_given() -> None:
    pod = load_yaml(K8S / "deployment.yaml")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {item["name"]: item["value"] for item in container["env"] if "value" in item}
    settings = Settings.from_sources(container["args"][1:], env)
    assert settings.model_prefix
    resources = container["resources"]
    memory = settings.memory_budget + POD_OVERHEAD
    assert quantity(resources["requests"]["memory"]) == quantity(resources["limits"]["memory"]) == memory
    assert quantity(resources["requests"]["ephemeral-storage"]) == settings.disk_budget
    # The limit leaves room for logs and MMS's files beside the cache, or the kubelet would evict the pod first.
    assert quantity(resources["limits"]["ephemeral-storage"]) > settings.disk_budget
    (volume,) = pod["volumes"]
    assert quantity(volume["emptyDir"]["sizeLimit"]) == settings.disk_budget
    assert container["volumeMounts"][0] == {"name": volume["name"], "mountPath": "/var/cache/openmme"}
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"  # after the start-time pre-load
    assert container["livenessProbe"]["httpGet"]["path"] == "/ping"
    assert container["ports"][0]["containerPort"] == settings.port


def test_ingress_routes_like_the_generated_router() -> None:
    ingress = load_yaml(K8S / "ingress.yaml")
    annotations = ingress["metadata"]["annotations"]
    config = nginx_config(["a:1"])
    assert annotations["nginx.ingress.kubernetes.io/upstream-hash-by"] == HASH_VARIABLE
    retry = annotations["nginx.ingress.kubernetes.io/proxy-next-upstream"]
    assert f"proxy_next_upstream {retry};" in config
    assert f"client_max_body_size {annotations['nginx.ingress.kubernetes.io/proxy-body-size']};" in config
    assert f"proxy_read_timeout {annotations['nginx.ingress.kubernetes.io/proxy-read-timeout']}s;" in config
    service = load_yaml(K8S / "service.yaml")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    deployment = load_yaml(K8S / "deployment.yaml")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    hpa = load_yaml(K8S / "hpa.yaml")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]


def transform_arguments(argv: list[str]) -> argparse.Namespace:
    """``openmme transform``'s arguments as the CLI parses them (a manifest's or compose's command)."""
    args = parser().parse_args(argv)
    assert args.command == "transform"
    return args


def test_transform_job_is_indexed_and_each_pod_takes_its_share() -> None:
    manifest = load_yaml(K8S / TRANSFORM_JOB)
    spec = manifest["spec"]
    assert spec["completionMode"] == "Indexed"
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # a failed index is retried by a new pod, which resumes
    (container,) = pod["containers"]
    args = transform_arguments(container["args"])
    job = job_from_arguments(args)
    # One share per completion index: the pods' $JOB_COMPLETION_INDEX runs over every share, once.
    assert args.shard_index is None and args.shard_count == spec["completions"] >= spec["parallelism"]
    assert {shard_from_arguments(args, {"JOB_COMPLETION_INDEX": str(i)}) for i in range(spec["completions"])} == {
        (index, args.shard_count) for index in range(args.shard_count)
    }
    # It calls the endpoint's Service, by its name and port, with the endpoint's name.
    service = load_yaml(K8S / "service.yaml")
    deployment = load_yaml(K8S / "deployment.yaml")["spec"]["template"]["spec"]["containers"][0]
    url = urlsplit(args.endpoint_url)
    assert (url.hostname, url.port) == (service["metadata"]["name"], service["spec"]["ports"][0]["port"])
    assert args.endpoint_name == Settings.from_sources(deployment["args"][1:], {}).endpoint_name
    assert job.target_model and job.split_type == "Line"
    # S3 settings as the replicas get them.
    replica_env = {item["name"]: item for item in deployment["env"] if item["name"].startswith("AWS_")}
    assert {item["name"]: item for item in container["env"]} == replica_env


@pytest.fixture(scope="module")
def transform_compose() -> dict[str, Any]:
    return load_yaml(ROOT / "deploy" / "compose.transform.yml")


def test_transform_compose_runs_the_job_as_workers_sharing_the_inputs(transform_compose: dict[str, Any]) -> None:
    services = transform_compose["services"]
    single = load_yaml(ROOT / "docker-compose.yml")
    assert same_s3(services["s3"], ROOT / "deploy", single["services"]["s3"])
    assert transform_compose["configs"] == single["configs"]
    assert services["endpoint"]["command"] == single["services"]["endpoint"]["command"]
    endpoint = Settings.from_sources(services["endpoint"]["command"][1:], {})
    workers = {name: service for name, service in services.items() if name.startswith("transform-")}
    # Compose writes a literal $ as $$.
    arguments = {
        name: transform_arguments([arg.replace("$$", "$") for arg in service["command"]])
        for name, service in workers.items()
    }
    jobs = {job_from_arguments(args) for args in arguments.values()}
    assert len(jobs) == 1  # the same job, a share each
    (job,) = jobs
    assert job.data_processing.join and job.input_filter.text == "$[1:]"
    counts = {args.shard_count for args in arguments.values()}
    assert counts == {len(workers)}
    assert sorted(args.shard_index for args in arguments.values()) == list(range(len(workers)))
    for name, args in arguments.items():
        url = urlsplit(args.endpoint_url)
        assert (url.hostname, url.port, args.endpoint_name) == ("endpoint", endpoint.port, endpoint.endpoint_name)
        assert workers[name]["depends_on"]["endpoint"] == {"condition": "service_healthy"}
        assert workers[name]["depends_on"]["sample-input"] == {"condition": "service_completed_successfully"}
    # The sample input is Python that compiles, and writes where the job reads.
    script = services["sample-input"]["command"][0]
    compile(script, "sample-input", "exec")
    assert job.input_location == S3Location("batch", "rows/") and '"batch"' in script and "rows/" in script
    ports = [port for service in services.values() for port in service.get("ports", [])]
    assert all(port.startswith("127.0.0.1:") for port in ports)
