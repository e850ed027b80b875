"""Keeping models hot, the operator's side of the cache: which models are pinned (``--pin``), which are loaded
ahead of their first request (``--preload``, ``--preload-top``) and how that pre-loading goes, the record of
the most used models that ``--preload-top`` reads at the next start, and the start-time check of these
settings.

The cache (core.py) carries the decisions out: it never evicts a pinned model, records every request in a
``Usage``, and loads each model a ``Preload`` hands it (``ModelCache.warm``). Nothing here imports the cache.

What "the pinned set does not fit" means, as far as it can be known at start: literal TargetModels are counted
against ``--max-models`` (more of them than the budget: refused). A pattern matches models only as they are
asked for, and a model's memory and disk are known only once it is fetched and loaded; so a load (of any model)
that would need a pinned model's room is answered ``InsufficientMemory`` (507) instead of evicting it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path

from openmme.endpoint.errors import ValidationError
from openmme.endpoint.names import validate_target_model
from openmme.endpoint.settings import Settings

__all__ = [
    "PRELOAD_STATES",
    "USAGE_FILE_NAME",
    "KeepingConfigError",
    "Pins",
    "Preload",
    "Usage",
    "check_keeping",
    "preload_targets",
    "read_usage",
    "write_usage",
]

log = logging.getLogger(__name__)

# In the cache directory, beside the model store (which is emptied at start; this file is not).
USAGE_FILE_NAME = "usage.json"
# Models whose request counts are kept (and written): the head that any --preload-top reads, and far more.
USAGE_KEPT = 10_000
PRELOAD_STATES = ("pending", "loaded", "skipped", "failed")
_WILDCARDS = frozenset("*?[")


class KeepingConfigError(Exception):
    """Pinning or pre-loading settings ``openmme serve`` refuses at start; the message says why, in one line."""


class Pins:
    """The models eviction never removes: TargetModels, or fnmatch patterns (``*`` also matches ``/``, as the
    ``allow`` patterns of --auth-keys-file do)."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        self.literals = tuple(dict.fromkeys(p for p in self.patterns if not _WILDCARDS & set(p)))
        self._globs = tuple(p for p in self.patterns if _WILDCARDS & set(p))
        self._literal_set = frozenset(self.literals)

    def __contains__(self, target: object) -> bool:
        if not isinstance(target, str):
            return False
        return target in self._literal_set or any(fnmatch.fnmatchcase(target, glob) for glob in self._globs)

    def __bool__(self) -> bool:
        return bool(self.patterns)


def check_keeping(settings: Settings) -> list[str]:
    """Refuse (KeepingConfigError) what cannot work, before anything starts; returns warnings to log."""
    pins = Pins(settings.pin)
    for name in (*pins.literals, *settings.preload):
        try:
            validate_target_model(name)
        except ValidationError as exc:
            flag = "--preload" if name in settings.preload else "--pin"
            raise KeepingConfigError(f"{flag} {name!r}: {exc}") from None
    if settings.max_models and len(pins.literals) > settings.max_models:
        raise KeepingConfigError(
            f"{len(pins.literals)} pinned models do not fit --max-models {settings.max_models}; pin fewer, or raise"
            f" --max-models to at least {len(pins.literals) + 1} to leave room for the models not pinned"
        )
    if (settings.preload or settings.preload_top) and not settings.model_prefix:
        raise KeepingConfigError("--preload and --preload-top need --model-prefix (the models to load come from it)")
    if settings.idle_ttl_delete and not settings.idle_ttl:
        raise KeepingConfigError("--idle-ttl-delete needs --idle-ttl (the seconds after which a model is idle)")
    warnings = []
    if settings.max_models and len(pins.literals) == settings.max_models:
        warnings.append(
            f"the {len(pins.literals)} pinned models take every one of --max-models {settings.max_models}: a request"
            " for any other model will be answered InsufficientMemory (507)"
        )
    return warnings


# ---- the usage record ------------------------------------------------------------------------------------


class Usage:
    """Requests per model: this run's, on top of half of what the record held at start (so that a short run, or
    a crash soon after a start, does not wipe out what the runs before learned, and recent use weighs more)."""

    def __init__(self, recorded: Mapping[str, float] | None = None) -> None:
        self.counts: Counter[str] = Counter({name: count / 2 for name, count in (recorded or {}).items()})
        self.changed = False

    def record(self, target: str) -> None:
        self.counts[target] += 1
        self.changed = True
        if len(self.counts) > 2 * USAGE_KEPT:  # a long tail of models asked for once: keep the head only
            self.counts = Counter(dict(self.counts.most_common(USAGE_KEPT)))

    def top(self, n: int) -> list[str]:
        return [name for name, _ in self.counts.most_common(n)] if n else []


def read_usage(cache_dir: Path) -> dict[str, float]:
    """Blocking: the request counts the last run recorded in ``cache_dir`` ({} when none, or unreadable)."""
    path = cache_dir / USAGE_FILE_NAME
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return {str(item["model"]): float(item["requests"]) for item in record["models"]}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring the usage record %s, which cannot be read: %s", path, exc)
        return {}


def write_usage(cache_dir: Path, counts: Mapping[str, float]) -> None:
    """Blocking: write the most used models' request ``counts`` to ``cache_dir`` atomically (a whole new file
    renamed over the old one: a crash mid-write leaves the previous record, never half of one)."""
    path = cache_dir / USAGE_FILE_NAME
    models = [{"model": name, "requests": round(count, 3)} for name, count in Counter(counts).most_common(USAGE_KEPT)]
    text = json.dumps({"savedAt": round(time.time(), 3), "models": models}, separators=(",", ":"))
    partial = path.with_name(f".{USAGE_FILE_NAME}.{os.getpid()}.partial")
    try:
        with partial.open("w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        partial.replace(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()


# ---- pre-loading ------------------------------------------------------------------------------------------


def preload_targets(settings: Settings, recorded: Mapping[str, float]) -> list[str]:
    """What to pre-load, most important first: every ``--preload`` in the order given, then the
    ``--preload-top`` most used models of the record, each once."""
    recorded_top = Usage(recorded).top(settings.preload_top)
    return list(dict.fromkeys([*settings.preload, *recorded_top]))


class Preload:
    """Loads ``targets`` in the background with at most ``concurrency`` at once, through ``warm`` (True: loaded
    and kept; False: skipped, no room without pushing out another model). A failure is logged, never fatal."""

    def __init__(self, targets: Sequence[str], warm: Callable[[str], Awaitable[bool]], concurrency: int) -> None:
        self.targets = list(targets)
        self.warm = warm
        self.concurrency = max(concurrency, 1)
        self.counts: Counter[str] = Counter({"pending": len(self.targets)})
        self.started = time.monotonic()

    @property
    def pending(self) -> int:
        return self.counts["pending"]

    def status(self) -> dict[str, int]:
        return {"total": len(self.targets), **{state: self.counts[state] for state in PRELOAD_STATES}}

    async def run(self) -> None:
        if not self.targets:
            return
        log.info("pre-loading %d model(s), %d at a time", len(self.targets), self.concurrency)
        gate = asyncio.Semaphore(self.concurrency)
        await asyncio.gather(*(self._one(target, gate) for target in self.targets))
        log.info(
            "pre-loading done in %.1f s: %d loaded, %d skipped (no room), %d failed",
            time.monotonic() - self.started,
            self.counts["loaded"],
            self.counts["skipped"],
            self.counts["failed"],
        )

    async def _one(self, target: str, gate: asyncio.Semaphore) -> None:
        async with gate:
            try:
                outcome = "loaded" if await self.warm(target) else "skipped"
            except Exception as exc:
                log.warning("pre-loading %s failed: %s", target, exc)
                outcome = "failed"
            if outcome == "skipped":
                log.info("pre-loading %s skipped: no room without pushing out another model", target)
            self.counts["pending"] -= 1
            self.counts[outcome] += 1
