"""Environments of models' ``code/requirements.txt`` (environments.py, handlers/requirements.py), in process: real
pip builds from a wheelhouse of tiny wheels made here (no network), single flight, failures remembered then
retried, the time limit, the size budget, leftovers of other processes; and the worker's side, which finds the
environment by the same key and appends it to ``sys.path``."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from openmme.endpoint.environments import BuildFailed, Environments, RequirementsRefused, check_requirements
from openmme.handlers.requirements import (
    ENVIRONMENTS_VARIABLE,
    environment_site,
    read_requirements,
    requirement_lines,
    requirements_key,
)
from tests.support import sleeper

PAYLOAD_BYTES = 100_000


def make_wheel(wheelhouse: Path, name: str, source: str, requires: tuple[str, ...] = (), payload: int = 0) -> None:
    """A pure-Python wheel ``name`` 1.0 whose module (``name`` with underscores) holds ``source``, depending on
    ``requires``; ``payload`` bytes of data beside it."""
    module = name.replace("-", "_")
    info = f"{module}-1.0.dist-info"
    files = {
        f"{module}.py": source.encode(),
        f"{module}_payload.bin": b"\0" * payload,
        f"{info}/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
        ).encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: openmme-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    with zipfile.ZipFile(wheelhouse / f"{module}-1.0-py3-none-any.whl", "w") as wheel:
        for path, data in files.items():
            wheel.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{path},sha256={digest},{len(data)}\n")
        wheel.writestr(f"{info}/RECORD", "".join(record) + f"{info}/RECORD,,\n")


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("wheelhouse")
    make_wheel(directory, "openmme-probe", "import numpy\nVALUE = int(numpy.int64(42))\n", requires=("numpy>=1",))
    make_wheel(directory, "openmme-needs-old-numpy", "VALUE = 1\n", requires=("numpy<2",))
    for name in ("openmme-big-a", "openmme-big-b", "openmme-big-c"):
        make_wheel(directory, name, "VALUE = 2\n", payload=PAYLOAD_BYTES)
    return directory


def environments(root: Path, wheelhouse: Path, **options: Any) -> Environments:
    return Environments(root, build_timeout=options.pop("build_timeout", 120.0), budget=0, wheelhouse=wheelhouse)


def build(envs: Environments, *requirements: str, target: str = "model.tar.gz") -> Path:
    lines = requirement_lines("\n".join(requirements))
    return asyncio.run(envs.ensure(lines, requirements_key(lines), target))


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    records = [json.loads(record.getMessage()) for record in caplog.records if record.name == "openmme.events"]
    return [record for record in records if record["event"] == name]


def openmme_has(module: str) -> bool:
    return subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True).returncode == 0


def leftovers(root: Path) -> list[str]:
    """What is in ``root`` besides built environments and pip's logs."""
    return sorted(
        path.name
        for path in root.iterdir()
        if not (path.is_file() and path.name.endswith(".log")) and not (path / "site").is_dir()
    )


# ---- the requirements file ----------------------------------------------------------------------------------


def test_requirements_written_differently_are_one_set_with_one_key() -> None:
    plain = requirement_lines("numpy>=1.24\nscikit-learn==1.5.*\n")
    assert plain == ("numpy>=1.24", "scikit-learn==1.5.*")
    messy = requirement_lines(
        "# features\n  scikit-learn==1.5.*   # pinned\n\nnumpy>=1.24\r\nnumpy>=1.24\nscikit-learn\\\n==1.5.*\n"
    )
    assert messy == ("numpy>=1.24", "scikit-learn==1.5.*")
    assert requirements_key(messy) == requirements_key(plain)
    assert requirements_key(("numpy>=1.24",)) != requirements_key(plain)
    assert requirement_lines("# nothing but a comment\n\n") == ()


def test_a_model_without_requirements_has_none(tmp_path: Path) -> None:
    assert read_requirements(tmp_path) == ()
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "requirements.txt").write_text("scikit-learn\n")
    assert read_requirements(tmp_path) == ("scikit-learn",)


@pytest.mark.parametrize(
    "line",
    [
        "scikit-learn",
        "scikit-learn>=1.3,<2",
        "numpy==2.*",
        "requests[socks, security]~=2.31",
        'pandas>=2 ; python_version >= "3.9"',
        "pyyaml==6.0.1 --hash=sha256:abc123",
        "Foo.Bar_baz (>=1.0)",
    ],
)
def test_packages_by_name_are_taken(line: str) -> None:
    check_requirements([line])


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("--index-url https://example.com/simple", "'--index-url' is not taken"),
        ("--extra-index-url=https://example.com/simple", "is not taken"),
        ("-r other.txt", "'-r' is not taken"),
        ("-e git+https://github.com/x/y", "'-e' is not taken"),
        ("pkg @ https://example.com/pkg-1.0-py3-none-any.whl", "not a package name"),
        ("git+https://github.com/x/y", "not a package name"),
        ("./vendor/pkg", "not a package name"),
        ("/opt/pkg-1.0.tar.gz", "not a package name"),
        ("pkg-1.0-py3-none-any.whl", "not a package name"),
    ],
)
def test_sources_urls_and_paths_are_refused(line: str, says: str) -> None:
    with pytest.raises(RequirementsRefused, match=says):
        check_requirements(["numpy", line])


# ---- building ---------------------------------------------------------------------------------------------


def test_a_build_installs_only_what_openmme_lacks_once_for_every_model_that_asks(
    tmp_path: Path, wheelhouse: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="openmme.events")
    envs = environments(tmp_path / "envs", wheelhouse)
    lines = ("openmme-probe",)
    key = requirements_key(lines)

    async def three_models_at_once() -> list[Path]:
        return list(await asyncio.gather(*(envs.ensure(lines, key, f"m{index}") for index in range(3))))

    sites = asyncio.run(three_models_at_once())
    assert sites == [environment_site(tmp_path / "envs", key)] * 3
    assert len(events(caplog, "environment_build_started")) == 1
    assert events(caplog, "environment_built")[0]["bytes"] > 0
    assert envs.describe() | {"bytes": 0} == {
        "count": 1, "bytes": 0, "budgetBytes": 0, "building": [], "builds": 1, "failedBuilds": 0, "reused": 0,
        "removed": 0,
    }  # fmt: skip
    # The probe, and not numpy: openmme's numpy satisfies its dependency and is never copied.
    site_dir = sites[0]
    assert {path.name for path in site_dir.iterdir() if path.suffix == ".py"} == {"openmme_probe.py"}
    assert not (site_dir / "numpy").exists()
    assert leftovers(tmp_path / "envs") == []
    code = f"import sys; sys.path.append({str(site_dir)!r}); import openmme_probe; print(openmme_probe.VALUE)"
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "42"
    assert not openmme_has("openmme_probe")

    # Asked again, and by a new endpoint process on the same directory: found, not built.
    assert build(envs, "openmme-probe") == site_dir
    restarted = environments(tmp_path / "envs", wheelhouse)
    assert build(restarted, "openmme-probe") == site_dir
    assert (envs.describe()["reused"], restarted.describe()["builds"]) == (1, 0)
    assert len(events(caplog, "environment_build_started")) == 1


def test_a_requirement_against_openmme_s_own_versions_fails_the_build_with_pip_s_reason(
    tmp_path: Path, wheelhouse: Path
) -> None:
    envs = environments(tmp_path / "envs", wheelhouse)
    with pytest.raises(BuildFailed) as failed:
        build(envs, "openmme-needs-old-numpy")
    import numpy

    assert str(failed.value) == (
        "pip could not install code/requirements.txt: conflicting dependencies: openmme-needs-old-numpy 1.0 depends"
        f" on numpy<2; openmme's own environment has numpy=={numpy.__version__}"
    )
    assert leftovers(tmp_path / "envs") == []
    assert openmme_has("numpy")


def test_a_failed_build_answers_at_once_for_a_while_then_is_tried_again(
    tmp_path: Path, wheelhouse: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="openmme.events")
    now = [0.0]
    envs = Environments(
        tmp_path / "envs", build_timeout=120, budget=0, wheelhouse=wheelhouse, retry_after=30, clock=lambda: now[0]
    )
    reason = (
        "pip could not install code/requirements.txt: Could not find a version that satisfies the requirement"
        " openmme-not-in-the-wheelhouse (from versions: none)"
    )
    for seconds_later in (0.0, 29.0, 31.0):
        now[0] = seconds_later
        with pytest.raises(BuildFailed) as failed:
            build(envs, "openmme-not-in-the-wheelhouse")
        assert str(failed.value) == reason
    assert [event["error"] for event in events(caplog, "environment_build_failed")] == [reason, reason]
    assert envs.describe()["failedBuilds"] == 2
    log_file = tmp_path / "envs" / f"{requirements_key(('openmme-not-in-the-wheelhouse',))}.log"
    assert "No matching distribution found for openmme-not-in-the-wheelhouse" in log_file.read_text()


def test_a_build_over_its_time_limit_is_stopped_with_everything_it_started(tmp_path: Path, wheelhouse: Path) -> None:
    envs = environments(tmp_path / "envs", wheelhouse, build_timeout=0.2)
    before = set(psutil.Process().children(recursive=True))  # the session's own (SeaweedFS) are not the build's
    with pytest.raises(BuildFailed, match=r"took longer than 0.2 s \(--environment-build-timeout\); pip was stopped"):
        build(envs, "openmme-probe")
    assert set(psutil.Process().children(recursive=True)) - before == set()
    assert leftovers(tmp_path / "envs") == []
    assert not environment_site(tmp_path / "envs", requirements_key(("openmme-probe",))).exists()


def test_the_budget_deletes_the_least_recently_used_environment_no_model_uses(tmp_path: Path, wheelhouse: Path) -> None:
    in_use: set[str] = set()
    envs = Environments(
        tmp_path / "envs", build_timeout=120, budget=int(2.5 * PAYLOAD_BYTES), wheelhouse=wheelhouse,
        in_use=lambda: in_use,
    )  # fmt: skip
    key: Callable[[str], str] = lambda name: requirements_key((name,))  # noqa: E731
    build(envs, "openmme-big-a")
    build(envs, "openmme-big-b")
    build(envs, "openmme-big-a")  # used again: b is now the least recently used
    build(envs, "openmme-big-c")
    assert sorted(path.name for path in (tmp_path / "envs").iterdir() if (path / "site").is_dir()) == sorted(
        [key("openmme-big-a"), key("openmme-big-c")]
    )
    assert envs.describe()["removed"] == 1

    in_use.update({key("openmme-big-a"), key("openmme-big-c")})
    with pytest.raises(BuildFailed, match=r"environments in use hold 0\.2 MiB of the 0\.2 MiB --environments-budget"):
        build(envs, "openmme-big-b")
    assert environment_site(tmp_path / "envs", key("openmme-big-a")).is_dir()
    assert environment_site(tmp_path / "envs", key("openmme-big-c")).is_dir()
    assert not (tmp_path / "envs" / key("openmme-big-b")).exists()
    assert leftovers(tmp_path / "envs") == []


def test_leftovers_of_other_processes_are_swept_and_a_half_built_environment_is_never_used(
    tmp_path: Path, wheelhouse: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    root = tmp_path / "envs"
    key = requirements_key(("openmme-probe",))
    # A build a dead process left (killed mid-build), one a live process is still running (left alone), and what a
    # crash between steps could leave as <key>: a site directory but no manifest.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    running = f".build-{sleeper(sleepers).pid}-{key}-0000"
    (root / f".build-{dead.pid}-{key}-0000" / "venv").mkdir(parents=True)
    (root / running / "venv").mkdir(parents=True)
    (root / key / "site" / "openmme_probe.py").parent.mkdir(parents=True)
    (root / key / "site" / "openmme_probe.py").write_text("VALUE = 'half built'\n")
    # An environment built for another base (openmme's packages or Python changed since).
    other = requirements_key(("openmme-big-a",))
    (root / other / "site").mkdir(parents=True)
    (root / other / "manifest.json").write_text(json.dumps({"base": "another", "bytes": 1, "built": 0}))

    envs = environments(root, wheelhouse)
    site_dir = build(envs, "openmme-probe")
    assert (site_dir / "openmme_probe.py").read_text() == "import numpy\nVALUE = int(numpy.int64(42))\n"
    assert envs.describe()["builds"] == 1
    assert sorted(path.name for path in root.iterdir()) == [running, key, f"{key}.log"]


# ---- the worker's side --------------------------------------------------------------------------------------


def test_the_worker_appends_the_model_s_environment_after_openmme_s_packages(
    tmp_path: Path, wheelhouse: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from openmme.handlers.script_service import REQUIREMENTS_WARNING, ScriptLoadError, add_model_environment

    monkeypatch.setattr(sys, "path", list(sys.path))
    model_dir = tmp_path / "model"
    (model_dir / "code").mkdir(parents=True)
    (model_dir / "code" / "requirements.txt").write_text("openmme-probe  # the model's one dependency\n")

    monkeypatch.delenv(ENVIRONMENTS_VARIABLE, raising=False)
    with caplog.at_level(logging.WARNING, logger="openmme.handlers.script_service"):
        assert add_model_environment(model_dir) is None  # outside openmme serve: nothing to add, and it says so
    assert REQUIREMENTS_WARNING in caplog.text

    monkeypatch.setenv(ENVIRONMENTS_VARIABLE, str(tmp_path / "envs"))
    with pytest.raises(ScriptLoadError, match=r"the environment of code/requirements\.txt \(\w+\) is not built"):
        add_model_environment(model_dir)

    site_dir = build(environments(tmp_path / "envs", wheelhouse), "openmme-probe")
    assert add_model_environment(model_dir) == site_dir
    assert sys.path[-1] == str(site_dir)
    assert sys.path.index(str(site_dir)) > max(sys.path.index(path) for path in sys.path if "site-packages" in path)
