"""Sample models for the quick start and the tests: small XGBoost boosters trained on synthetic data.

Each sample is trained in-process, saved as ``xgboost-model`` at the archive root (the layout a SageMaker
XGBoost training job writes) and packed as a ``model.tar.gz``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xgboost

from openmme.publish.local import pack_directory

__all__ = ["SAMPLES", "Sample", "make_rows", "sample_archive", "train_booster"]

N_FEATURES = 6


@dataclass(frozen=True)
class Sample:
    city: str
    objective: str
    seed: int

    @property
    def target_model(self) -> str:
        return f"{self.city}/model.tar.gz"


SAMPLES = (
    Sample("houston", "binary:logistic", 1),
    Sample("chicago", "reg:squarederror", 2),
    Sample("seattle", "multi:softmax", 3),
)


def make_rows(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, N_FEATURES)).astype(np.float32)


def train_booster(objective: str, seed: int = 0, rounds: int = 20, rows: int = 200) -> xgboost.Booster:
    features = make_rows(rows, seed)
    signal = features[:, 0] + 0.5 * features[:, 1] - features[:, 2]
    params: dict[str, object] = {
        "objective": objective,
        "max_depth": 3,
        "eta": 0.3,
        "seed": seed,
        "nthread": 1,
    }
    if objective.startswith("multi:"):
        labels = np.digitize(signal, [-0.5, 0.5]).astype(np.float32)
        params["num_class"] = 3
    elif objective.startswith("binary:"):
        labels = (signal > 0).astype(np.float32)
    else:
        labels = (3.0 * signal + 10.0).astype(np.float32)
    return xgboost.train(params, xgboost.DMatrix(features, label=labels), num_boost_round=rounds)


def sample_archive(booster: xgboost.Booster, file_name: str = "xgboost-model") -> bytes:
    """A model.tar.gz holding ``booster`` as SageMaker XGBoost training writes it."""
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / file_name).write_bytes(bytes(booster.save_raw("ubj")))
        return pack_directory(Path(scratch))
