"""Inference pipelines with real processes: raw CSV rows through a scikit-learn featurizer script (its
``code/requirements.txt`` built into an environment of its own: openmme's has no scikit-learn), an XGBoost booster
and a post-processing script that names the classes, invoked as one TargetModel (a ``.pipeline.json`` manifest in
the prefix) through boto3 and the SageMaker SDK's ``Predictor``, and equal to the same three steps run in-process;
one featurizer in front of whichever booster the TargetModel names, loaded once; and the faults of a step (it
raises, its archive is missing, its requirements cannot be installed, it answers more than one invocation may
carry), each an error naming the step, after which the good pipeline still answers.

One endpoint for the module. Its wait budget is short, so that a step still loading (the featurizer's environment
build above all) is a 429 the helpers here poll, as a client retries one."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import botocore.exceptions
import numpy as np
import pytest
import xgboost

from openmme.endpoint.cache import mms_model_name
from openmme.handlers.requirements import environment_site, requirement_lines, requirements_key
from openmme.publish import publish_archive
from openmme.publish.local import pack_directory
from openmme.publish.samples import sample_archive
from openmme.seaweed import EmbeddedS3
from tests.conftest import BUCKET, Endpoint, Launcher
from tests.support import container_json

FEATURIZER = "featurizer/model.tar.gz"
CHURN = "churn/model.tar.gz"  # multi:softprob over LABELS
UPSELL = "upsell/model.tar.gz"  # binary:logistic
LABELS_MODEL = "labels/model.tar.gz"
RAISER = "raiser/model.tar.gz"
OVERSIZED = "oversized/model.tar.gz"
UNBUILDABLE = "unbuildable/model.tar.gz"
ABSENT = "absent/model.tar.gz"  # never published

# Raw rows in; named labels out.
CHURN_PIPELINE = "churn.pipeline.json"
# The shared-featurizer shape: invoked as "featurize.pipeline.json/<booster>".
FEATURIZE = "featurize.pipeline.json"
RAISES = "raises.pipeline.json"
MISSING_STEP = "missing-step.pipeline.json"
UNBUILDABLE_PIPELINE = "unbuildable.pipeline.json"
OVERSIZED_PIPELINE = "oversized.pipeline.json"
MANIFESTS: dict[str, Any] = {
    CHURN_PIPELINE: {"steps": [FEATURIZER, CHURN, LABELS_MODEL]},
    # The featurizer's CSV answer is asked for twice here: by its archive's openmme.json and by the step's accept.
    FEATURIZE: {"steps": [{"model": FEATURIZER, "accept": "text/csv"}, "{TargetModel}"]},
    RAISES: {"steps": [FEATURIZER, RAISER, LABELS_MODEL]},
    MISSING_STEP: {"steps": [FEATURIZER, ABSENT]},
    UNBUILDABLE_PIPELINE: {"steps": [UNBUILDABLE, CHURN]},
    OVERSIZED_PIPELINE: {"steps": [OVERSIZED, CHURN]},
}

SKLEARN = "scikit-learn\n"
NO_SUCH_PACKAGE = "openmme-no-such-package-7f3a==1.0\n"
LABELS = ["stays", "at risk", "leaves"]
CITIES = 3  # one-hot columns the featurizer fits (an unknown city is all zeros)
FEATURES = CITIES + 2  # and the two scaled numbers
OVERSIZED_BYTES = 7 * 1024 * 1024  # over the 6 MiB (6291456 bytes) one invocation carries

# What the featurizer is fitted on (in model_fn, so that no pickle crosses scikit-learn versions): city, tenure
# in months, monthly spend.
TABLE = [
    ["houston", 3, 80.0],
    ["chicago", 40, 20.5],
    ["seattle", 12, 55.0],
    ["houston", 60, 30.0],
    ["chicago", 7, 95.5],
    ["seattle", 25, 42.0],
]
# The raw rows clients send, as the SDK's CSVSerializer writes RAW; denver is a city the featurizer never saw.
RAW = [["houston", 5, 91.0], ["chicago", 48, 18.25], ["seattle", 20, 60.5], ["denver", 2, 120.0]]
ROWS = "\n".join(",".join(str(value) for value in row) for row in RAW)

FEATURIZER_PY = """
import csv
import io
import json
import os

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.preprocessing import OneHotEncoder, StandardScaler


def model_fn(model_dir):
    with open(os.path.join(model_dir, "table.json")) as table_file:
        table = np.array(json.load(table_file), dtype=object)
    columns = [("city", OneHotEncoder(handle_unknown="ignore"), [0]), ("usage", StandardScaler(), [1, 2])]
    return ColumnTransformer(columns, sparse_threshold=0).fit(table)


def input_fn(body, content_type):
    rows = np.array(list(csv.reader(io.StringIO(body))), dtype=object)
    rows[:, 1:] = rows[:, 1:].astype(float)
    return rows


def predict_fn(rows, model):
    # float32: what XGBoost reads, written exactly below.
    return model.get_feature_names_out().tolist(), model.transform(rows).astype(np.float32)


def output_fn(prediction, accept):
    columns, features = prediction
    if accept == "text/csv":
        return "\\n".join(",".join(repr(float(value)) for value in row) for row in features), "text/csv"
    # For people: the columns named. Not rows XGBoost reads, so a booster after this step must be sent CSV.
    answer = {"columns": columns, "features": features.tolist()}
    return json.dumps(answer), "application/json"
"""

LABELS_PY = """
import json
import os

import numpy as np


def model_fn(model_dir):
    with open(os.path.join(model_dir, "labels.json")) as labels_file:
        return json.load(labels_file)


def transform_fn(labels, body, content_type, accept):
    probabilities = np.array(json.loads(body), dtype=float)
    named = [(labels[int(row.argmax())], float(row.max())) for row in probabilities]
    if accept == "text/csv":
        return "\\n".join(f"{label},{probability!r}" for label, probability in named), "text/csv"
    answers = [{"label": label, "probability": probability} for label, probability in named]
    return json.dumps(answers), "application/json"
"""

RAISER_PY = """
def model_fn(model_dir):
    return None


def transform_fn(model, body, content_type, accept):
    raise ValueError("the raiser refuses every request")
"""

OVERSIZED_PY = f"""
def model_fn(model_dir):
    return None


def transform_fn(model, body, content_type, accept):
    return "0\\n" * {OVERSIZED_BYTES // 2}, "text/csv"
"""

TRIVIAL_PY = """
def model_fn(model_dir):
    return None


def transform_fn(model, body, content_type, accept):
    return body, content_type
"""


def write_script(directory: Path, script: str, requirements: str | None = None, **files: Any) -> Path:
    """A script model's directory: ``code/inference.py``, ``code/requirements.txt`` if given, and JSON files."""
    (directory / "code").mkdir(parents=True)
    (directory / "code" / "inference.py").write_text(script)
    if requirements is not None:
        (directory / "code" / "requirements.txt").write_text(requirements)
    for name, content in files.items():
        (directory / name).write_text(json.dumps(content))
    return directory


def train(objective: str, seed: int) -> xgboost.Booster:
    """A small booster on FEATURES columns shaped as the featurizer's (one-hot cities, then two scaled numbers)."""
    rng = np.random.default_rng(seed)
    cities = np.eye(CITIES)[rng.integers(0, CITIES, size=300)]
    usage = rng.normal(size=(300, 2))
    features = np.hstack([cities, usage]).astype(np.float32)
    signal = usage[:, 1] - usage[:, 0] + cities[:, 0]
    params: dict[str, Any] = {"objective": objective, "max_depth": 3, "eta": 0.3, "seed": seed, "nthread": 1}
    if objective.startswith("multi:"):
        labels = np.digitize(signal, [-0.7, 0.7])
        params["num_class"] = len(LABELS)
    else:
        labels = signal > 0
    return xgboost.train(params, xgboost.DMatrix(features, label=labels.astype(np.float32)), num_boost_round=10)


def import_script(path: Path) -> ModuleType:
    """A script without requirements (openmme's own packages suffice) imported here, under a name of its own."""
    spec = importlib.util.spec_from_file_location(f"pipeline_step_{uuid.uuid4().hex}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Served:
    endpoint: Endpoint
    model_dirs: dict[str, Path]
    boosters: dict[str, xgboost.Booster]
    _featurized: dict[str, str] = field(default_factory=dict)

    def featurized(self, body: str) -> str:
        """The featurizer's CSV answer to ``body``, computed by its own script in a process that has scikit-learn:
        this interpreter, with the environment the endpoint built for the featurizer on its path (so only once it
        is built)."""
        if body not in self._featurized:
            environments = self.endpoint.cache_dir / "environments"
            site_dir = environment_site(environments, requirements_key(requirement_lines(SKLEARN)))
            model_dir = self.model_dirs[FEATURIZER]
            script = model_dir / "code" / "inference.py"
            program = (
                "import importlib.util, site, sys\n"
                f"site.addsitedir({str(site_dir)!r})\n"
                f"spec = importlib.util.spec_from_file_location('featurizer', {str(script)!r})\n"
                "module = importlib.util.module_from_spec(spec)\n"
                "spec.loader.exec_module(module)\n"
                f"model = module.model_fn({str(model_dir)!r})\n"
                f"features = module.predict_fn(module.input_fn({body!r}, 'text/csv'), model)\n"
                "sys.stdout.write(module.output_fn(features, 'text/csv')[0])\n"
            )
            run = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
            assert run.returncode == 0, run.stderr[-3000:]
            self._featurized[body] = run.stdout
        return self._featurized[body]

    def features(self, body: str) -> np.ndarray:
        """The featurizer's answer as the rows a booster predicts on (its values are float32, written exactly)."""
        rows = [[float(value) for value in line] for line in csv.reader(self.featurized(body).splitlines())]
        features = np.array(rows, dtype=np.float32)
        assert features.shape == (len(body.splitlines()), FEATURES)
        return features

    def named_in_process(self, body: str, accept: str) -> str:
        """CHURN_PIPELINE run in-process: featurizer, then the booster's JSON answer (SageMaker's XGBoost
        container's), then the label script's function itself."""
        probabilities = container_json(self.boosters[CHURN], self.features(body)).decode()
        labels = self.model_dirs[LABELS_MODEL]
        script = import_script(labels / "code" / "inference.py")
        answer: str = script.transform_fn(script.model_fn(str(labels)), probabilities, "application/json", accept)[0]
        return answer


@pytest.fixture(scope="module")
def served(s3: EmbeddedS3, s3_client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    prefix = f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}/"
    models = tmp_path_factory.mktemp("pipelines")
    csv_by_default = {"environment": {"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "text/csv"}}
    model_dirs = {
        FEATURIZER: write_script(
            models / "featurizer", FEATURIZER_PY, SKLEARN, **{"table.json": TABLE, "openmme.json": csv_by_default}
        ),
        LABELS_MODEL: write_script(models / "labels", LABELS_PY, **{"labels.json": LABELS}),
        RAISER: write_script(models / "raiser", RAISER_PY),
        OVERSIZED: write_script(models / "oversized", OVERSIZED_PY),
        UNBUILDABLE: write_script(models / "unbuildable", TRIVIAL_PY, NO_SUCH_PACKAGE),
    }
    for target, directory in model_dirs.items():
        publish_archive(pack_directory(directory), prefix, target, client=s3_client)
    boosters = {CHURN: train("multi:softprob", seed=1), UPSELL: train("binary:logistic", seed=2)}
    for target, booster in boosters.items():
        publish_archive(sample_archive(booster), prefix, target, client=s3_client)
    key_prefix = prefix.removeprefix(f"s3://{BUCKET}/")
    for name, manifest in MANIFESTS.items():
        s3_client.put_object(Bucket=BUCKET, Key=key_prefix + name, Body=json.dumps(manifest).encode())
    launcher = Launcher(s3, tmp_path_factory)
    try:
        endpoint = launcher.start(prefix, "--wait-budget", "2", "--shards", "1")
        yield Served(endpoint, model_dirs, boosters)
    finally:
        launcher.close()


def until_ready(endpoint: Endpoint, target: str, body: str, accept: str | None = None, timeout: float = 300) -> Any:
    """boto3's answer to ``target`` once none of its steps is loading any more (429 ModelNotReady is retried, as
    a client does); any other error is raised."""
    client = endpoint.runtime(retries=1)
    deadline = time.monotonic() + timeout
    while True:
        try:
            return endpoint.invoke(target, body, accept=accept, client=client)
        except client.exceptions.ModelNotReadyException:
            assert time.monotonic() < deadline, f"{target} still loading after {timeout} s"
            time.sleep(0.5)


def refusal(endpoint: Endpoint, target: str, body: str) -> dict[str, Any]:
    """botocore's parsed error for ``target`` (once it is no longer loading)."""
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        until_ready(endpoint, target, body)
    response: dict[str, Any] = raised.value.response
    return response


def assert_named_labels(served: Served) -> None:
    """The good pipeline answers through boto3 what its steps compute in-process."""
    response = until_ready(served.endpoint, CHURN_PIPELINE, ROWS, accept="application/json")
    assert response["ContentType"] == "application/json"
    assert response["Body"].read().decode() == served.named_in_process(ROWS, "application/json")


def test_raw_rows_in_named_labels_out_equal_to_the_steps_run_in_process(served: Served) -> None:
    from sagemaker.deserializers import CSVDeserializer
    from sagemaker.serializers import CSVSerializer

    assert subprocess.run([sys.executable, "-c", "import sklearn"], capture_output=True).returncode != 0, (
        "openmme's own environment has scikit-learn: the featurizer's environment proves nothing"
    )
    endpoint = served.endpoint
    response = until_ready(endpoint, CHURN_PIPELINE, ROWS, accept="application/json")
    body = response["Body"].read().decode()
    assert response["ContentType"] == "application/json"
    assert response["ResponseMetadata"]["HTTPHeaders"]["x-amzn-invoked-production-variant"] == "AllTraffic"
    assert body == served.named_in_process(ROWS, "application/json")
    assert [answer["label"] for answer in json.loads(body)] != [LABELS[0]] * len(RAW), "one class only: no test"

    # The SDK's Predictor, as an MME client uses it: the manifest is the target_model; CSVDeserializer asks
    # text/csv of the last step only (the booster in the middle still gets the featurizer's CSV).
    predictor = endpoint.predictor(CSVSerializer(), CSVDeserializer())
    named = predictor.predict(RAW, target_model=CHURN_PIPELINE)
    assert named == list(csv.reader(served.named_in_process(ROWS, "text/csv").splitlines()))
    assert [label for label, _ in named] == [answer["label"] for answer in json.loads(body)]


def test_one_featurizer_in_front_of_whichever_booster_the_target_model_names_is_loaded_once(served: Served) -> None:
    endpoint = served.endpoint
    for booster in (CHURN, UPSELL):
        response = until_ready(endpoint, f"{FEATURIZE}/{booster}", ROWS)
        assert response["ContentType"] == "application/json"
        assert response["Body"].read() == container_json(served.boosters[booster], served.features(ROWS))

    models = endpoint.models()
    assert models[FEATURIZER]["state"] == "ready"
    assert (models[FEATURIZER]["downloads"], models[FEATURIZER]["loads"]) == (1, 1)
    assert endpoint.loads(mms_model_name(FEATURIZER)) == {"isolated": 1}
    assert {CHURN, UPSELL} <= set(models)


@dataclass(frozen=True)
class Fault:
    target: str
    status: int
    code: str
    says: tuple[str, ...]  # what the message must name
    original_status: int | None = None


FAULTS = {
    "a step raises": Fault(
        RAISES,
        424,
        "ModelError",
        ("step 2 of 3", f"pipeline {RAISES!r}", repr(RAISER), "(500)", "ValueError: the raiser refuses every request"),
        original_status=500,
    ),
    "a step's archive is missing": Fault(
        MISSING_STEP,
        400,
        "ValidationError",
        ("step 2 of 2", f"pipeline {MISSING_STEP!r}", repr(ABSENT), "is not in the model prefix"),
    ),
    "a step's requirement does not exist": Fault(
        UNBUILDABLE_PIPELINE,
        424,
        "ModelError",
        (
            "step 1 of 2",
            f"pipeline {UNBUILDABLE_PIPELINE!r}",
            repr(UNBUILDABLE),
            "pip could not install code/requirements.txt",
            "openmme-no-such-package-7f3a",
        ),
    ),
    "an intermediate answer is too large": Fault(
        OVERSIZED_PIPELINE,
        424,
        "ModelError",
        ("step 1 of 2", f"pipeline {OVERSIZED_PIPELINE!r}", repr(OVERSIZED), repr(CHURN), f"{OVERSIZED_BYTES} bytes"),
        original_status=413,
    ),
    "the manifest is missing": Fault("nowhere.pipeline.json", 400, "ValidationError", ("'nowhere.pipeline.json'",)),
}


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
def test_a_fault_of_a_step_is_an_error_naming_it_and_the_good_pipeline_still_answers(
    served: Served, fault: Fault
) -> None:
    error = refusal(served.endpoint, fault.target, ROWS)
    message = error["Error"]["Message"]
    assert (error["ResponseMetadata"]["HTTPStatusCode"], error["Error"]["Code"]) == (fault.status, fault.code), message
    for part in fault.says:
        assert part in message, f"{part!r} not in {message!r}"
    if fault.original_status is not None:
        assert error["OriginalStatusCode"] == fault.original_status
    assert_named_labels(served)
