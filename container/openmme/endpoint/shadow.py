"""Shadow versions: a mirrored sample of an alias's invocations sent to a version whose answers are never returned.

The data plane hands over an invocation after the live version answered it (``offer``, which never waits and never
raises); the mirrored call runs in the background through the same cache and backend as any request, and only
its outcome is kept: answered or error, its latency, and how far its predictions are from the live version's
(``prediction_delta``: the mean absolute difference of the two answers' numbers, when both are numbers of the same
shape). At most ``--shadow-concurrency`` mirrored calls run at once; past that an invocation is not mirrored
(counted as ``skipped``), so a slow or failing shadow cannot pile up work in front of live requests. Seldon Core 2's
experiments mirror the same way (the mirror's responses are not returned to the caller).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from openmme.endpoint.errors import EndpointError
from openmme.endpoint.logs import event_log, log_json

if TYPE_CHECKING:
    from openmme.endpoint.aliases import AliasTable, Resolution
    from openmme.endpoint.dataplane import Answer

__all__ = ["Mirror", "prediction_delta"]

log = logging.getLogger(__name__)

Run = Callable[[str, bytes, Mapping[str, str]], Awaitable["Answer"]]


class Mirror:
    """Runs the mirrored invocations of shadow versions in the background and records what they did."""

    def __init__(self, run: Run, table: AliasTable, concurrency: int) -> None:
        self.run = run
        self.table = table
        self.concurrency = concurrency
        self.tasks: set[asyncio.Task[None]] = set()

    def offer(self, resolution: Resolution, body: bytes, headers: Mapping[str, str], live: Answer) -> None:
        """Mirror one invocation the live version answered with ``live``; returns at once."""
        shadow, alias = resolution.shadow, resolution.alias
        assert shadow is not None and alias is not None
        if len(self.tasks) >= self.concurrency:
            self.table.record_shadow(alias, shadow, "skipped")
            return
        task = asyncio.create_task(self._one(resolution, body, dict(headers), live), name=f"shadow {shadow.target}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _one(self, resolution: Resolution, body: bytes, headers: Mapping[str, str], live: Answer) -> None:
        shadow, alias = resolution.shadow, resolution.alias
        assert shadow is not None and alias is not None
        started = time.perf_counter()
        try:
            answer = await self.run(shadow.target, body, headers)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            seconds = time.perf_counter() - started
            self.table.record_shadow(alias, shadow, "error", seconds)
            message = exc.message if isinstance(exc, EndpointError) else repr(exc)
            log_json(
                event_log,
                {
                    "event": "shadow_failed",
                    "alias": alias,
                    "variant": shadow.name,
                    "target_model": shadow.target,
                    "status": exc.status if isinstance(exc, EndpointError) else 500,
                    "error": message,
                    "total_ms": round(seconds * 1000, 2),
                },
            )
            return
        seconds = time.perf_counter() - started
        delta = prediction_delta(live.body, live.content_type, answer.body, answer.content_type)
        self.table.record_shadow(alias, shadow, "answered", seconds, delta)

    async def close(self, grace: float = 5.0) -> None:
        """Let the mirrored calls under way finish (for ``grace`` seconds), then cancel the rest."""
        if self.tasks:
            _, left = await asyncio.wait(set(self.tasks), timeout=grace)
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)


def prediction_delta(live: bytes, live_type: str, shadow: bytes, shadow_type: str) -> float | None:
    """The mean absolute difference between two answers' numbers (JSON arrays, nested or not, or CSV); None when
    either is not numbers or their counts differ."""
    left, right = _numbers(live, live_type), _numbers(shadow, shadow_type)
    if left is None or right is None or len(left) != len(right) or not left:
        return None
    return sum(abs(a - b) for a, b in zip(left, right, strict=True)) / len(left)


def _numbers(body: bytes, content_type: str) -> list[float] | None:
    try:
        text = body.decode()
    except UnicodeDecodeError:
        return None
    if "json" in content_type:
        try:
            return _flatten(json.loads(text))
        except (ValueError, TypeError):
            return None
    try:
        values = [float(cell) for row in csv.reader(io.StringIO(text)) for cell in row if cell.strip()]
    except ValueError:
        return None
    return values if all(math.isfinite(value) for value in values) else None


def _flatten(value: Any) -> list[float] | None:
    """The numbers of a JSON answer: a number, or lists of them, or SageMaker's ``{"predictions": [...]}``."""
    if isinstance(value, Mapping) and "predictions" in value:
        value = value["predictions"]
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, Mapping) and "score" in value:
        return _flatten(value["score"])
    if isinstance(value, list):
        found: list[float] = []
        for item in value:
            numbers = _flatten(item)
            if numbers is None:
                return None
            found.extend(numbers)
        return found
    return None
