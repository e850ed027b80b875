"""The ``openmme`` command line itself: its version, a ``serve --help`` that names every option's choices and
units, and one line on stderr (exit 2) for a bad argument or setting, never a traceback."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
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


def run_cli(*args: str, environ: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``openmme ARGS`` as a user runs it, without any ``OPENMME_`` setting of this process's but ``environ``."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("OPENMME_")}
    command = [sys.executable, "-m", "openmme.cli", *args]
    return subprocess.run(command, env={**env, **(environ or {})}, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("args", "environ", "says"),
    [
        (["serve", "--model-prefix", "models/prod"], {},
         "openmme serve: --model-prefix: not an S3 URI: 'models/prod' (expected s3://bucket/prefix)"),
        (["serve", "--port", "abc"], {}, "openmme serve: --port: not a port: 'abc' (1 to 65535)"),
        (["serve", "--port", "99999"], {}, "openmme serve: --port: not a port: '99999' (1 to 65535)"),
        (["serve"], {"OPENMME_MAX_MODELS": "lots"}, "openmme serve: OPENMME_MAX_MODELS: not a whole number: 'lots'"),
        (["serve", "--wait-budget", "soon"], {}, "openmme serve: --wait-budget: not a number: 'soon'"),
        (["serve", "--mms-heap", "lots"], {},
         "openmme serve: --mms-heap: not a Java heap size: 'lots' (examples: 512m, 2g)"),
        (["serve", "--bogus"], {}, "openmme serve: unrecognized arguments: --bogus"),
        (["serve", "--preload", "a.tar.gz"], {}, "openmme serve: --preload and --preload-top need --model-prefix"),
        (["bogus"], {}, "openmme: argument command: invalid choice: 'bogus'"),
        (["demo", "--port", "x"], {}, "openmme demo: argument --port: invalid int value: 'x'"),
        (["models", "list"], {}, "openmme models list: the following arguments are required: --prefix"),
    ],
)  # fmt: skip
def test_a_bad_argument_or_setting_is_one_line_saying_what_is_wrong_and_exit_2(
    args: list[str], environ: dict[str, str], says: str
) -> None:
    # --mms-start-timeout 0: should a refusal ever let serve through, it still ends before it could bind.
    refused = run_cli(*args, *(["--mms-start-timeout", "0"] if args[0] == "serve" else []), environ=environ)
    assert refused.returncode == 2, refused.stderr
    assert len(refused.stderr.splitlines()) == 1, refused.stderr
    assert refused.stderr.startswith(says)
    assert "Traceback" not in refused.stderr
    assert refused.stdout == ""
