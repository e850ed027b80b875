"""openmme's stand-in for ``sagemaker_xgboost_container.encoder``: request bodies to ``xgboost.DMatrix``.

The same functions, on openmme's decoders (``openmme.handlers._decoding``), which read CSV, LIBSVM and
RecordIO-protobuf as the SageMaker XGBoost container's algorithm mode does. Where this differs from that
container's own ``encoder``: a feature a LIBSVM row leaves out is missing (as in XGBoost's own LIBSVM reader
and the algorithm mode), not 0; labels in RecordIO-protobuf records are not read (a prediction needs none);
a body that cannot be read raises ``PayloadError`` (a ``sagemaker_containers`` ``ClientError``, answered 400)
saying where.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import xgboost

from openmme.handlers._compat import UnsupportedFormatError, missing_names, read_payload
from openmme.handlers._decoding import (
    CSV,
    LIBSVM,
    RECORDIO,
    Rows,
    body_bytes,
    body_text,
    parse_csv,
    parse_libsvm,
    parse_recordio_protobuf,
    request_kind,
)
from openmme.handlers._mms import media_type

__all__ = ["csv_to_dmatrix", "decode", "libsvm_to_dmatrix", "recordio_protobuf_to_dmatrix"]


def csv_to_dmatrix(input: str | bytes, dtype: Any = None) -> xgboost.DMatrix:
    """CSV rows (delimiter sniffed, an empty value missing) as a DMatrix; ``dtype`` converts the values first."""
    rows = read_payload(lambda: parse_csv(body_text(input)))
    return _dmatrix(rows if dtype is None else rows.astype(dtype))


def libsvm_to_dmatrix(string_like: str | bytes) -> xgboost.DMatrix:
    """LIBSVM rows (labels ignored, 1-based indices shifted) as a DMatrix, as wide as the largest index."""
    return _dmatrix(read_payload(lambda: parse_libsvm(body_text(string_like))))


def recordio_protobuf_to_dmatrix(string_like: bytes) -> xgboost.DMatrix:
    """RecordIO-protobuf records, dense or sparse, as a DMatrix."""
    return _dmatrix(read_payload(lambda: parse_recordio_protobuf(body_bytes(string_like))))


_DECODERS: dict[str, Callable[[Any], xgboost.DMatrix]] = {
    CSV: csv_to_dmatrix,
    LIBSVM: libsvm_to_dmatrix,
    RECORDIO: recordio_protobuf_to_dmatrix,
}


def decode(obj: Any, content_type: str) -> xgboost.DMatrix:
    """A body of ``content_type`` (CSV, LIBSVM or RecordIO-protobuf; parameters aside) as a DMatrix."""
    decoder = _DECODERS.get(request_kind(content_type) or "")
    if decoder is None:
        raise UnsupportedFormatError(media_type(content_type) or content_type)
    return decoder(obj)


def _dmatrix(rows: Rows) -> xgboost.DMatrix:
    return xgboost.DMatrix(rows, missing=np.nan)


__getattr__ = missing_names(__name__)
