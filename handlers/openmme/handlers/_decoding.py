"""Request bodies to numeric rows, without ever unpickling: CSV, LIBSVM, RecordIO-protobuf, JSON and NPY.

Shared by the XGBoost service, the script service's default ``input_fn`` and the compatibility modules of
``compat/``. CSV, LIBSVM and RecordIO-protobuf are read as the SageMaker XGBoost container reads them (see
each parser); JSON and NPY are openmme's additions. Every malformed body raises ``HandlerError(400, ...)``
whose message says which row or value is wrong; a media type no parser reads raises ``HandlerError(415, ...)``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
import scipy.sparse

from openmme.handlers._mms import HandlerError, media_type
from openmme.handlers._recordio import read_records

__all__ = [
    "CSV",
    "JSON",
    "LIBSVM",
    "MAX_FEATURES",
    "NPY",
    "RECORDIO",
    "REQUEST_KINDS",
    "Rows",
    "body_bytes",
    "body_text",
    "check_width",
    "load_npy",
    "parse_csv",
    "parse_json",
    "parse_json_rows",
    "parse_libsvm",
    "parse_npy",
    "parse_recordio_protobuf",
    "parse_rows",
    "request_kind",
    "sniff_delimiter",
]

FloatArray = npt.NDArray[np.floating[Any]]
Rows: TypeAlias = FloatArray | scipy.sparse.csr_matrix

# The kinds of request body, and the media types that name them: the SageMaker XGBoost container's names
# (with its bare aliases) for CSV, LIBSVM and RecordIO-protobuf; JSON and NPY are openmme's additions.
CSV, LIBSVM, RECORDIO, JSON, NPY = "csv", "libsvm", "recordio-protobuf", "json", "npy"
REQUEST_KINDS = {
    "text/csv": CSV,
    "csv": CSV,
    "text/libsvm": LIBSVM,
    "text/x-libsvm": LIBSVM,
    "libsvm": LIBSVM,
    "application/x-recordio-protobuf": RECORDIO,
    "recordio-protobuf": RECORDIO,
    "application/json": JSON,
    "application/x-npy": NPY,
}

# XGBoost numbers features with 32-bit integers: a wider row is a client's mistake (and would not fit).
MAX_FEATURES = 2**31 - 1

# The SageMaker XGBoost container sniffs the delimiter from this much of the first line.
_SNIFFED_CHARS = 512


def request_kind(content_type: str | None) -> str | None:
    """The kind of body (``CSV``, ``LIBSVM`` ...) a Content-Type names, parameters and case aside; None if none."""
    mime = media_type(content_type)
    return REQUEST_KINDS.get(mime) if mime is not None else None


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


def parse_rows(body: Any, kind: str, num_features: int | None = None) -> Rows:
    """A request body of ``kind`` (a value of ``REQUEST_KINDS``) as rows: a float matrix, or a CSR one."""
    if kind == CSV:
        return parse_csv(body_text(body), num_features)
    if kind == LIBSVM:
        return parse_libsvm(body_text(body), num_features)
    if kind == RECORDIO:
        return parse_recordio_protobuf(body_bytes(body), num_features)
    if kind == JSON:
        # MMS may have parsed the JSON already (decode_input_request=true).
        document = body if isinstance(body, (list, dict)) else parse_json(body_text(body))
        return parse_json_rows(document, num_features)
    if kind == NPY:
        array = parse_npy(body_bytes(body))
        check_width(array.shape[1], num_features, "the NPY array")
        # DMatrix reads float32/float64 as they are; anything else widens to float64 exactly.
        return array if array.dtype in (np.float32, np.float64) else array.astype(np.float64)
    raise ValueError(f"no parser for request bodies of kind {kind!r}")


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


def sniff_delimiter(first_line: str) -> str:
    """The CSV delimiter of a body whose first line is ``first_line``, as the SageMaker XGBoost container picks it:
    ``csv.Sniffer`` on the line's first 512 characters, and "," when that finds none or a letter or digit."""
    sample = first_line[:_SNIFFED_CHARS]
    # On one line without quotes, the sniffer counts every character as a candidate and prefers "," above
    # all: the common case needs no sniffing (about 0.1 ms), with the same answer.
    if "," in sample and '"' not in sample and "'" not in sample:
        return ","
    try:
        delimiter = csv.Sniffer().sniff(sample).delimiter
    except csv.Error:
        return ","
    return "," if delimiter.isalnum() else delimiter


def parse_csv(text: str, num_features: int | None = None, *, delimiter: str | None = None) -> FloatArray:
    """CSV rows (no header) to a float64 matrix, as the SageMaker XGBoost container reads them.

    The body is stripped, the delimiter sniffed from its first line (see ``sniff_delimiter``) unless given,
    and an empty value is a missing one (NaN). Blank lines are not rows. Without ``num_features``, every row
    must be as wide as the first.
    """
    text = text.strip()
    lines = _lines(text)
    if not lines:
        raise HandlerError(400, "the CSV body has no rows")
    if delimiter is None:
        delimiter = sniff_delimiter(text[:_SNIFFED_CHARS].split("\n", 1)[0])
    rows: list[list[float]] = []
    first_width = len(lines[0].split(delimiter))
    for number, line in enumerate(lines, start=1):
        tokens = line.split(delimiter)
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


def parse_libsvm(text: str, num_features: int | None = None) -> scipy.sparse.csr_matrix:
    """LIBSVM rows (``[label] index:value ...``) to a CSR matrix, as the SageMaker XGBoost container reads them.

    Every line of the stripped body is a row; a token without a colon (the label) is ignored; a feature a
    row leaves out is missing. Indices are 0-based, unless the smallest index of the whole body is 1 or more:
    then the body is taken as 1-based and every index shifted down by one. The matrix is ``num_features``
    wide, or (without a model to say) as wide as the largest index.
    """
    text = text.strip()
    if not text:
        raise HandlerError(400, "the LIBSVM body has no rows")
    lines = text.split("\n")
    values: list[float] = []
    columns: list[int] = []
    row_starts = [0]
    token_rows: list[int] = []
    for number, line in enumerate(lines, start=1):
        seen: set[int] = set()
        for token in line.split():
            if ":" not in token:
                continue
            index_text, _, value_text = token.partition(":")
            try:
                index = int(index_text)
                value = float(value_text)
            except ValueError:
                raise HandlerError(400, f"LIBSVM row {number}: {token!r} is not index:value") from None
            if index in seen:
                raise HandlerError(400, f"LIBSVM row {number}: feature index {index} appears twice")
            seen.add(index)
            columns.append(index)
            values.append(value)
            token_rows.append(number)
        row_starts.append(len(values))
    shift = 1 if columns and min(columns) >= 1 else 0
    largest = max(columns, default=-1)
    width = num_features if num_features is not None else min(largest + 1 - shift, MAX_FEATURES)
    for position, index in enumerate(columns):
        if not 0 <= index - shift < width:
            raise HandlerError(400, _out_of_range(token_rows[position], index, width, shift, num_features))
    indices = np.array(columns, dtype=np.int64) - shift
    return scipy.sparse.csr_matrix(
        (np.array(values, dtype=np.float64), indices, np.array(row_starts)),
        shape=(len(lines), width),
    )


def _out_of_range(number: int, index: int, width: int, shift: int, num_features: int | None) -> str:
    where = f"LIBSVM row {number}: feature index {index} is out of range"
    if num_features is None:
        return f"{where}: indices go from 0 (or 1) to {MAX_FEATURES - 1}"
    based = "1-based, as every index of the body is 1 or more" if shift else "0-based"
    return f"{where}, the model expects {width} features (indices {shift} to {width - 1 + shift}, {based})"


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


def load_npy(raw: bytes) -> npt.NDArray[Any]:
    """One NPY array as it was saved, loaded without pickle; 400 when the bytes are not one."""
    try:
        loaded = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise HandlerError(400, f"the request body is not a readable NPY array: {exc}") from exc
    if not isinstance(loaded, np.ndarray):
        # np.load opens a zip as an .npz archive of several arrays.
        raise HandlerError(400, "the request body is an NPZ archive, not a single NPY array")
    array: npt.NDArray[Any] = loaded
    return array


def parse_npy(raw: bytes) -> npt.NDArray[Any]:
    """One NPY array of numbers, loaded without pickle: 1-D is one row, 2-D is rows."""
    array = load_npy(raw)
    if array.dtype.kind not in "biuf":
        raise HandlerError(400, f"the NPY array holds {array.dtype}, not numbers")
    if array.ndim == 1:
        array = array.reshape(1, -1)
    if array.ndim != 2:
        raise HandlerError(400, f"the NPY array has {array.ndim} dimensions, expected 1 or 2")
    if array.shape[0] == 0:
        raise HandlerError(400, "the NPY array has no rows")
    return array


def parse_recordio_protobuf(raw: bytes, num_features: int | None = None) -> Rows:
    """RecordIO-protobuf records (one row each, see ``_recordio``) to a float64 matrix, or a CSR matrix when a
    row is sparse (a feature it leaves out is missing).

    A dense row must have ``num_features`` values (without a model: as many as the first row); a sparse row's
    keys must be below its declared width and ``num_features``.
    """
    records = read_records(raw)
    widths: list[int] = []
    first_dense: int | None = None
    for number, record in enumerate(records, start=1):
        where = f"RecordIO-protobuf record {number}"
        if not record.sparse:
            if num_features is not None:
                check_width(record.values.size, num_features, where)
            else:
                first_dense = record.values.size if first_dense is None else first_dense
                _check_same_width(record.values.size, first_dense, where)
            widths.append(record.values.size)
            continue
        if len(record.keys) != record.values.size:
            raise HandlerError(400, f"{where} has {len(record.keys)} keys for {record.values.size} values")
        if len(set(record.keys)) != len(record.keys):
            raise HandlerError(400, f"{where} has a feature index twice")
        declared = record.shape[0] if record.shape else None
        if declared is not None and declared > (num_features if num_features is not None else MAX_FEATURES):
            expects = f"the model expects {num_features}" if num_features is not None else f"at most {MAX_FEATURES}"
            raise HandlerError(400, f"{where} is {declared} features wide, {expects} features")
        bounds = [bound for bound in (declared, num_features, MAX_FEATURES) if bound is not None]
        largest = max(record.keys, default=-1)
        if largest >= min(bounds):
            raise HandlerError(400, f"{where}: feature index {largest} is out of range, the row is {min(bounds)} wide")
        widths.append(declared if declared is not None else largest + 1)
    if not any(record.sparse for record in records):
        return np.array([record.values for record in records], dtype=np.float64)
    width = num_features if num_features is not None else max(widths)
    values: list[npt.NDArray[np.float64]] = []
    columns: list[npt.NDArray[np.int64]] = []
    row_starts = [0]
    for record in records:
        keys = record.keys if record.sparse else range(record.values.size)
        columns.append(np.array(keys, dtype=np.int64))
        values.append(record.values)
        row_starts.append(row_starts[-1] + record.values.size)
    return scipy.sparse.csr_matrix(
        (np.concatenate(values), np.concatenate(columns), np.array(row_starts)), shape=(len(records), width)
    )
