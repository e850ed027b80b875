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
from handler_harness import MmsWorker, Request, csv_body, npy_body
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
    [
        (csv_body(ROWS), "text/csv"),
        (json.dumps(ROWS.tolist()).encode(), "application/json"),
        (npy_body(ROWS), "application/x-npy"),
    ],
    ids=["csv", "json", "npy"],
)
def test_default_input_and_output_functions_serve_a_numpy_model(
    linear: pathlib.Path, body: bytes, content_type: str
) -> None:
    reply = worker_for(linear).invoke(body, {"Content-Type": content_type})
    assert reply.status == 200, reply.text
    # The toolkit's default Accept is JSON.
    assert reply.content_type == "application/json"
    assert ERROR_HEADER not in reply.headers
    assert json.loads(reply.text) == (ROWS @ WEIGHTS).tolist()


def test_default_output_function_encodes_csv_when_asked(linear: pathlib.Path) -> None:
    reply = worker_for(linear).invoke(csv_body(ROWS), {"content-type": "text/csv; charset=utf-8", "ACCEPT": "text/csv"})
    assert reply.content_type == "text/csv"
    assert [float(line) for line in reply.text.split()] == (ROWS @ WEIGHTS).tolist()


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
            Request(csv_body(ROWS[:1]), {"Content-Type": "text/csv", "Accept": "text/csv"}),
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
    reply = worker_for(linear).invoke(csv_body(ROWS), {"Content-Type": "text/csv", "Accept": "image/png"})
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
    assert reply.phrase == "Unprocessable Entity"


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
