"""What a transform job reports: each object's outcome, the job's summary (objects, records, bytes, failures, rate),
and the progress line redrawn on a terminal while it runs."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Protocol, TextIO

from openmme.publish.progress import format_size

__all__ = ["NO_PROGRESS", "ObjectOutcome", "Progress", "ProgressLine", "Summary"]

TRANSFORMED, SKIPPED, FAILED = "transformed", "skipped", "failed"


@dataclass
class ObjectOutcome:
    """One input object's fate: ``transformed`` (its output written), ``skipped`` (a complete output of this job was
    there already) or ``failed`` (no output; ``error`` says why, ``record``/``line`` where, when a record did it)."""

    source: str
    output: str
    status: str = FAILED
    records: int = 0
    bytes_in: int = 0
    bytes_sent: int = 0
    bytes_out: int = 0
    requests: int = 0
    error: str | None = None
    record: int | None = None  # 1-based among the object's records
    line: int | None = None  # 1-based line of the object (SplitType Line)

    def failure(self) -> str:
        """``s3://…/b.csv: record 17 (line 18): ModelError (OriginalStatusCode 400): …``"""
        where = ""
        if self.record is not None:
            where = f"record {self.record}" + (f" (line {self.line})" if self.line not in (None, self.record) else "")
            where += ": "
        return f"{self.source}: {where}{self.error}"


@dataclass
class Summary:
    """A job's end: every object's outcome, the wall time, and how it was sent."""

    outcomes: list[ObjectOutcome]
    seconds: float
    concurrency: int
    interrupted: bool = False
    shard: tuple[int, int] = (0, 1)
    listed: int = 0  # input objects found, all shards together

    def count(self, status: str) -> int:
        return sum(outcome.status == status for outcome in self.outcomes)

    @property
    def failures(self) -> list[ObjectOutcome]:
        return [outcome for outcome in self.outcomes if outcome.status == FAILED]

    @property
    def records(self) -> int:
        return sum(outcome.records for outcome in self.outcomes if outcome.status == TRANSFORMED)

    @property
    def requests(self) -> int:
        return sum(outcome.requests for outcome in self.outcomes)

    @property
    def bytes_in(self) -> int:
        return sum(outcome.bytes_in for outcome in self.outcomes if outcome.status == TRANSFORMED)

    @property
    def bytes_out(self) -> int:
        return sum(outcome.bytes_out for outcome in self.outcomes)

    @property
    def records_per_second(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    @property
    def records_per_request(self) -> float:
        sent = sum(outcome.records for outcome in self.outcomes if outcome.requests)
        return sent / self.requests if self.requests else 0.0

    @property
    def ok(self) -> bool:
        return not self.interrupted and not self.failures

    def text(self) -> str:
        """The summary printed at the end of ``openmme transform``."""
        index, count = self.shard
        share = f" (share {index} of {count}: {len(self.outcomes)} of {self.listed})" if count > 1 else ""
        state = "interrupted" if self.interrupted else "done"
        lines = [
            f"transform {state}: {len(self.outcomes)} objects{share}: {self.count(TRANSFORMED)} transformed, "
            f"{self.count(SKIPPED)} skipped (complete already), {self.count(FAILED)} failed",
            f"  {self.records:,} records, {format_size(self.bytes_in)} in, {format_size(self.bytes_out)} out; "
            f"{self.requests:,} requests ({self.records_per_request:,.0f} records each), "
            f"{self.concurrency} at once",
            f"  {self.seconds:.1f} s, {self.records_per_second:,.0f} records/s, "
            f"{format_size(self.bytes_in / self.seconds if self.seconds > 0 else 0)}/s",
        ]
        if self.interrupted:
            lines.append("  outputs written so far are complete; run the same command again to do the rest")
        return "\n".join(lines)


class Progress(Protocol):
    """What the runner reports to while a job runs (from its event loop's thread)."""

    def start(self, objects: int, total_bytes: int | None) -> None: ...

    def advance(self, records: int, sent_bytes: int) -> None: ...

    def object_done(self, outcome: ObjectOutcome) -> None: ...

    def finish(self) -> None: ...


class _NoProgress:
    def start(self, objects: int, total_bytes: int | None) -> None:
        pass

    def advance(self, records: int, sent_bytes: int) -> None:
        pass

    def object_done(self, outcome: ObjectOutcome) -> None:
        pass

    def finish(self) -> None:
        pass


NO_PROGRESS: Progress = _NoProgress()


@dataclass
class ProgressLine:
    """``transform [#######---------]  44%  3/8 objects  412,000 records  61,000 records/s  1 failed`` on a
    terminal, redrawn at most 10 times a second; by input bytes when their total is known, else by objects."""

    stream: TextIO = field(default_factory=lambda: sys.stderr)
    width: int = 24
    interval: float = 0.1
    _objects: int = 0
    _total: int | None = None
    _finished: int = 0
    _failed: int = 0
    _records: int = 0
    _done_bytes: int = 0
    _flight_bytes: int = 0
    _started: float = 0.0
    _drawn: float = 0.0

    def start(self, objects: int, total_bytes: int | None) -> None:
        self._objects, self._total, self._started = objects, total_bytes, time.monotonic()
        self._draw()

    def advance(self, records: int, sent_bytes: int) -> None:
        self._records += records
        self._flight_bytes += sent_bytes
        if time.monotonic() - self._drawn >= self.interval:
            self._draw()

    def object_done(self, outcome: ObjectOutcome) -> None:
        self._finished += 1
        self._failed += outcome.status == FAILED
        self._flight_bytes -= outcome.bytes_sent
        self._done_bytes += outcome.bytes_in
        self._draw()

    def finish(self) -> None:
        self._draw()
        self.stream.write("\n")
        self.stream.flush()

    def _draw(self) -> None:
        if self._total:
            fraction = min((self._done_bytes + self._flight_bytes) / self._total, 1.0)
        else:
            fraction = self._finished / self._objects if self._objects else 1.0
        filled = round(fraction * self.width)
        elapsed = time.monotonic() - self._started
        rate = self._records / elapsed if elapsed > 0 else 0.0
        failed = f"  {self._failed} failed" if self._failed else ""
        line = (
            f"transform [{'#' * filled}{'-' * (self.width - filled)}] {fraction:4.0%}  {self._finished}/{self._objects}"
            f" objects  {self._records:,} records  {rate:,.0f} records/s{failed}"
        )
        self.stream.write(f"\r{line}\x1b[K")
        self.stream.flush()
        self._drawn = time.monotonic()
