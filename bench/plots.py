"""PNG plots for BENCHMARKS.md, drawn with matplotlib's Agg backend (no display needed).

matplotlib is the optional ``bench`` extra: without it (as in CI, which installs only ``test``) the report is
written without plots.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

__all__ = ["available", "draw_all"]


def available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def draw_all(results: dict[str, Any], out_dir: Path, published_dir: Path, link_prefix: str) -> dict[str, str]:
    """Draw every plot into ``out_dir``, copy them to ``published_dir``; the links BENCHMARKS.md uses, by name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    published_dir.mkdir(parents=True, exist_ok=True)
    links = {}
    for name, draw in (
        ("warm", _warm),
        ("cold", _cold),
        ("many_models", _many_models),
        ("storm", _storm),
        ("density", _density),
    ):
        figure = draw(plt, results)
        path = out_dir / f"{name}.png"
        figure.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(figure)
        shutil.copyfile(path, published_dir / path.name)
        links[name] = f"{link_prefix}/{path.name}"
    return links


WARM_TARGETS = (("mms_direct", "MMS direct"), ("dense", "openmme dense"), ("isolated", "openmme isolated"))
CPU_KINDS = (
    ("supervisor", "supervisor"),
    ("front", "front"),
    ("java", "Java"),
    ("mms_worker", "MMS workers"),
    ("shard_worker", "shard workers"),
    ("other", "other"),
)


def _warm(plt: Any, results: dict[str, Any]) -> Any:
    targets = results["warm"]["targets"]
    figure, (latency, throughput, cpu) = plt.subplots(1, 3, figsize=(13, 3.6))
    width = 0.27
    for offset, (name, label) in enumerate(WARM_TARGETS):
        positions = [index + (offset - 1) * width for index in range(2)]
        latency.bar(positions, [targets[name][f"c{c}"]["p50_ms"] for c in (1, 8)], width, label=label)
        throughput.bar(positions, [targets[name][f"c{c}"]["requests_per_second"] for c in (1, 8)], width, label=label)
    for axis, title in ((latency, "p50 latency (ms)"), (throughput, "throughput (requests/s)")):
        axis.set_xticks([0, 1], ["concurrency 1", "concurrency 8"])
        axis.set_title(title)
    floor = results["warm"]["in_process_floor"]["p50_ms"]
    latency.axhline(floor, color="grey", linestyle=":", label="in-process floor")
    latency.legend(fontsize=8)
    # Server CPU per request at concurrency 8, stacked by the kind of process that used it.
    bottoms = [0.0] * len(WARM_TARGETS)
    for index, (kind, label) in enumerate(CPU_KINDS):
        values = [targets[name]["c8"]["cpu_ms_per_request"][kind] for name, _ in WARM_TARGETS]
        if not any(values):
            continue
        cpu.bar(range(len(WARM_TARGETS)), values, 0.6, bottom=bottoms, color=f"C{index + 3}", label=label)
        bottoms = [bottom + value for bottom, value in zip(bottoms, values, strict=True)]
    cpu.set_xticks(range(len(WARM_TARGETS)), [label for _, label in WARM_TARGETS], fontsize=8)
    cpu.set_title("server CPU per request, c=8 (ms)")
    cpu.legend(fontsize=8)
    figure.suptitle("Warm path, one-row CSV (wrk)", y=1.03)
    return figure


def _cold(plt: Any, results: dict[str, Any]) -> Any:
    cold, alone, get, reload = (results[key] for key in ("cold_start", "mms_alone", "s3_get", "reload_from_disk"))
    # Phases: download (or GET), extract, MMS register, the rest (first predict, bookkeeping, HTTP).
    rows = {
        "openmme cold start": [cold["download"], cold["extract"], cold["register"], cold["other"]],
        "S3 GET + MMS alone": [get["get"], 0.0, alone["register"], alone["first_predict"]],
        "openmme reload from disk": [0.0, 0.0, reload["register"], reload["total"] - reload["register"]],
    }
    figure, axis = plt.subplots(figsize=(9, 2.8))
    labels = ("download / GET", "extract", "MMS register", "first predict + rest")
    for row_index, phases in enumerate(rows.values()):
        left = 0.0
        for phase_index, value in enumerate(phases):
            label = labels[phase_index] if row_index == 0 else None  # one legend entry per phase
            axis.barh(row_index, value, left=left, color=f"C{phase_index}", label=label)
            left += value
    axis.set_yticks(range(len(rows)), list(rows))
    axis.invert_yaxis()
    axis.set_xlabel("ms (medians)")
    axis.legend(fontsize=8, ncol=4, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    return figure


def _many_models(plt: Any, results: dict[str, Any]) -> Any:
    many = results["many_models"]
    curve = many["curve"]
    figure, axis = plt.subplots(figsize=(7, 4))
    capacities = [point["capacity"] for point in curve]
    axis.plot(capacities, [point["belady"] * 100 for point in curve], marker=".", label="Belady (optimal), offline")
    axis.plot(capacities, [point["lru"] * 100 for point in curve], marker=".", label="LRU, offline")
    capacity = many["sizes"]["capacity"]
    axis.scatter([capacity], [many["endpoint"]["hit_ratio"] * 100], color="C3", zorder=3, label="openmme, measured")
    axis.axvline(capacity, color="grey", linestyle=":")
    axis.set_xlabel("models the cache holds")
    axis.set_ylabel("hit ratio after warm-up (%)")
    sizes = many["sizes"]
    axis.set_title(f"Zipf({sizes['exponent']:g}) over {sizes['catalogue']} models, {sizes['length']} requests")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    return figure


def _storm(plt: Any, results: dict[str, Any]) -> Any:
    storm = results["storm"]
    latencies = storm["latencies_ms"]
    figure, axis = plt.subplots(figsize=(7, 3.2))
    axis.plot(range(1, len(latencies) + 1), latencies, marker=".", linestyle="none")
    axis.axhline(results["cold_start"]["total"], color="grey", linestyle=":", label="a single cold start (section 2)")
    axis.set_xlabel("request, fastest to slowest")
    axis.set_ylabel("latency (ms)")
    axis.set_title(
        f"{storm['clients']} concurrent first requests: {storm['downloads']} download, "
        f"{storm['registrations']} registration"
    )
    axis.legend(fontsize=8)
    axis.set_ylim(bottom=0)
    return figure


def _density(plt: Any, results: dict[str, Any]) -> Any:
    from matplotlib.ticker import MaxNLocator

    density = results["density"]
    points = density["points"]
    loaded = [point["loaded"] for point in points]
    figure, axis = plt.subplots(figsize=(7, 3.6))
    axis.plot(loaded, [point["pss_mib"] for point in points], marker="o", linestyle="none", label="measured")
    fit = [density["fixed_mib"] + density["per_model_mib"] * count for count in loaded]
    axis.plot(loaded, fit, label=f"{density['fixed_mib']:.0f} MiB + {density['per_model_mib']:.1f} MiB per model")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("loaded models")
    axis.set_ylabel("PSS of the endpoint's processes (MiB)")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    return figure
