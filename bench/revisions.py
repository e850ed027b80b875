"""The warm path of two revisions of openmme, side by side in one run: the working tree against ``--base``.

    .venv/bin/python bench/revisions.py --rounds 5 --seconds 8   # full run (~4 min on 2 cores): its section of
                                                                 # BENCHMARKS.md, bench/results/revisions.json
    .venv/bin/python bench/revisions.py --smoke                  # 1 round of 1 s per side, checks the harness
                                                                 # (no BENCHMARKS.md unless --markdown is given)

The base (``--base``, default ``HEAD``: the last commit) is checked out with ``git worktree add --detach`` in a
scratch directory, removed at the end, also on a failure or Ctrl-C. Both endpoints run on this venv's interpreter,
as an operator starts them (``python -m openmme.cli serve``): the base with
``PYTHONPATH=<worktree>/container:<worktree>/handlers:<worktree>/publish`` (and ``PYTHONSAFEPATH=1``, so that the
current directory never shadows it), which every process it starts inherits (MMS's JVM, its workers); the working
tree's without either, so it imports the checkout the venv is installed from. Before measuring, the run checks
where each side imports openmme from, and that every process of the base's tree has the base's PYTHONPATH.

One SeaweedFS holds one 100-tree booster. For each hosting mode (``--hosting dense``, then ``isolated``) both
endpoints are up at once (an idle one costs no CPU); each is warmed up (the model loaded, then a short wrk run
that is not counted), then they are measured in alternating rounds, the base first in even rounds and the working
tree first in odd ones, so that the machine's drift falls on both. A round is
``wrk -t1 -c<C> -d<S>s --latency`` (a C load generator: the server is measured, not the client) posting a one-row
CSV body with ``Content-Type: text/csv`` and ``X-Amzn-SageMaker-Target-Model``; the server's CPU is the CPU
seconds of the endpoint's whole process tree (front, JVM, workers), read with psutil before and after the round,
per request. Per side, the median round of each measure is reported, and the ratios working tree / base.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil

from harness import (
    BUCKET,
    ROOT,
    WRK_MISSING,
    Endpoint,
    all_up,
    cpu_between,
    describe_machine,
    embedded_s3,
    invoke_headers,
    serve_flags,
    tree_cpu,
    tree_processes,
    wrk,
    wrk_script,
    wrk_version,
)
from openmme.publish.samples import make_rows, sample_archive, train_booster
from sections import MARKERS, goal_table, replace_section

START, END = MARKERS[2]
MODES = ("dense", "isolated")
SIDES = ("base", "after")
TARGET = "warm/model.tar.gz"
TREES = 100
# The goal: the working tree's warm path is no slower than the base's, in both hosting modes.
MIN_RPS_RATIO, MAX_P50_RATIO = 0.95, 1.05
MEASURES = ("requests_per_second", "p50_ms", "p99_ms", "cpu_ms_per_request")
# What each side imports; the base's must all come from its worktree, the working tree's from this checkout.
IMPORT_CHECK = (
    "import json, openmme.cli, openmme.endpoint.app, openmme.handlers, openmme.publish\n"
    "print(json.dumps({m.__name__: m.__file__ for m in (openmme.cli, openmme.endpoint.app, openmme.handlers, "
    "openmme.publish)}))"
)


def git(*args: str) -> str:
    completed = subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=120, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {completed.stderr.strip()}")
    return completed.stdout.strip()


def describe_base(rev: str) -> dict[str, str]:
    commit = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    return {"rev": rev, "commit": commit, "short": commit[:7], "subject": git("log", "-1", "--format=%s", commit)}


def describe_difference(commit: str) -> dict[str, Any]:
    """How the working tree's code differs from the base's: tracked files changed, and files git does not track."""
    code = ("container", "handlers", "publish")
    changed = git("diff", "--name-status", commit, "--", *code).splitlines()
    untracked = git("ls-files", "--others", "--exclude-standard", "--", *code).splitlines()
    return {"changed": len(changed), "untracked": len(untracked)}


@contextlib.contextmanager
def worktree(commit: str, path: Path) -> Iterator[Path]:
    """``commit`` checked out (detached) at ``path``; the worktree removed afterwards, whatever happened."""
    try:
        git("worktree", "add", "--detach", str(path), commit)
        yield path
    finally:
        try:
            git("worktree", "remove", "--force", str(path))
        except RuntimeError:
            # Half-made (interrupted while adding) or already gone: delete what is left, then forget it.
            shutil.rmtree(path, ignore_errors=True)
            with contextlib.suppress(RuntimeError):
                git("worktree", "prune")


def base_environment(tree: Path) -> dict[str, str]:
    return {
        "PYTHONPATH": os.pathsep.join(str(tree / folder) for folder in ("container", "handlers", "publish")),
        "PYTHONSAFEPATH": "1",
    }


def imported_from(env: dict[str, str]) -> dict[str, str]:
    """Where an interpreter started like the endpoint (same interpreter, environment, directory) imports openmme."""
    completed = subprocess.run(
        [sys.executable, "-c", IMPORT_CHECK],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    files: dict[str, str] = json.loads(completed.stdout)
    return files


def check_imports(files: dict[str, str], home: Path, not_under: Path | None = None) -> None:
    for module, file in files.items():
        path = Path(file).resolve()
        if not path.is_relative_to(home.resolve()) or (not_under is not None and path.is_relative_to(not_under)):
            raise RuntimeError(f"{module} imports from {file}, not from {home}")


def check_environment(pid: int, pythonpath: str) -> int:
    """Every Python process of the base's tree (front, workers) has the base's PYTHONPATH entries, in order (MMS
    may put a model's directory before them for its workers); how many processes there are."""
    wanted = pythonpath.split(os.pathsep)
    checked = 0
    for process in tree_processes(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            if "python" not in Path(process.exe()).name:
                continue
            found = process.environ().get("PYTHONPATH", "")
            entries = [entry for entry in found.split(os.pathsep) if entry in wanted]
            if entries[: len(wanted)] != wanted:
                raise RuntimeError(f"process {process.pid} ({process.name()}) has PYTHONPATH={found!r}")
            checked += 1
    return checked


def measure(endpoint: Endpoint, script: Path, connections: int, seconds: int) -> dict[str, Any]:
    """One round: wrk against ``endpoint``, and the CPU its whole process tree used meanwhile."""
    before = tree_cpu(endpoint.pid)
    result = wrk(endpoint.url + "/invocations", script, connections, seconds)
    cpu = cpu_between(before, tree_cpu(endpoint.pid))["total"]
    return result | {"server_cpu_seconds": cpu, "cpu_ms_per_request": cpu * 1000 / max(1, result["requests"])}


def answer(url: str, body: bytes) -> bytes:
    request = urllib.request.Request(url + "/invocations", data=body, headers=invoke_headers(TARGET))
    with urllib.request.urlopen(request, timeout=120) as response:
        data: bytes = response.read()
        return data


def summary(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per side: the median round of each measure; requests and failures summed over the rounds."""
    medians = {key: statistics.median(measured[key] for measured in rounds) for key in MEASURES}
    return medians | {
        "non_2xx": sum(measured["non_2xx"] for measured in rounds),
        "socket_errors": sum(measured["socket_errors"] for measured in rounds),
        "requests": sum(measured["requests"] for measured in rounds),
    }


def run_mode(
    mode: str, workdir: Path, base_env: dict[str, str], body: bytes, script: Path, options: argparse.Namespace
) -> dict[str, Any]:
    flags = ["--hosting", mode]
    endpoints = {
        "base": Endpoint(workdir / f"{mode}-base", flags, env=base_env),
        "after": Endpoint(workdir / f"{mode}-after", flags),
    }
    row: dict[str, Any] = {"flags": " ".join(serve_flags(flags))}
    with all_up(list(endpoints.values())):
        answers = {side: answer(endpoint.url, body) for side, endpoint in endpoints.items()}
        row["answers"] = {side: data.decode(errors="replace") for side, data in answers.items()}
        row["same_answer"] = answers["base"] == answers["after"]
        # After the load, so that the model's worker is among the processes checked.
        row["base_processes_checked"] = check_environment(endpoints["base"].pid, base_env["PYTHONPATH"])
        for endpoint in endpoints.values():
            wrk(endpoint.url + "/invocations", script, options.connections, options.warm_up)
        rounds: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
        for index in range(options.rounds):
            for side in SIDES if index % 2 == 0 else SIDES[::-1]:
                rounds[side].append(measure(endpoints[side], script, options.connections, options.seconds))
    for side in SIDES:
        row[side] = {"rounds": rounds[side], "summary": summary(rounds[side])}
    row["ratios"] = {key: row["after"]["summary"][key] / row["base"]["summary"][key] for key in MEASURES}
    print(f"bench: {mode} done", file=sys.stderr, flush=True)
    return row


def run(options: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    base = describe_base(options.base)
    booster = train_booster("binary:logistic", seed=1, rounds=TREES, rows=2000)
    archive = sample_archive(booster)
    body = ",".join(repr(float(value)) for value in make_rows(1, seed=3)[0]).encode()
    script = wrk_script(workdir / "invoke.lua", body, invoke_headers(TARGET))
    results: dict[str, Any] = {
        "base": base,
        "after": {"difference": describe_difference(base["commit"])},
        "settings": {
            "rounds": options.rounds,
            "seconds": options.seconds,
            "connections": options.connections,
            "warm_up_seconds": options.warm_up,
            "trees": TREES,
            "target": TARGET,
            "body": body.decode(),
        },
        "archive_bytes": len(archive),
        "modes": {},
    }
    tree = workdir / "base-worktree"
    results["worktree"] = str(tree)
    with worktree(base["commit"], tree), embedded_s3(workdir / "s3") as s3:
        base_env = base_environment(tree)
        results["imports"] = {"base": imported_from(base_env), "after": imported_from({})}
        check_imports(results["imports"]["base"], tree)
        check_imports(results["imports"]["after"], ROOT, not_under=tree)
        client: Any = s3.client()
        client.create_bucket(Bucket=BUCKET)
        client.put_object(Bucket=BUCKET, Key=f"models/{TARGET}", Body=archive)
        for mode in MODES:
            results["modes"][mode] = run_mode(mode, workdir, base_env, body, script, options)
    return results


def goals(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    ratios = {mode: results["modes"][mode]["ratios"] for mode in MODES}
    rows = results["modes"].values()
    failures = sum(row[side]["summary"][key] for row in rows for side in SIDES for key in ("non_2xx", "socket_errors"))
    return [
        (
            "the working tree's warm path is not slower than the base: req/s ratio ≥ 0.95 and p50 ratio ≤ 1.05 in "
            "both hosting modes",
            "; ".join(
                f"{mode}: req/s {ratio['requests_per_second']:.3f}x, p50 {ratio['p50_ms']:.3f}x"
                for mode, ratio in ratios.items()
            ),
            all(
                ratio["requests_per_second"] >= MIN_RPS_RATIO and ratio["p50_ms"] <= MAX_P50_RATIO
                for ratio in ratios.values()
            ),
        ),
        (
            "every request answered 2xx, no socket error (both revisions, both modes)",
            f"{failures} failed",
            failures == 0,
        ),
    ]


def markdown(results: dict[str, Any]) -> str:
    settings, machine, base = results["settings"], results["machine"], results["base"]
    difference = results["after"]["difference"]
    subject = textwrap.shorten(base["subject"], 80, placeholder=" …")
    rounds = f"{settings['rounds']} round{'s' if settings['rounds'] != 1 else ''}"
    lines = [
        START,
        "## Revisions: the working tree's warm path against a base revision's, side by side",
        "",
        f"`{results['command']}` — base `{base['short']}` ({subject}) against the working tree "
        f"(openmme {machine['openmme_revision']}; {difference['changed']} tracked files changed and "
        f"{difference['untracked']} new under container/, handlers/, publish/). {settings['trees']}-tree booster "
        f"({results['archive_bytes'] / 1024:.0f} KiB archive), one-row CSV; per round `wrk -t1 "
        f"-c{settings['connections']} -d{settings['seconds']}s --latency`, {rounds} per side "
        f"alternating which goes first, medians; each endpoint warmed up first (model loaded, "
        f"{settings['warm_up_seconds']} s of wrk not counted). {machine['cpus']} CPUs ({machine['cpu_model']}), "
        f"{machine['memory_gib']} GiB; "
        f"Python {machine['python']}, {machine['wrk']}; {results['wall_seconds'] / 60:.1f} min.",
        "",
        "| hosting | revision | req/s | p50 (ms) | p99 (ms) | server CPU (ms/request) | non-2xx + socket errors |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for mode in MODES:
        row = results["modes"][mode]
        for side, name in (("base", f"base `{base['short']}`"), ("after", "working tree")):
            median = row[side]["summary"]
            lines.append(
                f"| {mode} | {name} | {median['requests_per_second']:.0f} | {median['p50_ms']:.2f} | "
                f"{median['p99_ms']:.2f} | {median['cpu_ms_per_request']:.3f} | "
                f"{median['non_2xx'] + median['socket_errors']} |"
            )
        ratio = row["ratios"]
        lines.append(
            f"| {mode} | **ratio working tree / base** | **{ratio['requests_per_second']:.3f}x** | "
            f"**{ratio['p50_ms']:.3f}x** | {ratio['p99_ms']:.3f}x | {ratio['cpu_ms_per_request']:.3f}x | |"
        )
    lines += ["", *goal_table(goals(results))]
    same = all(results["modes"][mode]["same_answer"] for mode in MODES)
    lines += [
        "",
        "Server CPU is the CPU seconds (user + system) the endpoint's whole process tree (front, MMS's JVM, its "
        "workers) used during a round, per request; wrk runs on the same 2 cores, so req/s is what the pair gets "
        "when load generator and server share them. The base is served by the same interpreter and venv with its "
        "worktree's code on PYTHONPATH (checked: where each side imports openmme from, and the environment of "
        "every Python process of the base's tree). "
        + (
            "Both revisions give the same answer bytes to the request measured."
            if same
            else "The two revisions answer the request measured with different bytes (see the JSON's answers)."
        ),
        END,
    ]
    return "\n".join(lines) + "\n"


def bounded(low: int, high: int) -> Any:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not in {low}..{high}")
        return value

    return parse


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="HEAD", help="the revision to compare the working tree with (default HEAD)")
    parser.add_argument("--rounds", type=bounded(1, 50), default=None, help="rounds per side (default 5; smoke 1)")
    parser.add_argument("--seconds", type=bounded(1, 120), default=None, help="seconds per round (default 8; smoke 1)")
    parser.add_argument("--connections", type=bounded(1, 256), default=8, help="wrk connections (default 8)")
    parser.add_argument("--smoke", action="store_true", help="1 round of 1 s per side; checks the harness")
    parser.add_argument(
        "--output", type=Path, default=None, help="the results JSON (default bench/results/revisions[_smoke].json)"
    )
    parser.add_argument(
        "--markdown", type=Path, default=None, help="the Markdown file whose section to update (default "
        "BENCHMARKS.md for a full run, none for --smoke)",
    )  # fmt: skip
    options = parser.parse_args()
    if shutil.which("wrk") is None:
        parser.error(WRK_MISSING)
    options.rounds = options.rounds or (1 if options.smoke else 5)
    options.seconds = options.seconds or (1 if options.smoke else 8)
    options.warm_up = 1 if options.smoke else 2
    output: Path = options.output or ROOT / "bench" / "results" / f"revisions{'_smoke' if options.smoke else ''}.json"
    markdown_file: Path | None = options.markdown or (None if options.smoke else ROOT / "BENCHMARKS.md")
    command = (
        f"python bench/revisions.py --base {shlex.quote(options.base)} --rounds {options.rounds} "
        f"--seconds {options.seconds} --connections {options.connections}" + (" --smoke" if options.smoke else "")
    )

    # SIGTERM unwinds like Ctrl-C: endpoints stopped, SeaweedFS stopped, the worktree removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    started = time.monotonic()
    # Described when the base is resolved, so that both name the revisions as they were when the run began.
    machine = describe_machine() | {"wrk": wrk_version()}
    with tempfile.TemporaryDirectory(prefix="openmme-revisions-") as scratch:
        results = run(options, Path(scratch))
    results |= {"command": command, "machine": machine, "wall_seconds": time.monotonic() - started}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))
    section = markdown(results)
    if markdown_file is not None:
        existing = markdown_file.read_text() if markdown_file.exists() else ""
        markdown_file.write_text(replace_section(existing, section, START, END))
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
