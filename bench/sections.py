"""Sections of BENCHMARKS.md that a benchmark other than bench/run.py owns, between its own two markers.

bench/scale_out.py, hosting.py, revisions.py, capture.py, transform.py, aliases.py, pipelines.py and soak.py
(``--markdown``) each replace their section in place (or append it), and the container images' section is written
by hand; bench/run.py rewrites the file from scratch and keeps every such section, at the end, as it was.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from harness import ROOT, describe_machine

__all__ = ["MARKERS", "goal_table", "keep_sections", "replace_section", "section_main"]

# (start, end) of every section a separate benchmark writes.
MARKERS = (
    ("<!-- scale-out:start -->", "<!-- scale-out:end -->"),
    ("<!-- hosting:start -->", "<!-- hosting:end -->"),
    ("<!-- revisions:start -->", "<!-- revisions:end -->"),
    ("<!-- capture:start -->", "<!-- capture:end -->"),
    ("<!-- transform:start -->", "<!-- transform:end -->"),
    ("<!-- aliases:start -->", "<!-- aliases:end -->"),
    ("<!-- pipelines:start -->", "<!-- pipelines:end -->"),
    ("<!-- soak:start -->", "<!-- soak:end -->"),
    # Written by hand (docker builds are measured outside any benchmark script): last in the file.
    ("<!-- container-images:start -->", "<!-- container-images:end -->"),
)


def goal_table(goals: Iterable[tuple[str, str, bool]]) -> list[str]:
    """A section's goals as Markdown table lines: each goal, what was measured, and ✅ or ❌."""
    return [
        "| goal | measured | met |",
        "|---|---|:-:|",
        *(f"| {goal} | {measured} | {'✅' if met else '❌'} |" for goal, measured, met in goals),
    ]


def replace_section(document: str, section: str, start: str, end: str) -> str:
    """``document`` with the section between ``start`` and ``end`` replaced by ``section``, or with it appended."""
    if start in document and end in document:
        head, rest = document.split(start, 1)
        return head + section.rstrip("\n") + rest.split(end, 1)[1]
    return document.rstrip("\n") + "\n\n" + section


def keep_sections(old: str, new: str) -> str:
    """``new`` (a freshly written BENCHMARKS.md) with every separate benchmark's section ``old`` had."""
    for start, end in MARKERS:
        if start in old and end in old:
            kept = start + old.split(start, 1)[1].split(end, 1)[0] + end + "\n"
            new = replace_section(new, kept, start, end)
    return new


def section_main(
    script: str,
    description: str,
    sizes: tuple[Any, Any],
    run: Callable[[Any, Path], dict[str, Any]],
    markdown: Callable[[dict[str, Any], str], str],
    markers: tuple[str, str],
) -> int:
    """The command line of a benchmark that owns a section: ``--smoke`` picks ``sizes[1]`` over ``sizes[0]``;
    results go to <--results-dir>/<script>[_smoke].json (default: bench/results), the section to ``--output``
    (default: BENCHMARKS.md for a full run, nowhere for a smoke run) and to stdout."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; checks the harness, measures nothing")
    parser.add_argument("--output", type=Path, default=None, help="the Markdown file to update")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results", help="where the JSON goes")
    args = parser.parse_args()
    command = f"python bench/{script}.py" + (" --smoke" if args.smoke else "")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"openmme-{script}-") as scratch:
        results = run(sizes[1] if args.smoke else sizes[0], Path(scratch))
    results |= {"machine": describe_machine(), "wall_seconds": time.monotonic() - started}
    results_dir: Path = args.results_dir
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"{script}{'_smoke' if args.smoke else ''}.json").write_text(json.dumps(results, indent=2))
    section = markdown(results, command)
    output = args.output or (None if args.smoke else ROOT / "BENCHMARKS.md")
    if output is not None:
        output.write_text(replace_section(output.read_text() if output.exists() else "", section, *markers))
    print(section)
    return 0
