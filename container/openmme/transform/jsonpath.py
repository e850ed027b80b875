"""The JSONPath subset of SageMaker batch transform's ``DataProcessing`` (``InputFilter``, ``OutputFilter``): parsed
once, applied to every record.

The operators SageMaker documents ("Associate Prediction Results with Input Records", Supported JSONPath
Operators), and only those:

    $                        the record (every path starts with it)
    .name  ['name']          a child of an object
    ['a','b']                several children of an object: an object of just those (the last step only)
    *  [*]                   every child: an object's values, an array's elements
    [2]  [-1]  [1,3,5]       elements of an array by index, negative from the end
    [2:5]  [:5]  [2:]        a slice of an array; with indexes in one bracket, ``[0,5:]``, but one slice at most

A CSV record is an array of its fields, so CSV takes index paths only (``$[1:]``, ``$[0,-1]``). A slice's end is
exclusive, as in the ``slice()`` the table names and in Jayway JsonPath, the implementation it points to (the
guide's prose once calls ``$[1:4]`` "the second through fifth columns"; openmme follows the operator table). An
index outside the array is an error, as SageMaker says ("indexes that aren't within the dimension size ... you get
an error"); a slice is clipped to the array. Filters (``?()``), recursive descent (``..``) and slice steps are not
in the subset and are refused when the job is checked, before anything runs.

After a step that selects several values (``*``, several indexes, a slice) the remaining steps apply to each of
them: ``$.items[*].id`` is the list of the items' ids.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_LENGTH", "JsonPath", "JsonPathError", "PathMismatch", "parse"]

MAX_LENGTH = 63  # CreateTransformJob's length limit for InputFilter and OutputFilter

_NAME = re.compile(r"[^.\[\]'\"*\s]+")
_INT = re.compile(r"-?\d+")


class JsonPathError(ValueError):
    """A path outside the subset, or malformed: refused when the job is checked."""


class PathMismatch(ValueError):
    """A valid path that does not fit a record (an attribute it lacks, an index past its end)."""


@dataclass(frozen=True)
class _Child:
    name: str


@dataclass(frozen=True)
class _Children:
    names: tuple[str, ...]


@dataclass(frozen=True)
class _Wildcard:
    pass


@dataclass(frozen=True)
class _Index:
    index: int


@dataclass(frozen=True)
class _Select:
    """Several indexes and at most one slice, in the order written: ``[0,5:]``."""

    items: tuple[int | tuple[int | None, int | None], ...]


_Step = _Child | _Children | _Wildcard | _Index | _Select


@dataclass(frozen=True)
class JsonPath:
    text: str
    steps: tuple[_Step, ...]

    @property
    def is_root(self) -> bool:
        """``$``: the whole record, nothing to do."""
        return not self.steps

    @property
    def index_only(self) -> bool:
        """Only array steps: what a CSV record (an array of fields) can take."""
        return all(isinstance(step, _Index | _Select | _Wildcard) for step in self.steps)

    def apply(self, value: Any) -> Any:
        """The part of ``value`` the path selects; PathMismatch when the record has no such part."""
        return _apply(self.steps, value, self.text)

    def __str__(self) -> str:
        return self.text


def parse(text: str) -> JsonPath:
    """``text`` as a path of the subset; JsonPathError naming what is wrong otherwise. An empty path is ``$``."""
    text = text.strip() or "$"
    if len(text) > MAX_LENGTH:
        raise JsonPathError(f"{text!r} is longer than {MAX_LENGTH} characters")
    if not text.startswith("$"):
        raise JsonPathError(f"{text!r} must start with $ (the record)")
    if ".." in text:
        raise JsonPathError(f"{text!r}: recursive descent (..) is not among SageMaker's JSONPath operators")
    steps: list[_Step] = []
    position = 1
    while position < len(text):
        if steps and isinstance(steps[-1], _Children):
            raise JsonPathError(f"{text!r}: several names (['a','b']) can only be the last step")
        char = text[position]
        if char == ".":
            position += 1
            if text.startswith("[", position):  # `.['a','b']`, as the guide writes it
                continue
            if text.startswith("*", position):
                steps.append(_Wildcard())
                position += 1
                continue
            match = _NAME.match(text, position)
            if match is None:
                raise JsonPathError(f"{text!r}: a name must follow '.' at position {position}")
            steps.append(_Child(match.group()))
            position = match.end()
        elif char == "[":
            end = text.find("]", position)
            if end < 0:
                raise JsonPathError(f"{text!r}: '[' at position {position} is never closed")
            steps.append(_bracket(text[position + 1 : end], text))
            position = end + 1
        else:
            raise JsonPathError(f"{text!r}: unexpected {char!r} at position {position}")
    return JsonPath(text, tuple(steps))


def _bracket(inside: str, text: str) -> _Step:
    inside = inside.strip()
    if inside == "*":
        return _Wildcard()
    if inside.startswith("?") or inside.startswith("("):
        raise JsonPathError(f"{text!r}: filter and script expressions are not among SageMaker's JSONPath operators")
    parts = [part.strip() for part in inside.split(",")]
    if not inside or any(not part for part in parts):
        raise JsonPathError(f"{text!r}: an empty selection in [{inside}]")
    if all(part[0] in "'\"" for part in parts):
        names = tuple(_quoted(part, text) for part in parts)
        return _Child(names[0]) if len(names) == 1 else _Children(names)
    items: list[int | tuple[int | None, int | None]] = []
    for part in parts:
        if ":" in part:
            bounds = part.split(":")
            if len(bounds) != 2:
                raise JsonPathError(f"{text!r}: slice steps ([start:end:step]) are not supported")
            start, end = (_integer(bound, text) if bound.strip() else None for bound in bounds)
            items.append((start, end))
        else:
            items.append(_integer(part, text))
    if sum(isinstance(item, tuple) for item in items) > 1:
        raise JsonPathError(f"{text!r}: one slice per bracket at most (SageMaker refuses [0:2,246:])")
    if len(items) == 1 and isinstance(items[0], int):
        return _Index(items[0])
    return _Select(tuple(items))


def _quoted(part: str, text: str) -> str:
    if len(part) < 2 or part[0] != part[-1]:
        raise JsonPathError(f"{text!r}: unbalanced quotes in {part}")
    name = part[1:-1]
    if not name or "." in name:
        raise JsonPathError(f"{text!r}: {part} is not one child name (nesting inside brackets is not supported)")
    return name


def _integer(part: str, text: str) -> int:
    part = part.strip()
    if not _INT.fullmatch(part):
        raise JsonPathError(f"{text!r}: {part!r} is not an index (mix names and indexes in one bracket? quote names)")
    return int(part)


def _apply(steps: Sequence[_Step], value: Any, text: str) -> Any:
    for position, step in enumerate(steps):
        rest = steps[position + 1 :]
        if isinstance(step, _Child):
            value = _child(value, step.name, text)
        elif isinstance(step, _Children):
            return {name: _child(value, name, text) for name in step.names}
        elif isinstance(step, _Index):
            value = _element(value, step.index, text)
        elif isinstance(step, _Wildcard):
            children = list(value.values()) if isinstance(value, dict) else _array(value, "*", text)
            return [_apply(rest, child, text) for child in children]
        else:
            return [_apply(rest, child, text) for child in _selected(value, step, text)]
    return value


def _child(value: Any, name: str, text: str) -> Any:
    if not isinstance(value, dict):
        if isinstance(value, list):
            raise PathMismatch(
                f"{text}: {name!r} names an attribute of an object; this record is an array (a CSV "
                "record takes index paths such as $[0] or $[1:])"
            )
        raise PathMismatch(f"{text}: {name!r} names an attribute of an object; this record is not one")
    if name not in value:
        raise PathMismatch(f"{text}: the record has no attribute {name!r}")
    return value[name]


def _array(value: Any, what: str, text: str) -> list[Any]:
    if not isinstance(value, list):
        raise PathMismatch(f"{text}: {what} selects array elements, and the record is not an array")
    return value


def _element(value: Any, index: int, text: str) -> Any:
    array = _array(value, f"[{index}]", text)
    if not -len(array) <= index < len(array):
        raise PathMismatch(f"{text}: index {index} is outside the record's {len(array)} elements")
    return array[index]


def _selected(value: Any, step: _Select, text: str) -> list[Any]:
    array = _array(value, "[...]", text)
    chosen: list[Any] = []
    for item in step.items:
        if isinstance(item, tuple):
            chosen.extend(array[item[0] : item[1]])
        else:
            chosen.append(_element(array, item, text))
    return chosen
