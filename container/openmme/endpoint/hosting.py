"""How models are hosted in one MMS instance: the cache's backend, choosing per archive between isolated models
(isolated.py) and dense shards (dense.py), and the housekeeping of MMS's processes that concerns both.

Which hosting an archive gets is decided when it loads (``choose_hosting``: the archive's own setting, else
``--hosting``); every later call for the model goes to the backend that loaded it. Housekeeping scans MMS's
worker processes once per round for both: fresh memory figures, dead workers revived, and workers of models no
longer loaded (seen with MMS) stopped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

from openmme.endpoint.cache.backend import Models, Route
from openmme.endpoint.cache.entry import HELD, Entry
from openmme.endpoint.dense import DenseBackend, Shard
from openmme.endpoint.errors import ModelError
from openmme.endpoint.isolated import IsolatedBackend
from openmme.endpoint.mms import MmsClient, MmsProcess, MmsResponse, kill_processes, memory_of
from openmme.endpoint.settings import Settings
from openmme.handlers import DENSE, SCRIPT_HANDLER, UnsupportedArchive, choose_handler, choose_hosting

__all__ = ["MmsHosting"]

log = logging.getLogger(__name__)


class MmsHosting:
    """The ``Backend`` of the cache: isolated or dense per archive, in one MMS instance."""

    def __init__(self, settings: Settings, mms: MmsClient, process: MmsProcess, listen_dir: Path | None = None) -> None:
        """``listen_dir``: where the dense shards' workers also listen for edge fronts (None: they do not)."""
        self.settings = settings
        self.process = process
        self.isolated = IsolatedBackend(settings, mms, process)
        self.dense = DenseBackend(settings, process.environment(), process.home / "shards.out", listen_dir)
        self._models: Models | None = None

    def attach(self, models: Models) -> None:
        self._models = models
        self.isolated.attach(models)
        self.dense.attach(models)

    def _of(self, entry: Entry) -> IsolatedBackend | DenseBackend:
        return self.dense if entry.hosting == DENSE else self.isolated

    # ---- the Backend protocol ----------------------------------------------------------------------------

    async def prepare(self, entry: Entry) -> None:
        try:
            entry.handler, entry.hosting = await asyncio.to_thread(self._inspect, entry.path)
        except UnsupportedArchive as exc:
            raise ModelError(f"model {entry.target!r} cannot be served: {exc}", original_status=400) from exc
        if entry.hosting != DENSE:
            if self.process.java is None:
                raise ModelError(_needs_java(entry), original_status=500)
            await self.isolated.prepare(entry)  # a script model's requirements, built (environments.py)

    def _inspect(self, path: Path) -> tuple[str, str]:
        """Blocking: the handler and the hosting of the extracted model at ``path``."""
        handler = choose_handler(path)
        return handler, choose_hosting(path, handler, self.settings.hosting)

    async def load(self, entry: Entry) -> None:
        await self._of(entry).load(entry)

    async def measure(self, entry: Entry) -> int:
        return await self._of(entry).measure(entry)

    async def unload(self, entry: Entry) -> None:
        await self._of(entry).unload(entry)

    def route(self, entry: Entry) -> Route:
        return self._of(entry).route(entry)

    def call(
        self, entry: Entry, route: Route, body: bytes, headers: Mapping[str, str]
    ) -> Coroutine[Any, Any, MmsResponse]:
        # Not a coroutine of its own: the backend's is awaited directly (one frame less on the warm path).
        return self._of(entry).call(entry, route, body, headers)

    def overhead_bytes(self) -> int:
        return self.dense.overhead_bytes()

    def describe(self) -> dict[str, Any]:
        return {
            "hosting": self.settings.hosting,
            "shards": self.dense.describe(),
            "environments": self.isolated.environments.describe(),
        }

    async def listings(self) -> dict[str, Any]:
        return await self.dense.pool.listings() if self.dense.started() else {}

    # ---- MMS's lifetime and processes ----------------------------------------------------------------------

    async def start_shards(self) -> None:
        await self.dense.start()

    async def stop_shards(self) -> None:
        await self.dense.stop()

    def shards(self) -> Sequence[Shard]:
        """The dense shards, once started (for the metrics)."""
        return self.dense.pool.shards if self.dense.started() else ()

    @staticmethod
    def lost_with_mms(entry: Entry) -> bool:
        """Whether ``entry`` was hosted in MMS, and so died with it: not a dense model (its shard is the front's)."""
        return entry.hosting != DENSE

    async def check_workers(self, measure_memory: bool = True) -> None:
        """Housekeeping against MMS's processes: fresh memory figures (then the memory budget), workers of
        models no longer loaded stopped, and models (or shards) whose workers all died loaded again."""
        assert self._models is not None
        since = time.monotonic()
        workers = await asyncio.to_thread(self.process.worker_processes)
        sizes: dict[str, int] | None = None
        if measure_memory:
            sizes = await asyncio.to_thread(lambda: {name: memory_of(group) for name, group in workers.items()})
        # Workers of a model that is not (being) loaded are ones MMS failed to stop: they only hold memory.
        owned = {entry.name for entry in self._models.models() if entry.state in HELD}
        orphans = [process for name, group in workers.items() if name not in owned for process in group]
        if orphans:
            await asyncio.to_thread(kill_processes, orphans, 2.0)
            log.warning("stopped %d MMS worker process(es) of models no longer loaded", len(orphans))
        if self.dense.started():
            self.dense.check_shards()
            if measure_memory:
                await asyncio.to_thread(self.dense.measure_shards)
        self.isolated.check(workers, sizes, since)
        self._models.recheck()


def _needs_java(entry: Entry) -> str:
    """Why ``entry``, which needs isolated hosting, cannot load on an endpoint without a Java runtime, and the fix."""
    why = "a script model (code/inference.py)" if entry.handler == SCRIPT_HANDLER else "its openmme.json asks for it"
    return (
        f"model {entry.target!r} cannot be served here: it needs isolated hosting ({why}), which runs in"
        " multi-model-server, and this endpoint has no Java runtime; serve it from the default image, which has"
        " one (docker build -f container/Dockerfile, not --target dense), or install a JRE (17 works)"
    )
