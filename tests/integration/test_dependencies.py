"""Per-model dependencies with real processes: a script model whose ``code/requirements.txt`` names scikit-learn,
which openmme's own environment does not have, is served through boto3 by an endpoint that builds it an
environment of its own; a second model with the same requirements shares that one build; a requirement that does
not exist is a ModelError and disturbs no other model. One endpoint for the module (``--wait-budget 0.5``, so that
a build shows as 429 ModelNotReady while it runs, as any slow load)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from openmme.handlers.requirements import requirement_lines, requirements_key
from openmme.publish import publish_archive
from openmme.publish.local import pack_directory
from openmme.seaweed import EmbeddedS3
from tests.conftest import BUCKET, Endpoint, Launcher
from tests.support import wait_until

FEATURIZER_A = "featurizer-a.tar.gz"
FEATURIZER_B = "featurizer-b.tar.gz"
MISSING_DEPENDENCY = "missing-dependency.tar.gz"
SKLEARN = "scikit-learn\n"
# The same set of requirements, written differently: the same environment.
SKLEARN_AGAIN = "# the featurizer's only dependency\nscikit-learn   \n\nscikit-learn\n"
NO_SUCH_PACKAGE = "openmme-no-such-package-7f3a==1.0\n"
ROWS = "houston,3.5\nchicago,1.25\nseattle,-2.0\nboston,0.5\n"

# A fitted scikit-learn transformer (one-hot for the city, scaling for the size), fitted in model_fn on the table in
# the archive: scikit-learn is needed to load and to answer.
INFERENCE_PY = """
import json
import os

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.preprocessing import OneHotEncoder, StandardScaler


def model_fn(model_dir):
    with open(os.path.join(model_dir, "table.json")) as table_file:
        table = np.array(json.load(table_file), dtype=object)
    steps = [("city", OneHotEncoder(handle_unknown="ignore"), [0]), ("size", StandardScaler(), [1])]
    return ColumnTransformer(steps, sparse_threshold=0).fit(table)


def transform_fn(model, body, content_type, accept):
    rows = np.array([line.split(",") for line in body.strip().splitlines()], dtype=object)
    rows[:, 1] = rows[:, 1].astype(float)
    return json.dumps(model.transform(rows).tolist()), "application/json"
"""
TABLE = [["houston", 1.0], ["chicago", 2.5], ["seattle", 4.0], ["houston", 0.5], ["chicago", 3.0]]


@dataclass
class Served:
    endpoint: Endpoint
    model_dirs: dict[str, Path]


def write_model(directory: Path, requirements: str) -> Path:
    (directory / "code").mkdir(parents=True)
    (directory / "code" / "inference.py").write_text(INFERENCE_PY)
    (directory / "code" / "requirements.txt").write_text(requirements)
    (directory / "table.json").write_text(json.dumps(TABLE))
    return directory


@pytest.fixture(scope="module")
def served(s3: EmbeddedS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    prefix = f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}/"
    models = tmp_path_factory.mktemp("dependencies")
    model_dirs = {
        FEATURIZER_A: write_model(models / "a", SKLEARN),
        FEATURIZER_B: write_model(models / "b", SKLEARN_AGAIN),
        MISSING_DEPENDENCY: write_model(models / "missing", NO_SUCH_PACKAGE),
    }
    for target, directory in model_dirs.items():
        publish_archive(pack_directory(directory), prefix, target)
    launcher = Launcher(s3, tmp_path_factory)
    try:
        yield Served(launcher.start(prefix, "--wait-budget", "0.5"), model_dirs)
    finally:
        launcher.close()


def until_loaded(endpoint: Endpoint, target: str, timeout: float = 300.0) -> tuple[Any, int]:
    """Invoke ``target`` with ROWS until it is no longer loading: its response (or the ModelError raised), and how
    many 429 ModelNotReady came first."""
    client = endpoint.runtime(retries=1)
    deadline = time.monotonic() + timeout
    not_ready = 0
    while True:
        try:
            return endpoint.invoke(target, ROWS, client=client), not_ready
        except client.exceptions.ModelNotReadyException:
            not_ready += 1
            assert time.monotonic() < deadline, f"{target} still loading after {timeout} s"
            time.sleep(0.5)


def openmme_imports(module: str) -> bool:
    return subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True).returncode == 0


def build_events(endpoint: Endpoint, event: str, key: str) -> int:
    lines = [json.loads(line) for line in endpoint.log().splitlines() if line.startswith('{"time"')]
    return sum(line.get("event") == event and line.get("environment") == key for line in lines)


def test_a_model_gets_its_requirements_in_its_own_environment_built_once_for_every_model_that_names_them(
    served: Served,
) -> None:
    assert not openmme_imports("sklearn"), "openmme's own environment has scikit-learn: the test proves nothing"
    endpoint = served.endpoint
    key = requirements_key(requirement_lines(SKLEARN))
    assert requirements_key(requirement_lines(SKLEARN_AGAIN)) == key

    # Both models asked for while nothing is built: they wait on one build, and a request during it is answered 429.
    answers: dict[str, tuple[Any, int]] = {}
    other = threading.Thread(target=lambda: answers.update({FEATURIZER_B: until_loaded(endpoint, FEATURIZER_B)}))
    other.start()
    assert wait_until(lambda: key in endpoint.get("/models")["environments"]["building"], timeout=60, interval=0.05)
    client = endpoint.runtime(retries=1)
    with pytest.raises(client.exceptions.ModelNotReadyException):
        endpoint.invoke(FEATURIZER_A, ROWS, client=client)
    answers[FEATURIZER_A] = until_loaded(endpoint, FEATURIZER_A)
    other.join(timeout=330)

    # What scikit-learn computes, in a process that has it: the built environment on its path, the same script.
    site_dir = endpoint.cache_dir / "environments" / key / "site"
    model_dir = served.model_dirs[FEATURIZER_A]
    script = model_dir / "code" / "inference.py"
    reference = subprocess.run(
        [
            sys.executable,
            "-c",
            "import importlib.util, sys\n"
            f"sys.path.append({str(site_dir)!r})\n"
            f"spec = importlib.util.spec_from_file_location('featurizer', {str(script)!r})\n"
            "module = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(module)\n"
            f"model = module.model_fn({str(model_dir)!r})\n"
            f"sys.stdout.write(module.transform_fn(model, {ROWS!r}, 'text/csv', 'application/json')[0])\n",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for target in (FEATURIZER_A, FEATURIZER_B):
        response, _ = answers[target]
        assert response["ContentType"] == "application/json"
        assert response["Body"].read().decode() == reference

    assert build_events(endpoint, "environment_build_started", key) == 1
    assert build_events(endpoint, "environment_built", key) == 1
    summary = endpoint.get("/models")["environments"]
    assert summary["builds"] == 1 and summary["count"] == 1 and summary["failedBuilds"] == 0
    assert not openmme_imports("sklearn"), "scikit-learn was installed into openmme's own environment"


def test_a_requirement_that_does_not_exist_is_a_model_error_and_other_models_keep_serving(served: Served) -> None:
    endpoint = served.endpoint
    client = endpoint.runtime(retries=1)
    with pytest.raises(client.exceptions.ModelError) as raised:
        until_loaded(endpoint, MISSING_DEPENDENCY)
    error = raised.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 424
    message = error["Error"]["Message"]
    assert "pip could not install code/requirements.txt" in message
    assert "openmme-no-such-package-7f3a" in message

    # Asked again at once: the same answer, from the failure remembered, not from a second pip run.
    with pytest.raises(client.exceptions.ModelError):
        endpoint.invoke(MISSING_DEPENDENCY, ROWS, client=client)
    key = requirements_key(requirement_lines(NO_SUCH_PACKAGE))
    assert build_events(endpoint, "environment_build_failed", key) == 1

    response, _ = until_loaded(endpoint, FEATURIZER_A)
    assert len(json.loads(response["Body"].read())) == len(ROWS.splitlines())
    assert endpoint.models().get(MISSING_DEPENDENCY, {}).get("state") != "ready"
