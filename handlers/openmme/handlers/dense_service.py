"""MMS handler service for a dense shard: one warm worker that holds many XGBoost boosters at once.

In ``--hosting dense`` the front registers a few MMS models of its own, the shards, each served by this
handler in one worker process. The worker's model directory is only the shard's own; the models it holds
are the front's extracted archives next to it in the model store, named by their directory. Every request
names its model in ``MODEL_HEADER``; ``OP_HEADER`` says what to do with it:

- no op: predict, exactly as the XGBoost service does for a model of its own (same decoding, same errors);
  a model the shard does not hold answers 404 *without* ``ERROR_HEADER``, which the front reads as "load
  it again" (after a worker restart the shard starts empty);
- ``load``: read the booster from disk into this process (no process start, no import), and answer
  ``{"memoryBytes": n}``: the heap bytes the booster kept, measured around the load;
- ``unload``: drop it and hand the freed memory back to the system;
- ``list``: ``{"models": {name: memoryBytes}, "loads": {name: count}, "heapBytes": n}``: what the shard
  holds, and how many times this worker loaded each model.

A shard never loads an archive with ``code/inference.py``: user code with its own imports must not share a
process with other tenants (the front routes those to isolated hosting; this is the second lock).

Memory is measured with glibc's ``mallinfo2`` (bytes allocated and in use, all arenas), which is exact for
the booster's C++ allocations however much memory the allocator reuses; elsewhere the resident size is
used, which can read low when freed memory is reused.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import pathlib
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from openmme.handlers import MODEL_HEADER, OP_HEADER, UnsupportedArchive
from openmme.handlers._mms import (
    HandlerError,
    HandlerService,
    LoadError,
    MmsContext,
    one_line,
    reject,
    request_header,
)
from openmme.handlers.xgboost_service import XGBoostService

__all__ = ["DenseShard", "handle", "heap_bytes"]

logger = logging.getLogger(__name__)

_SCRIPT = pathlib.PurePosixPath("code", "inference.py")


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _heap_meter() -> tuple[Callable[[], int], Callable[[], None]]:
    """(bytes in use, give free memory back) for this process: glibc's allocator figures where available."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallinfo2 = libc.mallinfo2
        malloc_trim = libc.malloc_trim
    except (OSError, AttributeError, TypeError):
        return _resident_bytes, lambda: None
    mallinfo2.restype = _MallInfo2
    malloc_trim.argtypes = [ctypes.c_size_t]

    def in_use() -> int:
        info = mallinfo2()
        return int(info.uordblks + info.hblkhd)  # in use in the arenas + in mmapped chunks

    return in_use, lambda: malloc_trim(0)


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:  # pages: size resident shared ...
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


heap_bytes, _trim = _heap_meter()


class DenseShard(HandlerService):
    """The boosters one shard holds, by model name, and the requests that use them."""

    def __init__(self) -> None:
        self.models: dict[str, XGBoostService] = {}
        self.memory: dict[str, int] = {}
        self.loads: Counter[str] = Counter()
        self.root: pathlib.Path | None = None

    def initialize(self, context: MmsContext) -> None:
        # The shard's own directory sits in the model store, with every model the front extracted.
        self.root = pathlib.Path(context.system_properties["model_dir"]).resolve().parent
        logger.info("dense shard %s ready; models from %s", context.model_name, self.root)

    def is_loaded(self) -> bool:
        return self.root is not None

    def serve(self, data: list[dict[str, Any]], context: MmsContext) -> list[Any]:
        return [self._serve_one(idx, request, context) for idx, request in enumerate(data)]

    def _serve_one(self, idx: int, request: dict[str, Any], context: MmsContext) -> str:
        name = request_header(context, idx, MODEL_HEADER) or ""
        op = (request_header(context, idx, OP_HEADER) or "").lower()
        try:
            if op == "list":
                listing = {"models": self.memory, "loads": self.loads, "heapBytes": heap_bytes()}
                return self._json(context, idx, listing)
            _check_name(name)
            if op == "load":
                return self._json(context, idx, {"memoryBytes": self.load(name)})
            if op == "unload":
                return self._json(context, idx, {"memoryBytes": self.unload(name)})
            if op:
                raise HandlerError(400, f"unknown shard operation {op!r}")
        except (HandlerError, LoadError, UnsupportedArchive) as exc:
            status = exc.status if isinstance(exc, HandlerError) else 500
            return reject(context, idx, status, str(exc))
        service = self.models.get(name)
        if service is None:
            # No ERROR_HEADER: not the model's failure. The front loads it here again and resends.
            context.set_response_status(404, "Not Found", idx)
            context.set_response_content_type(idx, "text/plain")
            return f"model {name} is not loaded in shard {context.model_name}"
        return service.respond(idx, request, context)

    def load(self, name: str) -> int:
        """Load model ``name`` (idempotent); returns the heap bytes it holds."""
        if name in self.models:
            return self.memory[name]
        assert self.root is not None
        model_dir = self.root / name
        if model_dir.joinpath(_SCRIPT).exists():
            raise LoadError(f"{_SCRIPT} runs user code, which is never loaded into a shared shard")
        started, before = time.perf_counter(), heap_bytes()
        service = XGBoostService.from_directory(model_dir)
        held = max(heap_bytes() - before, 0)
        self.models[name], self.memory[name] = service, held
        self.loads[name] += 1
        logger.info("loaded %s into the shard in %.1f ms (%d bytes)", name, (time.perf_counter() - started) * 1e3, held)
        return held

    def unload(self, name: str) -> int:
        """Drop model ``name`` (a model not held is fine); returns the bytes it was accounted for."""
        self.models.pop(name, None)
        held = self.memory.pop(name, 0)
        _trim()
        return held

    @staticmethod
    def _json(context: MmsContext, idx: int, document: dict[str, Any]) -> str:
        context.set_response_content_type(idx, "application/json")
        return json.dumps(document)


def _check_name(name: str) -> None:
    """A model is one directory in the model store: a single path component, nothing else."""
    if not name or pathlib.PurePath(name).name != name or name in (".", "..") or name.startswith("."):
        raise HandlerError(400, f"{MODEL_HEADER} must name one model directory, not {one_line(name)!r}")


_shard = DenseShard()


def handle(data: list[dict[str, Any]] | None, context: MmsContext) -> list[Any] | None:
    """MMS's entry point for this worker process's shard."""
    return _shard.handle(data, context)
