"""Pure parts of publishing, without S3: names, URIs, packaging, the progress line, the local check."""

from __future__ import annotations

import io
import json
import tarfile
import textwrap
from pathlib import Path

import pytest
import xgboost

from openmme.handlers import XGBOOST_HANDLER
from openmme.publish import (
    InvalidPrefix,
    InvalidTargetModel,
    ModelCheckFailed,
    ProgressLine,
    check_model_dir,
    pack_directory,
    package,
    target_model_for,
)
from openmme.publish._s3 import check_target_model, parse_object_uri, parse_prefix
from openmme.publish.check import content_type_for
from openmme.publish.progress import format_size


@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("houston", "houston/model.tar.gz"),
        ("houston/", "houston/model.tar.gz"),
        ("us/houston", "us/houston/model.tar.gz"),
        ("houston/model-v2.tar.gz", "houston/model-v2.tar.gz"),
        ("houston.tgz", "houston.tgz"),
    ],
)
def test_a_name_stands_for_a_target_model(name: str, target: str) -> None:
    assert target_model_for(name) == target


@pytest.mark.parametrize("prefix", ["models/prod/", "https://models/prod/", "s3:///prod/", "s3://a b/", "s3://x/"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(InvalidPrefix):
        parse_prefix(prefix)


def test_a_prefix_without_trailing_slash_is_a_folder_as_for_the_endpoint() -> None:
    assert str(parse_prefix("s3://models/prod")) == "s3://models/prod/"


@pytest.mark.parametrize("target", ["", "/abs.tar.gz", "a//b.tar.gz", "a/./b", "../x", "x" * 1025, "tab\there"])
def test_names_the_endpoint_refuses_are_refused(target: str) -> None:
    with pytest.raises(InvalidTargetModel):
        check_target_model(target)


def test_an_artifact_uri_is_one_object() -> None:
    assert str(parse_object_uri("s3://out/job/output/model.tar.gz")) == "s3://out/job/output/model.tar.gz"
    with pytest.raises(ValueError, match="names an S3 prefix"):
        parse_object_uri("s3://out/job/output/model/")


def test_packing_skips_bytecode_follows_links_and_is_reproducible(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text("{}")
    model = tmp_path / "model"
    (model / "code" / "__pycache__").mkdir(parents=True)
    (model / "code" / "inference.py").write_text("")
    (model / "code" / "__pycache__" / "inference.cpython-311.pyc").write_bytes(b"stale")
    (model / "model.json").symlink_to(elsewhere)

    archive = pack_directory(model)

    assert archive == pack_directory(model)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        members = {member.name: member for member in tar.getmembers()}
        assert sorted(members) == ["code", "code/inference.py", "model.json"]
        assert members["model.json"].isfile() and members["model.json"].uname == ""


def test_a_bare_file_is_packed_alone_at_the_root_and_an_archive_is_used_as_is(tmp_path: Path) -> None:
    booster = tmp_path / "houston.json"
    booster.write_text("{}")
    archive = tmp_path / "given.tar.gz"
    archive.write_bytes(b"not even a tar: the check will say so")
    (tmp_path / "work").mkdir()

    packed = package(booster, tmp_path / "work")

    with tarfile.open(packed) as tar:
        assert tar.getnames() == ["houston.json"]
    assert package(archive, tmp_path / "work") == archive
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelCheckFailed, match="empty directory"):
        package(tmp_path / "empty", tmp_path / "work")


def test_the_progress_line_ends_at_the_total() -> None:
    stream = io.StringIO()
    line = ProgressLine(stream, width=10, interval=0)

    line.start("uploading s3://m/p/x.tar.gz", 3 * 1024 * 1024)
    for _ in range(3):
        line.advance(1024 * 1024)
    line.finish()

    frames = stream.getvalue().split("\r")[1:]
    assert frames[-1] == "uploading s3://m/p/x.tar.gz [##########] 100%  3.0 MiB / 3.0 MiB\x1b[K\n"
    assert "[###-------]  33%  1.0 MiB / 3.0 MiB" in frames[1]


@pytest.mark.parametrize(("size", "text"), [(0, "0 B"), (1536, "1.5 KiB"), (5 * 1024**3, "5.0 GiB")])
def test_sizes_read_as_binary_units(size: int, text: str) -> None:
    assert format_size(size) == text


@pytest.mark.parametrize(("suffix", "content_type"), [(".csv", "text/csv"), (".JSON", "application/json"),
                                                      (".npy", "application/x-npy"), (".txt", "text/csv")])  # fmt: skip
def test_the_sample_content_type_comes_from_the_suffix(suffix: str, content_type: str) -> None:
    assert content_type_for(Path(f"rows{suffix}")) == content_type


def test_the_check_loads_a_booster_with_the_xgboost_handler(tmp_path: Path) -> None:
    booster = xgboost.train({"objective": "reg:squarederror"}, xgboost.DMatrix([[1.0, 2.0], [3.0, 4.0]], [1, 2]), 2)
    (tmp_path / "xgboost-model").write_bytes(bytes(booster.save_raw("ubj")))

    report = check_model_dir(tmp_path, sample=b"1.0,2.0")

    assert report.handler == XGBOOST_HANDLER
    assert report.sample_reply is not None
    assert report.sample_reply.body == json.dumps(booster.predict(xgboost.DMatrix([[1.0, 2.0]])).tolist()).encode()


def test_a_script_at_the_root_gets_a_hint(tmp_path: Path) -> None:
    (tmp_path / "inference.py").write_text("def model_fn(model_dir):\n    return None\n")

    with pytest.raises(ModelCheckFailed, match="move it to code/"):
        check_model_dir(tmp_path)


def test_a_script_whose_model_fn_fails_is_refused_with_its_reason(tmp_path: Path) -> None:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "inference.py").write_text(
        textwrap.dedent(
            """
            def model_fn(model_dir):
                raise FileNotFoundError("model.pt is missing")
            """
        )
    )

    with pytest.raises(ModelCheckFailed, match=r"the model does not load: .*model\.pt is missing"):
        check_model_dir(tmp_path)


def test_warnings_of_the_handler_are_reported(tmp_path: Path) -> None:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "inference.py").write_text("def model_fn(model_dir):\n    return 'model'\n")
    (tmp_path / "code" / "requirements.txt").write_text("torch\n")

    report = check_model_dir(tmp_path)

    assert report.warnings == ("code/requirements.txt is installed only by openmme serve (into an environment of "
                               "the model's own); here its packages must already be importable",)  # fmt: skip
