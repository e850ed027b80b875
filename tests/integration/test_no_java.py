"""An endpoint on a machine without a Java runtime (the default image): MMS is not started, dense models are
served as anywhere, and a model that needs isolated hosting is refused with SageMaker's ModelError naming the fix.
"No Java" is a PATH holding only this interpreter's directory, and no JAVA_HOME."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import xgboost

from openmme.publish import pack_directory
from openmme.publish.samples import make_rows
from tests.conftest import EndpointFactory, run_serve
from tests.support import expected

pytestmark = pytest.mark.integration

ROWS = make_rows(3, seed=5)
NO_JAVA = {"PATH": str(Path(sys.executable).parent), "JAVA_HOME": ""}
SCRIPT = "def model_fn(model_dir):\n    return None\n"


def booster_archive(directory: Path, booster: xgboost.Booster, settings: str | None = None) -> bytes:
    directory.mkdir(parents=True)
    (directory / "xgboost-model").write_bytes(bytes(booster.save_raw("ubj")))
    if settings is not None:
        (directory / "openmme.json").write_text(settings)
    return pack_directory(directory)


def script_archive(directory: Path) -> bytes:
    (directory / "code").mkdir(parents=True)
    (directory / "code" / "inference.py").write_text(SCRIPT)
    return pack_directory(directory)


def test_without_java_dense_models_serve_and_isolated_ones_are_refused_naming_the_fix(
    start_endpoint: EndpointFactory, prefix: str, publish: Any, boosters: dict[str, xgboost.Booster], tmp_path: Path
) -> None:
    booster = boosters["binary:logistic"]
    publish(prefix, "dense.tar.gz", archive=booster_archive(tmp_path / "dense", booster))
    publish(prefix, "alone.tar.gz", archive=booster_archive(tmp_path / "alone", booster, '{"hosting": "isolated"}'))
    publish(prefix, "script.tar.gz", archive=script_archive(tmp_path / "script"))
    endpoint = start_endpoint(prefix, env=NO_JAVA)
    assert endpoint.ping() == 200
    assert endpoint.get("/ready")["ready"] is True
    assert endpoint.predictions("dense.tar.gz", ROWS) == expected(booster, ROWS)

    client = endpoint.runtime()
    for target, why in (("alone.tar.gz", "its openmme.json asks for it"), ("script.tar.gz", "a script model")):
        with pytest.raises(client.exceptions.ModelError) as caught:
            endpoint.predictions(target, ROWS, client=client)
        message = caught.value.response["Error"]["Message"]
        assert caught.value.response["OriginalStatusCode"] == 500
        assert why in message and "no Java runtime" in message and "not --target dense" in message
    assert "starting MMS" not in endpoint.log()
    assert endpoint.predictions("dense.tar.gz", ROWS) == expected(booster, ROWS)  # still serving


def test_hosting_isolated_without_java_does_not_start(tmp_path: Path) -> None:
    result = run_serve("--cache-dir", str(tmp_path / "cache"), "--hosting", "isolated", environ=NO_JAVA)
    assert result.returncode != 0
    assert "needs a Java runtime" in result.stderr and "not --target dense" in result.stderr
