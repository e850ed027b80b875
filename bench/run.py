"""openmme's benchmark suite, one command: warm path, cold start, many models, load storm, density.

    .venv/bin/python bench/run.py            # full run (~8 min on 2 cores): BENCHMARKS.md, bench/plots/*.png,
                                             # bench/results/latest.json (+ the PNGs)
    .venv/bin/python bench/run.py --smoke    # tiny sizes, checks the harness end to end in ~40 s (run in CI)

The warm path is driven by wrk, a C load generator (``apt-get install -y wrk``; scripts/install adds it with the
test extra): the run stops at once, saying so, when it is missing.

Everything runs on this machine, side by side in one run: SeaweedFS, the endpoints (front + MMS) as their own
processes, MMS alone for the cold-start yardstick, and the load generators. Sections live in their own modules
(warm, cold, many_models, storm, density); report.py writes BENCHMARKS.md and checks each goal; plots.py draws
the PNGs when matplotlib (the ``bench`` extra) is installed. The warm path starts its own two endpoints, dense
and isolated, and measures both against MMS direct (see warm.py); the other sections run ``--hosting isolated``,
the SageMaker way, measured against MMS alone. bench/hosting.py compares dense hosting with isolated beyond the
warm path, and writes its own section of BENCHMARKS.md, which this script keeps.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plots
from cold import run_cold
from density import run_density
from harness import BUCKET, ROOT, WRK_MISSING, Endpoint, describe_machine, embedded_s3, serve_flags
from many_models import ManyModelsSizes, run_many_models, target_model
from openmme.publish.samples import make_rows, sample_archive, train_booster
from report import goals, markdown
from sections import keep_sections
from storm import run_storm
from warm import WarmSizes, run_warm

WARM_TARGET = "warm/model.tar.gz"
STORM_TARGET = "storm/model.tar.gz"


@dataclass(frozen=True)
class Sizes:
    trees: int
    cold_models: int
    warm: WarmSizes
    storm_clients: int
    density_models: int
    many: ManyModelsSizes

    @classmethod
    def pick(cls, smoke: bool) -> Sizes:
        if smoke:
            return cls(
                trees=10,
                cold_models=2,
                warm=WarmSizes(rounds=1, seconds=1, warm_up_seconds=1, floor_requests=50),
                storm_clients=64,
                density_models=2,
                many=ManyModelsSizes(catalogue=8, capacity=3, length=20, warm_up=5, clients=8),
            )
        # 2,500 requests: ~1,400 of them miss and each miss is an MMS worker start (~0.26 s apiece with 8 clients
        # on 2 cores), which keeps this section near 6 minutes; the first 500 fill the cache and are not counted.
        return cls(
            trees=100,
            cold_models=8,
            # 5 rounds x 3 targets x 2 concurrencies x 5 s: 2.5 min; the warm-up gives MMS's JVM time to compile.
            warm=WarmSizes(rounds=5, seconds=5, warm_up_seconds=5, floor_requests=2000),
            storm_clients=64,
            density_models=16,
            many=ManyModelsSizes(catalogue=1000, capacity=50, length=2500, warm_up=500, clients=8),
        )


class SectionTimer:
    """Seconds each part of the run took: where the wall time goes (recorded in the results)."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.monotonic()

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.laps[name] = round(now - self._last, 1)
        self._last = now
        print(f"bench: {name}: {self.laps[name]:.1f} s", file=sys.stderr, flush=True)


def cold_targets(sizes: Sizes) -> list[str]:
    return [f"cold/m{index}/model.tar.gz" for index in range(sizes.cold_models)]


def density_targets(sizes: Sizes) -> list[str]:
    return [f"density/m{index:02d}/model.tar.gz" for index in range(sizes.density_models)]


def run(sizes: Sizes, workdir: Path) -> dict[str, Any]:
    timer = SectionTimer()
    results: dict[str, Any] = {"machine": describe_machine(), "sizes": dataclasses.asdict(sizes)}
    booster = train_booster("binary:logistic", seed=1, rounds=sizes.trees, rows=2000)
    archive = sample_archive(booster)
    row = make_rows(1, seed=3)
    body = ",".join(repr(float(value)) for value in row[0]).encode()
    # The sections after the warm path measure isolated hosting (an MMS model and worker per model) against MMS
    # alone; bench/hosting.py sets dense hosting beside it.
    main_flags = ["--hosting", "isolated"]
    many_flags = [*main_flags, "--max-models", str(sizes.many.capacity)]
    # Shown beside the tables; each endpoint also gets a free --port and a temporary --cache-dir.
    results["endpoints"] = {
        "main": shlex.join(serve_flags(main_flags)),
        "many_models": shlex.join(serve_flags(many_flags)),
    }
    with embedded_s3(workdir / "s3") as s3:
        client: Any = s3.client()
        client.create_bucket(Bucket=BUCKET)
        # The same archive under every name: the sections measure the endpoint, not differences between models.
        targets = [WARM_TARGET, STORM_TARGET, *cold_targets(sizes), *density_targets(sizes)]
        targets += [target_model(rank) for rank in range(sizes.many.catalogue)]
        for target in targets:
            client.put_object(Bucket=BUCKET, Key=f"models/{target}", Body=archive)
        timer.lap("set up: train, start S3, upload")

        # First, alone on the machine: its own endpoints (dense and isolated), stopped before the next start.
        results["warm"] = run_warm(workdir, WARM_TARGET, booster, row, body, sizes.warm)
        timer.lap("warm")

        with Endpoint(workdir / "main", main_flags) as endpoint:
            timer.lap("start endpoint")
            # Density first: its line starts from an endpoint with nothing loaded.
            results["density"] = run_density(endpoint, density_targets(sizes), body)
            timer.lap("density")
            results |= run_cold(endpoint.url, cold_targets(sizes), body, client, archive, workdir / "mms-alone")
            timer.lap("cold start")
            results["storm"] = run_storm(endpoint.url, STORM_TARGET, body, sizes.storm_clients)
            timer.lap("storm")
            # The main endpoint stops while the next one starts: neither is measuring anything meanwhile.
            endpoint.terminate()
            with Endpoint(workdir / "many", many_flags) as many:
                endpoint.wait_stopped()
                timer.lap("switch endpoints")
                results["many_models"] = run_many_models(many.url, body, sizes.many)
                timer.lap("many models")
    timer.lap("stop endpoint, S3")
    results["section_seconds"] = timer.laps
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; checks the harness, measures nothing")
    parser.add_argument("--output", type=Path, default=None, help="where to write the Markdown report")
    parser.add_argument(
        "--results-dir", type=Path, default=ROOT / "bench" / "results", help="where the JSON (and plots) go"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        parser.error(WRK_MISSING)
    command = "python bench/run.py" + (" --smoke" if args.smoke else "")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="openmme-bench-") as scratch:
        results = run(Sizes.pick(args.smoke), Path(scratch))
    results |= {"command": command, "smoke": args.smoke, "wall_seconds": time.monotonic() - started}

    results_dir: Path = args.results_dir
    results_dir.mkdir(parents=True, exist_ok=True)
    # The smoke run measures nothing worth a picture, and CI does not install matplotlib.
    if not args.smoke:
        if plots.available():
            results["plots"] = plots.draw_all(results, results_dir, ROOT / "bench" / "plots", "bench/plots")
        else:
            print("matplotlib is not installed (pip install -e '.[bench]'): writing the report without plots")
    results["goals"] = [dataclasses.asdict(goal) for goal in goals(results)]
    (results_dir / ("smoke.json" if args.smoke else "latest.json")).write_text(json.dumps(results, indent=2))
    report = markdown(results)
    output = args.output or (None if args.smoke else ROOT / "BENCHMARKS.md")
    if output is not None:
        # bench/scale_out.py and bench/hosting.py write their own sections of the same file: keep them.
        output.write_text(keep_sections(output.read_text() if output.exists() else "", report))
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
