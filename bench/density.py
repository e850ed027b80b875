"""Density: how many loaded models fit in a GiB with the default worker settings (one MMS worker per model).

Models are loaded one at a time into a fresh endpoint, and after each the proportional set size (PSS) of the
endpoint's whole process tree is read: the front, MMS's JVM and every worker. A straight line through those
points splits memory into a fixed part (front + JVM) and a per-model part; the per-model figure openmme itself
reports (PSS of the model's workers, what ``--memory-budget`` counts) is set beside it. The models are
unloaded afterwards, so the sections that follow find the endpoint as they would a fresh one.
"""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np
import psutil

from harness import Endpoint, delete, get_json, invoke_headers, post, tree_pss_bytes

__all__ = ["run_density"]

MIB = 2**20


def run_density(endpoint: Endpoint, targets: list[str], body: bytes) -> dict[str, Any]:
    points = [{"loaded": 0, "pss_mib": tree_pss_bytes(endpoint.pid) / MIB}]
    for target in targets:
        status, _ = post(endpoint.url + "/invocations", body, invoke_headers(target))
        assert status == 200, status
        loaded = get_json(endpoint.url + "/models?limit=1")["loadedModels"]
        points.append({"loaded": loaded, "pss_mib": tree_pss_bytes(endpoint.pid) / MIB})
    reported = [get_json(f"{endpoint.url}/models/{target}")["memoryBytes"] / MIB for target in targets]
    budget_mib = get_json(endpoint.url + "/models?limit=1")["budgets"]["memoryBytes"] / MIB
    for target in targets:
        delete(f"{endpoint.url}/models/{target}")

    slope, intercept = np.polyfit([p["loaded"] for p in points], [p["pss_mib"] for p in points], 1)
    per_model = float(slope)
    last = points[-1]
    return {
        "points": points,
        "fixed_mib": float(intercept),
        "per_model_mib": per_model,
        "reported_per_model_mib": statistics.median(reported),
        "models_per_gib": 1024 / per_model,
        "models_per_gib_all_in": last["loaded"] / (last["pss_mib"] / 1024),
        "all_in_at": last["loaded"],
        "default_memory_budget_mib": budget_mib,
        "machine_memory_mib": psutil.virtual_memory().total / MIB,
        # What --memory-budget admits, by the figure it counts (workers' PSS).
        "models_in_default_budget": int(budget_mib // statistics.median(reported)),
    }
