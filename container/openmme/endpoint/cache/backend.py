"""The seam between the cache and the ways a model is hosted: the ``Backend`` protocol, the ``Models`` protocol a
backend reports back through, and ``ModelLost``, the one signal that a request should be sent again.

A leaf. The cache owns every model's state and never asks how a model is hosted; a backend (isolated MMS models,
dense shards: see hosting.py) owns the processes and never changes a model's state but through ``Models``.

    cache ──load / unload / measure──▶ backend           data plane ──route / call──▶ backend
    cache ◀──lost / relaunch / resized / recheck── backend (a worker died, a shard forgot a model, memory measured)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from openmme.endpoint.cache.entry import Entry

__all__ = ["Backend", "ModelLost", "Models", "Reply", "Route"]


class ModelLost(Exception):
    """The host lost the model during a request (its worker died, or the host no longer knows it). The backend has
    already told the cache; the request may be sent again, once, and then loads the model anew."""


@dataclass(frozen=True)
class Route:
    """Where one request to a loaded model goes: the hosted model's name, extra headers, the shard if any."""

    model: str
    headers: Mapping[str, str]
    shard: int | None = None


class Reply(Protocol):
    """The host's answer to one request, whatever its status (MmsResponse is one)."""

    @property
    def status(self) -> int: ...

    @property
    def body(self) -> bytes: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def message(self) -> str: ...


class Models(Protocol):
    """What a backend may read of the cache and tell it; the cache is the one owner of model state."""

    def models(self) -> list[Entry]: ...

    def lost(self, entry: Entry) -> bool:
        """The host no longer holds ``entry``: it is on disk again (loaded on its next request). True when it was
        ready until now (the caller then lets go of whatever else still held it)."""
        ...

    def relaunch(self, entry: Entry) -> None:
        """Every process of ``entry`` died: unload it and load it again now."""
        ...

    def resized(self, entry: Entry, memory_bytes: int) -> None:
        """``entry`` now holds ``memory_bytes`` (measured, or spread over one more shard)."""
        ...

    def recheck(self) -> None:
        """Figures changed: the budgets are enforced again soon."""
        ...


class Backend(Protocol):
    """How models are hosted. Every method but ``route`` and ``call`` is called by the cache only."""

    def attach(self, models: Models) -> None:
        """The cache this backend reports to (called once, by the cache)."""
        ...

    async def prepare(self, entry: Entry) -> None:
        """Decide how the extracted ``entry`` is hosted (sets its handler and hosting); raises ModelError when it
        cannot be. Before the cache makes room for it."""
        ...

    async def load(self, entry: Entry) -> None: ...

    async def measure(self, entry: Entry) -> int:
        """The memory the just-loaded ``entry`` holds."""
        ...

    async def unload(self, entry: Entry) -> None: ...

    def route(self, entry: Entry) -> Route:
        """Where a request to the ready ``entry`` goes now; raises ModelLost."""
        ...

    async def call(self, entry: Entry, route: Route, body: bytes, headers: Mapping[str, str]) -> Reply:
        """One request; the reply whatever its status; raises ModelLost, or an EndpointError when the host cannot
        be reached or does not answer in time."""
        ...

    def overhead_bytes(self) -> int:
        """Memory the backend holds with no model in it: counted against the memory budget first."""
        ...

    def describe(self) -> dict[str, Any]:
        """Its part of ``GET /models``' summary."""
        ...

    async def listings(self) -> dict[str, Any]:
        """What its processes say they hold, asked now (``GET /shards``: for operators, and for tests to check
        the front's view against the workers')."""
        ...
