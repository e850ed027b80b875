"""The shell scripts a newcomer runs: scripts/lint judges only what the repository tracks, and scripts/install refuses
an interpreter older than openmme's floor in one line, before it installs anything."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(sys.executable).parent.parent


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_lint_judges_tracked_files_and_ignores_a_users_scratch_file(tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "lint", tmp_path / "scripts" / "lint")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "clean.py").write_text('"""Clean."""\n\nVALUE = 1\n')
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    (tmp_path / "snippet.py").write_text("import os,sys\nx=1\n")  # unused imports, unformatted: a README snippet tried

    def lint() -> subprocess.CompletedProcess[str]:
        environ = {**os.environ, "OPENMME_VENV": str(VENV)}
        return subprocess.run(["scripts/lint"], cwd=tmp_path, env=environ, capture_output=True, text=True)

    untracked = lint()
    assert untracked.returncode == 0, untracked.stdout + untracked.stderr
    git(tmp_path, "add", "snippet.py")
    tracked = lint()
    assert tracked.returncode != 0
    assert "snippet.py" in tracked.stdout


def test_install_refuses_an_interpreter_below_the_floor_in_one_line(tmp_path: Path) -> None:
    old = tmp_path / "python3.10"
    old.write_text("#!/bin/sh\nexit 1\n")  # fails the version check, as Python 3.10 does
    old.chmod(0o755)
    venv = tmp_path / "venv"
    result = subprocess.run(
        [ROOT / "scripts" / "install"],
        env={**os.environ, "PYTHON": str(old), "OPENMME_VENV": str(venv)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == f"openmme install: PYTHON={old} is not Python 3.11 or newer; point it at one"
    assert not venv.exists()
