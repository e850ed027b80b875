"""What alias resolution costs on the warm path: the same loaded model invoked by its archive's name and through an
alias (90/10 between two versions, so that a variant is drawn for every request), side by side in one run.

    .venv/bin/python bench/aliases.py           # full run (~55 s on 2 cores): its section of BENCHMARKS.md,
                                                # bench/results/aliases.json
    .venv/bin/python bench/aliases.py --smoke   # tiny sizes, checks the harness end to end

One SeaweedFS holds two 100-tree boosters, ``warm/v1/model.tar.gz`` and ``warm/v2/model.tar.gz``; alias ``warm``
sends 90 % to v1 and 10 % to v2 (both loaded first). One endpoint (dense hosting) serves both ways, so the only
difference between the two sides is the TargetModel header: ``archive`` invokes ``warm/v1/model.tar.gz``,
``alias`` invokes ``warm``. Rounds alternate the sides (archive first in even rounds, alias first in odd ones) so
the machine's drift falls on both; a round is ``wrk -t1 -c<C> -d<S>s --latency`` posting a one-row CSV body, at
concurrency 1 and 8. Per side and concurrency the median round of req/s, p50 and p99 is reported, and the ratios
alias / archive.

The resolution itself is also timed in process (``timeit``, a million calls): the data plane's ``resolve`` for an
archive's name (a TargetModel check and one dict lookup) and for the alias (plus the variant's draw and a
histogram bucket), in microseconds per call.
"""

from __future__ import annotations

import statistics
import sys
import timeit
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import PREFIX, Endpoint, describe_machine, embedded_s3, invoke_headers, post, wrk, wrk_script
from openmme.publish import publish_archive
from openmme.publish.aliases import set_alias
from openmme.publish.samples import make_rows, sample_archive, train_booster
from sections import section_main

START, END = "<!-- aliases:start -->", "<!-- aliases:end -->"
V1, V2, ALIAS = "warm/v1/model.tar.gz", "warm/v2/model.tar.gz", "warm"
SIDES = {"archive": V1, "alias": ALIAS}
CONCURRENCIES = (1, 8)


@dataclass(frozen=True)
class Sizes:
    trees: int
    rounds: int
    seconds: int
    resolve_calls: int


FULL = Sizes(trees=100, rounds=3, seconds=2, resolve_calls=300_000)
SMOKE = Sizes(trees=10, rounds=1, seconds=1, resolve_calls=10_000)


def resolve_cost(calls: int) -> dict[str, float]:
    """Microseconds per ``DataPlane.resolve`` call, for an archive's name and for the alias, in this process."""
    from types import SimpleNamespace

    from openmme.endpoint.alias_state import AliasDocument, Variant
    from openmme.endpoint.aliases import AliasReader, AliasTable
    from openmme.endpoint.dataplane import DataPlane
    from openmme.endpoint.metrics import Metrics
    from openmme.endpoint.names import S3Location
    from openmme.endpoint.settings import Settings

    settings = Settings.from_sources([], {})
    metrics = Metrics()
    location = S3Location.parse_prefix(PREFIX)
    cache: Any = SimpleNamespace(settings=settings, backend=None, store=SimpleNamespace(source=None))
    table = AliasTable(settings, cache, metrics, AliasReader(location, client=object()))
    table._install(AliasDocument(ALIAS, 1, (Variant("v1", V1, 90), Variant("v2", V2, 10))), "etag", quiet=True)
    plane = DataPlane(cache, metrics, aliases=table)
    headers = {"Content-Type": "text/csv"}
    costs = {}
    for side, target in SIDES.items():
        seconds = min(timeit.repeat(lambda t=target: plane.resolve(t, headers), number=calls, repeat=3))
        costs[side] = seconds / calls * 1e6
    return costs


def run(sizes: Sizes, workdir: Path) -> dict[str, Any]:
    body = ",".join(str(value) for value in make_rows(1, seed=3)[0]).encode()
    results: dict[str, Any] = {"sizes": sizes.__dict__, "machine": describe_machine()}
    with embedded_s3(workdir / "s3") as s3:
        s3.client().create_bucket(Bucket=PREFIX.split("/")[2])  # type: ignore[attr-defined]
        for seed, target in enumerate((V1, V2)):
            publish_archive(sample_archive(train_booster("reg:squarederror", seed, rounds=sizes.trees)), PREFIX, target)
        set_alias(PREFIX, ALIAS, [f"{V1}=90", f"{V2}=10"], check=False, reason="bench")
        with Endpoint(workdir / "endpoint") as endpoint:
            url = endpoint.url + "/invocations"
            for target in (V1, V2, ALIAS):  # every version loaded, the alias served
                for _ in range(20):
                    status, _ = post(url, body, invoke_headers(target))
                    assert status == 200, (target, status)
            scripts = {side: wrk_script(workdir / f"{side}.lua", body, invoke_headers(t)) for side, t in SIDES.items()}
            rounds: dict[str, dict[int, list[dict[str, Any]]]] = {
                side: {c: [] for c in CONCURRENCIES} for side in SIDES
            }
            for number in range(sizes.rounds):
                order = list(SIDES) if number % 2 == 0 else list(reversed(SIDES))
                for concurrency in CONCURRENCIES:
                    for side in order:
                        measured = wrk(url, scripts[side], concurrency, sizes.seconds)
                        if measured["non_2xx"] or measured["socket_errors"]:
                            raise RuntimeError(f"{side} at c={concurrency}: errors in {measured}")
                        rounds[side].setdefault(concurrency, []).append(measured)
    results["wrk"] = {side: {c: _median(runs) for c, runs in by_c.items()} for side, by_c in rounds.items()}
    results["ratios"] = {
        c: {
            measure: results["wrk"]["alias"][c][measure] / results["wrk"]["archive"][c][measure]
            for measure in ("requests_per_second", "p50_ms", "p99_ms")
        }
        for c in CONCURRENCIES
    }
    results["resolve_us"] = resolve_cost(sizes.resolve_calls)
    return results


def _median(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {
        measure: statistics.median(run[measure] for run in runs)
        for measure in ("requests_per_second", "p50_ms", "p99_ms")
    }


def markdown(results: dict[str, Any], command: str) -> str:
    machine = results["machine"]
    lines = [
        START,
        "## Aliases: the warm path by an archive's name and through an alias, side by side",
        "",
        f"`{command}` — alias `{ALIAS}` sends 90 % to v1 and 10 % to v2 (both loaded), one dense endpoint serves both"
        f" sides, alternating wrk rounds, median round; {machine['cpus']} CPUs ({machine['cpu_model']}),"
        f" {machine['memory_gib']} GiB; openmme {machine['openmme_revision']}; {results['wall_seconds'] / 60:.1f} min.",
        "",
        "| concurrency | TargetModel | req/s | p50 ms | p99 ms |",
        "|---|---|---|---|---|",
    ]
    for c in CONCURRENCIES:
        for side in SIDES:
            figures = results["wrk"][side][c]
            lines.append(
                f"| {c} | {side} | {figures['requests_per_second']:.0f} | {figures['p50_ms']:.2f} |"
                f" {figures['p99_ms']:.2f} |"
            )
        ratio = results["ratios"][c]
        lines.append(
            f"| {c} | alias / archive | {ratio['requests_per_second']:.3f}x | {ratio['p50_ms']:.3f}x |"
            f" {ratio['p99_ms']:.3f}x |"
        )
    costs = results["resolve_us"]
    lines.append("")
    lines.append(
        f"`DataPlane.resolve` in process: {costs['archive']:.2f} µs for an archive's name, {costs['alias']:.2f} µs"
        " for the alias."
    )
    lines.append(END)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(section_main("aliases", __doc__ or "", (FULL, SMOKE), run, markdown, (START, END)))
