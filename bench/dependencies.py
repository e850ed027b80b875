"""Cold start of a script model whose ``code/requirements.txt`` names scikit-learn: with its environment still to
build, with the environment already built (by another model with the same requirements), and, as the floor, a
script model with no requirements.

    .venv/bin/python bench/dependencies.py              # one round (~1 min on 2 cores): a table, and
                                                        # bench/results/dependencies.json
    .venv/bin/python bench/dependencies.py --rounds 3   # medians over more rounds

One SeaweedFS, one endpoint (``--wait-budget 600``, so that the first request waits for the whole cold start
instead of answering 429). Each round publishes three models under fresh names and times the first request of
each, one after the other: ``build`` (its requirements never built: pip runs), ``cached`` (the same requirements,
written differently: the environment is found), ``none`` (a script without requirements, importing numpy only).
Each round's requirements add ``numpy>=1.<round>`` (openmme's own numpy satisfies it, nothing more is installed),
a different set and so a new build. pip's own download cache is whatever the machine's pip uses: with it warm,
``build`` is mostly pip's resolution and unpacking, as on a machine that built these packages before.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import BUCKET, ROOT, Endpoint, describe_machine, embedded_s3, get_json, post

BODY = b"houston,3.5\nchicago,1.25\n"
SCRIPT_WITH_SKLEARN = """
import json
import os

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.preprocessing import OneHotEncoder, StandardScaler


def model_fn(model_dir):
    table = np.array([["houston", 1.0], ["chicago", 2.5], ["seattle", 4.0]], dtype=object)
    steps = [("city", OneHotEncoder(handle_unknown="ignore"), [0]), ("size", StandardScaler(), [1])]
    return ColumnTransformer(steps, sparse_threshold=0).fit(table)


def transform_fn(model, body, content_type, accept):
    rows = np.array([line.split(",") for line in body.strip().splitlines()], dtype=object)
    rows[:, 1] = rows[:, 1].astype(float)
    return json.dumps(model.transform(rows).tolist()), "application/json"
"""
SCRIPT_WITHOUT = """
import numpy as np


def model_fn(model_dir):
    return np.ones(2)


def transform_fn(model, body, content_type, accept):
    return str(len(body.strip().splitlines()) * model.sum()), "text/plain"
"""


def archive(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def first_request(front: str, target: str) -> dict[str, float]:
    """Seconds of the first request for ``target`` (it waits through the whole load), and the MMS registration."""
    headers = {"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": target}
    status, seconds = post(front + "/invocations", BODY, headers, timeout=900)
    assert status == 200, (target, status)
    register = get_json(f"{front}/models/{target}")["timingsMs"]["register"] / 1000
    return {"total_s": seconds, "register_s": register}


def run(rounds: int, workdir: Path) -> dict[str, Any]:
    measured: dict[str, list[dict[str, float]]] = {"build": [], "cached": [], "none": []}
    builds: list[float] = []
    with embedded_s3(workdir / "s3") as s3:
        client: Any = s3.client()
        client.create_bucket(Bucket=BUCKET)
        with Endpoint(workdir / "endpoint", ("--wait-budget", "600")) as endpoint:
            for index in range(rounds):
                # numpy is openmme's own (pinned, never installed); each round's bound makes another set, so another
                # environment to build.
                requirements = f"scikit-learn\nnumpy>=1.{index}\n"
                variants = {
                    "build": {"code/inference.py": SCRIPT_WITH_SKLEARN, "code/requirements.txt": requirements},
                    "cached": {
                        "code/inference.py": SCRIPT_WITH_SKLEARN,
                        "code/requirements.txt": "# the same set\n" + requirements,
                    },
                    "none": {"code/inference.py": SCRIPT_WITHOUT},
                }
                for kind, files in variants.items():
                    target = f"{kind}-{index}.tar.gz"
                    client.put_object(Bucket=BUCKET, Key=f"models/{target}", Body=archive(files))
                    measured[kind].append(first_request(endpoint.url, target))
            summary = get_json(endpoint.url + "/models?limit=1")["environments"]
            for line in (endpoint.workdir / "endpoint.log").read_text().splitlines():
                if line.startswith("{") and '"event":"environment_built"' in line:
                    builds.append(json.loads(line)["seconds"])
    assert summary["builds"] == rounds, summary  # one build per round: the cached model built nothing
    return {
        "rounds": rounds,
        "cold_start_s": {kind: statistics.median(m["total_s"] for m in runs) for kind, runs in measured.items()},
        "register_s": {kind: statistics.median(m["register_s"] for m in runs) for kind, runs in measured.items()},
        "build_s": statistics.median(builds),
        "environment_bytes": summary["bytes"] // max(summary["count"], 1),
        "environments": summary,
        "runs": measured,
    }


def markdown(results: dict[str, Any]) -> str:
    cold, register = results["cold_start_s"], results["register_s"]
    rows = [
        ("environment to build (pip runs)", "build"),
        ("environment already built", "cached"),
        ("no requirements (floor)", "none"),
    ]
    lines = [
        f"Cold start of a script model whose code/requirements.txt names scikit-learn (median of {results['rounds']}"
        f" round(s); build itself {results['build_s']:.1f} s, environment {results['environment_bytes'] / 2**20:.0f}"
        " MiB):",
        "",
        "| first request | cold start | of which MMS registration (worker start, imports, model_fn) |",
        "|---|---|---|",
    ]
    lines += [f"| {label} | {cold[kind]:.2f} s | {register[kind]:.2f} s |" for label, kind in rows]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1, help="rounds (each builds one environment)")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results", help="where the JSON goes")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="openmme-dependencies-") as scratch:
        results = run(args.rounds, Path(scratch))
    results |= {"machine": describe_machine(), "wall_seconds": time.monotonic() - started}
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "dependencies.json").write_text(json.dumps(results, indent=2))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
