"""multi-model-server as a child process: its config, its start and stop, and a client for its two APIs.

MMS binds 127.0.0.1 only; the front is the one door in. The Java front is started directly (not through the
``multi-model-server`` launcher, which detaches it) so that this process owns its PID, and with ``--python``
set to a script that runs this interpreter, so that its Python workers import openmme's handlers from the same
environment.

MMS's worker processes are found by their command line: every worker of this MMS instance names a socket in
this instance's private temp dir, and the model it serves. That is how loaded models' memory is measured and
how workers that outlive their model (seen with MMS) are found and killed.

Nothing MMS starts outlives the front, however the front ends (a SIGKILL included): the kernel kills the Java
front when the thread that started it exits (``PR_SET_PDEATHSIG``), and the Java front starts its Python
workers through a launcher that does the same for them (see ``openmme.handlers._lifetime``). What an earlier
front of the same cache directory left running anyway (a machine without that kernel request, a front of an
older version) is stopped by the next one: ``reap_leftovers``. What a model's own code starts in a worker ends
with the worker, and with the front, too: see ``openmme.endpoint.supervisor``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import psutil
from multidict import CIMultiDict

from openmme.endpoint.cache.backend import ModelLost
from openmme.endpoint.cache.entry import Entry
from openmme.endpoint.errors import ModelError, ServiceUnavailable
from openmme.endpoint.settings import MAX_BODY_BYTES, Settings
from openmme.handlers import ERROR_HEADER
from openmme.handlers._lifetime import die_with_parent, parent_death_setter
from openmme.handlers.requirements import ENVIRONMENTS_VARIABLE
from openmme.ports import free_port

__all__ = [
    "MmsClient",
    "MmsConfig",
    "MmsProcess",
    "MmsResponse",
    "find_java",
    "java_command",
    "kill_processes",
    "memory_of",
    "tracked_call",
    "tracked_prediction",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

# Every MMS instance's private temp dir (worker sockets) is named so: what an earlier front left is removed.
TMP_PREFIX = "openmme-mms-"


@dataclass(frozen=True)
class MmsConfig:
    """What goes into MMS's config.properties."""

    inference_port: int
    management_port: int
    model_store: Path
    workers_per_model: int
    job_queue_size: int
    response_timeout_s: float
    heap: str
    tmp_dir: Path

    def properties(self) -> str:
        """The text of config.properties (pure: tested without starting anything)."""
        # MMS reads its time-outs in minutes.
        minutes = max(1, math.ceil(self.response_timeout_s / 60))
        # A request is the 6 MiB body plus headers; the response limit matches it generously.
        lines = {
            "inference_address": f"http://127.0.0.1:{self.inference_port}",
            "management_address": f"http://127.0.0.1:{self.management_port}",
            "model_store": str(self.model_store),
            "default_workers_per_model": str(self.workers_per_model),
            "job_queue_size": str(self.job_queue_size),
            "default_response_timeout": str(minutes),
            "unregister_model_timeout": str(minutes),
            "max_request_size": str(MAX_BODY_BYTES + 64 * 1024),
            "max_response_size": str(4 * MAX_BODY_BYTES),
            "decode_input_request": "false",
            "async_logging": "true",
        }
        return "".join(f"{key}={value}\n" for key, value in lines.items())


def find_java() -> str | None:
    """The Java runtime MMS's front runs on: ``$JAVA_HOME/bin/java``, else ``java`` on PATH; None when there is
    none (an image without Java: the endpoint serves dense models only, and MMS is never started)."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        java = Path(java_home) / "bin" / "java"
        return str(java) if os.access(java, os.X_OK) else None
    return shutil.which("java")


def java_command(config: MmsConfig, config_file: Path, python: str = sys.executable, java: str = "java") -> list[str]:
    """The command line of MMS's Java front (pure); ``java``: the runtime ``find_java`` found."""
    import mms

    mms_home = Path(mms.__file__).resolve().parent.parent
    return [
        java,
        f"-Dmodel_server_home={mms_home}",
        f"-Djava.io.tmpdir={config.tmp_dir}",
        f"-Xmx{config.heap}",
        "-XX:+UseSerialGC",
        # No hsperfdata file in the machine's /tmp: one the JVM would leave behind if it were killed.
        "-XX:-UsePerfData",
        "-cp",
        f".:{mms_home / 'mms' / 'frontend' / '*'}",
        "com.amazonaws.ml.mms.ModelServer",
        "--python",
        python,
        "-f",
        str(config_file),
        "-s",
        str(config.model_store),
    ]


@dataclass
class MmsResponse:
    status: int
    body: bytes
    headers: Mapping[str, str]

    @property
    def forgot_model(self) -> bool:
        """MMS (or a dense shard) does not know the model asked for: a 404 that no handler answered."""
        return self.status == 404 and not self.headers.get(ERROR_HEADER)

    @property
    def message(self) -> str:
        """The text to show for this answer: MMS's (or a handler's) ``message`` field, else the body itself."""
        text = self.body.decode(errors="replace").strip()
        try:
            parsed = json.loads(text)
        except ValueError:
            return text[:1000]
        if isinstance(parsed, dict) and "message" in parsed:
            return str(parsed["message"])[:1000]
        return text[:1000]


class MmsClient:
    """Async client for MMS's management and inference APIs on loopback. Its calls raise the endpoint's errors,
    never aiohttp's (see ``_call``)."""

    def __init__(self, inference_port: int, management_port: int) -> None:
        self.inference_url = f"http://127.0.0.1:{inference_port}"
        self.management_url = f"http://127.0.0.1:{management_port}"
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> MmsClient:
        connector = aiohttp.TCPConnector(limit=256, limit_per_host=256, force_close=False)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "MmsClient used outside `async with`"
        return self._session

    async def _call(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 60.0,
        prediction: bool = False,
    ) -> MmsResponse:
        """One request to MMS; the one place its transport errors become the endpoint's: a prediction that takes
        too long is the model's failure (ModelError, original status 408), anything else unreachable is a 503."""
        try:
            async with self.session.request(
                method,
                url,
                params=params,
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                body = await response.read()
                # Header names as MMS spells them vary in case: keep the case-insensitive mapping.
                return MmsResponse(response.status, body, CIMultiDict(response.headers))
        except TimeoutError as exc:
            if prediction:
                message = f"the model did not answer within {timeout:g} s"
                raise ModelError(message, original_status=408, original_message="timed out") from exc
            raise ServiceUnavailable(f"the model server did not answer within {timeout:g} s; retry") from exc
        except aiohttp.ClientError as exc:
            raise ServiceUnavailable(f"the model server is not reachable ({exc}); retry") from exc

    async def ping(self) -> bool:
        try:
            response = await self._call("GET", self.inference_url + "/ping", timeout=5)
        except ServiceUnavailable:
            return False
        return response.status == 200

    async def register(self, name: str, url: str, handler: str, workers: int, timeout: float) -> MmsResponse:
        params = {
            "url": url,
            "model_name": name,
            "handler": handler,
            "initial_workers": str(workers),
            "synchronous": "true",
            "runtime": "python",
        }
        return await self._call("POST", self.management_url + "/models", params=params, timeout=timeout)

    async def unregister(self, name: str, timeout: float) -> MmsResponse:
        return await self._call("DELETE", f"{self.management_url}/models/{name}", timeout=timeout)

    async def list_models(self) -> list[str]:
        names: list[str] = []
        token: str | None = None
        while True:
            params = {"limit": "100"} | ({"next_page_token": token} if token else {})
            response = await self._call("GET", self.management_url + "/models", params=params)
            page: dict[str, Any] = json.loads(response.body)
            names.extend(model["modelName"] for model in page.get("models", []))
            token = page.get("nextPageToken")
            if not token:
                return names

    async def predict(
        self, name: str, body: bytes, headers: Mapping[str, str], timeout: float, *, prediction: bool = True
    ) -> MmsResponse:
        """POST to a model's ``/predictions``: a prediction, or (``prediction=False``) an operation on a dense shard,
        whose time-out is the server's (503, retry) rather than the model's (see ``_call``)."""
        url = f"{self.inference_url}/predictions/{name}"
        return await self._call("POST", url, data=body, headers=headers, timeout=timeout, prediction=prediction)


async def tracked_call(request: Awaitable[T], registry: set[asyncio.Future[Any]]) -> T | None:
    """Await ``request`` to an MMS worker, listed in ``registry`` meanwhile so that the front can cancel it when
    the worker dies (MMS would leave it hanging until its time-out): then None, and the request should be sent
    again. Cancelling the caller (the client went away, the server is stopping) still cancels."""
    call = asyncio.ensure_future(request)
    registry.add(call)
    try:
        return await call
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
        return None
    finally:
        registry.discard(call)


async def tracked_prediction(
    request: Awaitable[MmsResponse],
    registry: set[asyncio.Future[Any]],
    entry: Entry,
    forgotten: Callable[[Entry], object],
) -> MmsResponse:
    """A prediction for ``entry``, tracked as ``tracked_call`` does. ``ModelLost`` when its worker died meanwhile,
    or when MMS no longer knows the model (restarted, or the request raced an eviction: ``forgotten(entry)`` is
    called first); the data plane then sends the request again."""
    response = await tracked_call(request, registry)
    if response is None:
        raise ModelLost(entry.target)
    if response.forgot_model:
        forgotten(entry)
        raise ModelLost(entry.target)
    return response


class MmsProcess:
    """Starts, watches and stops one MMS instance and finds its worker processes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.cache_dir / "mms"
        # Worker sockets live in the temp dir; a private, short one keeps instances apart and under the
        # 108-byte limit of a unix socket path.
        self.tmp_dir = Path(tempfile.mkdtemp(prefix=TMP_PREFIX))
        # Not the front's own port either: it is free until the front binds it, after MMS started.
        inference = settings.mms_inference_port or free_port(exclude={settings.port})
        management = settings.mms_management_port or free_port(exclude={settings.port, inference})
        self.config = MmsConfig(
            inference_port=inference,
            management_port=management,
            model_store=settings.models_dir,
            workers_per_model=settings.workers_per_model,
            job_queue_size=settings.job_queue_size,
            response_timeout_s=settings.response_timeout,
            heap=settings.mms_heap,
            tmp_dir=self.tmp_dir,
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.java = find_java()  # None: no Java runtime here, so this instance is never started
        self.log_path = self.home / "mms.out"
        self._starting_thread: int | None = None

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # MMS finds its workers' interpreter on PATH in places: this environment's bin goes first.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env["TEMP"] = env["TMPDIR"] = str(self.tmp_dir)
        env["OPENMME_ALLOW_PICKLE"] = "1" if self.settings.allow_pickle else "0"
        env["OPENMME_LOAD_ERRORS_DIR"] = str(self.load_errors_dir)
        env[ENVIRONMENTS_VARIABLE] = str(self.settings.environments_dir)  # script models' requirements
        return env

    @property
    def load_errors_dir(self) -> Path:
        return self.home / "load-errors"

    @property
    def record_path(self) -> Path:
        """Which Java front this cache directory's MMS is, for the next front to stop if this one dies first."""
        return self.home / "mms.json"

    def start(self) -> None:
        """Start the Java front. Call it from a thread that lives as long as this process (the event loop's, never
        a pool thread's): the kernel kills the Java front when the *thread* that started it exits."""
        thread = threading.get_ident()
        if self._starting_thread not in (None, thread):
            raise RuntimeError("MMS must be started again from the thread that started it first")
        self._starting_thread = thread
        self.home.mkdir(parents=True, exist_ok=True)
        self.load_errors_dir.mkdir(exist_ok=True)
        self.settings.models_dir.mkdir(parents=True, exist_ok=True)
        config_file = self.home / "config.properties"
        config_file.write_text(self.config.properties())
        if self.java is None:
            raise RuntimeError("MMS cannot start: no Java runtime was found (JAVA_HOME, PATH)")
        command = java_command(self.config, config_file, python=self._worker_python(), java=self.java)
        log.info(
            "starting MMS on 127.0.0.1:%d (inference) and :%d (management)",
            self.config.inference_port,
            self.config.management_port,
        )
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                command,
                cwd=self.home,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C at a terminal reaches the front only, which stops MMS in order
                preexec_fn=_dies_with(os.getpid()),
            )
        self._record(self.process.pid)

    def _worker_python(self) -> str:
        """The interpreter MMS starts its workers with: this one, through ``openmme.handlers._lifetime``, so that
        they die with the Java front. ``-P``: the worker's directory (its model's) is not put on ``sys.path``."""
        if not hasattr(os, "ST_NOEXEC") or os.statvfs(self.home).f_flag & os.ST_NOEXEC:
            log.warning("%s is mounted noexec: MMS workers will not stop by themselves if MMS is killed", self.home)
            return sys.executable
        launcher = self.home / "worker-python"
        launcher.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -P -m openmme.handlers._lifetime "$@"\n')
        launcher.chmod(0o755)
        return str(launcher)

    def _record(self, pid: int) -> None:
        try:
            created = psutil.Process(pid).create_time()
        except psutil.Error:
            return  # it already died: the supervisor notices
        staged = self.record_path.with_suffix(".tmp")
        staged.write_text(json.dumps({"pid": pid, "create_time": created, "tmp_dir": str(self.tmp_dir)}))
        staged.replace(self.record_path)

    def reap_leftovers(self) -> list[int]:
        """Blocking: stop the MMS (and its workers) an earlier front of this cache directory left running, and
        remove its temp dir; returns the PIDs stopped. Only for the owner of the cache directory (its lock held),
        so that the earlier front is surely dead. A PID is stopped only if it still is that process: the same
        start time and a command line naming the recorded temp dir (PIDs are reused)."""
        try:
            record = json.loads(self.record_path.read_text())
            pid, created, tmp_dir = int(record["pid"]), float(record["create_time"]), str(record["tmp_dir"])
        except (OSError, ValueError, KeyError, TypeError):
            return []
        leftovers: list[psutil.Process] = []
        with contextlib.suppress(psutil.Error):
            java = psutil.Process(pid)
            cmdline = java.cmdline()
            # create_time is computed from the boot time, which the kernel may report a second apart.
            if abs(java.create_time() - created) < 1.0 and f"-Djava.io.tmpdir={tmp_dir}" in cmdline:
                leftovers.append(java)
        leftovers.extend(process for group in _workers_of(Path(tmp_dir)).values() for process in group)
        stopped = [process.pid for process in leftovers]
        kill_processes(leftovers, grace=5.0)
        if Path(tmp_dir).name.startswith(TMP_PREFIX):
            shutil.rmtree(tmp_dir, ignore_errors=True)
        self.record_path.unlink(missing_ok=True)
        return stopped

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def worker_processes(self) -> dict[str, list[psutil.Process]]:
        """This instance's MMS worker processes, by the model they serve."""
        return _workers_of(self.tmp_dir)

    def kill_workers(self, name: str) -> list[int]:
        """Blocking: kill any worker process still serving ``name`` (after an unregister or a failed load)."""
        leftovers = self.worker_processes().get(name, [])
        return kill_processes(leftovers, grace=2.0) if leftovers else []

    def stop(self, grace: float = 10.0, *, final: bool = True) -> None:
        """Stop MMS and every worker it started, including workers a crashed MMS left behind.

        ``final=False`` keeps the private temp dir for a restart on the same ports.
        """
        leftovers = [process for group in self.worker_processes().values() for process in group]
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(psutil.Error):
                leftovers.extend(psutil.Process(self.process.pid).children(recursive=True))
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        kill_processes(leftovers, grace=2.0)
        if final:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            self.record_path.unlink(missing_ok=True)


def _dies_with(parent: int) -> Callable[[], None] | None:
    """What the Java front runs between ``fork`` and ``exec``: ``die_with_parent`` with ``parent`` as the parent
    (None where the kernel has no parent-death signal)."""
    if parent_death_setter() is None:  # resolved here, before the fork
        return None
    return lambda: die_with_parent(lambda pid: pid == parent)


def _workers_of(tmp_dir: Path) -> dict[str, list[psutil.Process]]:
    """The MMS worker processes whose socket is in ``tmp_dir`` (one MMS instance's), by the model they serve."""
    marker = f"{tmp_dir}/.mms.sock."
    workers: dict[str, list[psutil.Process]] = {}
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        sock, model = _argument(cmdline, "--sock-name"), _argument(cmdline, "--model-name")
        if sock.startswith(marker) and model:
            workers.setdefault(model, []).append(process)
    return workers


def _argument(cmdline: list[str], flag: str) -> str:
    """The value after ``flag`` in a command line, or ``""``."""
    try:
        return cmdline[cmdline.index(flag) + 1]
    except (ValueError, IndexError):
        return ""


def memory_of(processes: Iterable[psutil.Process]) -> int:
    """Blocking: the proportional set size of processes (RSS where PSS is not available)."""
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            info = process.memory_full_info()
            total += int(getattr(info, "pss", 0) or info.rss)
    return total


def kill_processes(processes: Iterable[psutil.Process], grace: float) -> list[int]:
    """Terminate, then kill after ``grace`` seconds; returns the PIDs that had to be killed."""
    alive = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.terminate()
            alive.append(process)
    _, still = psutil.wait_procs(alive, timeout=grace)
    for process in still:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(still, timeout=grace)
    return [process.pid for process in still]
