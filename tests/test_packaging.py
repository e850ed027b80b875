"""What can be checked of the image and the compose file without a Docker engine: they parse, and their
commands, ports and environment are ones the CLI accepts and means."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from openmme.cli import parser
from openmme.endpoint.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parent.parent
SETTING_ENV = {ENV_PREFIX + field.name.upper() for field in dataclasses.fields(Settings)}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (ROOT / "container" / "Dockerfile").read_text()


def test_compose_has_endpoint_s3_and_sample_publisher(compose: dict[str, Any]) -> None:
    default = {name for name, service in compose["services"].items() if "profiles" not in service}
    assert default == {"s3", "publish-samples", "endpoint"}


def test_observability_profile_scrapes_the_endpoint_and_provisions_the_dashboard(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["prometheus"]["profiles"] == services["grafana"]["profiles"] == ["observability"]
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    endpoint_port = compose["services"]["endpoint"]["ports"][0].split(":")[-1]
    job = scrape["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"endpoint:{endpoint_port}"]
    mounted = {volume.split(":")[0] for volume in services["grafana"]["volumes"]}
    assert {"./deploy/grafana/provisioning", "./deploy/grafana/dashboards"} <= mounted
    for volume in services["grafana"]["volumes"] + services["prometheus"]["volumes"]:
        assert (ROOT / volume.split(":")[0]).exists(), volume
    assert all(port.startswith("127.0.0.1:") for s in services.values() for port in s.get("ports", []))


def test_endpoint_command_is_a_valid_serve_invocation(compose: dict[str, Any]) -> None:
    endpoint = compose["services"]["endpoint"]
    command = endpoint["command"]
    assert command[0] == "serve"
    settings = Settings.from_sources(command[1:], {k: str(v) for k, v in endpoint["environment"].items()})
    assert settings.model_prefix == "s3://models/demo/"
    # The published port is the one the front listens on, and only on the host's loopback.
    # "127.0.0.1:${OPENMME_PORT:-8080}:8080": the host port may be overridden, never the address.
    spec = endpoint["ports"][0]
    host_ip, container_port = spec.split(":", 1)[0], spec.rsplit(":", 1)[1]
    assert host_ip == "127.0.0.1"
    assert int(container_port) == settings.port
    assert settings.memory_budget == 2 * 2**30


def test_every_openmme_variable_in_compose_is_a_setting(compose: dict[str, Any]) -> None:
    for service in compose["services"].values():
        for name in service.get("environment", {}):
            if name.startswith(ENV_PREFIX):
                assert name in SETTING_ENV, f"{name} is not an openmme setting"


def test_publisher_command_parses_and_targets_the_endpoints_prefix(compose: dict[str, Any]) -> None:
    publisher = compose["services"]["publish-samples"]
    args = parser().parse_args(publisher["command"])
    assert (args.command, args.what) == ("publish", "samples")
    assert args.prefix == "s3://models/demo/"
    endpoint_env = compose["services"]["endpoint"]["environment"]
    assert publisher["environment"]["AWS_ENDPOINT_URL_S3"] == endpoint_env["AWS_ENDPOINT_URL_S3"]
    s3_port = compose["services"]["s3"]["command"]
    assert "-s3.port=8333" in s3_port
    assert endpoint_env["AWS_ENDPOINT_URL_S3"] == "http://s3:8333"


def test_s3_credentials_match_the_s3_servers_identities(compose: dict[str, Any]) -> None:
    import json

    identities = json.loads(compose["configs"]["s3-identities"]["content"])
    credentials = identities["identities"][0]["credentials"][0]
    env = compose["services"]["endpoint"]["environment"]
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
        credentials["accessKey"],
        credentials["secretKey"],
    )


def test_dockerfile_is_a_sagemaker_multi_model_container(dockerfile: str) -> None:
    assert "com.amazonaws.sagemaker.capabilities.multi-models=true" in dockerfile
    assert "com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true" in dockerfile
    assert 'ENTRYPOINT ["openmme"]' in dockerfile
    assert 'CMD ["serve"]' in dockerfile
    assert re.search(r"^EXPOSE 8080$", dockerfile, re.MULTILINE)
    assert Settings.from_sources([], {}).port == 8080


def test_dockerfile_installs_with_the_script_ci_runs(dockerfile: str) -> None:
    assert re.search(r"^RUN [^\n]*(\\\n[^\n]*)*/src/scripts/install\b", dockerfile, re.MULTILINE)
    ci = (ROOT / ".ci" / "run").read_text()
    test_script = (ROOT / "scripts" / "test").read_text()
    assert "scripts/test" in ci
    assert "scripts/install" in test_script
    # Everything the install script needs is copied into the image before it runs.
    for needed in ("pyproject.toml", "scripts/", "container/", "handlers/", "publish/"):
        assert re.search(rf"^COPY {re.escape(needed)}", dockerfile, re.MULTILINE), needed


def test_dockerfile_env_names_are_settings(dockerfile: str) -> None:
    names = set(re.findall(r"\b(OPENMME_[A-Z_]+)=", dockerfile))
    install_only = {"OPENMME_VENV", "OPENMME_EXTRAS", "OPENMME_EDITABLE", "OPENMME_JAVA"}
    assert names - install_only <= SETTING_ENV
    install = (ROOT / "scripts" / "install").read_text()
    assert all(name in install for name in install_only)


def test_the_package_list_names_every_package_of_the_tree() -> None:
    """The image installs a copy (OPENMME_EDITABLE=0), which holds only the packages pyproject.toml lists: a
    package missing from the list works in a checkout and is absent from the image."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    roots = {package: ROOT / folder for package, folder in setuptools["package-dir"].items()}
    found = {"openmme"}
    for package, folder in roots.items():
        for init in folder.rglob("__init__.py"):
            relative = init.parent.relative_to(folder).parts
            found.add(".".join((package, *relative)))
    assert sorted(setuptools["packages"]) == sorted(found)
