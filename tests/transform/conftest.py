"""What the transform tests share: input objects of CSV rows with an id column in real S3, the answers they must
get (the same booster predicting in-process), and reading outputs back."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import xgboost

from openmme.publish.samples import make_rows
from tests.conftest import BUCKET


@dataclass(frozen=True)
class Area:
    """A test's own input and output prefixes in the suite's bucket."""

    input: str
    output: str

    def key(self, uri: str) -> str:
        return uri.removeprefix(f"s3://{BUCKET}/")


@pytest.fixture
def area() -> Area:
    root = f"s3://{BUCKET}/transform-{uuid.uuid4().hex[:10]}"
    return Area(f"{root}/in/", f"{root}/out/")


def id_rows(count: int, seed: int, first_id: int = 0) -> tuple[list[str], np.ndarray]:
    """``count`` CSV lines ``<id>,<6 features>`` and the feature rows (float32, written exactly with repr)."""
    rows = make_rows(count, seed=seed)
    lines = [
        f"id-{first_id + index}," + ",".join(repr(float(value)) for value in row) for index, row in enumerate(rows)
    ]
    return lines, rows


def put_lines(client: Any, area: Area, name: str, lines: list[str]) -> None:
    client.put_object(Bucket=BUCKET, Key=area.key(area.input) + name, Body=("\n".join(lines) + "\n").encode())


def output_text(client: Any, area: Area, name: str) -> str:
    body: bytes = client.get_object(Bucket=BUCKET, Key=f"{area.key(area.output)}{name}.out")["Body"].read()
    return body.decode()


def output_keys(client: Any, area: Area) -> dict[str, str]:
    """Output names (relative to the output path) and their ETags."""
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=area.key(area.output))
    return {item["Key"].removeprefix(area.key(area.output)): item["ETag"] for item in listing.get("Contents", [])}


def joined_lines(booster: xgboost.Booster, lines: list[str], rows: np.ndarray) -> list[tuple[str, float]]:
    """What ``$[1:]`` in, ``JoinSource=Input``, ``$[0,-1]`` out must give for these lines: each id and the
    booster's in-process prediction of its row."""
    predictions = booster.predict(xgboost.DMatrix(rows))
    return [(line.split(",", 1)[0], float(value)) for line, value in zip(lines, predictions, strict=True)]


def parsed_output(text: str) -> list[tuple[str, float]]:
    """An ``id,prediction`` output, line by line."""
    assert text.endswith("\n"), text[-200:]
    return [(line.split(",")[0], float(line.split(",")[1])) for line in text.splitlines()]
