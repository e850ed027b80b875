"""The alert rules of deploy/alerts.yml: promtool accepts them and their unit tests (deploy/alerts.test.yml) pass,
every alert has a test where it fires and one where it must not, each carries what an on-call person needs
(severity, summary, description, a runbook line in the README), the rules ask only for series the endpoint
exports, and every Prometheus the repository runs loads them."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from openmme.endpoint.alias_figures import AliasFigures
from openmme.endpoint.cache.entry import Budgets, Entry
from openmme.endpoint.cache.keeping import Preload
from openmme.endpoint.metrics import OTHER_MODELS, Metrics
from tests.support import ROOT, needs_tool, tool

DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "alerts.yml"
RULE_TESTS = DEPLOY / "alerts.test.yml"
SEVERITIES = {"critical", "warning"}
# Where each compose file runs Prometheus, and the scrape config it mounts as the server's.
PROMETHEUS_SETUPS = [
    (ROOT / "docker-compose.yml", DEPLOY / "prometheus.yml"),
    (DEPLOY / "compose.scale-out.yml", DEPLOY / "prometheus.scale-out.yml"),
]

needs_promtool = needs_tool("promtool")


def load_yaml(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict)
    return loaded


def alerting_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"] if "alert" in rule]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool") or "promtool", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alerting_rules())} rules found" in checked.stdout


@needs_promtool
def test_the_rules_unit_tests_pass() -> None:
    tested = promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


@needs_promtool
@pytest.mark.parametrize("config", [config for _, config in PROMETHEUS_SETUPS], ids=lambda path: path.name)
def test_promtool_accepts_the_prometheus_configs_and_the_rules_they_load(config: Path) -> None:
    checked = promtool("check", "config", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 1 rule files found" in checked.stdout


def test_every_alert_has_a_test_where_it_fires_and_one_where_it_must_not() -> None:
    cases = [case for test in load_yaml(RULE_TESTS)["tests"] for case in test.get("alert_rule_test", [])]
    names = {rule["alert"] for rule in alerting_rules()}
    firing = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    assert names - firing == set(), "alerts without a test where they fire"
    assert names - quiet == set(), "alerts without a test where they must not fire"
    assert (firing | quiet) - names == set(), "tests of alerts that do not exist"
    assert load_yaml(RULE_TESTS)["rule_files"] == [RULES.name]


def test_every_alert_says_how_urgent_it_is_what_happened_and_where_its_runbook_is() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "\n## Alerts and runbook\n" in readme
    section = readme.split("\n## Alerts and runbook\n", 1)[1].split("\n## ", 1)[0]
    names = [rule["alert"] for rule in alerting_rules()]
    assert len(set(names)) == len(names)
    for rule in alerting_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert re.fullmatch(r"\d+m", rule["for"]), name  # a blip never fires
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        page, anchor = annotations["runbook_url"].split("#")
        assert page == "README.md", name
        # The anchor is on the runbook line that names the alert, in the section.
        (line,) = [line for line in section.splitlines() if f'<a id="{anchor}"></a>' in line]
        assert f"**{name}**" in line


class _NoModels:
    """A cache with nothing in it, for the gauges' names."""

    budgets = Budgets(max_models=1, memory_bytes=1, disk_bytes=1)

    def models(self) -> list[Entry]:
        return []

    def loaded_count(self) -> int:
        return 0

    def memory_in_use(self) -> int:
        return 0

    def disk_in_use(self) -> int:
        return 0


class _EmptyQueue:
    """An async invocation queue with nothing in it (asynchronous invocations on), for its gauges' names."""

    capacity = 1

    def queued(self) -> int:
        return 0

    def running(self) -> int:
        return 0

    def oldest_queued_age(self) -> float:
        return 0.0


async def _never_called(target: str) -> bool:
    raise AssertionError(target)


def exported_series() -> dict[str, dict[str, set[str]]]:
    """Each series name the endpoint exports (every feature on), with the label values it has from the first
    scrape."""
    metrics = Metrics()
    metrics.watch(_NoModels())
    metrics.watch_async(_EmptyQueue())
    AliasFigures(metrics)  # the alias and shadow series (registered when the prefix has aliases)
    metrics.watch_preload(Preload([], _never_called, 1))
    series: dict[str, dict[str, set[str]]] = {}
    for family in metrics.registry.collect():
        series.setdefault(family.name + ("_total" if family.type == "counter" else ""), {})
        for sample in family.samples:
            labels = series.setdefault(sample.name, {})
            for label, value in sample.labels.items():
                labels.setdefault(label, set()).add(value)
    return series


def test_the_rules_ask_only_for_series_and_label_values_the_endpoint_exports() -> None:
    exported = exported_series()
    expressions = [rule["expr"] for rule in alerting_rules()]
    for expr in expressions:
        for name, matchers in re.findall(r"\b(openmme_[a-z_]+)(?:\{([^}]*)\})?", expr):
            assert name in exported, name
            for label, operator, values in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', matchers):
                # Equal to a value, or one of a|b|c: each one must be a value that series has.
                if operator in ("=", "=~") and re.fullmatch(r"[\w|]+", values):
                    assert set(values.split("|")) <= exported[name].get(label, set()), (name, label, values)
    assert all(label == OTHER_MODELS for expr in expressions for label in re.findall(r'model!="([^"]+)"', expr))


@pytest.mark.parametrize(("compose", "config"), PROMETHEUS_SETUPS, ids=lambda path: path.name)
def test_every_prometheus_the_repository_runs_loads_the_rules(compose: Path, config: Path) -> None:
    prometheus = load_yaml(compose)["services"]["prometheus"]
    assert prometheus["command"] == ["--config.file=/etc/prometheus/prometheus.yml"]
    mounts = {}
    for volume in prometheus["volumes"]:
        source, target, mode = volume.split(":")
        assert mode == "ro"
        mounts[target] = (compose.parent / source).resolve()
    assert mounts["/etc/prometheus/prometheus.yml"] == config
    scrape = load_yaml(config)
    assert scrape["rule_files"] == ["alerts.yml"]  # relative to the config file: mounted beside it
    assert mounts["/etc/prometheus/alerts.yml"] == RULES
    (job,) = scrape["scrape_configs"]
    assert job["job_name"] == "openmme"  # the job OpenmmeReplicaDown watches
    assert 'up{job="openmme"}' in next(r["expr"] for r in alerting_rules() if r["alert"] == "OpenmmeReplicaDown")


def test_the_dashboard_asks_only_for_series_the_endpoint_exports() -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "openmme.json").read_text())
    exported = exported_series()  # families by name (a histogram's, whose labels have no sample yet, too)
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for name in re.findall(r"\b(openmme_[a-z_]+)", target["expr"]):
                assert name in exported or re.sub(r"_(bucket|sum|count)$", "", name) in exported, (panel["title"], name)
