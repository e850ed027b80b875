"""Per-model dependencies: the environment a script model's ``code/requirements.txt`` is installed into.

SageMaker's multi-model endpoints never install a model archive's requirements (the inference toolkit installs
one ``code/requirements.txt`` at container start, read from the model directory's root, which in multi-model mode
holds no model). openmme builds each distinct set of requirements once, in the background, into a directory of
its own under ``<cache-dir>/environments/<key>`` (the key: a hash of the normalized lines, see
``openmme.handlers.requirements``), and the model's worker appends that directory to its ``sys.path``.

How an environment is built, and why:

- A thin virtual environment (``python -m venv --without-pip``, on this interpreter) whose site-packages holds
  one ``.pth`` line naming openmme's own site-packages; this interpreter's pip runs inside it. pip then sees
  every package openmme has as installed and installs only what is missing, into the thin environment; a
  package outside the environment is never uninstalled or changed (pip refuses to touch what is "outside
  environment"), so openmme's own environment stays as it was.
- Every package openmme has is pinned as a constraint (``-c``, name==version): the worker has imported numpy,
  xgboost and the toolkit before the model's code runs, so a requirement that needs another version of one of
  them cannot be honoured in that process. Its build fails with pip's own resolver message (a clear
  ``ModelError``), rather than a model that loads a second numpy against the first, or a compiled extension
  built for another numpy ABI. No package openmme has is ever copied into an environment.
- Wheels only (``--only-binary :all:``): installing a wheel runs none of its code, while building a source
  distribution would run a tenant-chosen ``setup.py`` inside the front. Lines that would change where packages
  come from (options such as ``--index-url`` or ``-e``, URLs, local paths) are refused: the operator chooses the
  source, pip's own settings (``PIP_INDEX_URL``, ``pip.conf``, proxies, certificates) passing through, or
  ``--wheelhouse DIR`` (``--no-index --find-links DIR``) for machines without an index.
- pip writes into ``.build-<pid>-<key>-<random>``; the finished ``site`` directory is renamed into place whole,
  so a half-built environment (a build killed, a second process, a crash) is never taken for a built one, and
  the leftovers of a dead build are swept before the next one.

One build per key at a time (single flight: models with the same requirements wait on the same build), at most
``MAX_CONCURRENT_BUILDS`` at once, each stopped after ``--environment-build-timeout``; a failure is remembered
for ``FAILED_BUILD_RETRY_S`` (the loads of that time get the same error at once), then a new build is tried.
Environments over ``--environments-budget`` are deleted least recently used first, never one a loaded (or
loading) model uses. Each build event is one JSON line of the event log; pip's output goes to
``<cache-dir>/environments/<key>.log``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import secrets
import shutil
import signal
import site
import subprocess
import sys
import sysconfig
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil

from openmme.endpoint.logs import event_log, log_json
from openmme.endpoint.settings import Settings
from openmme.handlers._lifetime import die_with_parent, parent_death_setter
from openmme.handlers.requirements import environment_site

__all__ = [
    "FAILED_BUILD_RETRY_S",
    "MAX_CONCURRENT_BUILDS",
    "BuildFailed",
    "Environments",
    "RequirementsRefused",
    "check_requirements",
]

log = logging.getLogger(__name__)

# A failed build answers the loads of this many seconds at once (pip is not run again for each request).
FAILED_BUILD_RETRY_S = 30.0
# Builds run at once at most (each is a pip process: CPU and network).
MAX_CONCURRENT_BUILDS = 2

_BUILDING_PREFIX = ".build-"
_MANIFEST = "manifest.json"
_BASE_PTH = "_openmme_base.pth"
# The most of pip's last error line put into a client's message.
_REASON_CHARS = 400
# Variables that would make pip install somewhere else, or other than asked: not passed to a build.
_PIP_LOCATION_VARIABLES = frozenset(
    {"PIP_TARGET", "PIP_PREFIX", "PIP_ROOT", "PIP_USER", "PIP_EDITABLE", "PIP_IGNORE_INSTALLED", "PIP_NO_BINARY"}
)
# A requirement by name (PEP 508 without URLs): name, extras, version specifiers; markers and --hash options apart.
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_SPECIFIER = r"(?:===|==|~=|!=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]+"
_REQUIREMENT = re.compile(
    rf"{_NAME}\s*(?:\[\s*(?:{_NAME}(?:\s*,\s*{_NAME})*)?\s*\])?\s*(?:\(?\s*{_SPECIFIER}(?:\s*,\s*{_SPECIFIER})*\s*\)?)?"
)
_HASHES = re.compile(r"\s--hash[=\s]")
_ARCHIVES = (".whl", ".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tar.xz", ".txz")
# A PEP 440 version a constraints file can pin (a package with another kind of version is left unpinned).
_PINNABLE = re.compile(r"\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?(\+[a-z0-9.]+)?", re.IGNORECASE)


class RequirementsRefused(ValueError):
    """``code/requirements.txt`` asks for something openmme does not install; the message names the line."""


class BuildFailed(Exception):
    """An environment could not be built (pip failed or took too long, or it does not fit the budget); the
    message says why in one line, for the client."""


def check_requirements(lines: Iterable[str]) -> None:
    """Take only packages by name: ``name[extras] <version specifiers> ; <marker>``, with ``--hash`` options if
    wanted. Refused, because they would choose where packages come from or install something else: pip's other
    options (``--index-url``, ``-r``, ``-e`` …), URLs, local paths and archives. Raises RequirementsRefused."""
    for line in lines:
        if line.startswith("-"):
            raise RequirementsRefused(
                f"code/requirements.txt: {line.split()[0]!r} is not taken; list packages by name (and version):"
                " where they come from is the endpoint's choice (its package index, or --wheelhouse)"
            )
        specifier = _HASHES.split(line, maxsplit=1)[0].split(";", 1)[0].strip()
        if not _REQUIREMENT.fullmatch(specifier) or specifier.lower().endswith(_ARCHIVES):
            raise RequirementsRefused(
                f"code/requirements.txt: {line!r} is not a package name with version specifiers (a URL, a path or"
                " an archive is not taken: where packages come from is the endpoint's choice)"
            )


@dataclass
class Built:
    """One environment on disk."""

    key: str
    bytes: int
    last_used: float


class Environments:
    """The built environments under ``root``: single-flight builds, remembered failures, the size budget.

    ``in_use`` names the environments loaded (or loading) models use: they are never deleted for the budget.
    """

    def __init__(
        self,
        root: Path,
        *,
        build_timeout: float,
        budget: int,
        wheelhouse: Path | None = None,
        in_use: Callable[[], set[str]] = set,
        retry_after: float = FAILED_BUILD_RETRY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = root
        self.build_timeout = build_timeout
        self.budget = budget
        self.wheelhouse = wheelhouse
        self.in_use = in_use
        self.retry_after = retry_after
        self.clock = clock
        self.counters: Counter[str] = Counter()  # built, failed, reused, removed
        self._built: dict[str, Built] | None = None  # scanned from disk at the first use
        self._base: _Base | None = None
        self._builds: dict[str, asyncio.Task[Built]] = {}
        self._failures: dict[str, tuple[float, str]] = {}  # key → (when, why)
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_BUILDS)

    @classmethod
    def from_settings(cls, settings: Settings, in_use: Callable[[], set[str]]) -> Environments:
        return cls(
            settings.environments_dir,
            build_timeout=settings.environment_build_timeout,
            budget=settings.environments_budget,
            wheelhouse=settings.wheelhouse,
            in_use=in_use,
        )

    async def ensure(self, lines: tuple[str, ...], key: str, target: str) -> Path:
        """The site directory of the environment of ``lines`` (whose key is ``key``), built first if need be;
        ``target`` is the model that asks (for the log). Raises BuildFailed."""
        if self._built is None:
            base, scanned = await asyncio.to_thread(self._scan)
            self._base, self._built = base, scanned
        known: dict[str, Built] = self._built
        built = known.get(key)
        if built is not None and await asyncio.to_thread(environment_site(self.root, key).is_dir):
            built.last_used = time.time()
            self.counters["reused"] += 1
            return environment_site(self.root, key)
        known.pop(key, None)  # deleted under the running endpoint, if it was known: built again
        failure = self._failures.get(key)
        if failure is not None and self.clock() - failure[0] < self.retry_after:
            raise BuildFailed(failure[1])
        task = self._builds.get(key)
        if task is None:
            task = self._builds[key] = asyncio.create_task(self._build(lines, key, target), name=f"build {key}")
            task.add_done_callback(lambda done: self._builds.pop(key, None))
            task.add_done_callback(_retrieve_failure)
        # Shielded: a request that gives up (or a load cancelled) leaves the build to the others that wait on it.
        await asyncio.shield(task)
        return environment_site(self.root, key)

    def describe(self) -> dict[str, Any]:
        """Its part of ``GET /models``' summary."""
        built = self._built or {}
        return {
            "count": len(built),
            "bytes": sum(environment.bytes for environment in built.values()),
            "budgetBytes": self.budget,
            "building": sorted(self._builds),
            "builds": self.counters["built"],
            "failedBuilds": self.counters["failed"],
            "reused": self.counters["reused"],
            "removed": self.counters["removed"],
        }

    # ---- one build --------------------------------------------------------------------------------------

    async def _build(self, lines: tuple[str, ...], key: str, target: str) -> Built:
        async with self._slots:
            started = time.monotonic()
            staging = self.root / f"{_BUILDING_PREFIX}{os.getpid()}-{key}-{secrets.token_hex(4)}"
            log_path = self.root / f"{key}.log"
            log_json(event_log, _event("environment_build_started", key, target, requirements=list(lines)))
            try:
                try:
                    built = await self._run_build(lines, key, staging, log_path)
                except BuildFailed:
                    raise
                except Exception as exc:  # the disk, a missing interpreter: still this model's failure, in one line
                    raise BuildFailed(f"building the environment of code/requirements.txt failed: {exc}") from exc
            except BuildFailed as exc:
                self._failures[key] = (self.clock(), str(exc))
                self.counters["failed"] += 1
                seconds = round(time.monotonic() - started, 3)
                log_json(event_log, _event("environment_build_failed", key, target, seconds=seconds, error=str(exc)))
                raise
            finally:
                await asyncio.to_thread(shutil.rmtree, staging, True)
            self._failures.pop(key, None)
            self.counters["built"] += 1
            log_json(
                event_log,
                _event(
                    "environment_built",
                    key,
                    target,
                    seconds=round(time.monotonic() - started, 3),
                    bytes=built.bytes,
                    log=str(log_path),
                ),
            )
            return built

    async def _run_build(self, lines: tuple[str, ...], key: str, staging: Path, log_path: Path) -> Built:
        assert self._base is not None and self._built is not None
        base = self._base
        python = await asyncio.to_thread(_stage, staging, lines, base)
        command = [
            str(python), "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
            "--no-warn-script-location", "--progress-bar", "off", "--only-binary", ":all:",
            "-r", str(staging / "requirements.txt"), "-c", str(staging / "constraints.txt"),
        ]  # fmt: skip
        if self.wheelhouse is not None:
            command += ["--no-index", "--find-links", str(self.wheelhouse)]
        output = await asyncio.to_thread(log_path.open, "wb")
        try:
            code = await self._run_pip(command, staging, output)
        finally:
            output.close()
        if code != 0:
            reason = await asyncio.to_thread(_pip_error, log_path, staging / "requirements.txt")
            raise BuildFailed(f"pip could not install code/requirements.txt: {reason}")
        built = await asyncio.to_thread(_finish, staging, key, lines, base)
        await self._make_room(built)
        if await asyncio.to_thread(_install, staging, self.root / key):
            self._built[key] = built
        else:  # another process put the same environment in place first: its copy is used
            built = self._built[key] = Built(key, await asyncio.to_thread(_tree_bytes, self.root / key), time.time())
        return built

    async def _run_pip(self, command: list[str], staging: Path, output: IO[bytes]) -> int:
        """pip's exit code; stopped (with whatever it started) after the build time limit, or when cancelled."""
        front = os.getpid()
        dies_with_front = None if parent_death_setter() is None else (lambda: die_with_parent(lambda pid: pid == front))
        process = await asyncio.create_subprocess_exec(
            *command,
            cwd=staging,
            env=_build_environment(os.environ),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped whole, with what pip starts
            preexec_fn=dies_with_front,  # and killed if the front dies mid-build
        )
        try:
            return await asyncio.wait_for(process.wait(), self.build_timeout)
        except TimeoutError:
            raise BuildFailed(
                f"building the environment of code/requirements.txt took longer than {self.build_timeout:g} s"
                " (--environment-build-timeout); pip was stopped"
            ) from None
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                with contextlib.suppress(Exception):
                    await asyncio.shield(process.wait())

    async def _make_room(self, new: Built) -> None:
        """Delete the least recently used environments not in use until ``new`` fits the budget; raises
        BuildFailed when it cannot fit (it is then not kept)."""
        assert self._built is not None
        if not self.budget:
            return
        held = sum(environment.bytes for environment in self._built.values() if environment.key != new.key)
        if held + new.bytes <= self.budget:
            return
        in_use = self.in_use() | set(self._builds)
        for victim in sorted(self._built.values(), key=lambda environment: environment.last_used):
            if victim.key in in_use or victim.key == new.key:
                continue
            await self._remove(victim, "budget")
            held -= victim.bytes
            if held + new.bytes <= self.budget:
                return
        raise BuildFailed(
            f"the environment of code/requirements.txt takes {_mib(new.bytes)}, and environments in use hold"
            f" {_mib(held)} of the {_mib(self.budget)} --environments-budget"
        )

    async def _remove(self, environment: Built, reason: str) -> None:
        assert self._built is not None
        self._built.pop(environment.key, None)
        await asyncio.to_thread(_delete, self.root, environment.key)
        self.counters["removed"] += 1
        log_json(event_log, _event("environment_removed", environment.key, None, reason=reason))

    # ---- the directory at the first use -----------------------------------------------------------------

    def _scan(self) -> tuple[_Base, dict[str, Built]]:
        """Blocking: what this interpreter's environment holds (the base every build extends), and the environments
        already built for it. Environments built on another base (openmme's packages or Python changed since) and
        leftovers of builds by processes other than this one are deleted."""
        base = _Base.of_this_interpreter()
        self.root.mkdir(parents=True, exist_ok=True)
        built: dict[str, Built] = {}
        for path in self.root.iterdir():
            if path.name.startswith(_BUILDING_PREFIX):
                if not _builder_alive(path.name):
                    shutil.rmtree(path, ignore_errors=True)
                continue
            if not path.is_dir() or path.name.startswith("."):
                continue
            try:
                manifest = json.loads((path / _MANIFEST).read_text())
                fits = manifest["base"] == base.fingerprint and environment_site(self.root, path.name).is_dir()
            except (OSError, ValueError, KeyError, TypeError):
                fits = False
            if fits:
                built[path.name] = Built(path.name, int(manifest["bytes"]), float(manifest["built"]))
            else:
                log.info("deleting environment %s: built for another Python or other openmme packages", path.name)
                _delete(self.root, path.name)
        return base, built


@dataclass(frozen=True)
class _Base:
    """What every environment extends: openmme's own site-packages and the versions installed there."""

    site_dirs: tuple[str, ...]
    constraints: str  # name==version per line, every package openmme's environment has
    fingerprint: str  # of the interpreter and those versions: an environment built on another base is not used

    @classmethod
    def of_this_interpreter(cls) -> _Base:
        paths = sysconfig.get_paths()
        dirs = [*site.getsitepackages(), paths["purelib"], paths["platlib"]]
        site_dirs = tuple(dict.fromkeys(directory for directory in dirs if Path(directory).is_dir()))
        pins: dict[str, str] = {}
        for distribution in importlib.metadata.distributions(path=list(site_dirs)):
            name, version = distribution.metadata["Name"], distribution.version
            if name and version and _PINNABLE.fullmatch(version):
                pins.setdefault(re.sub(r"[-_.]+", "-", name).lower(), f"{name}=={version}")
        constraints = "".join(f"{pin}\n" for _, pin in sorted(pins.items()))
        identity = f"{sys.implementation.cache_tag}\n{sysconfig.get_platform()}\n{constraints}"
        return cls(site_dirs, constraints, hashlib.sha256(identity.encode()).hexdigest()[:16])


def _stage(staging: Path, lines: tuple[str, ...], base: _Base) -> Path:
    """Blocking: the thin environment pip installs into, its inputs beside it; returns its interpreter."""
    staging.mkdir(parents=True)
    venv = staging / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)],
        check=True,
        capture_output=True,
        env=_build_environment(os.environ),
    )
    (_site_packages(venv) / _BASE_PTH).write_text("".join(f"{directory}\n" for directory in base.site_dirs))
    (staging / "requirements.txt").write_text("".join(f"{line}\n" for line in lines))
    (staging / "constraints.txt").write_text(base.constraints)
    return venv / "bin" / "python"


def _finish(staging: Path, key: str, lines: tuple[str, ...], base: _Base) -> Built:
    """Blocking: the installed packages moved to ``<staging>/env/site``, measured, and described in its manifest."""
    packages = _site_packages(staging / "venv")
    (packages / _BASE_PTH).unlink()  # the worker has openmme's packages on its path already
    env = staging / "env"
    env.mkdir()
    packages.rename(env / "site")
    size = _tree_bytes(env / "site")
    now = time.time()
    manifest = {"key": key, "requirements": list(lines), "base": base.fingerprint, "bytes": size, "built": now}
    (env / _MANIFEST).write_text(json.dumps(manifest, indent=1))
    return Built(key, size, now)


def _install(staging: Path, destination: Path) -> bool:
    """Blocking: rename the finished environment into place; False when one is there already (left as it is)."""
    try:
        (staging / "env").rename(destination)
    except OSError:
        if environment_site(destination.parent, destination.name).is_dir():
            return False
        _delete(destination.parent, destination.name)  # what is left of one whose files were deleted by hand
        (staging / "env").rename(destination)
    return True


def _builder_alive(name: str) -> bool:
    """Whether the process whose build (or deletion) ``.build-<pid>-…`` is still runs: then it is not a leftover."""
    pid = name.removeprefix(_BUILDING_PREFIX).partition("-")[0]
    return pid.isdigit() and (int(pid) == os.getpid() or psutil.pid_exists(int(pid)))


def _delete(root: Path, key: str) -> None:
    """Blocking: out of the way at once (one rename), then deleted."""
    trash = root / f"{_BUILDING_PREFIX}{os.getpid()}-removed-{key}-{secrets.token_hex(4)}"
    try:
        (root / key).rename(trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)
    (root / f"{key}.log").unlink(missing_ok=True)


def _site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python*/site-packages"))
    if not found:
        raise BuildFailed(f"the virtual environment made for the build has no site-packages ({venv})")
    return found[0]


def _tree_bytes(path: Path) -> int:
    total = 0
    for directory, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(directory, name)).st_size
    return total


def _build_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of a build: this process's (so pip's index, proxy and certificate settings pass through),
    without credentials of the endpoint (AWS_*, OPENMME_*), without variables that would send pip's install
    elsewhere, and with no Python path of its own."""
    return {
        name: value
        for name, value in environ.items()
        if not name.startswith(("AWS_", "OPENMME_"))
        and name not in _PIP_LOCATION_VARIABLES
        and name not in ("PYTHONPATH", "PYTHONHOME", "PYTHONUSERBASE")
    }


def _pip_error(log_path: Path, requirements: Path) -> str:
    """Blocking: why pip failed, in one line, from its output: what the resolver says caused a conflict, else its
    first ``ERROR:`` line, else its last line (the staging file named as the model's own)."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return "pip failed (its output could not be read)"
    text = text.replace(f"-r {requirements}", "code/requirements.txt").replace(
        str(requirements), "code/requirements.txt"
    )
    lines = [line.strip() for line in text.splitlines()]
    if "The conflict is caused by:" in lines:
        causes = []
        for line in lines[lines.index("The conflict is caused by:") + 1 :]:
            if not line:
                break
            causes.append(line.replace("The user requested (constraint)", "openmme's own environment has"))
        reason = "conflicting dependencies: " + "; ".join(causes)
    else:
        errors = [line.removeprefix("ERROR:").strip() for line in lines if line.startswith("ERROR:")]
        written = [line for line in lines if line]
        reason = errors[0] if errors else (written[-1] if written else "pip failed and printed nothing")
    return reason if len(reason) <= _REASON_CHARS else reason[: _REASON_CHARS - 3] + "..."


def _retrieve_failure(task: asyncio.Task[Built]) -> None:
    """A build's done callback: its failure was answered to the loads waiting on it; asyncio need not report it."""
    if not task.cancelled():
        task.exception()


def _event(event: str, key: str, target: str | None, **fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"event": event, "environment": key}
    if target is not None:
        record["target_model"] = target
    return record | fields


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"
