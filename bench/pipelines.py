"""What running a pipeline inside the endpoint costs on the warm path, against a client calling its steps one by
one, side by side in one run on one endpoint.

    .venv/bin/python bench/pipelines.py           # full run (~1.5 min on 2 cores): its section of BENCHMARKS.md,
                                                  # bench/results/pipelines.json
    .venv/bin/python bench/pipelines.py --smoke   # tiny sizes, checks the harness end to end

One SeaweedFS holds a three-step pipeline, ``bench.pipeline.json`` (``{"steps": [...]}``), and its steps:

1. ``featurizer/model.tar.gz``: a script model (``code/inference.py``, no requirements: numpy only, isolated as
   every script model) whose fitted state (the cities of the categorical column, the numeric columns' means and
   scales) is a JSON file of its archive; it turns raw CSV rows ``city,tenure,spend,calls`` into the booster's six
   numeric columns (the city one-hot, the rest scaled), answering CSV;
2. ``booster/model.tar.gz``: a 100-tree ``binary:logistic`` booster, served dense (the endpoint's default);
3. ``labels/model.tar.gz``: a script model mapping each probability to ``churn`` or ``stay`` (its threshold and
   names a JSON file of its archive), answering JSON.

The manifest asks steps 1 and 2 for ``text/csv``; the client sends ``Content-Type: text/csv`` and ``Accept:
application/json``. Each step alone is invoked with exactly what it gets inside the pipeline: the steps are called
one by one once (step 1 with the raw row, step 2 with step 1's answer and its Content-Type, step 3 with step 2's),
and the pipeline's answer must be step 3's, byte for byte. Everything is warmed up before measuring: loaded, 20
requests per target, then a wrk run of every target at concurrency 8 that is not counted (MMS's JVM compiles its
hot paths meanwhile: without it, the first target measured pays for that).

A round runs ``wrk -t1 -c<C> -d<S>s --latency`` (a C load generator, keep-alive connections, closed loop) at
concurrency 1 and 8 against each of: the pipeline, each step alone, and ``one by one``: the three steps' requests
in turn on every connection (its req/s divided by three is pipelines' worth of answers a second). At c=1 that is
exactly a client calling step 1, then 2, then 3, and the script also times every whole chain, from sending step 1
to step 3's answer (LuaJIT's ffi and clock_gettime, in wrk). The targets' order is rotated by one place per
round, so the machine's drift falls on all of them; per target and concurrency the median round of each measure
is reported. The server's CPU is the CPU seconds of the endpoint's whole process tree (front, MMS's JVM, the
script models' MMS workers, the dense shards' workers; ``harness.tree_cpu``) read before and after each wrk run,
per request.

Compared, at each concurrency: the pipeline's p50 and p99 against the SUM of its steps' p50 and p99 (each step
alone, a network round trip each: what a client calling them one by one waits at least, the p99s adding up as if
the slow requests of each step coincided), as the overhead in ms and as a ratio; its server CPU per request
against the sum of the steps'; its req/s against ``one by one``'s. At c=1 also against the whole chains' p50 and
p99.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness import BUCKET, Endpoint, cpu_between, embedded_s3, percentile, tree_cpu, wrk, wrk_script, wrk_version
from openmme.publish.local import pack_directory
from openmme.publish.samples import sample_archive, train_booster
from sections import goal_table, section_main

START, END = "<!-- pipelines:start -->", "<!-- pipelines:end -->"
PIPELINE = "bench.pipeline.json"
FEATURIZER, BOOSTER, LABELS = "featurizer/model.tar.gz", "booster/model.tar.gz", "labels/model.tar.gz"
STEPS = (FEATURIZER, BOOSTER, LABELS)
# The Accept each step is asked for inside the pipeline: the manifest's for steps 1 and 2, the client's for 3.
MANIFEST = {"steps": [{"model": FEATURIZER, "accept": "text/csv"}, {"model": BOOSTER, "accept": "text/csv"}, LABELS]}
CLIENT_ACCEPT = "application/json"
TARGETS = ("pipeline", "step1", "step2", "step3", "one_by_one")
MEASURES = ("requests_per_second", "p50_ms", "p99_ms")
CITIES = ("houston", "chicago", "seattle")
# How much slower than its steps called one by one a pipeline may be (see ``goals``).
P50_GOAL, CPU_GOAL = 1.1, 1.1

FEATURIZER_SCRIPT = r'''
"""Raw rows "city,tenure,spend,calls" to the booster's columns: the city one-hot, the numbers scaled."""
import json
import os

import numpy as np


def model_fn(model_dir):
    with open(os.path.join(model_dir, "featurizer.json")) as file:
        fitted = json.load(file)
    return fitted["cities"], np.array(fitted["mean"]), np.array(fitted["scale"])


def transform_fn(model, body, content_type, accept):
    cities, mean, scale = model
    rows = [line.split(",") for line in body.strip().splitlines()]
    one_hot = np.array([[row[0] == city for city in cities] for row in rows], dtype=float)
    numbers = (np.array([row[1:] for row in rows], dtype=float) - mean) / scale
    features = np.hstack([one_hot, numbers])
    return "\n".join(",".join(repr(value) for value in row) for row in features.tolist()), "text/csv"
'''
LABELS_SCRIPT = r'''
"""The booster's probabilities (CSV) to names: one label per row, as JSON (or CSV lines)."""
import json
import os


def model_fn(model_dir):
    with open(os.path.join(model_dir, "labels.json")) as file:
        return json.load(file)


def transform_fn(model, body, content_type, accept):
    scores = [float(value) for value in body.replace("\n", ",").split(",") if value.strip()]
    labels = [model["above"] if score >= model["threshold"] else model["below"] for score in scores]
    if accept == "text/csv":
        return "\n".join(labels), "text/csv"
    return json.dumps({"labels": labels}), "application/json"
'''


@dataclass(frozen=True)
class Sizes:
    trees: int
    rows: int  # raw CSV rows per request
    rounds: int
    seconds: int  # per wrk run
    warm_seconds: int  # per target, before measuring (0: none)
    concurrencies: tuple[int, ...]


FULL = Sizes(trees=100, rows=1, rounds=3, seconds=2, warm_seconds=2, concurrencies=(1, 8))
SMOKE = Sizes(trees=10, rows=1, rounds=1, seconds=1, warm_seconds=0, concurrencies=(1, 8))


# ---- the models --------------------------------------------------------------------------------------------


def raw_rows(count: int, seed: int) -> list[str]:
    """``count`` raw CSV rows ``city,tenure,spend,calls`` (the city categorical, the rest numbers)."""
    rng = np.random.default_rng(seed)
    cities = rng.choice(CITIES, size=count)
    numbers = rng.normal([24.0, 70.0, 3.0], [12.0, 30.0, 2.0], size=(count, 3))
    return [
        f"{city},{tenure:.1f},{spend:.2f},{calls:.0f}"
        for city, (tenure, spend, calls) in zip(cities, numbers, strict=True)
    ]


def script_archive(workdir: Path, script: str, data_name: str, data: Any) -> bytes:
    """A script model's model.tar.gz: ``code/inference.py`` and its fitted state as ``data_name`` (JSON)."""
    (workdir / "code").mkdir(parents=True)
    (workdir / "code" / "inference.py").write_text(script)
    (workdir / data_name).write_text(json.dumps(data))
    return pack_directory(workdir)


def publish_models(client: Any, sizes: Sizes, workdir: Path) -> None:
    """The three steps and the manifest, under the bench prefix."""
    table = np.array([[float(value) for value in row.split(",")[1:]] for row in raw_rows(500, seed=7)])
    fitted = {"cities": list(CITIES), "mean": table.mean(axis=0).tolist(), "scale": table.std(axis=0).tolist()}
    labels = {"threshold": 0.5, "above": "churn", "below": "stay"}
    booster = train_booster("binary:logistic", seed=1, rounds=sizes.trees, rows=2000)  # 6 columns, as featurized
    objects = {
        FEATURIZER: script_archive(workdir / "featurizer", FEATURIZER_SCRIPT, "featurizer.json", fitted),
        BOOSTER: sample_archive(booster),
        LABELS: script_archive(workdir / "labels", LABELS_SCRIPT, "labels.json", labels),
        PIPELINE: json.dumps(MANIFEST).encode(),
    }
    for key, body in objects.items():
        client.put_object(Bucket=BUCKET, Key=f"models/{key}", Body=body)


# ---- requests ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One request of the run: its TargetModel, body and headers."""

    target: str
    body: bytes
    content_type: str
    accept: str

    @property
    def headers(self) -> dict[str, str]:
        return {
            "Content-Type": self.content_type,
            "Accept": self.accept,
            "X-Amzn-SageMaker-Target-Model": self.target,
        }


def invoke(url: str, call: Call, timeout: float = 120.0) -> tuple[int, bytes, str]:
    """Status, body and Content-Type of one blocking POST of ``call``."""
    request = urllib.request.Request(url, data=call.body, headers=call.headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as error:
        return int(error.code), error.read(), error.headers.get("Content-Type", "")


def answered(url: str, call: Call, tries: int = 60) -> tuple[bytes, str]:
    """``call``'s answer, waiting through 429s (a script model's first load can outlast the wait budget)."""
    for _ in range(tries):
        status, body, content_type = invoke(url, call)
        if status != 429:
            break
    if status != 200:
        raise RuntimeError(f"{call.target} answered {status}: {body[:500]!r}")
    return body, content_type


def step_calls(url: str, raw: bytes) -> tuple[list[Call], bytes]:
    """Each step's request as the pipeline sends it, found by calling the steps one by one once; and the last
    step's answer."""
    calls, body, content_type = [], raw, "text/csv"
    for index, target in enumerate(STEPS):
        step = MANIFEST["steps"][index]
        accept = step["accept"] if isinstance(step, dict) else CLIENT_ACCEPT
        calls.append(Call(target, body, content_type, accept))
        body, content_type = answered(url, calls[-1])
    return calls, body


def round_robin_script(path: Path, step_scripts: list[Path], chains: Path | None = None) -> Path:
    """A wrk Lua script that sends the steps' requests in turn (each built by ``harness.wrk_script``'s script of
    that step): on one connection, a client calling the steps one by one. With ``chains`` (for one connection
    only), the milliseconds from sending step 1 to step 3's answer of every whole chain go to that file, a line
    each (timed with clock_gettime through LuaJIT's ffi, as wrk itself times requests)."""
    names = ", ".join(json.dumps(str(script)) for script in step_scripts)
    lines = [
        f"local scripts, requests, turn, started, began = {{{names}}}, {{}}, 0, nil, nil",
        "function init(args)",
        '  local host = wrk.headers["Host"]',
        "  for index, script in ipairs(scripts) do",
        "    wrk.headers = {Host = host}",
        "    dofile(script)",
        "    requests[index] = wrk.format(wrk.method, nil, wrk.headers, wrk.body)",
        "  end",
        "end",
        "function request()",
        "  turn = turn % #requests + 1",
        "  if turn == 1 and now_ms then started = now_ms() end",
        "  return requests[turn]",
        "end",
    ]
    if chains is not None:
        lines += [
            'local ffi = require("ffi")',
            'ffi.cdef("typedef struct { long sec; long nsec; } bench_time; int clock_gettime(int, bench_time *);")',
            'local clock = ffi.new("bench_time")',
            "function now_ms()",
            "  ffi.C.clock_gettime(1, clock)  -- CLOCK_MONOTONIC",
            "  return tonumber(clock.sec) * 1e3 + tonumber(clock.nsec) / 1e6",
            "end",
            "chains, threads = {}, {}",
            "function response(status, headers, body)",
            "  -- on one connection, this answers the last request() returned (wrk calls request() once more",
            "  -- before sending anything, to check what it returns: the first chain is left out)",
            "  if turn == 1 then began = started end",
            "  if turn == #requests and began then chains[#chains + 1] = now_ms() - began; began = nil end",
            "end",
            "function setup(thread) threads[#threads + 1] = thread end",
            "function done(summary, latency, requests)",
            f'  local file = io.open({json.dumps(str(chains))}, "w")',
            "  for _, thread in ipairs(threads) do",
            '    for _, ms in ipairs(thread:get("chains")) do file:write(string.format("%.4f\\n", ms)) end',
            "  end",
            "  file:close()",
            "end",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


# ---- measuring ---------------------------------------------------------------------------------------------


def measured_run(
    endpoint: Endpoint, script: Path, concurrency: int, seconds: int, per: int, chains: Path | None = None
) -> dict[str, Any]:
    """One wrk run with the server's CPU per request by process kind; ``per``: requests that make one answer of
    the target (3 for ``one by one``: its req/s and CPU are per pipeline's worth of answers); ``chains``: the file
    the script writes whole chains' milliseconds to (their p50 and p99 are added)."""
    before = tree_cpu(endpoint.pid)
    result = wrk(endpoint.url + "/invocations", script, concurrency, seconds)
    used = cpu_between(before, tree_cpu(endpoint.pid))
    if result["non_2xx"] or result["socket_errors"] or not result["requests"]:
        raise RuntimeError(f"{script.name} at c={concurrency}: errors in {result}")
    answers = result["requests"] / per
    measured: dict[str, Any] = result | {
        "requests_per_second": result["requests_per_second"] / per,
        "cpu_ms_per_request": {kind: seconds * 1000 / answers for kind, seconds in used.items()},
    }
    if chains is not None:
        times = [float(line) for line in chains.read_text().split()]
        measured |= {
            "chains": len(times),
            "chain_mean_ms": statistics.fmean(times),
            "chain_p50_ms": percentile(times, 50),
            "chain_p99_ms": percentile(times, 99),
        }
    return measured


def median_round(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each measure over the rounds (and of each kind's CPU per request)."""
    kinds = runs[0]["cpu_ms_per_request"]
    chains = ("chain_mean_ms", "chain_p50_ms", "chain_p99_ms")
    measures = [measure for measure in (*MEASURES, *chains) if measure in runs[0]]
    return {
        **{measure: statistics.median(run[measure] for run in runs) for measure in measures},
        "requests": sum(run["requests"] for run in runs),
        "cpu_ms_per_request": {
            kind: statistics.median(run["cpu_ms_per_request"][kind] for run in runs) for kind in kinds
        },
    }


def compare(figures: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The pipeline against its steps one by one at one concurrency: latencies against the sum of the steps',
    req/s and CPU against ``one by one`` (measured) and the sum of the steps' CPU."""
    pipeline, steps = figures["pipeline"], [figures[f"step{index}"] for index in (1, 2, 3)]
    compared: dict[str, float] = {}
    for measure in ("p50_ms", "p99_ms"):
        total = sum(step[measure] for step in steps)
        compared[f"steps_{measure}"] = total
        compared[f"overhead_{measure}"] = pipeline[measure] - total
        compared[f"ratio_{measure}"] = pipeline[measure] / total
    cpu = pipeline["cpu_ms_per_request"]["total"]
    compared["steps_cpu_ms"] = sum(step["cpu_ms_per_request"]["total"] for step in steps)
    compared["steps_front_cpu_ms"] = sum(step["cpu_ms_per_request"]["front"] for step in steps)
    compared["ratio_cpu"] = cpu / compared["steps_cpu_ms"]
    compared["one_by_one_cpu_ms"] = figures["one_by_one"]["cpu_ms_per_request"]["total"]
    compared["ratio_rps"] = pipeline["requests_per_second"] / figures["one_by_one"]["requests_per_second"]
    for measure in ("p50_ms", "p99_ms"):  # whole chains timed on one connection (c=1 only)
        if f"chain_{measure}" in figures["one_by_one"]:
            chain = figures["one_by_one"][f"chain_{measure}"]
            compared[f"chain_overhead_{measure}"] = pipeline[measure] - chain
            compared[f"chain_ratio_{measure}"] = pipeline[measure] / chain
    return compared


def run(sizes: Sizes, workdir: Path) -> dict[str, Any]:
    raw = "\n".join(raw_rows(sizes.rows, seed=3)).encode()
    results: dict[str, Any] = {"sizes": dataclasses.asdict(sizes), "manifest": MANIFEST, "wrk_version": wrk_version()}
    with embedded_s3(workdir / "s3") as s3:
        client: Any = s3.client()
        client.create_bucket(Bucket=BUCKET)
        publish_models(client, sizes, workdir / "models")
        with Endpoint(workdir / "endpoint") as endpoint:
            url = endpoint.url + "/invocations"
            steps, last_answer = step_calls(url, raw)
            pipeline = Call(PIPELINE, raw, "text/csv", CLIENT_ACCEPT)
            answer, content_type = answered(url, pipeline)
            if answer != last_answer:
                raise RuntimeError(f"the pipeline answered {answer!r}, its steps one by one {last_answer!r}")
            results["answers"] = {
                "raw": raw.decode(),
                "steps": [call.body.decode() for call in steps[1:]] + [answer.decode()],
                "content_type": content_type,
            }
            for call in (*steps, pipeline):
                for _ in range(20):
                    answered(url, call)
            calls = {"pipeline": pipeline, "step1": steps[0], "step2": steps[1], "step3": steps[2]}
            scripts = {
                name: wrk_script(workdir / f"{name}.lua", call.body, call.headers) for name, call in calls.items()
            }
            steps_scripts = [scripts[f"step{index}"] for index in (1, 2, 3)]
            scripts["one_by_one"] = round_robin_script(workdir / "one_by_one.lua", steps_scripts)
            chains = workdir / "chains.txt"
            timed = round_robin_script(workdir / "one_by_one_timed.lua", steps_scripts, chains)
            if sizes.warm_seconds:  # MMS's JVM compiles its hot paths under load meanwhile: not counted
                for name in TARGETS:
                    wrk(url, scripts[name], max(sizes.concurrencies), sizes.warm_seconds)
            rounds: dict[str, dict[int, list[dict[str, Any]]]] = {
                name: {c: [] for c in sizes.concurrencies} for name in TARGETS
            }
            for number in range(sizes.rounds):
                order = TARGETS[number % len(TARGETS) :] + TARGETS[: number % len(TARGETS)]
                for concurrency in sizes.concurrencies:
                    for name in order:
                        if name == "one_by_one" and concurrency == 1:  # whole chains timed on one connection
                            measured = measured_run(endpoint, timed, 1, sizes.seconds, len(STEPS), chains)
                        else:
                            per = len(STEPS) if name == "one_by_one" else 1
                            measured = measured_run(endpoint, scripts[name], concurrency, sizes.seconds, per)
                        rounds[name][concurrency].append(measured)
    results["wrk"] = {name: {f"c{c}": median_round(runs) for c, runs in by_c.items()} for name, by_c in rounds.items()}
    results["compare"] = {
        f"c{c}": compare({name: results["wrk"][name][f"c{c}"] for name in TARGETS}) for c in sizes.concurrencies
    }
    return results


# ---- the report --------------------------------------------------------------------------------------------


def goals(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """Running the steps inside the endpoint costs no more than the client calling them one by one: the
    pipeline's p50 at c=1 (latency, unloaded) against the sum of its steps' p50, and its server CPU per request
    at the highest concurrency (where the runs are longest) against the measured one-by-one run's, which has the
    pipeline's load shape (each connection cycling through the steps; each step alone at c=8 queues 8 requests
    deep, which lowers its CPU per request), each at most 1.1x, the margin for a shared machine's noise."""
    low, high = min(results["sizes"]["concurrencies"]), max(results["sizes"]["concurrencies"])
    at_low, at_high = results["compare"][f"c{low}"], results["compare"][f"c{high}"]
    p50 = results["wrk"]["pipeline"][f"c{low}"]["p50_ms"]
    cpu = results["wrk"]["pipeline"][f"c{high}"]["cpu_ms_per_request"]["total"]
    return [
        (
            f"pipeline p50 at c={low} ≤ {P50_GOAL}x the sum of its steps' p50 (called one by one)",
            f"{p50:.2f} vs {at_low['steps_p50_ms']:.2f} ms ({at_low['ratio_p50_ms']:.2f}x)",
            at_low["ratio_p50_ms"] <= P50_GOAL,
        ),
        (
            f"server CPU per pipeline request at c={high} ≤ {CPU_GOAL}x a client's calling its steps one by one"
            " (measured: the steps' requests in turn on every connection)",
            f"{cpu:.2f} vs {at_high['one_by_one_cpu_ms']:.2f} ms ({cpu / at_high['one_by_one_cpu_ms']:.2f}x)",
            cpu <= CPU_GOAL * at_high["one_by_one_cpu_ms"],
        ),
    ]


ROW_LABELS = {
    "step1": "step 1 alone: featurizer (script)",
    "step2": "step 2 alone: booster (dense)",
    "step3": "step 3 alone: labels (script)",
}


def markdown(results: dict[str, Any], command: str) -> str:
    machine, sizes = results["machine"], results["sizes"]
    lines = [
        START,
        "## Pipelines: a three-step pipeline against its steps called one by one",
        "",
        f"`{command}` — `{PIPELINE}`: a numpy featurizer script (raw CSV with a categorical column → 6 numeric"
        f" columns), a {sizes['trees']}-tree booster served dense, a script mapping the probability to a label;"
        f" {sizes['rows']} raw row(s) per request, one endpoint; {sizes['rounds']} rotated rounds of"
        f" `wrk -t1 -c<C> -d{sizes['seconds']}s` per target and concurrency, median round; {results['wrk_version']};"
        f" {machine['cpus']} CPUs ({machine['cpu_model']}), {machine['memory_gib']} GiB; openmme"
        f" {machine['openmme_revision']}; {results['wall_seconds']:.0f} s.",
        "",
        "| c | target | req/s | p50 ms | p99 ms | server CPU ms/req | of which front |",
        "|--:|---|--:|--:|--:|--:|--:|",
    ]
    for c in sizes["concurrencies"]:
        key = f"c{c}"
        for name, label in ROW_LABELS.items():
            lines.append(_row(c, label, results["wrk"][name][key]))
        one, pipeline = results["wrk"]["one_by_one"][key], results["wrk"]["pipeline"][key]
        compared = results["compare"][key]
        overhead_cpu = pipeline["cpu_ms_per_request"]["total"] - compared["steps_cpu_ms"]
        lines += [
            f"| {c} | **one by one** | {one['requests_per_second']:.0f} | {compared['steps_p50_ms']:.2f} |"
            f" {compared['steps_p99_ms']:.2f} | {compared['steps_cpu_ms']:.2f} |"
            f" {compared['steps_front_cpu_ms']:.2f} |",
            _row(c, "**pipeline**", pipeline),
            f"| {c} | pipeline minus one by one | | {compared['overhead_p50_ms']:+.2f} |"
            f" {compared['overhead_p99_ms']:+.2f} | {overhead_cpu:+.2f} | |",
            f"| {c} | pipeline / one by one | {compared['ratio_rps']:.2f}x | {compared['ratio_p50_ms']:.2f}x |"
            f" {compared['ratio_p99_ms']:.2f}x | {compared['ratio_cpu']:.2f}x | |",
        ]
        if "chain_p50_ms" in one:
            lines += [
                f"| {c} | one by one, whole chains timed | | {one['chain_p50_ms']:.2f} | {one['chain_p99_ms']:.2f} |"
                f" {one['cpu_ms_per_request']['total']:.2f} | {one['cpu_ms_per_request']['front']:.2f} |",
                f"| {c} | pipeline / whole chains | | {compared['chain_ratio_p50_ms']:.2f}x |"
                f" {compared['chain_ratio_p99_ms']:.2f}x | | |",
            ]
    lines += [
        "",
        "One by one: p50, p99 and CPU are the sums of the three steps' (each step alone, a network round trip each:"
        " the least a client calling the steps itself waits, the p99s added as if their slow requests coincided);"
        " req/s is measured with the steps' requests in turn on every connection, divided by three (pipelines'"
        " worth of answers a second). Whole chains timed (c=1): the three calls on one connection, timed in wrk"
        " from sending step 1 to step 3's answer; CPU of that run, per chain.",
        "",
        *goal_table(goals(results)),
        END,
    ]
    return "\n".join(lines) + "\n"


def _row(c: int, label: str, figures: dict[str, Any]) -> str:
    cpu = figures["cpu_ms_per_request"]
    return (
        f"| {c} | {label} | {figures['requests_per_second']:.0f} | {figures['p50_ms']:.2f} | {figures['p99_ms']:.2f}"
        f" | {cpu['total']:.2f} | {cpu['front']:.2f} |"
    )


def main() -> int:
    return section_main("pipelines", __doc__ or "", (FULL, SMOKE), run, markdown, (START, END))


if __name__ == "__main__":
    sys.exit(main())
