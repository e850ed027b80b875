"""The image as SageMaker runs an MME container: ``docker run IMAGE serve`` on SAGEMAKER_BIND_TO_PORT, models
loaded through the container API (POST /models, GET /models, POST /models/{name}/invoke) from outside it; isolated
hosting and a user's code/inference.py served by the default image (multi-model-server on its linked Java runtime)
and refused by the Java-less ``dense`` one; and nothing of the build's extra CA in it."""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from openmme.ports import free_port
from openmme.publish.samples import SAMPLES, make_rows, train_booster
from tests.container.conftest import docker, wait_for_ping
from tests.support import csv_body, expected, served_json

pytestmark = pytest.mark.container

IMAGE = "openmme:local"
DENSE_IMAGE = "openmme:dense"
ROWS = make_rows(3, seed=8)
# A user's inference.py as the SageMaker containers run it: the toolkit's hooks, no booster.
SCRIPT = """
def model_fn(model_dir):
    return "scaled"


def transform_fn(model, body, content_type, accept):
    text = body.decode() if isinstance(body, (bytes, bytearray)) else body
    rows = [line.split(",") for line in text.strip().splitlines()]
    return ",".join(str(sum(float(value) for value in row)) for row in rows), "text/csv"
"""


def call(url: str, method: str = "GET", body: Any = None, content_type: str = "application/json") -> tuple[int, Any]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    """SageMaker's /opt/ml/models: one directory per model, as it downloads them; one asks for isolated hosting."""
    for sample in SAMPLES:
        directory = tmp_path / sample.city / "model"
        directory.mkdir(parents=True)
        (directory / "xgboost-model").write_bytes(bytes(train_booster(sample.objective, sample.seed).save_raw("ubj")))
    alone = tmp_path / "alone" / "model"
    alone.mkdir(parents=True)
    (alone / "xgboost-model").write_bytes((tmp_path / "houston" / "model" / "xgboost-model").read_bytes())
    (alone / "openmme.json").write_text('{"hosting": "isolated"}')
    script = tmp_path / "script" / "model"
    (script / "code").mkdir(parents=True)
    (script / "code" / "inference.py").write_text(SCRIPT)
    tmp_path.chmod(0o755)
    return tmp_path


@contextlib.contextmanager
def run_as_sagemaker(image: str, models_dir: Path) -> Iterator[str]:
    """``image`` run as SageMaker runs it; its URL on the host (127.0.0.1 only)."""
    port = free_port()
    container = docker(
        "run",
        "-d",
        "--rm",
        "-e",
        "SAGEMAKER_BIND_TO_PORT=9080",
        "-p",
        f"127.0.0.1:{port}:9080",
        "-v",
        f"{models_dir}:/opt/ml/models:ro",
        image,
        "serve",
    ).strip()
    try:
        seconds = wait_for_ping(f"http://127.0.0.1:{port}")
        print(f"{image}: docker run to /ping 200: {seconds:.1f} s")
        yield f"http://127.0.0.1:{port}"
    finally:
        docker("rm", "-f", container, check=False)


@pytest.fixture
def served(models_dir: Path) -> Iterator[str]:
    with run_as_sagemaker(IMAGE, models_dir) as url:
        yield url


def test_the_container_api_loads_lists_and_invokes_from_outside(served: str) -> None:
    for sample in SAMPLES:
        status, body = call(
            f"{served}/models", "POST", {"model_name": sample.city, "url": f"/opt/ml/models/{sample.city}/model"}
        )
        assert status == 200, body
    status, body = call(f"{served}/models")
    assert status == 200
    assert {model["modelName"] for model in json.loads(body)["models"]} == {sample.city for sample in SAMPLES}
    for sample in SAMPLES:
        status, body = call(f"{served}/models/{sample.city}/invoke", "POST", csv_body(ROWS).encode(), "text/csv")
        assert status == 200, body
        assert served_json(body) == expected(train_booster(sample.objective, sample.seed), ROWS)


def test_the_default_image_serves_isolated_hosting_and_a_users_script(served: str) -> None:
    status, body = call(f"{served}/models", "POST", {"model_name": "alone", "url": "/opt/ml/models/alone/model"})
    assert status == 200, body
    status, body = call(f"{served}/models/alone/invoke", "POST", csv_body(ROWS).encode(), "text/csv")
    assert status == 200, body
    houston = next(sample for sample in SAMPLES if sample.city == "houston")
    assert served_json(body) == expected(train_booster(houston.objective, houston.seed), ROWS)
    status, body = call(f"{served}/models", "POST", {"model_name": "script", "url": "/opt/ml/models/script/model"})
    assert status == 200, body
    status, body = call(f"{served}/models/script/invoke", "POST", csv_body(ROWS).encode(), "text/csv")
    assert status == 200, body
    assert [float(value) for value in body.decode().split(",")] == pytest.approx([sum(row) for row in ROWS])
    status, body = call(f"{served}/models")
    hostings = {model["modelName"]: model["hosting"] for model in json.loads(body)["models"]}
    assert hostings == {"alone": "isolated", "script": "isolated"}


def test_the_dense_image_refuses_isolated_hosting_naming_the_default_image(models_dir: Path) -> None:
    with run_as_sagemaker(DENSE_IMAGE, models_dir) as served:
        status, body = call(f"{served}/models", "POST", {"model_name": "alone", "url": "/opt/ml/models/alone/model"})
        assert status == 424, body
        assert "not --target dense" in json.loads(body)["message"]
        status, body = call(
            f"{served}/models", "POST", {"model_name": "houston", "url": "/opt/ml/models/houston/model"}
        )
        assert status == 200, body


def test_the_image_holds_no_certificate_but_debians() -> None:
    """The build's extra CA (scripts/test-containers passes the host's bundle) is in no layer: the image's bundle
    is exactly the certificates Debian's ca-certificates package ships, and no CA file is left behind."""
    script = (
        "import glob, re; pem = lambda text: set(re.findall(r'-----BEGIN CERTIFICATE-----[^-]+', text));"
        " bundle = pem(open('/etc/ssl/certs/ca-certificates.crt').read());"
        " shipped = set().union(*(pem(open(p).read()) for p in glob.glob('/usr/share/ca-certificates/*/*.crt')));"
        " print(len(bundle), bundle == shipped, glob.glob('/tmp/*') + glob.glob('/run/secrets/*'))"
    )
    count, same, leftovers = docker("run", "--rm", "--entrypoint", "python3", IMAGE, "-c", script).split(" ", 2)
    assert int(count) > 100 and same == "True" and leftovers.strip() == "[]"
    assert "BEGIN CERTIFICATE" not in docker("history", "--no-trunc", IMAGE)
