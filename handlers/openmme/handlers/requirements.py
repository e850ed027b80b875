"""A script model's ``code/requirements.txt``, as the front and the model's worker both read it: its requirement
lines normalized, the key of the environment built for them, and where that environment's packages are.

The front builds one environment per distinct set of requirements (``openmme.endpoint.environments``) under the
directory it names to MMS's workers in ``ENVIRONMENTS_VARIABLE``; the worker finds it again by the same key and
puts its packages on ``sys.path`` (``openmme.handlers.script_service``). Both sides must compute the same key
from the same file, which is why this module is the one place that does it. Cheap: the front imports it.
"""

from __future__ import annotations

import hashlib
import pathlib
import re

__all__ = [
    "ENVIRONMENTS_VARIABLE",
    "REQUIREMENTS_PATH",
    "environment_site",
    "read_requirements",
    "requirement_lines",
    "requirements_key",
]

# Where the front's built environments are, in the environment of MMS and so of every worker.
ENVIRONMENTS_VARIABLE = "OPENMME_ENVIRONMENTS_DIR"
# The file of a model archive that names its dependencies (SageMaker script mode's convention).
REQUIREMENTS_PATH = pathlib.PurePosixPath("code", "requirements.txt")

# pip's comment rule: "#" at the start of a line or after whitespace starts a comment.
_COMMENT = re.compile(r"(^|\s)#.*$")
_CONTINUATION = re.compile(r"\\\r?\n")


def requirement_lines(text: str) -> tuple[str, ...]:
    """The requirements of a requirements file as a sorted set of lines: comments, blank lines and whitespace at
    either end dropped, inner runs of whitespace made one space, continued lines (a final backslash) joined. Two
    files that differ only in order, comments, duplicates or spacing give the same lines."""
    lines = set()
    for raw in _CONTINUATION.sub("", text).splitlines():
        line = " ".join(_COMMENT.sub("", raw).split())
        if line:
            lines.add(line)
    return tuple(sorted(lines))


def requirements_key(lines: tuple[str, ...]) -> str:
    """The name of the environment built for ``lines`` (``requirement_lines``): a hash of them."""
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()[:24]


def read_requirements(model_dir: pathlib.Path) -> tuple[str, ...]:
    """Blocking: the requirement lines of ``<model_dir>/code/requirements.txt``; none without the file."""
    path = pathlib.Path(model_dir, REQUIREMENTS_PATH)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return ()
    return requirement_lines(text)


def environment_site(environments_dir: pathlib.Path, key: str) -> pathlib.Path:
    """The directory of the packages of environment ``key``: it exists only once the environment is complete (it
    is renamed into place whole)."""
    return pathlib.Path(environments_dir, key, "site")
