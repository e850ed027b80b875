"""Sections of BENCHMARKS.md that a benchmark other than bench/run.py owns, between its own two markers.

bench/scale_out.py and bench/hosting.py each replace their section in place (or append it); bench/run.py
rewrites the file from scratch and keeps every such section, at the end, as it was.
"""

from __future__ import annotations

__all__ = ["MARKERS", "keep_sections", "replace_section"]

# (start, end) of every section a separate benchmark writes.
MARKERS = (
    ("<!-- scale-out:start -->", "<!-- scale-out:end -->"),
    ("<!-- hosting:start -->", "<!-- hosting:end -->"),
)


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
