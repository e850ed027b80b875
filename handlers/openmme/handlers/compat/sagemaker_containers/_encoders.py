"""openmme's stand-in for ``sagemaker_containers._encoders`` (``beta.framework.encoders``): arrays to and from
JSON, CSV and NPY.

Written on openmme's decoders. Where this differs from the real module: decoding CSV gives numbers (float64, an
empty value missing) where it gives strings; NPY is never unpickled, in or out; a body that cannot be read raises
``PayloadError`` (a ``ClientError``, answered 400) saying where; content types are compared without their
parameters.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from openmme.handlers._compat import PayloadError, UnsupportedFormatError, missing_names, read_payload
from openmme.handlers._decoding import body_bytes, body_text, load_npy, parse_csv, parse_json
from openmme.handlers._mms import media_type

from . import _content_types

__all__ = [
    "array_to_csv",
    "array_to_json",
    "array_to_npy",
    "csv_to_numpy",
    "decode",
    "encode",
    "json_to_numpy",
    "npy_to_numpy",
]


def array_to_json(array_like: Any) -> str:
    """JSON of an array-like: arrays (and numpy scalars) as lists."""
    return json.dumps(array_like, default=_to_list)


def array_to_csv(array_like: Any) -> str:
    """CSV of an array-like: a 1-D array is a column (a value per line), a 2-D one a line per row."""
    array = np.array(array_like)
    if array.ndim < 2:
        array = array.reshape(-1, 1)
    stream = io.StringIO()
    csv.writer(stream, lineterminator="\n").writerows(array)
    return stream.getvalue()


def array_to_npy(array_like: Any) -> bytes:
    """NPY of an array-like (without pickle: an array of objects raises ValueError)."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array_like), allow_pickle=False)
    return buffer.getvalue()


def json_to_numpy(string_like: str | bytes, dtype: Any = None) -> npt.NDArray[Any]:
    """The array of a JSON document."""
    return _read(lambda: np.array(parse_json(body_text(string_like)), dtype=dtype))


def csv_to_numpy(string_like: str | bytes, dtype: Any = None) -> npt.NDArray[Any]:
    """The array of comma-separated rows, squeezed (one row is 1-D); ``dtype`` converts the values."""
    array = np.squeeze(_read(lambda: parse_csv(body_text(string_like), delimiter=",")))
    return array if dtype is None else array.astype(dtype)


def npy_to_numpy(npy_array: bytes) -> npt.NDArray[Any]:
    """The array of an NPY body, loaded without pickle."""
    return _read(lambda: load_npy(body_bytes(npy_array)))


_ENCODERS: dict[str, Callable[[Any], str | bytes]] = {
    _content_types.JSON: array_to_json,
    _content_types.CSV: array_to_csv,
    _content_types.NPY: array_to_npy,
}
_DECODERS: dict[str, Callable[[Any], npt.NDArray[Any]]] = {
    _content_types.JSON: json_to_numpy,
    _content_types.CSV: csv_to_numpy,
    _content_types.NPY: npy_to_numpy,
}


def encode(array_like: Any, content_type: str) -> str | bytes:
    """``array_like`` as JSON, CSV (text) or NPY (bytes); UnsupportedFormatError for any other type."""
    encoder = _ENCODERS.get(media_type(content_type) or "")
    if encoder is None:
        raise UnsupportedFormatError(content_type)
    return encoder(array_like)


def decode(obj: Any, content_type: str) -> npt.NDArray[Any]:
    """A JSON, CSV or NPY body as an array; UnsupportedFormatError for any other type."""
    decoder = _DECODERS.get(media_type(content_type) or "")
    if decoder is None:
        raise UnsupportedFormatError(content_type)
    return decoder(obj)


def _read(parse: Callable[[], npt.NDArray[Any]]) -> npt.NDArray[Any]:
    try:
        return read_payload(parse)
    except (TypeError, ValueError) as exc:  # e.g. JSON that is not an array of numbers, for a dtype
        raise PayloadError(400, f"the body does not convert to an array: {exc}") from exc


def _to_list(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


__getattr__ = missing_names(__name__)
