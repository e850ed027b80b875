"""Progress of an upload or copy, as one line redrawn in place on a terminal.

boto3 reports a managed transfer's progress by calling ``Callback(bytes_done_since_last_call)`` from its worker
threads; ``ProgressLine.advance`` is such a callback. The CLI shows it only when stderr is a terminal: in logs and
pipes a carriage-return animation is noise, and the final ``published …`` line says what happened.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Protocol, TextIO

__all__ = ["Progress", "ProgressLine", "format_size"]


class Progress(Protocol):
    """What the publishing functions report a transfer's progress to."""

    def start(self, label: str, total: int) -> None:
        """A transfer of ``total`` bytes begins."""

    def advance(self, transferred: int) -> None:
        """``transferred`` more bytes are done (called from boto3's worker threads)."""

    def finish(self) -> None:
        """The transfer ended, whether it succeeded or not."""


def format_size(size: float) -> str:
    """``1536`` → ``1.5 KiB``: binary units, one decimal."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


class ProgressLine:
    """``label [##########----------]  50%  6.0 MiB / 12.0 MiB`` on ``stream``, redrawn at most 10 times a second."""

    def __init__(self, stream: TextIO | None = None, width: int = 24, interval: float = 0.1) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._width = width
        self._interval = interval
        self._lock = threading.Lock()
        self._label = ""
        self._total = 0
        self._done = 0
        self._drawn_at = 0.0
        self._active = False

    def start(self, label: str, total: int) -> None:
        with self._lock:
            self._label, self._total, self._done, self._active = label, total, 0, True
            self._draw()

    def advance(self, transferred: int) -> None:
        with self._lock:
            self._done += transferred
            if time.monotonic() - self._drawn_at >= self._interval or self._done >= self._total:
                self._draw()

    def finish(self) -> None:
        with self._lock:
            if self._active:
                self._draw()
                self._stream.write("\n")
                self._stream.flush()
                self._active = False

    def _draw(self) -> None:
        fraction = min(self._done / self._total, 1.0) if self._total else 1.0
        filled = round(fraction * self._width)
        bar = "#" * filled + "-" * (self._width - filled)
        line = f"{self._label} [{bar}] {fraction:4.0%}  {format_size(self._done)} / {format_size(self._total)}"
        # "\r" returns to the line's start; the clear-to-end code wipes a longer previous line.
        self._stream.write(f"\r{line}\x1b[K")
        self._stream.flush()
        self._drawn_at = time.monotonic()
