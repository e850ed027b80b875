"""SageMaker's RecordIO-protobuf request bodies (``application/x-recordio-protobuf``), read without protobuf.

What the SageMaker SDK sends (``RecordSerializer``, ``write_numpy_to_dense_tensor``,
``write_spmatrix_to_sparse_tensor``) is a RecordIO stream: every record is the magic number ``0xCED7230A``, the
payload's length (both little-endian uint32), the payload, and zero bytes up to a multiple of 4. Each payload
is one row, an ``aialgs.data.Record`` protobuf message whose feature ``"values"`` holds the row as a tensor:
dense (values only) or sparse (values at ``keys``, in a row ``shape[0]`` wide).

The field numbers, read from the SDK's ``sagemaker/amazon/record_pb2.py`` descriptor::

    Record        features = 1 (map<string, Value>: key = 1, value = 2), label = 2, uid = 3, ...
    Value         float32_tensor = 2, float64_tensor = 3, int32_tensor = 7, bytes = 9 (a oneof)
    *Tensor       values = 1, keys = 2 (uint64), shape = 3 (uint64), all packed

Only what a prediction needs is decoded (labels and the other fields are skipped); anything malformed
raises ``HandlerError(400, ...)`` saying which record and where.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from openmme.handlers._mms import HandlerError

__all__ = ["RECORDIO_MAGIC", "RecordRow", "read_records"]

RECORDIO_MAGIC = 0xCED7230A
# MXNet's RecordIO keeps a continuation flag in the length word's top 3 bits (records split in parts).
_LENGTH_MASK = (1 << 29) - 1

_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5

_RECORD_FEATURES = 1
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
# Value's tensor fields, and the little-endian dtype of their packed values (None: varints).
_TENSOR_FIELDS: dict[int, tuple[str, str | None]] = {
    2: ("Float32Tensor", "<f4"),
    3: ("Float64Tensor", "<f8"),
    7: ("Int32Tensor", None),
}
_VALUE_BYTES = 9
_TENSOR_VALUES, _TENSOR_KEYS, _TENSOR_SHAPE = 1, 2, 3

FEATURES_KEY = "values"


@dataclass(frozen=True)
class RecordRow:
    """The ``"values"`` tensor of one record: float64 values, and for a sparse row their keys and its width."""

    values: npt.NDArray[np.float64]
    keys: tuple[int, ...]
    shape: tuple[int, ...]

    @property
    def sparse(self) -> bool:
        """A row is sparse when its tensor has keys, or is empty but says how wide it is."""
        return bool(self.keys) or (not self.values.size and bool(self.shape))


def read_records(raw: bytes) -> list[RecordRow]:
    """Every record of a RecordIO-protobuf body, one row each, in order."""
    rows = []
    for number, payload in enumerate(_recordio_payloads(raw), start=1):
        row = _record_row(payload, f"record {number}")
        if row is None:
            raise HandlerError(400, f'RecordIO-protobuf record {number} has no "{FEATURES_KEY}" feature')
        rows.append(row)
    if not rows:
        raise HandlerError(400, "the RecordIO-protobuf body has no records")
    return rows


def _recordio_payloads(raw: bytes) -> Iterator[memoryview]:
    view = memoryview(raw)
    offset = 0
    while offset < len(view):
        left = len(view) - offset
        magic = struct.unpack_from("<I", view, offset)[0] if left >= 4 else None
        if magic is not None and magic != RECORDIO_MAGIC:
            raise HandlerError(
                400,
                f"the body is not RecordIO-protobuf: no record marker at byte {offset} "
                f"(found {magic:#010x}, expected {RECORDIO_MAGIC:#010x})",
            )
        if left < 8:
            raise HandlerError(400, f"the RecordIO-protobuf body is truncated: {left} bytes left at byte {offset}")
        (length_word,) = struct.unpack_from("<I", view, offset + 4)
        if length_word & ~_LENGTH_MASK:
            raise HandlerError(400, f"the RecordIO record at byte {offset} is split in parts, which is not supported")
        start = offset + 8
        end = start + length_word
        if end > len(view):
            raise HandlerError(
                400, f"the RecordIO-protobuf body is truncated: the record at byte {offset} needs {length_word} bytes"
            )
        yield view[start:end]
        offset = start + ((length_word + 3) & ~3)


def _record_row(payload: memoryview, where: str) -> RecordRow | None:
    """The ``"values"`` feature of one Record message (the last one, as protobuf maps go), if it has one."""
    found: RecordRow | None = None
    for field, wire, value in _fields(payload, where):
        if field != _RECORD_FEATURES:
            continue
        entry = _message(wire, value, f"{where}, features")
        key, tensor = "", None
        for entry_field, entry_wire, entry_value in _fields(entry, f"{where}, features"):
            if entry_field == _ENTRY_KEY:
                key = _text(entry_wire, entry_value, f"{where}, feature name")
            elif entry_field == _ENTRY_VALUE:
                tensor = _message(entry_wire, entry_value, f"{where}, feature value")
        if key == FEATURES_KEY:
            found = _value_row(tensor if tensor is not None else memoryview(b""), f'{where}, feature "{key}"')
    return found


def _value_row(value: memoryview, where: str) -> RecordRow:
    """The tensor a Value message holds (the last of its oneof fields), as a row."""
    tensor: tuple[memoryview, str, str | None] | None = None
    for field, wire, content in _fields(value, where):
        if field in _TENSOR_FIELDS:
            name, dtype = _TENSOR_FIELDS[field]
            tensor = (_message(wire, content, where), name, dtype)
        elif field == _VALUE_BYTES:
            raise HandlerError(400, f"{where} holds bytes, not numbers")
    if tensor is None:
        return RecordRow(np.empty(0), (), ())
    message, name, dtype = tensor
    where = f"{where} ({name})"
    values: list[npt.NDArray[np.float64]] = []
    keys: list[int] = []
    shape: list[int] = []
    for field, wire, content in _fields(message, where):
        if field == _TENSOR_VALUES:
            values.append(_tensor_values(wire, content, dtype, where))
        elif field == _TENSOR_KEYS:
            keys.extend(_unsigned(wire, content, f"{where} keys"))
        elif field == _TENSOR_SHAPE:
            shape.extend(_unsigned(wire, content, f"{where} shape"))
    row_values = np.concatenate(values) if values else np.empty(0)
    return RecordRow(row_values, tuple(keys), tuple(shape))


def _tensor_values(wire: int, content: Any, dtype: str | None, where: str) -> npt.NDArray[np.float64]:
    """Packed (or, as protobuf parsers must also accept, one unpacked) values, widened exactly to float64."""
    if dtype is None:  # int32: varints, negatives as 64-bit two's complement
        integers = [_signed32(number, where) for number in _varints(wire, content, f"{where} values")]
        return np.array(integers, dtype=np.float64)
    size = np.dtype(dtype).itemsize
    if wire == _LENGTH_DELIMITED:
        if len(content) % size:
            raise HandlerError(400, f"{where}: {len(content)} bytes of packed values is not a whole number of {size}")
        return np.frombuffer(content, dtype=dtype).astype(np.float64)
    if wire == (_FIXED32 if size == 4 else _FIXED64):
        return np.frombuffer(content, dtype=dtype).astype(np.float64)
    raise HandlerError(400, f"{where}: values have protobuf wire type {wire}, expected packed {dtype[1:]} numbers")


def _unsigned(wire: int, content: Any, where: str) -> list[int]:
    return list(_varints(wire, content, where))


def _varints(wire: int, content: Any, where: str) -> Iterator[int]:
    """A packed run of varints, or a single unpacked one."""
    if wire == _VARINT:
        yield int(content)
        return
    if wire != _LENGTH_DELIMITED:
        raise HandlerError(400, f"{where}: protobuf wire type {wire} where integers were expected")
    position = 0
    while position < len(content):
        number, position = _varint(content, position, where)
        yield number


def _signed32(number: int, where: str) -> int:
    signed = number - (1 << 64) if number >= 1 << 63 else number
    if not -(1 << 31) <= signed < 1 << 31:
        raise HandlerError(400, f"{where}: {signed} does not fit an int32 value")
    return signed


def _message(wire: int, content: Any, where: str) -> memoryview:
    if wire != _LENGTH_DELIMITED:
        raise HandlerError(400, f"{where}: protobuf wire type {wire} where a message was expected")
    view: memoryview = content
    return view


def _text(wire: int, content: Any, where: str) -> str:
    try:
        return bytes(_message(wire, content, where)).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HandlerError(400, f"{where} is not UTF-8 text") from exc


def _fields(message: memoryview, where: str) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of each field of a protobuf message, in order.

    The value is an int for a varint, and the field's bytes (a memoryview) for the other wire types.
    """
    position = 0
    end = len(message)
    while position < end:
        tag, position = _varint(message, position, where)
        field, wire = tag >> 3, tag & 7
        if field == 0:
            raise HandlerError(400, f"{where}: malformed protobuf (field number 0)")
        if wire == _VARINT:
            value, position = _varint(message, position, where)
            yield field, wire, value
            continue
        if wire == _LENGTH_DELIMITED:
            size, position = _varint(message, position, where)
        elif wire in (_FIXED32, _FIXED64):
            size = 4 if wire == _FIXED32 else 8
        else:
            raise HandlerError(400, f"{where}: malformed protobuf (wire type {wire})")
        if position + size > end:
            raise HandlerError(400, f"{where}: malformed protobuf (a field runs past the end of its message)")
        yield field, wire, message[position : position + size]
        position += size


def _varint(data: memoryview, position: int, where: str) -> tuple[int, int]:
    """The varint at ``position`` and the position after it."""
    result = 0
    for shift in range(0, 70, 7):
        if position >= len(data):
            raise HandlerError(400, f"{where}: malformed protobuf (a number runs past the end of its message)")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result & ((1 << 64) - 1), position
    raise HandlerError(400, f"{where}: malformed protobuf (a number longer than 10 bytes)")
