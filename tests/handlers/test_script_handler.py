"""The user-script (code/inference.py) handler service, driven through MMS's own Service/Context and codec."""

from __future__ import annotations

import io
import json
import logging
import pathlib
import sys
import textwrap
from typing import Any

import numpy as np
import pytest
import xgboost
from handler_harness import (
    MmsWorker,
    Request,
    as_csr,
    csv_body,
    in_process,
    libsvm_body,
    npy_body,
    recordio_dense_body,
    recordio_sparse_body,
    save_ubj,
    train_booster,
)
from mms.model_loader import MmsModelLoader

from openmme.handlers import ERROR_HEADER, SCRIPT_HANDLER
from openmme.handlers.script_service import (
    REQUIREMENTS_WARNING,
    ScriptLoadError,
    ScriptService,
    user_module_name,
)

WEIGHTS = np.array([0.5, -1.25, 2.0])
ROWS = np.array([[1.0, 2.0, 3.0], [0.1, 0.2, 0.3], [-4.0, 5.5, 1e-3]])

# A plain numpy linear model: model_fn loads weights saved beside the code, predict_fn multiplies.
LINEAR = """
import os
import numpy as np

def model_fn(model_dir):
    return np.load(os.path.join(model_dir, "weights.npy"))

def predict_fn(data, model):
    return np.asarray(data, dtype=np.float64) @ model
"""


def write_model(root: pathlib.Path, source: str, weights: np.ndarray = WEIGHTS, **code_files: str) -> pathlib.Path:
    """An extracted script-model archive: weights.npy at the root, code/inference.py (+ other code files)."""
    (root / "code").mkdir(parents=True)
    np.save(root / "weights.npy", weights)
    (root / "code" / "inference.py").write_text(textwrap.dedent(source))
    for name, text in code_files.items():
        (root / "code" / name).write_text(textwrap.dedent(text))
    return root


def worker_for(model_dir: pathlib.Path) -> MmsWorker:
    return MmsWorker(ScriptService().handle, model_dir)


def assert_error(reply: Any, status: int, *fragments: str) -> None:
    assert reply.status == status, reply.text
    assert reply.headers.get(ERROR_HEADER) == "1"
    assert "\n" not in reply.text and "Traceback" not in reply.text
    for fragment in fragments:
        assert fragment in reply.text


@pytest.fixture
def linear(tmp_path: pathlib.Path) -> pathlib.Path:
    return write_model(tmp_path / "linear", LINEAR)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [(json.dumps(ROWS.tolist()).encode(), "application/json"), (npy_body(ROWS), "application/x-npy")],
    ids=["json", "npy"],
)
def test_default_input_and_output_functions_serve_a_numpy_model(
    linear: pathlib.Path, body: bytes, content_type: str
) -> None:
    # JSON and NPY (openmme's additions to the container's defaults) decode to arrays.
    reply = worker_for(linear).invoke(body, {"Content-Type": content_type})
    assert reply.status == 200, reply.text
    # The toolkit's default Accept is JSON.
    assert reply.content_type == "application/json"
    assert ERROR_HEADER not in reply.headers
    assert json.loads(reply.text) == (ROWS @ WEIGHTS).tolist()


@pytest.mark.parametrize("accept", ["text/csv", "csv", "application/x-npy; q=0.5"])
def test_default_output_function_encodes_csv_and_npy_as_the_toolkit_does(linear: pathlib.Path, accept: str) -> None:
    body = json.dumps(ROWS.tolist()).encode()
    reply = worker_for(linear).invoke(body, {"content-type": "application/json; charset=utf-8", "ACCEPT": accept})
    predictions = ROWS @ WEIGHTS
    if accept.startswith("application/x-npy"):
        assert reply.content_type == "application/x-npy"
        np.testing.assert_array_equal(np.load(io.BytesIO(reply.body), allow_pickle=False), predictions)
    else:
        # np.savetxt(fmt="%s"): a value per line, and a final newline.
        assert reply.content_type == "text/csv"
        assert reply.text == "".join(str(value) + "\n" for value in predictions)


def test_user_functions_get_the_bare_content_type_and_text_bodies(tmp_path: pathlib.Path) -> None:
    model_dir = write_model(
        tmp_path,
        """
        import json

        def model_fn(model_dir):
            return "model"

        def input_fn(body, content_type):
            shown = body if isinstance(body, str) else body.hex()
            return {"type": type(body).__name__, "content_type": content_type, "body": shown}

        def predict_fn(data, model):
            return data

        def output_fn(prediction, accept):
            return json.dumps({**prediction, "accept": accept}), "application/vnd.custom+json"
        """,
    )
    worker = worker_for(model_dir)
    text = worker.invoke(b"1,2,3", {"Content-Type": "Text/CSV; charset=utf-8", "Accept": "application/x-thing"})
    raw = worker.invoke(b"\x00\x01", {"Content-Type": "application/octet-stream"})
    assert text.content_type == "application/vnd.custom+json"
    assert json.loads(text.text) == {
        "type": "str",
        "content_type": "text/csv",
        "body": "1,2,3",
        "accept": "application/x-thing",
    }
    assert json.loads(raw.text)["type"] == "bytes"
    assert json.loads(raw.text)["body"] == "0001"


def test_transform_fn_with_context_and_non_text_results(tmp_path: pathlib.Path) -> None:
    model_dir = write_model(
        tmp_path,
        """
        import numpy as np

        def model_fn(model_dir, context):
            return context.system_properties["model_dir"]

        def transform_fn(model, body, content_type, accept, context):
            return {"model_dir": model, "rows": np.arange(3)}
        """,
    )
    reply = worker_for(model_dir).invoke(b"{}", {"Content-Type": "application/json", "Accept": "application/json"})
    assert reply.status == 200, reply.text
    assert json.loads(reply.text) == {"model_dir": str(model_dir), "rows": [0, 1, 2]}


def test_helper_modules_in_code_import_and_model_predict_is_the_default(tmp_path: pathlib.Path) -> None:
    helper = f"openmme_test_helper_{tmp_path.name.replace('-', '_')}"
    model_dir = write_model(
        tmp_path,
        f"""
        import {helper}

        def model_fn(model_dir):
            return {helper}.Doubler()
        """,
        **{
            f"{helper}.py": """
            import numpy as np

            class Doubler:
                def predict(self, data):
                    return np.asarray(data) * 2
            """
        },
    )
    reply = worker_for(model_dir).invoke(b"[[1, 2], [3, 4]]", {"Content-Type": "application/json"})
    assert json.loads(reply.text) == [[2, 4], [6, 8]]


def test_two_script_models_in_one_process_keep_their_own_modules(tmp_path: pathlib.Path) -> None:
    first = write_model(tmp_path / "first", LINEAR + "\nNAME = 'first'\n", weights=np.array([1.0, 0.0, 0.0]))
    second = write_model(tmp_path / "second", LINEAR + "\nNAME = 'second'\n", weights=np.array([0.0, 0.0, 1.0]))
    first_service, second_service = ScriptService(), ScriptService()
    first_worker = MmsWorker(first_service.handle, first)
    second_worker = MmsWorker(second_service.handle, second)

    headers = {"Content-Type": "application/json"}
    assert json.loads(first_worker.invoke(b"[[7, 8, 9]]", headers).text) == [7.0]
    assert json.loads(second_worker.invoke(b"[[7, 8, 9]]", headers).text) == [9.0]

    assert first_service.user_module is not None and second_service.user_module is not None
    assert first_service.user_module.NAME == "first" and second_service.user_module.NAME == "second"
    assert user_module_name(first) != user_module_name(second)
    assert sys.modules[user_module_name(first)] is first_service.user_module
    assert sys.modules[user_module_name(second)] is second_service.user_module
    assert "inference" not in sys.modules


def test_a_batch_is_answered_request_by_request_with_its_own_headers(linear: pathlib.Path) -> None:
    replies = worker_for(linear).invoke_batch(
        [
            Request(json.dumps(ROWS[:1].tolist()).encode(), {"Content-Type": "application/json", "Accept": "text/csv"}),
            Request(b"<rows/>", {"Content-Type": "application/xml"}),
            Request(json.dumps(ROWS[1:].tolist()).encode(), {"Content-Type": "application/json"}),
        ]
    )
    assert [reply.status for reply in replies] == [200, 415, 200]
    assert [reply.content_type for reply in replies] == ["text/csv", "text/plain", "application/json"]
    assert float(replies[0].text) == float((ROWS[:1] @ WEIGHTS)[0])
    assert json.loads(replies[2].text) == (ROWS[1:] @ WEIGHTS).tolist()
    assert_error(replies[1], 415, "application/xml", "define input_fn")


def test_unsupported_accept_with_the_default_output_function_is_415(linear: pathlib.Path) -> None:
    reply = worker_for(linear).invoke(npy_body(ROWS), {"Content-Type": "application/x-npy", "Accept": "image/png"})
    assert_error(reply, 415, "image/png", "define output_fn")


@pytest.mark.parametrize(
    ("body", "content_type", "fragment"),
    [
        (b"1,2,3\n1,2", "text/csv", "CSV row 2 has 2 values, row 1 has 3"),
        (b"[[1, 2", "application/json", "not valid JSON"),
        (b"\xff\xfe", "application/json", "not valid UTF-8"),
        (b"not npy", "application/x-npy", "not a readable NPY array"),
    ],
)
def test_undecodable_bodies_for_the_default_input_function_are_400(
    linear: pathlib.Path, body: bytes, content_type: str, fragment: str
) -> None:
    assert_error(worker_for(linear).invoke(body, {"Content-Type": content_type}), 400, fragment)


def test_the_default_npy_decoder_never_unpickles(linear: pathlib.Path, tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    np.save(buffer, np.array([_Exploit(marker)], dtype=object), allow_pickle=True)
    reply = worker_for(linear).invoke(buffer.getvalue(), {"Content-Type": "application/x-npy"})
    assert_error(reply, 400, "not a readable NPY array")
    assert not marker.exists()


class _Exploit:
    """Unpickling this writes a file: proof that a body was unpickled."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (self.marker,))


def test_toolkit_errors_keep_their_status(tmp_path: pathlib.Path) -> None:
    model_dir = write_model(
        tmp_path,
        """
        from sagemaker_inference.errors import GenericInferenceToolkitError

        def model_fn(model_dir):
            return None

        def predict_fn(data, model):
            raise GenericInferenceToolkitError(422, "too few rows\\nto score")
        """,
    )
    reply = worker_for(model_dir).invoke(b"[[1]]", {"Content-Type": "application/json"})
    assert_error(reply, 422, "too few rows")
    assert reply.phrase in {"Unprocessable Entity", "Unprocessable Content"}  # the name for 422 until 3.13, and from


def test_other_user_errors_are_500_with_one_line_and_the_trace_in_the_log(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    model_dir = write_model(
        tmp_path,
        """
        def model_fn(model_dir):
            return None

        def predict_fn(data, model):
            raise ValueError("weights are stale\\nsecond line")
        """,
    )
    with caplog.at_level(logging.ERROR):
        reply = worker_for(model_dir).invoke(b"[[1]]", {"Content-Type": "application/json"})
    assert_error(reply, 500, "ValueError: weights are stale")
    assert "second line" not in reply.text
    assert "Traceback" in caplog.text and "predict_fn" in caplog.text


def test_a_model_without_predict_needs_predict_fn(tmp_path: pathlib.Path) -> None:
    model_dir = write_model(tmp_path, "def model_fn(model_dir):\n    return 42\n")
    reply = worker_for(model_dir).invoke(b"[[1]]", {"Content-Type": "application/json"})
    assert_error(reply, 500, "has no predict method", "define predict_fn")


def test_an_unserialisable_response_is_500(tmp_path: pathlib.Path) -> None:
    model_dir = write_model(
        tmp_path,
        """
        def model_fn(model_dir):
            return None

        def transform_fn(model, body, content_type, accept):
            return object()
        """,
    )
    reply = worker_for(model_dir).invoke(b"[[1]]", {"Content-Type": "application/json"})
    assert_error(reply, 500, "not bytes, str or JSON-serialisable")


# --- scripts written for the SageMaker XGBoost container ------------------------------------------------

# What such scripts often are: model_fn alone, the container's defaults doing the rest.
MODEL_FN_ONLY = """
import os
import xgboost

def model_fn(model_dir):
    return xgboost.Booster(model_file=os.path.join(model_dir, "model.ubj"))
"""


def booster_model(
    root: pathlib.Path, source: str = MODEL_FN_ONLY, objective: str = "binary:logistic"
) -> tuple[pathlib.Path, xgboost.Booster, np.ndarray]:
    booster, rows = train_booster(objective)
    model_dir = write_model(root, source)
    save_ubj(booster, model_dir / "model.ubj")
    return model_dir, booster, rows


def body_of(kind: str, rows: np.ndarray) -> tuple[bytes, str]:
    if kind == "csv":
        return csv_body(rows), "text/csv"
    if kind == "libsvm":
        return libsvm_body(rows), "text/libsvm"
    if kind == "recordio-dense":
        return recordio_dense_body(np.nan_to_num(rows)), "application/x-recordio-protobuf"
    if kind == "recordio-sparse":
        return recordio_sparse_body(as_csr(rows)), "application/x-recordio-protobuf"
    if kind == "json":
        return json.dumps(np.nan_to_num(rows).tolist()).encode(), "application/json"
    return npy_body(rows), "application/x-npy"


def rows_of(kind: str, rows: np.ndarray) -> Any:
    """What the request of ``kind`` carries, as xgboost reads it in-process."""
    if kind in ("recordio-dense", "json"):
        return np.nan_to_num(rows)
    if kind == "recordio-sparse":
        return as_csr(rows)
    return rows


@pytest.mark.parametrize("kind", ["csv", "libsvm", "recordio-dense", "recordio-sparse", "json", "npy"])
@pytest.mark.parametrize("objective", ["binary:logistic", "multi:softprob"])
def test_a_script_with_only_model_fn_answers_json_of_the_boosters_predictions(
    tmp_path: pathlib.Path, objective: str, kind: str
) -> None:
    model_dir, booster, rows = booster_model(tmp_path, objective=objective)
    body, content_type = body_of(kind, rows)
    reply = worker_for(model_dir).invoke(body, {"Content-Type": content_type})
    assert reply.status == 200, reply.text
    assert reply.content_type == "application/json"
    want = in_process(booster, rows_of(kind, rows))
    # The toolkit's JSON encoder, as the container's default output_fn answers.
    assert reply.body == json.dumps(want.tolist()).encode()
    assert json.loads(reply.body)[0] == want.tolist()[0]


def test_a_model_fn_only_script_answers_csv_and_npy_by_accept(tmp_path: pathlib.Path) -> None:
    model_dir, booster, rows = booster_model(tmp_path)
    worker = worker_for(model_dir)
    want = in_process(booster, rows)
    csv_reply = worker.invoke(csv_body(rows), {"Content-Type": "text/csv; charset=utf-8", "Accept": "text/csv"})
    npy_reply = worker.invoke(csv_body(rows), {"Content-Type": "text/csv", "Accept": "application/x-npy"})
    # np.savetxt(fmt="%s") of float32 values: their shortest float32 text, a value per line.
    assert csv_reply.text == "".join(str(value) + "\n" for value in want)
    assert np.array_equal(np.array(csv_reply.text.split(), dtype=np.float32), want)
    assert npy_reply.content_type == "application/x-npy"
    np.testing.assert_array_equal(np.load(io.BytesIO(npy_reply.body), allow_pickle=False), want)


def test_the_default_accept_of_a_script_comes_from_the_toolkits_variable(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", "text/csv")
    model_dir, booster, rows = booster_model(tmp_path)
    reply = worker_for(model_dir).invoke(csv_body(rows[:2]), {"Content-Type": "text/csv", "Accept": "*/*"})
    assert reply.content_type == "text/csv"
    assert reply.text == "".join(str(value) + "\n" for value in in_process(booster, rows[:2]))


def test_the_default_input_fn_gives_a_dmatrix_for_the_containers_types(tmp_path: pathlib.Path) -> None:
    model_dir = write_model(
        tmp_path,
        """
        import xgboost

        def model_fn(model_dir):
            return None

        def predict_fn(data, model):
            assert isinstance(data, xgboost.DMatrix), type(data)
            return [data.num_row(), data.num_col()]
        """,
    )
    worker = worker_for(model_dir)
    for body, content_type in [
        (b"1,2,3\n4,5,6", "text/csv"),
        (b"1 1:0.5 3:1.0\n0 2:2.0", "text/x-libsvm"),
        (recordio_dense_body(np.ones((2, 3))), "application/x-recordio-protobuf"),
    ]:
        reply = worker.invoke(body, {"Content-Type": content_type})
        assert json.loads(reply.text) == [2, 3], (content_type, reply.text)


def test_an_xgboost_scikit_learn_model_gets_rows_it_can_predict_on(tmp_path: pathlib.Path) -> None:
    # scikit-learn is not in the image, so the model here has the scikit-learn API's shape only: get_booster()
    # and predict(X, validate_features=...), which takes arrays but not a DMatrix.
    model_dir, booster, rows = booster_model(
        tmp_path,
        """
        import os
        import xgboost

        class BoosterEstimator:
            def __init__(self, booster):
                self._booster = booster

            def get_booster(self):
                return self._booster

            def predict(self, X, validate_features=True):
                if isinstance(X, xgboost.DMatrix):
                    raise TypeError("Not supported type for data: DMatrix")
                return self._booster.inplace_predict(X, validate_features=validate_features)

        def model_fn(model_dir):
            return BoosterEstimator(xgboost.Booster(model_file=os.path.join(model_dir, "model.ubj")))
        """,
    )
    reply = worker_for(model_dir).invoke(csv_body(rows), {"Content-Type": "text/csv"})
    assert reply.status == 200, reply.text
    assert reply.body == json.dumps(in_process(booster, rows).tolist()).encode()


# A script as the AWS examples write them for the XGBoost container.
CONTAINER_SCRIPT = """
import os
import numpy as np
import xgboost as xgb
from sagemaker_containers.beta.framework import content_types, encoders, errors
from sagemaker_xgboost_container import encoder as xgb_encoders
from sagemaker_xgboost_container.encoder import csv_to_dmatrix

def model_fn(model_dir):
    return xgb.Booster(model_file=os.path.join(model_dir, "model.ubj"))

def input_fn(request_body, request_content_type):
    if request_content_type == "text/libsvm":
        return xgb_encoders.libsvm_to_dmatrix(request_body)
    if request_content_type == content_types.CSV:
        return csv_to_dmatrix(request_body.rstrip("\\n"))
    if request_content_type == content_types.JSON:
        try:
            return xgb.DMatrix(encoders.decode(request_body, content_types.JSON))
        except errors.ClientError as exc:
            raise ValueError("caught " + type(exc).__name__) from exc
    return xgb_encoders.decode(request_body, request_content_type)

def predict_fn(input_data, model):
    return model.predict(input_data)

def output_fn(prediction, accept):
    if accept == content_types.CSV:
        return encoders.encode(prediction, content_types.CSV), accept
    return encoders.encode(prediction, content_types.JSON), content_types.JSON
"""


@pytest.mark.parametrize("kind", ["csv", "libsvm", "recordio-dense", "recordio-sparse", "json"])
def test_a_script_written_for_the_xgboost_container_runs_unchanged(tmp_path: pathlib.Path, kind: str) -> None:
    model_dir, booster, rows = booster_model(tmp_path, CONTAINER_SCRIPT)
    body, content_type = body_of(kind, rows)
    worker = worker_for(model_dir)
    reply = worker.invoke(body, {"Content-Type": content_type})
    assert reply.status == 200, reply.text
    want = in_process(booster, rows_of(kind, rows))
    assert reply.body == json.dumps(want.tolist()).encode()
    csv_reply = worker.invoke(body, {"Content-Type": content_type, "Accept": "text/csv"})
    # sagemaker_containers' CSV: a value per line.
    assert csv_reply.text == "".join(str(value) + "\n" for value in want)


def test_stand_in_decoders_raise_client_errors_answered_400(tmp_path: pathlib.Path) -> None:
    model_dir, _, _ = booster_model(tmp_path, CONTAINER_SCRIPT)
    worker = worker_for(model_dir)
    caught = worker.invoke(b"[[1, 2", {"Content-Type": "application/json"})
    assert_error(caught, 500, "ValueError: caught PayloadError")
    uncaught = worker.invoke(b"1:x", {"Content-Type": "text/libsvm"})
    assert_error(uncaught, 400, "LIBSVM row 1: '1:x' is not index:value")
    unsupported = worker.invoke(b"\x89PNG", {"Content-Type": "image/png"})
    assert_error(unsupported, 415, "image/png")


def test_a_real_installed_package_wins_over_the_stand_in(tmp_path: pathlib.Path) -> None:
    site = tmp_path / "site"
    (site / "sagemaker_containers").mkdir(parents=True)
    (site / "sagemaker_containers" / "__init__.py").write_text("ORIGIN = 'installed'\n")
    sys.path.insert(0, str(site))  # restored by the conftest fixture
    model_dir = write_model(
        tmp_path / "model",
        """
        import sagemaker_containers

        def model_fn(model_dir):
            return None

        def transform_fn(model, body, content_type, accept):
            return sagemaker_containers.ORIGIN
        """,
    )
    assert worker_for(model_dir).invoke(b"{}", {"Content-Type": "application/json"}).text == "installed"


@pytest.mark.parametrize(
    ("imports", "message"),
    [
        (
            "from sagemaker_containers.beta.framework import content_types, encoders, env, modules, worker",
            "sagemaker_containers.beta.framework.env is not available in openmme, whose stand-in "
            "sagemaker_containers provides only beta.framework's encoders",
        ),
        ("from sagemaker_containers.beta.framework import worker", "instead of a worker.Response"),
        ("from sagemaker_containers import entry_point", "sagemaker_containers.entry_point is not available"),
        ("import sagemaker_containers.beta.framework.modules", "sagemaker_containers.beta.framework.modules is not"),
        ("from sagemaker_containers.record_pb2 import Record", "recordio_protobuf_to_dmatrix"),
        ("from sagemaker_xgboost_container.data_utils import get_dmatrix", "sagemaker_xgboost_container.data_utils"),
        ("from sagemaker_xgboost_container import distributed", "sagemaker_xgboost_container.distributed is not"),
        ("from sagemaker_xgboost_container.encoder import json_to_jsonlines", "encoder.json_to_jsonlines is not"),
    ],
)
def test_importing_what_the_stand_ins_lack_fails_at_load_with_one_line(
    tmp_path: pathlib.Path, imports: str, message: str
) -> None:
    model_dir = write_model(tmp_path, imports + "\n\ndef model_fn(model_dir):\n    return None\n")
    with pytest.raises(ScriptLoadError) as caught:
        worker_for(model_dir)
    line = str(caught.value)
    assert line.startswith("code/inference.py failed to import: ImportError: ")
    assert message in line
    assert "\n" not in line


def test_the_stand_ins_are_installed_with_openmme() -> None:
    # They are imported from the installed package's directory, so every one of their packages must be listed.
    import tomllib

    from openmme.handlers._compat import COMPAT_DIR

    packages = tomllib.loads((COMPAT_DIR.parents[3] / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    for init in COMPAT_DIR.rglob("__init__.py"):
        dotted = ".".join(("openmme", "handlers", *init.parent.relative_to(COMPAT_DIR.parent).parts))
        assert dotted in packages, f"{dotted} is missing from pyproject.toml's packages"


# --- loading -------------------------------------------------------------------------------------


def test_requirements_txt_is_not_installed_and_says_so(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    model_dir = write_model(tmp_path, LINEAR, **{"requirements.txt": "lightgbm==4.0\n"})
    with caplog.at_level(logging.WARNING, logger="openmme.handlers.script_service"):
        worker = worker_for(model_dir)
    assert [record.getMessage() for record in caplog.records].count(REQUIREMENTS_WARNING) == 1
    assert worker.invoke(b"[[1, 1, 1]]", {"Content-Type": "application/json"}).status == 200


def test_no_requirements_warning_without_requirements_txt(
    linear: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        worker_for(linear)
    assert REQUIREMENTS_WARNING not in caplog.text


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("def predict_fn(data, model):\n    return data\n", r"defines no model_fn\(model_dir\)"),
        (
            LINEAR + "\ndef transform_fn(model, body, content_type, accept):\n    return body\n",
            "transform_fn together with input_fn/predict_fn/output_fn",
        ),
        ("import openmme_no_such_module\n", "failed to import: ModuleNotFoundError: No module named"),
        (
            "def model_fn(model_dir):\n    raise OSError('weights.bin missing')\n",
            "failed: OSError: weights.bin missing",
        ),
    ],
    ids=["no-model_fn", "transform_fn-and-predict_fn", "import-error", "model_fn-raises"],
)
def test_a_script_that_cannot_load_fails_registration_clearly(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, source: str, message: str
) -> None:
    monkeypatch.setenv("OPENMME_LOAD_ERRORS_DIR", str(tmp_path))
    model_dir = write_model(tmp_path / "model", source)
    with pytest.raises(ScriptLoadError, match=message) as caught:
        worker_for(model_dir)
    assert "\n" not in str(caught.value)
    assert (tmp_path / "model.txt").read_text() == str(caught.value) + "\n"


def test_mms_model_loader_registers_and_serves_the_script_handler(
    linear: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fresh import, as in a new worker process: MMS imports the handler by its dotted name.
    monkeypatch.delitem(sys.modules, "openmme.handlers.script_service")
    service = MmsModelLoader().load("linear", str(linear), SCRIPT_HANDLER, None, 1)
    reply = MmsWorker.of_service(service).invoke(b"[[1, 1, 1]]", {"Content-Type": "application/json"})
    assert json.loads(reply.text) == [float(WEIGHTS.sum())]
