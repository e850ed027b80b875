"""Records: an input object split into them, batched into request bodies, the model's answers split back into one
output per record, joined with their inputs and assembled into the output object. Pure functions over bytes.

How SageMaker batch transform shapes these (CreateTransformJob in botocore's service model; the developer guide's
"Use Batch Transform" and "Associate Prediction Results with Input Records"):

- ``SplitType=Line``: a record is a line (``\\n``, or ``\\r\\n``); empty lines are no records (their line numbers
  still count, for error messages). ``None``: the whole object is one record.
- ``BatchStrategy=MultiRecord``: as many consecutive records as fit ``MaxPayloadInMB``, joined by ``\\n``;
  ``SingleRecord``: one each. A record larger than the payload limit fails its object.
- An answer for several records is split back by its type: CSV a line per record (what the SageMaker XGBoost
  container answers under batch transform, ``$SAGEMAKER_BATCH``), or the container's one CSV line of
  comma-separated predictions (what it answers otherwise: ``0.1,0.9`` or ``[0.1, 0.9],[0.8, 0.2]``); JSON an
  array with an element per record (or openmme's ``{"predictions": [...]}``); JSON Lines a line per record. Any
  other type can only be the answer for one record.
- ``JoinSource=Input``: a CSV output is the input record's fields followed by the output's; a JSON record gets the
  output as ``SageMakerOutput`` (or, if it is not an object, becomes ``{"SageMakerInput": ..., "SageMakerOutput":
  ...}``). ``OutputFilter`` then picks from that joined record (from the output alone without a join).
- ``AssembleWith=Line``: each record's output then a newline; ``None``: the outputs (or the answers) back to back.
"""

from __future__ import annotations

import csv
import itertools
import json
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from openmme.transform.jsonpath import JsonPath, PathMismatch

__all__ = [
    "CSV",
    "JSON",
    "JSON_LINES",
    "OTHER",
    "AnswerMismatch",
    "RecordError",
    "Records",
    "assemble",
    "batch_body",
    "csv_fields",
    "csv_line",
    "filter_inputs",
    "join_outputs",
    "kind_of",
    "one_record_answer",
    "payload_batches",
    "split_answer",
    "split_records",
]

CSV, JSON, JSON_LINES, OTHER = "csv", "json", "jsonlines", "other"
_KINDS = {
    "text/csv": CSV,
    "csv": CSV,
    "application/json": JSON,
    "json": JSON,
    "application/jsonlines": JSON_LINES,
    "application/x-jsonlines": JSON_LINES,
    "application/jsonl": JSON_LINES,
}
_QUOTED = (b",", b'"', b"\n", b"\r")
_CHUNK = 2048  # records per C loop (see _in_chunks)
_CHUNK_BYTES = 256 * 1024  # bytes per line split


class RecordError(ValueError):
    """A record that cannot be processed: ``index`` is its place in the list processed."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index
        self.message = message


class AnswerMismatch(ValueError):
    """An answer that cannot be split into one output per record of its request."""


def kind_of(content_type: str | None, default: str = OTHER) -> str:
    """CSV, JSON, JSON_LINES or OTHER, by media type (parameters and case ignored; ``+json`` is JSON)."""
    if not content_type:
        return default
    media = content_type.split(";", 1)[0].strip().lower()
    if media in _KINDS:
        return _KINDS[media]
    return JSON if media.endswith("+json") else OTHER


@dataclass(frozen=True)
class Records:
    """An object's records, the line each is on (None: record ``i`` is on line ``i + 1``), and whether any has a
    quote (a CSV record without one is split on its commas, never parsed)."""

    items: list[bytes]
    lines: list[int] | None = None
    quoted: bool = True

    def line(self, index: int) -> int:
        return self.lines[index] if self.lines is not None else index + 1


def split_records(data: bytes, split_type: str) -> Records:
    """``data`` as records: its lines (``Line``) or itself (``None``)."""
    quoted = b'"' in data
    if split_type != "Line":
        return Records([data], quoted=quoted)
    items = _lines(data)
    if items and items[-1] == b"":
        items.pop()
    if b"\r" in data:
        items = [item[:-1] if item.endswith(b"\r") else item for item in items]
    if b"" not in items:
        return Records(items, quoted=quoted)
    numbered = [(number, item) for number, item in enumerate(items, start=1) if item]
    return Records([item for _, item in numbered], [number for number, _ in numbered], quoted)


def _lines(data: bytes) -> list[bytes]:
    """``data.split(b"\\n")``, a megabyte at a time (see _in_chunks)."""
    items: list[bytes] = []
    start = 0
    while True:
        cut = data.find(b"\n", start + _CHUNK_BYTES) if start + _CHUNK_BYTES < len(data) else -1
        if cut < 0:
            items.extend(data[start:].split(b"\n"))
            return items
        items.extend(data[start:cut].split(b"\n"))
        start = cut + 1


def _in_chunks(size: int, work: Callable[[int, int], Iterable[bytes]]) -> list[bytes]:
    """``work`` over records 0 to ``size``, a few thousand at a time. A C loop (``map``, ``split``) holds the GIL to
    its end; in short ones the event loop's thread, which sends and receives the requests, gets it back within a
    millisecond or two instead of waiting out a whole object."""
    done: list[bytes] = []
    for start in range(0, size, _CHUNK):
        done.extend(work(start, min(start + _CHUNK, size)))
    return done


def payload_batches(items: Sequence[bytes], strategy: str, max_payload: int) -> list[tuple[int, int]]:
    """``(start, end)`` of each request's records: one record each (``SingleRecord``), or as many consecutive ones
    as fit ``max_payload`` bytes joined by newlines (``MultiRecord``). RecordError for a record over the limit."""
    import numpy as np  # here, not at import: the command line imports this module to check jobs

    count = len(items)
    if count == 0:
        return []
    sizes = np.fromiter(map(len, items), dtype=np.int64, count=count)
    too_large = np.flatnonzero(sizes > max_payload)
    if too_large.size:
        index = int(too_large[0])
        raise RecordError(index, f"the record is {int(sizes[index])} bytes, over MaxPayloadInMB ({max_payload} bytes)")
    if strategy == "SingleRecord":
        return [(index, index + 1) for index in range(count)]
    # A body of records start..end-1 is sum(size + 1) - 1 bytes: it fits while the running sum is <= limit + 1.
    ends = np.cumsum(sizes + 1)
    batches = []
    start = 0
    while start < count:
        before = int(ends[start - 1]) if start else 0
        end = int(np.searchsorted(ends, before + max_payload + 1, side="right"))
        batches.append((start, end))
        start = end
    return batches


def batch_body(items: Sequence[bytes], start: int, end: int) -> bytes:
    return items[start] if end - start == 1 else b"\n".join(items[start:end])


def csv_fields(record: bytes) -> list[bytes]:
    """A CSV record's fields (RFC 4180 quoting, as SageMaker asks of CSV input)."""
    if b'"' not in record:
        return record.split(b",")
    row = next(csv.reader([record.decode("utf-8")]), [])
    return [field.encode("utf-8") for field in row]


def csv_line(fields: Sequence[bytes]) -> bytes:
    """Fields as one CSV line, quoted only where a field needs it."""
    return b",".join(_csv_field(field) for field in fields)


def _csv_field(field: bytes) -> bytes:
    if any(char in field for char in _QUOTED):
        return b'"' + field.replace(b'"', b'""') + b'"'
    return field


def _as_fields(selected: Any) -> list[bytes]:
    """What a path selected from CSV fields, as fields again (one field when it selected one)."""
    if isinstance(selected, list):
        return [value if isinstance(value, bytes) else _json_text(value) for value in selected]
    return [selected if isinstance(selected, bytes) else _json_text(selected)]


def _json_text(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class _Columns:
    """An index-only path over CSV fields, resolved once per field count to the positions it picks: a record
    without quotes is then a ``split``, an ``itemgetter`` and a ``join`` (C loops, ``map``), never parsed as CSV."""

    def __init__(self, path: JsonPath) -> None:
        self.path = path
        self._plans: dict[int, tuple[list[int], bool] | PathMismatch] = {}

    def plan(self, count: int) -> tuple[list[int], bool]:
        """The positions the path picks among ``count`` fields (from 0), and whether it picks one field rather than
        a row (``$[0]`` is a field, ``$[0:1]`` a row of one); PathMismatch when it does not fit ``count``."""
        plan = self._plans.get(count)
        if plan is None:
            try:
                picked = self.path.apply(list(range(count)))
                positions = picked if isinstance(picked, list) else [picked]
                if not all(isinstance(position, int) for position in positions):
                    raise PathMismatch(f"{self.path}: selects nested values, and CSV fields are flat")
                plan = (positions, not isinstance(picked, list))
            except PathMismatch as exc:
                plan = exc
            self._plans[count] = plan
        if isinstance(plan, PathMismatch):
            raise plan
        return plan

    def lines(self, rows: Iterable[list[bytes]], count: int, positions: list[int] | None = None) -> list[bytes]:
        """The picked fields of ``rows`` (all of ``count`` fields, from splits without quotes, so none needs quoting)
        as CSV lines; ``positions``: where in each row the picked fields are, when not where the plan says."""
        planned, single = self.plan(count)
        picked = map(_getter(planned if positions is None else positions, single), rows)
        return list(picked) if single else list(map(b",".join, picked))

    def joined_lines(self, inputs: Sequence[bytes], outputs: Sequence[bytes], counts: tuple[int, int]) -> list[bytes]:
        """Each input's fields and then its output's, picked, for unquoted records of ``counts`` fields. An input is
        split only as far as the picks reach into it (``$[0,-1]`` needs its first field alone)."""
        inputs_count, outputs_count = counts
        count = inputs_count + outputs_count
        positions, _ = self.plan(count)
        head = max((position for position in positions if position < inputs_count), default=-1) + 1
        moved: list[int] | None = None
        split_input = _SPLIT
        if head < inputs_count:
            # The first `head` fields, then the rest of the input in one piece, then the output's fields.
            moved = [
                position if position < inputs_count else position - inputs_count + head + 1 for position in positions
            ]
            split_input = operator.methodcaller("split", b",", head)

        def rows(start: int, end: int) -> list[bytes]:
            joined = map(operator.add, map(split_input, inputs[start:end]), map(_SPLIT, outputs[start:end]))
            return self.lines(joined, count, moved)

        return _in_chunks(len(inputs), rows)

    def tail(self, count: int) -> int | None:
        """``start`` when the path picks fields ``start`` to the last of ``count`` (``$[1:]``): a record is then
        its text after the ``start``-th comma, one split, no join."""
        positions, single = self.plan(count)
        if not single and positions and positions[0] > 0 and positions == list(range(positions[0], count)):
            return positions[0]
        return None

    def line(self, fields: list[bytes]) -> bytes:
        """The picked fields as a CSV line (the fields come from a split without quotes: none needs quoting)."""
        return self.lines([fields], len(fields))[0]

    def quoted_line(self, fields: list[bytes]) -> bytes:
        """The same for fields that may need quoting again."""
        positions, _ = self.plan(len(fields))
        return csv_line([fields[position] for position in positions])


def _getter(positions: list[int], single: bool) -> Callable[[list[bytes]], Any]:
    """What picks ``positions`` from a row: the field itself when ``single``, else a tuple of fields."""
    if single:
        return operator.itemgetter(positions[0])
    if len(positions) == 1:
        position = positions[0]
        return lambda fields: (fields[position],)
    return operator.itemgetter(*positions) if positions else (lambda fields: ())


_SPLIT = operator.methodcaller("split", b",")


def _plain_count(items: Sequence[bytes], quoted: bool | None = None) -> int | None:
    """The one field count of ``items`` when none has a quote (``quoted``, if the caller knows) and all have as
    many fields; else None. In chunks, as _in_chunks."""
    counts: set[int] = set()
    for start in range(0, len(items), _CHUNK):
        chunk = items[start : start + _CHUNK]
        if quoted is None and any(map(bytes.__contains__, chunk, itertools.repeat(b'"'))):
            return None
        counts.update(map(bytes.count, chunk, itertools.repeat(b",")))
        if len(counts) > 1:
            return None
    return counts.pop() + 1 if counts and not quoted else None


def filter_inputs(items: Sequence[bytes], kind: str, path: JsonPath, quoted: bool | None = None) -> list[bytes]:
    """``InputFilter`` applied to each record: what is sent instead of it. RecordError for one it does not fit.
    ``quoted``: whether any record has a quote, when the caller knows (``Records.quoted``)."""
    columns = _Columns(path) if kind == CSV else None
    count = _plain_count(items, quoted) if columns is not None and items else None
    if columns is not None and count is not None:
        # The common case, in C loops: unquoted CSV, every record as wide as the others.
        try:
            first = columns.tail(count)
            if first is not None:
                getter, splitter = operator.itemgetter(first), operator.methodcaller("split", b",", first)
                return _in_chunks(len(items), lambda start, end: map(getter, map(splitter, items[start:end])))
            return _in_chunks(len(items), lambda start, end: columns.lines(map(_SPLIT, items[start:end]), count))
        except PathMismatch as exc:
            raise RecordError(0, f"InputFilter {path}: {_reason(exc)}") from exc
    filtered = []
    for index, item in enumerate(items):
        try:
            if columns is None:
                filtered.append(_json_text(path.apply(_json_value(item))))
            elif b'"' in item:
                filtered.append(columns.quoted_line(csv_fields(item)))
            else:
                filtered.append(columns.line(item.split(b",")))
        except (PathMismatch, ValueError) as exc:
            raise RecordError(index, f"InputFilter {path}: {_reason(exc)}") from exc
    return filtered


def _json_value(item: bytes) -> Any:
    try:
        return json.loads(item)
    except ValueError as exc:
        raise ValueError(f"the record is not JSON ({exc})") from exc


def _reason(exc: Exception) -> str:
    return str(exc).split(": ", 1)[1] if isinstance(exc, PathMismatch) and ": " in str(exc) else str(exc)


def _strip_newline(body: bytes) -> bytes:
    if body.endswith(b"\r\n"):
        return body[:-2]
    return body[:-1] if body.endswith(b"\n") else body


def one_record_answer(body: bytes) -> bytes:
    """An answer that is one record's output: without its final newline, which assembling adds back."""
    return _strip_newline(body)


def split_answer(body: bytes, content_type: str | None, count: int) -> list[bytes]:
    """The answer to a request of ``count`` records, as one output per record (see the module docstring);
    AnswerMismatch when it does not hold ``count`` of them."""
    kind = kind_of(content_type)
    if kind == JSON:
        return _split_json(body, count)
    if count == 1:
        return [_strip_newline(body)]
    if kind in (CSV, JSON_LINES):
        text = _strip_newline(body)
        lines = text.split(b"\n")
        if len(lines) == count:
            return [line[:-1] if line.endswith(b"\r") else line for line in lines]
        if kind == CSV and len(lines) == 1:
            values = _top_level_split(text)
            if len(values) == count:
                return values
        raise AnswerMismatch(f"the model answered {len(lines)} lines for {count} records")
    raise AnswerMismatch(
        f"a {content_type or 'typeless'} answer cannot be split into its {count} records: use BatchStrategy "
        "SingleRecord, or AssembleWith None without DataProcessing"
    )


def _split_json(body: bytes, count: int) -> list[bytes]:
    try:
        value = json.loads(body)
    except ValueError as exc:
        raise AnswerMismatch(f"the model's JSON answer does not parse: {exc}") from exc
    predictions = value.get("predictions") if isinstance(value, dict) else None
    if isinstance(predictions, list) and len(predictions) == count:
        value = predictions  # openmme's {"predictions": [...]}
    if isinstance(value, list) and len(value) == count:
        if all(type(element) in (float, int) for element in value):
            # A flat array: its elements as json.dumps writes them inside the array, in one call.
            return [element.encode("utf-8") for element in json.dumps(value)[1:-1].split(", ")]
        return [json.dumps(element).encode("utf-8") for element in value]
    if count == 1:
        return [_strip_newline(body)]
    length = len(value) if isinstance(value, list) else "no array of"
    raise AnswerMismatch(f"the model answered {length} predictions for {count} records")


def _top_level_split(line: bytes) -> list[bytes]:
    """A line split at the commas outside brackets and quotes: the container's ``[0.1, 0.9],[0.8, 0.2]``."""
    if not any(char in line for char in (b"[", b"{", b'"')):
        return line.split(b",")
    values, depth, quoted, start = [], 0, False, 0
    for position, char in enumerate(line):
        if char == 0x22:  # "
            quoted = not quoted
        elif quoted:
            continue
        elif char in (0x5B, 0x7B):  # [ {
            depth += 1
        elif char in (0x5D, 0x7D):  # ] }
            depth -= 1
        elif char == 0x2C and depth == 0:  # ,
            values.append(line[start:position])
            start = position + 1
    values.append(line[start:])
    return values


def _output_fields(output: bytes, kind: str) -> list[bytes]:
    """A record's output as CSV fields: its own fields for CSV, an array's elements for JSON."""
    if kind == JSON:
        value = json.loads(output)
        return _as_fields(value if isinstance(value, list) else [value])
    return csv_fields(output)


def _output_value(output: bytes, kind: str) -> Any:
    """A record's output as a JSON value: parsed JSON, CSV fields as numbers where they are numbers."""
    if kind in (JSON, JSON_LINES):
        return json.loads(output)
    if kind == CSV:
        values = [_number_or_text(field) for field in csv_fields(output)]
        return values[0] if len(values) == 1 else values
    return output.decode("utf-8", errors="replace")


def _number_or_text(field: bytes) -> Any:
    try:
        number = json.loads(field)
    except ValueError:
        return field.decode("utf-8", errors="replace")
    return number if isinstance(number, int | float) else field.decode("utf-8", errors="replace")


def join_outputs(
    inputs: Sequence[bytes],
    outputs: Sequence[bytes],
    input_kind: str,
    output_kind: str,
    join: bool,
    output_filter: JsonPath,
    inputs_quoted: bool | None = None,
) -> list[bytes]:
    """Each record's output joined with its input (``JoinSource=Input``) and filtered (``OutputFilter``), in the
    input's format. RecordError for a record the filter does not fit. ``inputs_quoted``: whether any input record
    has a quote, when the caller knows."""
    if input_kind == CSV and join and output_filter.is_root and output_kind == CSV:
        # Two CSV lines glued with a comma are one CSV line of both lines' fields, quoted or not.
        return [record + b"," + output for record, output in zip(inputs, outputs, strict=True)]
    if input_kind == CSV:
        return _join_csv(inputs, outputs, output_kind, join, _Columns(output_filter), inputs_quoted)
    joined = []
    for index, (record, output) in enumerate(zip(inputs, outputs, strict=True)):
        try:
            value = _output_value(output, output_kind)
            if join:
                source = _json_value(record)
                if isinstance(source, dict):
                    value = {**source, "SageMakerOutput": value}
                else:
                    value = {"SageMakerInput": source, "SageMakerOutput": value}
            joined.append(_json_text(output_filter.apply(value)))
        except (PathMismatch, ValueError) as exc:
            raise RecordError(index, f"OutputFilter {output_filter}: {_reason(exc)}") from exc
    return joined


def _join_csv(
    inputs: Sequence[bytes],
    outputs: Sequence[bytes],
    output_kind: str,
    join: bool,
    columns: _Columns,
    inputs_quoted: bool | None,
) -> list[bytes]:
    if output_kind == CSV and outputs:
        inputs_count = _plain_count(inputs, inputs_quoted) if join else 0
        outputs_count = _plain_count(outputs)
        if inputs_count is not None and outputs_count is not None:
            # The common case, in C loops: each joined row is its input's fields then its output's.
            try:
                if join:
                    return columns.joined_lines(inputs, outputs, (inputs_count, outputs_count))
                return _in_chunks(
                    len(outputs), lambda start, end: columns.lines(map(_SPLIT, outputs[start:end]), outputs_count)
                )
            except PathMismatch as exc:
                raise RecordError(0, f"OutputFilter {columns.path}: {_reason(exc)}") from exc
    joined = []
    for index, (record, output) in enumerate(zip(inputs, outputs, strict=True)):
        try:
            plain = output_kind == CSV and b'"' not in output and (not join or b'"' not in record)
            if plain:
                fields = record.split(b",") + output.split(b",") if join else output.split(b",")
                joined.append(columns.line(fields))
            else:
                fields = (csv_fields(record) if join else []) + _output_fields(output, output_kind)
                joined.append(columns.quoted_line(fields))
        except (PathMismatch, ValueError) as exc:
            raise RecordError(index, f"OutputFilter {columns.path}: {_reason(exc)}") from exc
    return joined


def assemble(records: Sequence[bytes], assemble_with: str) -> bytes:
    """The output object: each record's output and a newline (``Line``), or the outputs back to back."""
    if assemble_with == "Line":
        return b"\n".join(records) + b"\n" if records else b""
    return b"".join(records)
