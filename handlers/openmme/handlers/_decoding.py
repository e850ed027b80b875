"""Request bodies to numeric rows, without ever unpickling: CSV, LIBSVM, JSON and NPY.

Shared by the XGBoost service and the script service's default ``input_fn``. Every malformed body
raises ``HandlerError(400, ...)`` whose message says which row or value is wrong.
"""

from __future__ import annotations

import io
import json
import math
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse

from openmme.handlers._mms import HandlerError

__all__ = [
    "body_bytes",
    "body_text",
    "check_width",
    "parse_csv",
    "parse_json",
    "parse_json_rows",
    "parse_libsvm",
    "parse_npy",
]

FloatArray = npt.NDArray[np.floating[Any]]


def body_bytes(body: Any) -> bytes:
    """The raw bytes of a body, whichever form MMS handed it over in."""
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode("utf-8")
    # MMS parsed an application/json body itself (decode_input_request=true): serialise it back.
    return json.dumps(body).encode("utf-8")


def body_text(body: Any) -> str:
    """A body as text; 400 when its bytes are not UTF-8."""
    if isinstance(body, str):
        return body
    if isinstance(body, (bytes, bytearray, memoryview)):
        try:
            return bytes(body).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise HandlerError(400, f"the request body is not valid UTF-8 (byte {exc.start})") from exc
    return json.dumps(body)


def _lines(text: str) -> list[str]:
    """Non-blank lines: a trailing newline or a blank line between rows is not a row."""
    return [line for line in text.splitlines() if line.strip()]


def check_width(width: int, expected: int | None, where: str) -> None:
    """400 unless ``where`` (e.g. "CSV row 3") has as many values as the model has features."""
    if expected is not None and width != expected:
        raise HandlerError(400, f"{where} has {width} values, the model expects {expected} features")


def _check_same_width(width: int, first: int, where: str) -> None:
    """Without a model to say how wide a row is, every row must be as wide as the first."""
    if width != first:
        raise HandlerError(400, f"{where} has {width} values, row 1 has {first}")


def parse_csv(text: str, num_features: int | None = None) -> FloatArray:
    """CSV rows (no header) to a float64 matrix; an empty value is a missing one (NaN)."""
    lines = _lines(text)
    if not lines:
        raise HandlerError(400, "the CSV body has no rows")
    rows: list[list[float]] = []
    first_width = len(lines[0].split(","))
    for number, line in enumerate(lines, start=1):
        tokens = line.split(",")
        if num_features is None:
            _check_same_width(len(tokens), first_width, f"CSV row {number}")
        else:
            check_width(len(tokens), num_features, f"CSV row {number}")
        try:
            rows.append([float(token) if token.strip() else math.nan for token in tokens])
        except ValueError:
            column, token = next((c, t) for c, t in enumerate(tokens, start=1) if not _is_number(t))
            raise HandlerError(400, f"CSV row {number}, column {column}: {token.strip()!r} is not a number") from None
    return np.array(rows, dtype=np.float64)


def _is_number(token: str) -> bool:
    if not token.strip():
        return True
    try:
        float(token)
    except ValueError:
        return False
    return True


def parse_libsvm(text: str, num_features: int) -> scipy.sparse.csr_matrix:
    """LIBSVM rows (``[label] index:value ...``) to a CSR matrix ``num_features`` wide.

    A leading token without a colon is a label and is ignored; indices are column numbers as XGBoost
    reads them (0-based); a feature a row leaves out is missing.
    """
    lines = _lines(text)
    if not lines:
        raise HandlerError(400, "the LIBSVM body has no rows")
    values: list[float] = []
    columns: list[int] = []
    row_starts = [0]
    for number, line in enumerate(lines, start=1):
        tokens = line.split()
        if tokens and ":" not in tokens[0]:
            tokens = tokens[1:]
        seen: set[int] = set()
        for token in tokens:
            index_text, _, value_text = token.partition(":")
            try:
                index = int(index_text)
                value = float(value_text)
            except ValueError:
                raise HandlerError(400, f"LIBSVM row {number}: {token!r} is not index:value") from None
            if not 0 <= index < num_features:
                raise HandlerError(
                    400,
                    f"LIBSVM row {number}: feature index {index} is out of range, the model expects "
                    f"{num_features} features (indices 0 to {num_features - 1})",
                )
            if index in seen:
                raise HandlerError(400, f"LIBSVM row {number}: feature index {index} appears twice")
            seen.add(index)
            columns.append(index)
            values.append(value)
        row_starts.append(len(values))
    return scipy.sparse.csr_matrix(
        (np.array(values, dtype=np.float64), np.array(columns, dtype=np.int64), np.array(row_starts)),
        shape=(len(lines), num_features),
    )


def parse_json(text: str) -> Any:
    """A JSON document; 400 when it is not one."""
    try:
        return json.loads(text)
    except ValueError as exc:
        raise HandlerError(400, f"the request body is not valid JSON: {exc}") from exc


def parse_json_rows(document: Any, num_features: int | None = None) -> FloatArray:
    """JSON rows to a float64 matrix; null is a missing value.

    Accepts ``[[...], ...]``, one row ``[...]``, ``{"instances": [[...], ...]}`` and
    ``{"instances": [{"features": [...]}, ...]}`` (the SageMaker XGBoost container's shapes).
    """
    if isinstance(document, dict):
        if "instances" not in document:
            raise HandlerError(400, 'a JSON object body must have an "instances" list')
        instances = document["instances"]
        if not isinstance(instances, list):
            raise HandlerError(400, '"instances" must be a list')
        rows = [_instance_features(instance, number) for number, instance in enumerate(instances, start=1)]
    elif isinstance(document, list):
        rows = document if document and all(isinstance(row, list) for row in document) else [document]
    else:
        raise HandlerError(400, "a JSON body must be a list of rows, one row, or an object with instances")
    if not rows or rows == [[]]:
        raise HandlerError(400, "the JSON body has no rows")
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, list):
            raise HandlerError(400, f"JSON row {number} is not a list of numbers")
        if num_features is None:
            _check_same_width(len(row), len(rows[0]), f"JSON row {number}")
        else:
            check_width(len(row), num_features, f"JSON row {number}")
        for value in row:
            # bool is an int to Python, but true/false in a feature row is a client bug, not 1.0/0.0.
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise HandlerError(400, f"JSON row {number}: {json.dumps(value)} is not a number or null")
    try:
        # float64 turns JSON null into NaN, XGBoost's missing value.
        return np.array(rows, dtype=np.float64)
    except OverflowError as exc:
        raise HandlerError(400, f"a JSON value does not fit a float: {exc}") from exc


def _instance_features(instance: Any, number: int) -> Any:
    if isinstance(instance, dict):
        if "features" not in instance:
            raise HandlerError(400, f'JSON instance {number} is an object without "features"')
        return instance["features"]
    return instance


def parse_npy(raw: bytes) -> npt.NDArray[Any]:
    """One NPY array of numbers, loaded without pickle: 1-D is one row, 2-D is rows."""
    try:
        loaded = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise HandlerError(400, f"the request body is not a readable NPY array: {exc}") from exc
    if not isinstance(loaded, np.ndarray):
        # np.load opens a zip as an .npz archive of several arrays.
        raise HandlerError(400, "the request body is an NPZ archive, not a single NPY array")
    array: npt.NDArray[Any] = loaded
    if array.dtype.kind not in "biuf":
        raise HandlerError(400, f"the NPY array holds {array.dtype}, not numbers")
    if array.ndim == 1:
        array = array.reshape(1, -1)
    if array.ndim != 2:
        raise HandlerError(400, f"the NPY array has {array.ndim} dimensions, expected 1 or 2")
    if array.shape[0] == 0:
        raise HandlerError(400, "the NPY array has no rows")
    return array
