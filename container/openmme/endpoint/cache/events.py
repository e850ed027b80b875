"""What the cache reports as it works, and what observers may read of it: the protocol metrics and logs depend on.

A leaf (it imports only the entry types): observers subclass ``CacheEvents`` and read a ``CacheView`` without
importing the cache, its backends or MMS.
"""

from __future__ import annotations

from typing import Protocol

from openmme.endpoint.cache.entry import Budgets, Entry

__all__ = ["CacheEvents", "CacheView", "ShardFigures"]


class CacheEvents:
    """What the cache reports as it works; metrics and the event log subclass it (all no-ops here)."""

    def lookup(self, entry: Entry, hit: bool) -> None: ...

    def waited(self, entry: Entry, seconds: float) -> None: ...

    def fetched(self, entry: Entry) -> None: ...

    def loaded(self, entry: Entry) -> None: ...

    def load_failed(self, entry: Entry, error: BaseException) -> None: ...

    def unloaded(self, entry: Entry, reason: str | None) -> None: ...

    def removed(self, entry: Entry, reason: str = "disk") -> None:
        """``entry``'s files were deleted from disk: for the disk budget (``disk``), or with its unload (``idle``,
        ``cache_disabled``)."""

    def disk_measured(self, free_bytes: int) -> None:
        """Housekeeping measured the cache filesystem: ``free_bytes`` are free on it."""


class CacheView(Protocol):
    """The figures an observer reads at scrape time (the cache has them; nothing here imports it)."""

    @property
    def budgets(self) -> Budgets: ...

    def models(self) -> list[Entry]: ...

    def loaded_count(self) -> int: ...

    def memory_in_use(self) -> int: ...

    def disk_in_use(self) -> int: ...


class ShardFigures(Protocol):
    """One dense shard as an observer sees it."""

    @property
    def name(self) -> str: ...

    @property
    def memory_bytes(self) -> int: ...

    @property
    def in_flight(self) -> int: ...
