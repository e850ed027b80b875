"""Progress of long work (an upload or copy, a rollout's bake, a pipeline's check), as one line redrawn in place on
a terminal.

boto3 reports a managed transfer's progress by calling ``Callback(bytes_done_since_last_call)`` from its worker
threads; ``ProgressLine.advance`` is such a callback. A rollout's bake is a ``ProgressLine`` of milliseconds
(``amount=format_ms``). Work of unknown length, such as a pipeline's check, is an ``ElapsedLine``: the seconds
so far. The CLI shows them only when stderr is a terminal: in logs and pipes a carriage-return animation is noise,
and the final line of the command says what happened.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Protocol, TextIO

__all__ = ["ElapsedLine", "Progress", "ProgressLine", "format_ms", "format_size"]


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


def format_ms(milliseconds: float) -> str:
    """``12400`` → ``12 s``, ``2400`` → ``2.4 s``: a duration in seconds, tenths under ten."""
    seconds = milliseconds / 1000
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"


class ProgressLine:
    """``label [##########----------]  50%  6.0 MiB / 12.0 MiB`` on ``stream``, redrawn at most 10 times a second;
    ``amount`` writes the figures (bytes by default)."""

    def __init__(
        self,
        stream: TextIO | None = None,
        width: int = 24,
        interval: float = 0.1,
        amount: Callable[[float], str] = format_size,
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._width = width
        self._interval = interval
        self._amount = amount
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
        line = f"{self._label} [{bar}] {fraction:4.0%}  {self._amount(self._done)} / {self._amount(self._total)}"
        _redraw(self._stream, line)
        self._drawn_at = time.monotonic()


class ElapsedLine:
    """``label … 12 s`` on ``stream`` while a ``with`` block runs, redrawn every ``interval`` seconds by a thread of
    its own (the block's work need not report anything); the last figure stays on its line when the block ends."""

    def __init__(self, label: str, stream: TextIO | None = None, interval: float = 1.0) -> None:
        self._label = label
        self._stream = stream if stream is not None else sys.stderr
        self._interval = interval
        self._started = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="openmme-elapsed", daemon=True)

    def __enter__(self) -> ElapsedLine:
        self._started = time.monotonic()
        self._draw()
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        self._draw()
        self._stream.write("\n")
        self._stream.flush()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._draw()

    def _draw(self) -> None:
        _redraw(self._stream, f"{self._label} … {time.monotonic() - self._started:.0f} s")


def _redraw(stream: TextIO, line: str) -> None:
    # "\r" returns to the line's start; the clear-to-end code wipes a longer previous line.
    stream.write(f"\r{line}\x1b[K")
    stream.flush()
