"""Publishing local models (an archive, a directory, a bare booster file, a script project) into the real
SeaweedFS: what lands in S3, what the endpoint then serves, and that every refusal leaves nothing behind."""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xgboost

from openmme.cli import main
from openmme.handlers import SCRIPT_HANDLER, XGBOOST_HANDLER
from openmme.publish import ArtifactExists, ModelCheckFailed, publish_archive, publish_path, write_archive
from openmme.publish.samples import make_rows, sample_archive
from tests.conftest import BUCKET, EndpointFactory
from tests.publish.conftest import keys_under, read_object, unfinished_uploads
from tests.support import make_tar, run_on_a_terminal

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


def csv_body(rows: np.ndarray) -> str:
    return "\n".join(",".join(repr(float(value)) for value in row) for row in rows)


def expected(booster: xgboost.Booster, rows: np.ndarray) -> list[float]:
    return [float(value) for value in booster.predict(xgboost.DMatrix(rows))]


def booster_file(booster: xgboost.Booster, path: Path, fmt: str = "ubj") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(booster.save_raw(fmt)))
    return path


def key_of(uri: str) -> str:
    return uri.split("/", 3)[3]


def test_every_kind_of_local_model_publishes_and_serves_xgboosts_predictions(
    tmp_path: Path,
    prefix: str,
    s3_client: Any,
    boosters: dict[str, xgboost.Booster],
    start_endpoint: EndpointFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    binary, regression = boosters["binary:logistic"], boosters["reg:squarederror"]
    archive = tmp_path / "archive" / "model.tar.gz"
    archive.parent.mkdir()
    archive.write_bytes(sample_archive(binary))
    directory = tmp_path / "directory"
    booster_file(regression, directory / "xgboost-model")
    (directory / "notes.txt").write_text("trained on 2024-05-01\n")
    rows_csv = tmp_path / "rows.csv"
    rows_csv.write_text(csv_body(make_rows(3, seed=2)))
    local = {
        "archive": (archive, binary),
        "directory": (directory, regression),
        "json": (booster_file(binary, tmp_path / "json" / "houston.json", "json"), binary),
        "ubj": (booster_file(regression, tmp_path / "ubj" / "model.ubj"), regression),
    }

    for name, (path, _) in local.items():
        assert main(["publish", "path", str(path), "--prefix", prefix, "--name", name, "--sample", str(rows_csv)]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0].startswith(
            f"checked {path}: loads with the XGBoost handler; the sample answered 200 (application/json)"
        )
        assert out[1:] == [f"published {prefix}{name}/model.tar.gz", f"TargetModel: {name}/model.tar.gz"]

    # An archive is published as it is.
    assert read_object(s3_client, f"{prefix}archive/model.tar.gz") == archive.read_bytes()
    endpoint = start_endpoint(prefix)
    rows = make_rows(5, seed=9)
    for name, (_, booster) in local.items():
        response = endpoint.runtime().invoke_endpoint(
            EndpointName=endpoint.name, TargetModel=f"{name}/model.tar.gz", ContentType="text/csv", Body=csv_body(rows)
        )
        assert json.loads(response["Body"].read()) == expected(booster, rows), name


def test_a_script_project_is_checked_by_running_its_model_fn_and_leaves_no_trace_here(
    tmp_path: Path, prefix: str, s3_client: Any, boosters: dict[str, xgboost.Booster]
) -> None:
    booster = boosters["reg:squarederror"]
    project = tmp_path / "project"
    booster_file(booster, project / "model.json", "json")
    (project / "code").mkdir()
    (project / "code" / "scaling.py").write_text("FACTOR = 2.0\n")
    (project / "code" / "inference.py").write_text(
        textwrap.dedent(
            """
            import os
            import numpy as np
            import xgboost
            from scaling import FACTOR

            def model_fn(model_dir):
                booster = xgboost.Booster()
                booster.load_model(os.path.join(model_dir, "model.json"))
                return booster

            def predict_fn(data, model):
                # The default input_fn hands over a DMatrix, as in SageMaker's XGBoost container.
                return model.predict(data) * FACTOR

            def output_fn(prediction, accept):
                return ",".join(repr(float(value)) for value in prediction), "text/csv"
            """
        )
    )
    rows = make_rows(4, seed=3)
    path_before, modules_before = list(sys.path), set(sys.modules)

    publication = publish_path(project, prefix, "script/model.tar.gz", sample=csv_body(rows).encode())

    assert publication.check is not None and publication.check.handler == SCRIPT_HANDLER
    assert publication.check.sample_reply is not None
    answered = [float(value) for value in publication.check.sample_reply.body.decode().split(",")]
    assert answered == [value * 2.0 for value in expected(booster, rows.astype(np.float64))]
    assert sys.path == path_before
    assert {name for name in set(sys.modules) - modules_before if name.startswith("openmme_user_")} == set()
    assert "scaling" not in sys.modules
    with tarfile.open(fileobj=io.BytesIO(read_object(s3_client, publication.uri))) as tar:
        assert sorted(tar.getnames()) == ["code", "code/inference.py", "code/scaling.py", "model.json"]


def test_an_archive_above_the_threshold_is_uploaded_in_parts(
    tmp_path: Path, prefix: str, s3_client: Any, boosters: dict[str, xgboost.Booster]
) -> None:
    directory = tmp_path / "big"
    booster_file(boosters["binary:logistic"], directory / "xgboost-model")
    # Random bytes do not compress: the archive stays above 10 MiB.
    (directory / "embeddings.bin").write_bytes(np.random.default_rng(1).bytes(11 * MiB))
    archive = write_archive(directory, tmp_path / "model.tar.gz")

    publication = publish_path(archive, prefix, "big/model.tar.gz", multipart_threshold=5 * MiB,
                               multipart_chunksize=5 * MiB)  # fmt: skip

    assert publication.check is not None and publication.check.handler == XGBOOST_HANDLER
    assert read_object(s3_client, publication.uri) == archive.read_bytes()
    etag = s3_client.head_object(Bucket=BUCKET, Key=key_of(publication.uri))["ETag"]
    assert etag.strip('"').endswith("-3")
    assert unfinished_uploads(s3_client, BUCKET) == []


class FailingMidway:
    """A progress sink that breaks the transfer once bytes flow, after noting the multipart uploads in flight."""

    def __init__(self, s3_client: Any) -> None:
        self.s3_client = s3_client
        self.in_flight: list[str] = []

    def start(self, label: str, total: int) -> None:
        pass

    def advance(self, transferred: int) -> None:
        if not self.in_flight:
            self.in_flight = unfinished_uploads(self.s3_client, BUCKET)
        raise ConnectionResetError("the network went away")

    def finish(self) -> None:
        pass


def test_a_multipart_upload_that_fails_midway_is_aborted(tmp_path: Path, prefix: str, s3_client: Any) -> None:
    archive = np.random.default_rng(2).bytes(12 * MiB)
    progress = FailingMidway(s3_client)

    with pytest.raises(ConnectionResetError):
        publish_archive(archive, prefix, "broken/model.tar.gz", multipart_threshold=5 * MiB,
                        multipart_chunksize=5 * MiB, progress=progress)  # fmt: skip

    assert progress.in_flight == [f"{key_of(prefix)}broken/model.tar.gz"]
    assert keys_under(s3_client, prefix) == []
    assert unfinished_uploads(s3_client, BUCKET) == []


# Each refusal case changes some of the command's parts: "local", "prefix", "name", "extra" (more flags).
Parts = dict[str, list[str]]


def _existing(workdir: Path, prefix: str, booster: xgboost.Booster) -> Parts:
    publish_archive(sample_archive(booster), prefix, "houston/model.tar.gz")
    return {"name": ["--name", "houston"]}


def _no_model(workdir: Path, prefix: str, booster: xgboost.Booster) -> Parts:
    (workdir / "README.md").write_text("nothing to serve\n")
    return {"local": [str(workdir)]}


def _corrupt_booster(workdir: Path, prefix: str, booster: xgboost.Booster) -> Parts:
    (workdir / "xgboost-model").write_bytes(b'{"learner": truncated')
    return {"local": [str(workdir)]}


def _pickled_booster(workdir: Path, prefix: str, booster: xgboost.Booster) -> Parts:
    (workdir / "xgboost-model").write_bytes(pickle.dumps(booster))
    return {"local": [str(workdir)]}


def _wrong_sample(workdir: Path, prefix: str, booster: xgboost.Booster) -> Parts:
    (workdir / "rows.csv").write_text("1.0,2.0,3.0\n")
    return {"extra": ["--sample", str(workdir / "rows.csv")]}


def _hostile_archive(workdir: Path, prefix: str, booster: xgboost.Booster) -> Parts:
    (workdir / "model.tar.gz").write_bytes(make_tar([(tarfile.TarInfo("../escape.txt"), b"x")]))
    return {"local": [str(workdir / "model.tar.gz")]}


def _nested_directory(workdir: Path, prefix: str, booster: xgboost.Booster) -> Parts:
    booster_file(booster, workdir / "source" / "model" / "xgboost-model")
    return {"local": [str(write_archive(workdir / "source", workdir / "model.tar.gz"))]}


def _unmet_requirements(workdir: Path, prefix: str, booster: xgboost.Booster) -> Parts:
    (workdir / "featurizer" / "code").mkdir(parents=True)
    (workdir / "featurizer" / "code" / "inference.py").write_text(
        "import sklearn\n\n\ndef model_fn(d):\n    return 1\n"
    )
    (workdir / "featurizer" / "code" / "requirements.txt").write_text("scikit-learn\n")
    return {"local": [str(workdir / "featurizer")]}


def _missing_file(workdir: Path, prefix: str, booster: xgboost.Booster) -> Parts:
    return {"local": [str(workdir / "nothing-here.tar.gz")]}


def _prefix(uri: str) -> Any:
    return lambda workdir, prefix, booster: {"prefix": ["--prefix", uri]}


def _name(name: str) -> Any:
    return lambda workdir, prefix, booster: {"name": ["--name", name]}


REFUSALS = {
    "existing name": (_existing, "exists; endpoints keep serving the copy they cached, so publish a changed model "
                      "under a new name, e.g. houston/model-v2.tar.gz (or replace it with --overwrite)"),
    "bucket missing": (_prefix("s3://no-such-bucket/prod/"), "bucket 'no-such-bucket' of s3://no-such-bucket/prod/ "
                       "does not exist"),
    "no scheme": (_prefix("models/prod/"), "not an S3 URI: 'models/prod/' (expected s3://bucket/prefix/)"),
    "no bucket": (_prefix("s3:///prod/"), "no bucket in S3 URI: 's3:///prod/'"),
    "bad bucket": (_prefix("s3://my models/prod/"), "'my models' is not a valid S3 bucket name"),
    "dot-dot name": (_name("../x.tar.gz"), "TargetModel must not contain empty, '.' or '..' path segments"),
    "leading space": (_name(" x.tar.gz"), "TargetModel must be printable characters and must not start with a space"),
    "no model": (_no_model, "unsupported model archive: no code/inference.py, and no XGBoost model file"),
    "corrupt booster": (_corrupt_booster, "the model does not load: xgboost-model is not a valid XGBoost JSON/UBJSON"),
    "pickle": (_pickled_booster, "the model does not load: xgboost-model is a Python pickle"),
    "sample refused": (_wrong_sample, "the sample request failed with 400:"),
    "hostile archive": (_hostile_archive, "the endpoint would refuse model.tar.gz: member '../escape.txt' points "
                        "outside the archive"),
    "nested directory": (_nested_directory, "everything is inside model/: pack that directory's contents"),
    "missing file": (_missing_file, "nothing-here.tar.gz does not exist"),
    "requirements not here": (_unmet_requirements, "No module named 'sklearn' (code/requirements.txt is installed by "
                              "the endpoint, into an environment of the model's own, not into this process: publish "
                              "with --skip-check"),
}  # fmt: skip


@pytest.mark.parametrize("case", REFUSALS, ids=list(REFUSALS))
def test_a_refusal_is_one_line_a_nonzero_exit_and_nothing_written(
    case: str,
    tmp_path: Path,
    prefix: str,
    s3_client: Any,
    boosters: dict[str, xgboost.Booster],
    capsys: pytest.CaptureFixture[str],
) -> None:
    make_parts, message = REFUSALS[case]
    booster = boosters["binary:logistic"]
    workdir = tmp_path / "case"
    workdir.mkdir()
    parts: Parts = {
        "local": [str(booster_file(booster, tmp_path / "good" / "model.ubj"))],
        "prefix": ["--prefix", prefix],
        "name": ["--name", "dallas"],
        "extra": [],
    }
    parts.update(make_parts(workdir, prefix, booster))
    before = {key: read_object(s3_client, f"s3://{BUCKET}/{key}") for key in keys_under(s3_client, prefix)}

    code = main(["publish", "path", *parts["local"], *parts["prefix"], *parts["name"], *parts["extra"]])

    stderr = capsys.readouterr().err
    assert code == 1
    assert len(stderr.splitlines()) == 1 and stderr.startswith("openmme publish: "), stderr
    assert message in stderr
    after = {key: read_object(s3_client, f"s3://{BUCKET}/{key}") for key in keys_under(s3_client, prefix)}
    assert after == before
    assert unfinished_uploads(s3_client, BUCKET) == []


@pytest.mark.parametrize(
    ("taken", "suggested"),
    [
        (["houston/model.tar.gz", "houston/model-v2.tar.gz"], "houston/model-v3.tar.gz"),
        (["houston/model-v7.tar.gz"], "houston/model-v8.tar.gz"),
        (["houston/xgboost-model"], "houston/xgboost-model-v2"),
    ],
)
def test_the_suggested_name_is_the_next_free_version(prefix: str, taken: list[str], suggested: str) -> None:
    for name in taken:
        publish_archive(b"model", prefix, name)

    with pytest.raises(ArtifactExists) as refused:
        publish_archive(b"changed model", prefix, taken[0])

    assert refused.value.suggestion == suggested


def test_overwrite_replaces_the_archive(
    tmp_path: Path, prefix: str, s3_client: Any, boosters: dict[str, xgboost.Booster]
) -> None:
    publish_archive(sample_archive(boosters["binary:logistic"]), prefix, "houston/model.tar.gz")
    replacement = tmp_path / "model.tar.gz"
    replacement.write_bytes(sample_archive(boosters["reg:squarederror"]))

    assert main(["publish", "path", str(replacement), "--prefix", prefix, "--name", "houston", "--overwrite"]) == 0

    assert read_object(s3_client, f"{prefix}houston/model.tar.gz") == replacement.read_bytes()


def test_skip_check_publishes_what_this_machine_cannot_load(tmp_path: Path, prefix: str, s3_client: Any) -> None:
    project = tmp_path / "torch-project"
    (project / "code").mkdir(parents=True)
    (project / "code" / "inference.py").write_text("import torch\n\ndef model_fn(model_dir):\n    return None\n")

    with pytest.raises(ModelCheckFailed, match="No module named 'torch'"):
        publish_path(project, prefix, "torch/model.tar.gz")
    publication = publish_path(project, prefix, "torch/model.tar.gz", check=False)

    assert publication.check is None
    assert keys_under(s3_client, prefix) == [f"{key_of(prefix)}torch/model.tar.gz"]


def test_the_progress_bar_shows_on_a_terminal_only(tmp_path: Path, prefix: str, boosters: Any) -> None:
    model = booster_file(boosters["binary:logistic"], tmp_path / "model.ubj")
    command = [sys.executable, "-m", "openmme.cli", "publish", "path", str(model), "--prefix", prefix]
    process, terminal, _ = run_on_a_terminal([*command, "--name", "tty"])
    assert process.wait(60) == 0
    piped = subprocess.run([*command, "--name", "pipe"], capture_output=True, text=True, timeout=120)

    assert f"uploading {prefix}tty/model.tar.gz [########################] 100%" in terminal.decode()
    assert piped.returncode == 0 and piped.stderr == ""


def test_hosting_is_written_into_the_archive_and_the_endpoint_follows_it(
    tmp_path: Path,
    prefix: str,
    s3_client: Any,
    boosters: dict[str, xgboost.Booster],
    start_endpoint: EndpointFactory,
) -> None:
    booster = boosters["binary:logistic"]
    directory = tmp_path / "directory"
    booster_file(booster, directory / "xgboost-model")
    (directory / "openmme.json").write_text('{"hosting": "dense"}')  # replaced, not duplicated
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(sample_archive(booster))
    bare = booster_file(booster, tmp_path / "bare" / "houston.ubj")  # a .json or .ubj file beside openmme.json
    sources = {"from-dir": directory, "from-archive": archive, "from-file": bare}
    for name, path in sources.items():
        command = ["publish", "path", str(path), "--prefix", prefix, "--name", name, "--hosting", "isolated"]
        assert main(command) == 0
        data = read_object(s3_client, f"{prefix}{name}/model.tar.gz")
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            names = [member.name.removeprefix("./") for member in tar]
            assert names.count("openmme.json") == 1 and ("xgboost-model" in names or "houston.ubj" in names)
            settings = tar.extractfile(next(m for m in tar if m.name.endswith("openmme.json")))
            assert settings is not None and settings.read() == b'{"hosting": "isolated"}'
    assert directory.joinpath("openmme.json").read_text() == '{"hosting": "dense"}'  # the user's files untouched

    endpoint = start_endpoint(prefix, "--hosting", "dense")
    rows = make_rows(3, seed=4)
    for name in sources:
        response = endpoint.runtime().invoke_endpoint(
            EndpointName=endpoint.name, TargetModel=f"{name}/model.tar.gz", ContentType="text/csv", Body=csv_body(rows)
        )
        assert json.loads(response["Body"].read()) == expected(booster, rows)
        assert endpoint.models()[f"{name}/model.tar.gz"]["hosting"] == "isolated"


@pytest.mark.parametrize("settings", ['{"hosting": "shared"}', '{"hosting": "isolated"', '{"workers": 2}'])
def test_malformed_archive_settings_are_refused_before_anything_is_written(
    tmp_path: Path, prefix: str, s3_client: Any, boosters: dict[str, xgboost.Booster], settings: str
) -> None:
    directory = tmp_path / "model"
    booster_file(boosters["binary:logistic"], directory / "xgboost-model")
    (directory / "openmme.json").write_text(settings)
    with pytest.raises(ModelCheckFailed, match=r"openmme\.json"):
        publish_path(directory, prefix, "odd/model.tar.gz", client=s3_client)
    assert keys_under(s3_client, prefix) == []
