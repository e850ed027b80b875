"""The body readers on their own (no MMS): CSV delimiter sniffing as the SageMaker XGBoost container does it,
LIBSVM's index rule, and RecordIO-protobuf read back from the bytes the SageMaker SDK itself writes."""

from __future__ import annotations

import csv
import io
import struct

import numpy as np
import pytest
import scipy.sparse
from handler_harness import as_csr, recordio_dense_body, recordio_sparse_body
from hypothesis import given
from hypothesis import strategies as st

from openmme.handlers._decoding import parse_csv, parse_libsvm, parse_recordio_protobuf, sniff_delimiter
from openmme.handlers._mms import HandlerError
from openmme.handlers._recordio import RECORDIO_MAGIC


def container_delimiter(first_line: str) -> str:
    """The SageMaker XGBoost container's rule, spelled out: csv.Sniffer on 512 characters, "," for a letter or
    digit (and here for no answer, where the container fails the request)."""
    try:
        sniffed = csv.Sniffer().sniff(first_line[:512]).delimiter
    except csv.Error:
        return ","
    return "," if sniffed.isalnum() else sniffed


@given(st.text(alphabet="0123456789.,-+eE;:| \t\"'nai", max_size=80))
def test_sniffing_picks_the_delimiter_the_container_picks(line: str) -> None:
    assert sniff_delimiter(line) == container_delimiter(line)


@given(st.lists(st.floats(allow_nan=False, width=32), min_size=1, max_size=40))
def test_sniffing_a_row_of_numbers_finds_the_comma(values: list[float]) -> None:
    line = ",".join(repr(value) for value in values)
    assert sniff_delimiter(line) == container_delimiter(line)
    if len(values) > 1:
        assert sniff_delimiter(line) == ","


def test_a_delimiter_the_sniffer_misses_is_read_as_a_comma() -> None:
    # "|" loses to the most frequent character, a digit: the container then splits on ",", and so does openmme.
    assert sniff_delimiter("1.5|2.5|3.5") == ","
    with pytest.raises(HandlerError, match="has 1 values, the model expects 3"):
        parse_csv("1.5|2.5|3.5", 3)


def test_csv_empty_values_are_missing_and_rows_need_equal_widths_without_a_model() -> None:
    np.testing.assert_array_equal(parse_csv(" 1,,3\n4,5,\n"), np.array([[1.0, np.nan, 3.0], [4.0, 5.0, np.nan]]))
    with pytest.raises(HandlerError, match="CSV row 2 has 2 values, row 1 has 3"):
        parse_csv("1,2,3\n4,5")


def test_libsvm_without_a_model_is_as_wide_as_its_largest_index() -> None:
    one_based = parse_libsvm("1 1:0.5 3:2.0\n0 2:1.0")
    assert one_based.shape == (2, 3)
    np.testing.assert_array_equal(one_based.toarray(), [[0.5, 0.0, 2.0], [0.0, 1.0, 0.0]])
    assert one_based.nnz == 3  # the zeros are absent, i.e. missing to XGBoost
    zero_based = parse_libsvm("0:1.0\n\n2:0.0")
    assert zero_based.shape == (3, 3) and zero_based.nnz == 2  # a blank line inside the body is a row


@pytest.mark.parametrize("body", ["0:1.0 2147483647:1.0", "-1:1.0"])
def test_libsvm_indices_xgboost_cannot_number_are_400_without_a_model_too(body: str) -> None:
    with pytest.raises(HandlerError, match=r"out of range: indices go from 0 \(or 1\) to 2147483646"):
        parse_libsvm(body)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_dense_records_read_back_as_written(dtype: type) -> None:
    rows = (np.arange(12).reshape(3, 4) - 5.5).astype(dtype)
    rows[1, 2] = -(2**31) if dtype is np.int64 else np.nan  # int32's smallest value: a 10-byte varint
    decoded = parse_recordio_protobuf(recordio_dense_body(rows), 4)
    assert isinstance(decoded, np.ndarray) and decoded.dtype == np.float64
    np.testing.assert_array_equal(decoded, rows.astype(np.float64))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sparse_records_read_back_as_written_with_absent_values_missing(dtype: type) -> None:
    rows = np.array([[0.0, np.nan, 2.5, np.nan], [np.nan] * 4, [np.nan, 1.0, np.nan, -3.0]])
    written = as_csr(rows).astype(dtype)
    decoded = parse_recordio_protobuf(recordio_sparse_body(written, np.array([1.0, 0.0, 1.0])))
    assert scipy.sparse.issparse(decoded) and decoded.shape == (3, 4)
    assert (decoded != written).nnz == 0 and decoded.nnz == written.nnz == 4


def _record(payload: bytes) -> bytes:
    padding = b"\0" * (-len(payload) % 4)
    return struct.pack("<II", RECORDIO_MAGIC, len(payload)) + payload + padding


def _length_delimited(field: int, content: bytes) -> bytes:
    assert len(content) < 128
    return bytes([field << 3 | 2, len(content)]) + content


def _values_record(value: bytes) -> bytes:
    entry = _length_delimited(1, b"values") + _length_delimited(2, value)
    return _record(_length_delimited(1, entry))


def test_unpacked_values_and_unknown_fields_are_read_as_protobuf_allows() -> None:
    # A Float64Tensor (Value field 3) with its values unpacked (wire type 1, one field each), plus a uid
    # (Record field 3) this reader skips.
    tensor = b"".join(bytes([1 << 3 | 1]) + struct.pack("<d", value) for value in (1.5, -2.0))
    payload = _values_record(_length_delimited(3, tensor))[8:]
    body = _record(payload + _length_delimited(3, b"row-1"))
    np.testing.assert_array_equal(parse_recordio_protobuf(body), [[1.5, -2.0]])


def test_a_sparse_record_may_say_its_width_without_values() -> None:
    shape_only = _values_record(_length_delimited(2, _length_delimited(3, bytes([4]))))
    decoded = parse_recordio_protobuf(shape_only)
    assert decoded.shape == (1, 4) and decoded.nnz == 0


def _sparse_float64(key: int, width: int) -> bytes:
    tensor = (
        _length_delimited(1, struct.pack("<d", 1.0))
        + _length_delimited(2, bytes([key]))
        + _length_delimited(3, bytes([width]))
    )
    return _values_record(_length_delimited(3, tensor))


@pytest.mark.parametrize(
    ("body", "num_features", "message"),
    [
        (b"", None, "has no records"),
        (_values_record(_length_delimited(9, b"")), None, "holds bytes, not numbers"),
        (_values_record(_length_delimited(2, _length_delimited(1, b"\0\0\0"))), None, "not a whole number of 4"),
        (_values_record(_length_delimited(2, bytes([0x0F]))), None, "wire type 7"),
        (struct.pack("<II", RECORDIO_MAGIC, 1 << 29), None, "split in parts"),
        (recordio_dense_body(np.ones((2, 3))) + b"\0\0\0", None, "truncated"),
        (_sparse_float64(5, 4), None, "feature index 5 is out of range, the row is 4 wide"),
        (_sparse_float64(3, 4), 3, "is 4 features wide, the model expects 3 features"),
        (_sparse_float64(3, 2), 4, "feature index 3 is out of range, the row is 2 wide"),
        (_values_record(_length_delimited(2, _length_delimited(3, b"\x80\x80\x80\x80\x08"))), None, "at most"),
    ],
    ids=[
        "empty",
        "bytes",
        "ragged-floats",
        "bad-wire-type",
        "multi-part",
        "trailing",
        "key-beyond-shape",
        "wider-than-model",
        "key-beyond-declared",
        "wider-than-xgboost",
    ],
)
def test_malformed_recordio_is_a_400_saying_what(body: bytes, num_features: int | None, message: str) -> None:
    with pytest.raises(HandlerError, match=message) as caught:
        parse_recordio_protobuf(body, num_features)
    assert caught.value.status == 400


def test_sdk_bytes_are_what_this_reader_expects() -> None:
    # Guards the framing this module reads: if the SDK ever changed it, the tests above would only prove
    # that the reader agrees with itself.
    from sagemaker.amazon.common import read_recordio

    body = recordio_dense_body(np.ones((2, 3), dtype=np.float32))
    assert struct.unpack_from("<I", body)[0] == RECORDIO_MAGIC
    assert len(list(read_recordio(io.BytesIO(body)))) == 2
