"""What the cache knows of one model (``Entry``), the states it moves through, and the budgets it keeps.

A leaf: imported by the cache, its hosting backends, the data plane, metrics and logs, and importing nothing of
the endpoint. The cache is the one writer of an entry's state and figures; a backend writes only where it put
the model (``handler``, ``hosting``, ``replicas``).
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["HELD", "LOADED", "Budgets", "Entry", "State", "mms_model_name"]


class State(enum.Enum):
    REMOTE = "remote"
    DOWNLOADING = "downloading"
    ON_DISK = "on_disk"
    LOADING = "loading"
    READY = "ready"
    UNLOADING = "unloading"


# Loaded, or being loaded: counted against the count and memory budgets.
LOADED = frozenset({State.LOADING, State.READY})
# Anything a backend may still hold resources for (an unload in progress included).
HELD = LOADED | {State.UNLOADING}


def mms_model_name(target: str) -> str:
    """An MMS-safe, collision-free model name for a TargetModel: readable stem plus a hash of the whole."""
    digest = hashlib.sha256(target.encode()).hexdigest()[:12]
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", target.removesuffix(".tar.gz")).strip("_")[:48]
    return f"{stem}-{digest}" if stem else f"m-{digest}"


@dataclass(frozen=True)
class Budgets:
    """Limits the cache keeps to; 0 turns one off."""

    max_models: int
    memory_bytes: int
    disk_bytes: int


@dataclass(eq=False)
class Entry:
    """One model the endpoint knows, in whatever state."""

    target: str
    name: str
    path: Path
    managed: bool = True  # False: the directory was handed over by SageMaker (POST /models) and is not ours.
    # modelUrl: where the model comes from. POST /models: its url exactly as SageMaker sent it (SageMaker compares
    # them); from the prefix: the archive's s3:// URI (the cache path is an internal detail, shown as "path").
    url: str = ""
    state: State = State.REMOTE
    handler: str = ""  # set by the backend when it prepares the load
    hosting: str = ""  # dense or isolated: set by the backend when it prepares the load
    pinned: bool = False  # matches a --pin: eviction (budgets, idle TTL, a disabled model cache) never removes it
    model_cache: str = ""  # enabled or disabled (unloaded after each call): set by the cache when it loads
    default_accept: str | None = None  # asked of it when a request asks no Accept: its openmme.json's, if any
    replicas: dict[int, int] = field(default_factory=dict)  # dense: shard index → bytes held there (the backend's)
    disk_bytes: int = 0
    memory_bytes: int = 0
    in_flight: int = 0
    last_used: float = 0.0
    downloads: int = 0
    loads: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    ready_at: float = 0.0  # monotonic time of the last load
    loaded_at: float = 0.0  # the cache's clock at the last load: idle since then, or since last_used if later
    transition: asyncio.Task[None] | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "modelName": self.target,
            "modelUrl": self.url or str(self.path),
            "path": str(self.path),
            "state": self.state.value,
            "handler": self.handler.partition(":")[0].rpartition(".")[2] or None,
            "hosting": self.hosting or None,
            "pinned": self.pinned,
            "modelCache": self.model_cache or None,
            "shards": sorted(self.replicas),
            "diskBytes": self.disk_bytes,
            "memoryBytes": self.memory_bytes,
            "inFlight": self.in_flight,
            "lastUsed": self.last_used or None,
            "downloads": self.downloads,
            "loads": self.loads,
            "timingsMs": {key: round(value * 1000, 1) for key, value in self.timings.items()},
        }
