"""The many-models benchmark's offline simulators (bench/belady.py) on hand-checked traces.

bench/ is a folder of scripts, not a package, so the module is loaded from its path.
"""

from __future__ import annotations

import importlib.util
import random
import sys
from collections.abc import Hashable, Sequence
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent


def _load_belady() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_belady", ROOT / "bench" / "belady.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


belady = _load_belady()

# The textbook trace of Belady's anomaly, whose fault counts are in every operating-systems course:
# LRU faults 10 times with 3 frames and 8 times with 4; the optimal policy 7 and 6 times.
TEXTBOOK = [1, 2, 3, 4, 1, 2, 5, 1, 2, 3, 4, 5]


def hit_positions(hits: Sequence[bool]) -> list[int]:
    return [position for position, hit in enumerate(hits) if hit]


def test_lru_on_the_textbook_trace() -> None:
    # 3 frames: only the 1, 2 right after 5 displaced 4 are hits; 3, 4, 5 at the end were all evicted.
    assert hit_positions(belady.lru_hits(TEXTBOOK, 3)) == [7, 8]
    assert len(TEXTBOOK) - sum(belady.lru_hits(TEXTBOOK, 4)) == 8


def test_belady_on_the_textbook_trace() -> None:
    # 3 frames: 4 evicts 3 (next used last of the three), 5 evicts 4, so 1, 2 hit twice each and 5 hits at the end.
    assert hit_positions(belady.belady_hits(TEXTBOOK, 3)) == [4, 5, 7, 8, 11]
    assert len(TEXTBOOK) - sum(belady.belady_hits(TEXTBOOK, 4)) == 6


def test_lru_evicts_the_least_recently_used_not_the_first_loaded() -> None:
    # a is used again before c arrives, so c evicts b; the final b misses and the final a hits.
    assert belady.lru_hits(["a", "b", "a", "c", "b", "a"], 2) == [False, False, True, False, False, False]
    assert belady.lru_hits(["a", "b", "a", "c", "a"], 2) == [False, False, True, False, True]


def test_belady_keeps_the_model_needed_soonest() -> None:
    # At c, a is next needed at 4 and b at 5: b goes, so a hits and b misses.
    assert belady.belady_hits(["a", "b", "c", "c", "a", "b"], 2) == [False, False, False, True, True, False]


def test_a_cache_as_large_as_the_catalogue_misses_only_first_requests() -> None:
    trace = ["x", "y", "x", "z", "y", "x", "z"]
    for simulate in (belady.lru_hits, belady.belady_hits):
        assert simulate(trace, 3) == [False, False, True, False, True, True, True]


def test_empty_trace_and_bad_capacity() -> None:
    assert belady.belady_hits([], 2) == []
    assert belady.lru_hits([], 2) == []
    for simulate in (belady.lru_hits, belady.belady_hits):
        with pytest.raises(ValueError, match="at least one"):
            simulate(["a"], 0)


def fewest_misses(trace: tuple[Hashable, ...], capacity: int, bypass: bool = False) -> int:
    """Exhaustive search over every eviction choice (and, with ``bypass``, the choice of not keeping the newcomer):
    the true optimum, for tiny traces only."""

    @cache
    def search(position: int, cached: frozenset[Hashable]) -> int:
        if position == len(trace):
            return 0
        item = trace[position]
        if item in cached:
            return search(position + 1, cached)
        if len(cached) < capacity:
            return 1 + search(position + 1, cached | {item})
        choices = [(cached - {victim}) | {item} for victim in cached] + ([cached] if bypass else [])
        return 1 + min(search(position + 1, choice) for choice in choices)

    return search(0, frozenset())


@pytest.mark.parametrize("seed", range(40))
def test_belady_is_optimal_and_never_worse_than_lru(seed: int) -> None:
    generator = random.Random(seed)
    capacity = generator.randint(1, 3)
    trace = tuple(generator.choice("abcde") for _ in range(generator.randint(1, 12)))
    optimal_hits = sum(belady.belady_hits(trace, capacity))
    assert len(trace) - optimal_hits == fewest_misses(trace, capacity)
    assert optimal_hits >= sum(belady.lru_hits(trace, capacity))


@pytest.mark.parametrize("seed", range(40))
def test_belady_with_bypass_is_the_optimum_when_newcomers_may_be_declined(seed: int) -> None:
    generator = random.Random(seed)
    capacity = generator.randint(1, 3)
    trace = tuple(generator.choice("abcde") for _ in range(generator.randint(1, 12)))
    bypass_hits = sum(belady.belady_hits(trace, capacity, bypass=True))
    assert len(trace) - bypass_hits == fewest_misses(trace, capacity, bypass=True)
    assert bypass_hits >= sum(belady.belady_hits(trace, capacity))


def test_tinylfu_keeps_the_hot_models_through_one_off_requests() -> None:
    # Room for 2; a and b are asked for twice each, then alternate with one-offs x, y, z. LRU lets each one-off
    # push out the model needed next, so nothing after the first four requests hits; TinyLFU declines the
    # one-offs (asked for once, against twice), which answer and leave, so every a and b hits.
    trace = ["a", "b", "a", "b", "x", "a", "y", "b", "z", "a", "b"]
    assert hit_positions(belady.lru_hits(trace, 2)) == [2, 3]
    assert hit_positions(belady.tinylfu_hits(trace, 2)) == [2, 3, 5, 7, 9, 10]


def test_tinylfu_admits_a_newcomer_asked_for_more_often_than_the_victim() -> None:
    # Room for 1: a is cached once; b, asked for twice by the time of its second miss, takes a's place.
    assert belady.tinylfu_hits(["a", "b", "b", "b", "a"], 1) == [False, False, False, True, False]


def test_tinylfu_as_large_as_the_catalogue_is_lru() -> None:
    trace = ["x", "y", "x", "z", "y", "x", "z"]
    assert belady.tinylfu_hits(trace, 3) == belady.lru_hits(trace, 3)
    with pytest.raises(ValueError, match="at least one"):
        belady.tinylfu_hits(["a"], 0)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from("abcdefg"), max_size=60), st.integers(1, 4), st.integers(1, 30))
def test_tinylfu_never_beats_the_optimum(trace: list[str], capacity: int, sample_size: int) -> None:
    # TinyLFU declines newcomers, so its yardstick is the optimum that may too (Belady with bypass).
    hits = belady.tinylfu_hits(trace, capacity, sample_size)
    assert len(hits) == len(trace)
    assert sum(hits) <= sum(belady.belady_hits(trace, capacity, bypass=True))


def test_hit_ratio_skips_the_warm_up() -> None:
    hits = [False, False, True, True, False, True]
    assert belady.hit_ratio(hits) == pytest.approx(3 / 6)
    assert belady.hit_ratio(hits, skip=2) == pytest.approx(3 / 4)
    with pytest.raises(ValueError, match="no requests"):
        belady.hit_ratio(hits, skip=6)
