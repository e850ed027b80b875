"""Structured logs: one JSON line per request (``openmme.access``) and per load, eviction or failure
(``openmme.events``), on stdout; everything else as readable text on stderr.

A request line: ``{"event": "invocation", "inference_id", "target_model", "status", "cache": "hit"|"miss",
"wait_ms", "download_ms", "extract_ms", "load_ms", "predict_ms", "total_ms"}`` (the download/extract/load
figures are those of the load a missing request waited for).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import Any

from openmme.endpoint.cache.entry import Entry
from openmme.endpoint.cache.events import CacheEvents

__all__ = ["EventLog", "configure_logging", "log_json", "log_task_failure"]

access_log = logging.getLogger("openmme.access")
event_log = logging.getLogger("openmme.events")
log = logging.getLogger(__name__)


def log_task_failure(task: asyncio.Task[None]) -> None:
    """A background task's done callback: retrieve its exception so that asyncio does not report it as lost."""
    if not task.cancelled() and task.exception() is not None:
        log.debug("%s failed: %s", task.get_name(), task.exception())


def configure_logging(level: str) -> None:
    text = logging.StreamHandler(sys.stderr)
    text.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [text]
    root.setLevel(level.upper())
    lines = logging.StreamHandler(sys.stdout)
    lines.setFormatter(logging.Formatter("%(message)s"))
    for logger in (access_log, event_log):
        logger.handlers[:] = [lines]
        logger.propagate = False
        logger.setLevel(logging.INFO)


def log_json(logger: logging.Logger, record: dict[str, Any]) -> None:
    if logger.isEnabledFor(logging.INFO):
        logger.info(json.dumps({"time": round(time.time(), 3), **record}, separators=(",", ":")))


def _ms(entry: Entry, phase: str) -> float | None:
    seconds = entry.timings.get(phase)
    return None if seconds is None else round(seconds * 1000, 2)


class EventLog(CacheEvents):
    """A JSON line for every change a model goes through."""

    def fetched(self, entry: Entry) -> None:
        log_json(
            event_log,
            {
                "event": "fetched",
                "target_model": entry.target,
                "disk_bytes": entry.disk_bytes,
                "download_ms": _ms(entry, "download"),
                "extract_ms": _ms(entry, "extract"),
            },
        )

    def loaded(self, entry: Entry) -> None:
        log_json(
            event_log,
            {
                "event": "loaded",
                "target_model": entry.target,
                "mms_model": entry.name,
                "handler": entry.describe()["handler"],
                "load_ms": _ms(entry, "register"),
                "memory_bytes": entry.memory_bytes,
            },
        )

    def load_failed(self, entry: Entry, error: BaseException) -> None:
        log_json(event_log, {"event": "load_failed", "target_model": entry.target, "error": str(error)})

    def unloaded(self, entry: Entry, reason: str | None) -> None:
        log_json(
            event_log,
            {
                "event": "evicted" if reason and reason != "request" else "unloaded",
                "target_model": entry.target,
                "reason": reason,
                "unload_ms": _ms(entry, "unload"),
            },
        )

    def removed(self, entry: Entry, reason: str = "disk") -> None:
        log_json(event_log, {"event": "removed_from_disk", "target_model": entry.target, "reason": reason})
