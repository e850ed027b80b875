"""choose_handler / find_booster: which handler serves an extracted archive, and which file is the booster."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

from openmme.handlers import (
    ISOLATED,
    SCRIPT_HANDLER,
    SETTINGS_FILE_NAME,
    XGBOOST_HANDLER,
    UnsupportedArchive,
    choose_handler,
    choose_hosting,
    find_booster,
)


def make_files(root: pathlib.Path, *names: str) -> pathlib.Path:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"{}")
    return root


def test_training_output_name_wins_over_other_candidates(tmp_path: pathlib.Path) -> None:
    make_files(tmp_path, "xgboost-model", "other.json", "notes.bin")
    assert find_booster(tmp_path) == tmp_path / "xgboost-model"
    assert choose_handler(tmp_path) == XGBOOST_HANDLER


@pytest.mark.parametrize("name", ["model.json", "model.ubj", "m.bst", "a.model", "b.xgb", "c.bin", "UPPER.JSON"])
def test_a_single_file_with_a_booster_suffix_is_the_booster(tmp_path: pathlib.Path, name: str) -> None:
    make_files(tmp_path, name, "README.md", "sub/other.json")
    assert find_booster(tmp_path) == tmp_path / name
    assert choose_handler(tmp_path) == XGBOOST_HANDLER


def test_hidden_files_are_ignored(tmp_path: pathlib.Path) -> None:
    make_files(tmp_path, "model.json", "._model.json", ".hidden.bin")
    assert find_booster(tmp_path) == tmp_path / "model.json"


def test_several_candidates_are_ambiguous(tmp_path: pathlib.Path) -> None:
    make_files(tmp_path, "a.json", "b.ubj")
    with pytest.raises(UnsupportedArchive, match=r"2 candidate XGBoost model files .*a\.json, b\.ubj") as caught:
        find_booster(tmp_path)
    assert "\n" not in str(caught.value)
    with pytest.raises(UnsupportedArchive, match=r"^unsupported model archive: no code/inference\.py, and 2 candidate"):
        choose_handler(tmp_path)


def test_nothing_servable_says_what_was_looked_for(tmp_path: pathlib.Path) -> None:
    make_files(tmp_path, "README.md", "code/helper.py", "xgboost-model/inner.json")
    with pytest.raises(UnsupportedArchive) as caught:
        choose_handler(tmp_path)
    message = str(caught.value)
    assert "code/inference.py" in message
    assert "'xgboost-model'" in message
    assert ".json, .ubj, .bst, .model, .xgb, .bin" in message
    assert "\n" not in message


def test_missing_directory_is_unsupported(tmp_path: pathlib.Path) -> None:
    with pytest.raises(UnsupportedArchive, match="does not exist"):
        find_booster(tmp_path / "absent")


def test_a_script_wins_over_a_booster(tmp_path: pathlib.Path) -> None:
    make_files(tmp_path, "code/inference.py", "xgboost-model")
    assert choose_handler(tmp_path) == SCRIPT_HANDLER


def test_handler_names_are_importable_module_functions() -> None:
    for handler in (XGBOOST_HANDLER, SCRIPT_HANDLER):
        module_name, function_name = handler.split(":")
        module = __import__(module_name, fromlist=[function_name])
        assert callable(getattr(module, function_name))


def test_the_package_imports_no_ml_framework() -> None:
    # The front imports openmme.handlers; a fresh interpreter shows what that pulls in.
    code = (
        "import sys, openmme.handlers; "
        "heavy = {'xgboost', 'numpy', 'scipy', 'sagemaker_inference', 'mms'} & set(sys.modules); "
        "print(sorted(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("settings", "default", "hosting"),
    [
        (None, "dense", "dense"),
        (None, "isolated", "isolated"),
        ('{"hosting": "isolated"}', "dense", "isolated"),
        ('{"hosting": "dense"}', "isolated", "dense"),
        ("{}", "isolated", "isolated"),
    ],
)
def test_a_booster_follows_its_archive_settings_else_the_endpoint(
    tmp_path: pathlib.Path, settings: str | None, default: str, hosting: str
) -> None:
    make_files(tmp_path, "xgboost-model")
    if settings is not None:
        (tmp_path / SETTINGS_FILE_NAME).write_text(settings)
    assert choose_hosting(tmp_path, XGBOOST_HANDLER, default) == hosting


def test_a_user_script_is_isolated_whatever_it_asks_for(tmp_path: pathlib.Path) -> None:
    make_files(tmp_path, "code/inference.py")
    (tmp_path / SETTINGS_FILE_NAME).write_text('{"hosting": "dense"}')
    assert choose_hosting(tmp_path, SCRIPT_HANDLER, "dense") == ISOLATED


@pytest.mark.parametrize("settings", ["{", '{"hosting": "shared"}', '["dense"]', '{"hosting": 1}'])
def test_malformed_archive_settings_are_refused_with_the_file_named(tmp_path: pathlib.Path, settings: str) -> None:
    make_files(tmp_path, "xgboost-model")
    (tmp_path / SETTINGS_FILE_NAME).write_text(settings)
    with pytest.raises(UnsupportedArchive, match=re.escape(SETTINGS_FILE_NAME)):
        choose_hosting(tmp_path, XGBOOST_HANDLER, "dense")


def test_the_settings_file_is_never_taken_for_a_json_booster(tmp_path: pathlib.Path) -> None:
    make_files(tmp_path, "houston.json", SETTINGS_FILE_NAME)
    assert find_booster(tmp_path) == tmp_path / "houston.json"
    assert choose_handler(tmp_path) == XGBOOST_HANDLER


def test_unknown_archive_settings_are_refused_by_name(tmp_path: pathlib.Path) -> None:
    make_files(tmp_path, "xgboost-model")
    (tmp_path / SETTINGS_FILE_NAME).write_text('{"hosting": "isolated", "hostng": "dense"}')
    with pytest.raises(UnsupportedArchive, match="unknown settings hostng"):
        choose_hosting(tmp_path, XGBOOST_HANDLER, "dense")
