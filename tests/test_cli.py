"""The ``openmme`` command line itself: its version, and a ``serve --help`` that names every option's choices
and units."""

from __future__ import annotations

import dataclasses
import re
from importlib.metadata import version

import pytest

from openmme.cli import main
from openmme.endpoint.settings import Settings, parse_bytes


def test_version_is_the_installed_packages(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"openmme {version('openmme')}\n"


@pytest.fixture(scope="module")
def serve_help() -> str:
    return " ".join(Settings.argument_parser().format_help().split())  # one line: no wrapping in the way


@pytest.mark.parametrize(
    ("flag", "shown"),
    [
        ("--hosting", "{dense,isolated}"),
        ("--auth", "{sigv4,none}"),
        ("--log-level", "{DEBUG,INFO,WARNING,ERROR}"),
        ("--memory-budget", "SIZE"),
        ("--disk-budget", "SIZE"),
        ("--max-archive-bytes", "SIZE"),
        ("--wait-budget", "SECONDS"),
        ("--mms-start-timeout", "SECONDS"),
        ("--response-timeout", "SECONDS"),
        ("--mms-heap", "JAVA_SIZE"),
        ("--port", "PORT"),
        ("--cache-dir", "DIR"),
    ],
)
def test_serve_help_names_choices_and_units(serve_help: str, flag: str, shown: str) -> None:
    assert f"{flag} {shown} " in serve_help


def test_serve_help_explains_its_units_and_shows_sizes_in_them(serve_help: str) -> None:
    assert "SIZE: bytes, or a number with a unit: 500MB, 8GiB" in serve_help
    assert "SECONDS may have a fraction" in serve_help
    assert "[env OPENMME_MAX_ARCHIVE_BYTES; default 8GiB]" in serve_help


def test_every_sized_or_timed_option_says_its_unit(serve_help: str) -> None:
    # A setting parsed as a size or in seconds (a float) without its unit in --help would be guessed at.
    for spec in dataclasses.fields(Settings):
        flag = "--" + spec.name.replace("_", "-")
        shown = re.search(rf"{flag} ([^\s\]]+)", serve_help)
        assert shown is not None, flag
        if spec.type in ("float", float):
            assert shown.group(1) == ("PERCENT" if flag.endswith("-percentage") else "SECONDS"), flag
        if spec.metadata["parse"] is parse_bytes:
            assert shown.group(1) == "SIZE", flag


def test_a_log_level_is_checked(capsys: pytest.CaptureFixture[str]) -> None:
    assert Settings.from_sources(["--log-level", "debug"], {}).log_level == "DEBUG"
    with pytest.raises(SystemExit):
        Settings.from_sources(["--log-level", "loud"], {})
    assert "not a log level: 'loud' (DEBUG, INFO, WARNING, ERROR)" in capsys.readouterr().err
