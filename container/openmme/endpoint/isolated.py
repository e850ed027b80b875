"""Isolated hosting: each model registered in MMS as a model of its own, with its own worker processes.

The cache's backend for isolated models (see cache/backend.py). Its housekeeping is about those processes: their
memory measured (PSS), and a model whose workers all died loaded again (MMS 1.1 does not restart a killed worker:
it retries a dead socket with growing back-off, minutes apart).

A script model's ``code/requirements.txt`` is built into an environment of its own while the model prepares
(environments.py), in the load the cache's requests wait on: a long build answers 429 like any slow load, and a
failed one is the model's ``ModelError``. The model's worker finds it by the same key and puts it on its path.

A failed registration is the model's ``ModelError`` only when its handler reported why (what model_fn or the
archive raised, in ``load_errors_dir``); a worker that died without a report was killed (the OOM killer, an
operator): the host's ``ServiceUnavailable``, which the next load does not repeat.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil

from openmme.endpoint.cache.backend import Models, Route
from openmme.endpoint.cache.entry import HELD, Entry, State
from openmme.endpoint.environments import BuildFailed, Environments, RequirementsRefused, check_requirements
from openmme.endpoint.errors import InsufficientMemory, ModelError, ServiceUnavailable
from openmme.endpoint.mms import MmsClient, MmsProcess, MmsResponse, memory_of, tracked_prediction
from openmme.endpoint.settings import Settings
from openmme.handlers import DENSE, SCRIPT_HANDLER
from openmme.handlers.requirements import read_requirements, requirements_key

__all__ = ["IsolatedBackend"]

log = logging.getLogger(__name__)

_NO_HEADERS: Mapping[str, str] = {}


class IsolatedBackend:
    """Isolated models: one MMS model (and its workers) each."""

    def __init__(self, settings: Settings, mms: MmsClient, process: MmsProcess) -> None:
        self.settings = settings
        self.mms = mms
        self.process = process
        self._models: Models | None = None
        self._calls: dict[str, set[asyncio.Future[Any]]] = {}  # by MMS model name: requests in its workers
        self.environments = Environments.from_settings(settings, in_use=self._environments_in_use)
        self._environment_of: dict[str, str] = {}  # by MMS model name: the environment key of its requirements

    @property
    def models(self) -> Models:
        assert self._models is not None, "IsolatedBackend used before a cache attached it"
        return self._models

    def attach(self, models: Models) -> None:
        self._models = models

    # ---- the cache's side of the Backend protocol --------------------------------------------------

    async def prepare(self, entry: Entry) -> None:
        """A script model's ``code/requirements.txt`` built into its environment (or found built); raises
        ModelError when it is refused (400) or cannot be built (500)."""
        if entry.handler != SCRIPT_HANDLER:
            return
        lines = await asyncio.to_thread(read_requirements, entry.path)
        if not lines:
            self._environment_of.pop(entry.name, None)
            return
        try:
            check_requirements(lines)
        except RequirementsRefused as exc:
            raise ModelError(f"model {entry.target!r} cannot be served: {exc}", original_status=400) from exc
        key = requirements_key(lines)
        self._environment_of[entry.name] = key  # in use from now on: the budget never deletes it under this load
        try:
            await self.environments.ensure(lines, key, entry.target)
        except BuildFailed as exc:
            raise ModelError(f"model {entry.target!r} failed to load: {exc}", original_status=500) from exc

    def _environments_in_use(self) -> set[str]:
        """The environments of the models loaded, loading or unloading."""
        if self._models is None:
            return set()
        held = {entry.name for entry in self._models.models() if entry.state in HELD}
        return {key for name, key in self._environment_of.items() if name in held}

    async def load(self, entry: Entry) -> None:
        """Register ``entry`` as an MMS model of its own; its workers start before this returns."""
        error_file = self.process.load_errors_dir / f"{entry.name}.txt"
        error_file.unlink(missing_ok=True)
        response = await self.mms.register(
            entry.name,
            entry.path.name,
            entry.handler,
            self.settings.workers_per_model,
            timeout=max(self.settings.response_timeout, 120.0),
        )
        if response.status == 409:  # MMS has it already (a register raced a restart): use it.
            log.warning("MMS already had %s registered", entry.target)
        elif response.status != 200:
            await asyncio.to_thread(self.process.kill_workers, entry.name)
            reason = _read_text(error_file)
            if response.status == 507:
                raise InsufficientMemory(
                    f"not enough memory to load model {entry.target!r}: {reason or response.message}"
                )
            if reason:  # the handler caught what the archive or model_fn raised: the model's failure
                raise ModelError(f"model {entry.target!r} failed to load: {reason}", original_status=500)
            # MMS answers "Failed to start workers" to both; only the handler's report tells them apart. With none,
            # the worker died before its handler could answer (a signal: the OOM killer, an operator): the host's
            # failure, which the next load does not repeat.
            log.warning(
                "the worker loading %s died without a report from its handler (MMS: %s)", entry.target, response.message
            )
            raise ServiceUnavailable(f"the worker loading model {entry.target!r} died (killed, out of memory?); retry")

    async def measure(self, entry: Entry) -> int:
        return await asyncio.to_thread(lambda: memory_of(self.process.worker_processes().get(entry.name, [])))

    async def unload(self, entry: Entry) -> None:
        """Unregister from MMS and make sure its workers are gone."""
        try:
            response = await self.mms.unregister(entry.name, timeout=60.0)
            if response.status not in (200, 404):
                log.warning("MMS refused to unload %s: %s", entry.target, response.message)
        finally:
            killed = await asyncio.to_thread(self.process.kill_workers, entry.name)
            if killed:
                log.warning("killed %d worker process(es) MMS left behind for %s", len(killed), entry.target)
            self._calls.pop(entry.name, None)
            self._environment_of.pop(entry.name, None)

    # ---- the request path ------------------------------------------------------------------------------

    def route(self, entry: Entry) -> Route:
        return Route(entry.name, _NO_HEADERS)

    async def call(self, entry: Entry, route: Route, body: bytes, headers: Mapping[str, str]) -> MmsResponse:
        calls = self._calls.get(entry.name)
        if calls is None:
            calls = self._calls[entry.name] = set()
        request = self.mms.predict(route.model, body, headers, self.settings.response_timeout)
        return await tracked_prediction(request, calls, entry, self.models.lost)

    # ---- housekeeping ----------------------------------------------------------------------------------

    def check(self, workers: Mapping[str, list[psutil.Process]], sizes: Mapping[str, int] | None, since: float) -> None:
        """After a scan of MMS's workers at ``since``: fresh memory figures, and a ready model with no worker left
        unloaded and loaded again (requests in its workers are sent again)."""
        isolated = [entry for entry in self.models.models() if entry.hosting != DENSE]
        if sizes is not None:
            for entry in isolated:
                if entry.state is State.READY:
                    self.models.resized(entry, sizes.get(entry.name, entry.memory_bytes))
        for entry in isolated:
            if entry.state is State.READY and entry.ready_at < since and entry.name not in workers:
                log.warning("every MMS worker of %s is gone; loading it again", entry.target)
                self.models.relaunch(entry)
                for call in list(self._calls.get(entry.name, ())):
                    call.cancel()


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""
