"""The scale-out benchmark's smoke mode, so that bench/scale_out.py keeps working: real replicas, real nginx."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.support import bench_module, needs_nginx, run_bench_smoke


def test_sections_are_replaced_in_place_and_kept_by_a_rewrite() -> None:
    bench = bench_module("scale_out")
    sections = sys.modules["sections"] if "sections" in sys.modules else bench_module("sections")
    start, end = bench.START, bench.END
    section = f"{start}\nnew table\n{end}\n"
    document = f"# Benchmarks\n\n{start}\nold table\n{end}\n\n## after\n"
    assert sections.replace_section(document, section, start, end) == f"# Benchmarks\n\n{section}\n## after\n"
    assert sections.replace_section("# Benchmarks\n", section, start, end) == f"# Benchmarks\n\n{section}"
    # bench/run.py rewrites the file from scratch: the scale-out and hosting sections survive at the end.
    hosting_start, hosting_end = sections.MARKERS[1]
    both = document + f"\n{hosting_start}\nhosting table\n{hosting_end}\n"
    assert sections.keep_sections(both, "# Rewritten\n") == (
        f"# Rewritten\n\n{start}\nold table\n{end}\n\n{hosting_start}\nhosting table\n{hosting_end}\n"
    )
    assert sections.keep_sections("# no section\n", "# Rewritten\n") == "# Rewritten\n"


@pytest.mark.integration
@needs_nginx
def test_scale_out_bench_smoke_downloads_each_model_once_with_affinity(tmp_path: Path) -> None:
    output = tmp_path / "BENCHMARKS.md"
    output.write_text("# Benchmarks\n")
    run_bench_smoke("scale_out", output, results_dir=tmp_path)
    results = json.loads((tmp_path / "scale_out_smoke.json").read_text())
    counted = results["sizes"]["length"] - results["sizes"]["warm_up"]
    for setup in ("one", "hashed", "round_robin"):
        assert results[setup]["statuses"] == {"200": counted}, setup
    # With affinity each model's archive leaves S3 once in all, as with a single replica; without, up to 3 times.
    distinct = results["distinct_models_in_trace"]
    assert results["one"]["downloads_total"] == results["hashed"]["downloads_total"] == distinct
    assert results["round_robin"]["downloads_total"] > distinct
    assert "3 replicas" in output.read_text()
