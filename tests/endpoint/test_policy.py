"""Properties of the eviction policy (policy.py), over arbitrary caches drawn by hypothesis."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openmme.endpoint.policy import FrequencySketch, Slot, admits, disk_victims, memory_victims, room_victims


@st.composite
def caches(draw: st.DrawFn) -> list[Slot]:
    count = draw(st.integers(0, 12))
    return [
        Slot(
            key=f"m{index}",
            loaded=draw(st.booleans()),
            evictable=draw(st.booleans()),
            memory=draw(st.integers(0, 100)),
            disk=draw(st.integers(0, 100)),
        )
        for index in range(count)
    ]


budgets = st.integers(0, 8)
memory_budgets = st.integers(0, 600)


def fits(slots: list[Slot], removed: set[str], new_memory: int, max_models: int, memory_budget: int) -> bool:
    loaded = [slot for slot in slots if slot.loaded and slot.key not in removed]
    count_ok = not max_models or len(loaded) + 1 <= max_models
    memory_ok = not memory_budget or sum(slot.memory for slot in loaded) + new_memory <= memory_budget
    return count_ok and memory_ok


@settings(max_examples=400, deadline=None)
@given(caches(), st.integers(0, 100), budgets, memory_budgets)
def test_memory_victims_are_idle_loaded_lru_first_and_no_more_than_needed(
    slots: list[Slot], new_memory: int, max_models: int, memory_budget: int
) -> None:
    victims = memory_victims(slots, new_memory, max_models, memory_budget)
    keys = [key for key, _ in victims]
    by_key = {slot.key: slot for slot in slots}
    # Only idle, loaded models; each once; in least-recently-used order.
    assert all(by_key[key].loaded and by_key[key].evictable for key in keys)
    assert len(set(keys)) == len(keys)
    order = [slot.key for slot in slots]
    assert keys == sorted(keys, key=order.index)
    # Enough: the new model fits, unless the idle models cannot make room (then all of them go).
    evictable = [slot.key for slot in slots if slot.loaded and slot.evictable]
    if fits(slots, set(evictable), new_memory, max_models, memory_budget):
        assert fits(slots, set(keys), new_memory, max_models, memory_budget)
    else:
        assert keys == evictable
    # Not more than needed: without the last victim, it would not fit.
    if keys:
        assert not fits(slots, set(keys[:-1]), new_memory, max_models, memory_budget)
    # Reasons name a budget that was exceeded at that point.
    assert all(reason in {"count", "memory"} for _, reason in victims)
    if not max_models:
        assert all(reason == "memory" for _, reason in victims)


@settings(max_examples=400, deadline=None)
@given(caches(), st.integers(0, 100), st.integers(0, 800))
def test_disk_victims_free_enough_unloaded_first_and_never_a_busy_model(
    slots: list[Slot], incoming: int, disk_budget: int
) -> None:
    victims = disk_victims(slots, incoming, disk_budget)
    by_key = {slot.key: slot for slot in slots}
    assert all(by_key[key].evictable and by_key[key].disk > 0 for key in victims)
    assert len(set(victims)) == len(victims)
    if not disk_budget:
        assert victims == []
        return
    loaded_flags = [by_key[key].loaded for key in victims]
    assert loaded_flags == sorted(loaded_flags)  # every unloaded victim before any loaded one
    used_after = sum(slot.disk for slot in slots if slot.key not in set(victims))
    candidates = [slot for slot in slots if slot.evictable and slot.disk > 0]
    best_possible = sum(slot.disk for slot in slots) - sum(slot.disk for slot in candidates)
    if best_possible + incoming <= disk_budget:
        assert used_after + incoming <= disk_budget
    if victims:
        assert used_after + by_key[victims[-1]].disk + incoming > disk_budget


def test_examples_by_hand() -> None:
    a, b, c = (Slot(key, loaded=True, evictable=True, memory=10, disk=5) for key in "abc")
    busy = Slot("busy", loaded=True, evictable=False, memory=10, disk=5)
    assert memory_victims([a, b, c], 10, max_models=2, memory_budget=0) == [("a", "count"), ("b", "count")]
    assert memory_victims([busy, a, b], 10, max_models=3, memory_budget=0) == [("a", "count")]
    assert memory_victims([a, b], 10, max_models=0, memory_budget=25) == [("a", "memory")]
    assert memory_victims([a, b], 10, max_models=0, memory_budget=15) == [("a", "memory"), ("b", "memory")]
    assert memory_victims([a], 10, max_models=0, memory_budget=0) == []
    gone = Slot("gone", loaded=False, evictable=True, disk=5)
    assert disk_victims([a, gone, b], incoming=5, disk_budget=15) == ["gone"]
    assert disk_victims([a, gone, b], incoming=10, disk_budget=15) == ["gone", "a"]


@given(caches(), st.integers(-10, 700))
@settings(max_examples=400, deadline=None)
def test_room_victims_free_the_shortfall_or_none_go(slots: list[Slot], shortfall: int) -> None:
    victims = room_victims(slots, shortfall)
    by_key = {slot.key: slot for slot in slots}
    candidates = sum(slot.disk for slot in slots if slot.evictable and slot.disk > 0)
    if shortfall <= 0:
        assert victims == []
    elif candidates < shortfall:
        assert victims is None  # removing every idle model would not make room: none is removed for nothing
    else:
        assert victims is not None
        assert all(by_key[key].evictable and by_key[key].disk > 0 for key in victims)
        assert len(set(victims)) == len(victims)
        loaded_flags = [by_key[key].loaded for key in victims]
        assert loaded_flags == sorted(loaded_flags)  # every unloaded victim before any loaded one
        freed = sum(by_key[key].disk for key in victims)
        assert freed >= shortfall > freed - by_key[victims[-1]].disk  # enough, and no more victims than needed


def test_room_victims_by_hand() -> None:
    a, b = (Slot(key, loaded=True, evictable=True, disk=5) for key in "ab")
    gone = Slot("gone", loaded=False, evictable=True, disk=5)
    busy = Slot("busy", loaded=False, evictable=False, disk=50)
    assert room_victims([a, busy, gone, b], 5) == ["gone"]
    assert room_victims([a, busy, gone, b], 6) == ["gone", "a"]
    assert room_victims([a, busy, gone, b], 16) is None
    assert room_victims([a], 0) == []


model_keys = st.text(min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(st.lists(model_keys, max_size=200))
def test_the_sketch_never_under_counts_before_aging(requests: list[str]) -> None:
    sketch = FrequencySketch(sample_size=len(requests) + 1)  # no halving within these requests
    for key in requests:
        sketch.record(key)
    for key, count in Counter(requests).items():
        assert sketch.estimate(key) >= min(count, FrequencySketch.MAX_COUNT)


@settings(max_examples=200, deadline=None)
@given(st.lists(model_keys, min_size=1, max_size=100), st.integers(1, 50))
def test_aging_halves_the_counters_after_each_sample(requests: list[str], sample_size: int) -> None:
    sketch = FrequencySketch(sample_size)
    for key in requests:
        before = sketch.estimate(key)
        aged = sketch.records + 1 >= sample_size
        sketch.record(key)
        after = sketch.estimate(key)
        # The estimate is the smallest of the key's counters, and incrementing and halving keep their order.
        counted = min(before + 1, FrequencySketch.MAX_COUNT)
        assert after == (counted // 2 if aged else counted)
        assert sketch.records < sample_size


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, FrequencySketch.MAX_COUNT), min_size=2, max_size=6))
def test_admission_picks_the_more_frequent(counts: list[int]) -> None:
    newcomer, *victims = counts
    sketch = FrequencySketch(sample_size=1000)
    keys = [f"model-{index}" for index in range(len(counts))]
    for key, count in zip(keys, counts, strict=True):
        for _ in range(count):
            sketch.record(key)
    # Distinct keys this few in rows this wide do not collide in all four rows: estimates are exact here.
    assert [sketch.estimate(key) for key in keys] == counts
    assert admits(sketch, keys[0], keys[1:]) == all(newcomer > victim for victim in victims)
    assert admits(sketch, keys[0], [])  # nothing to evict: always admitted


def test_sketch_by_hand() -> None:
    sketch = FrequencySketch(sample_size=8)
    for key in ["hot"] * 5 + ["cold"] * 2:
        sketch.record(key)
    assert (sketch.estimate("hot"), sketch.estimate("cold"), sketch.estimate("never")) == (5, 2, 0)
    assert admits(sketch, "hot", ["cold"]) and not admits(sketch, "cold", ["hot"])
    assert not admits(sketch, "cold", ["cold"])  # a tie keeps the model already loaded
    sketch.record("hot")  # the 8th record: every counter halves
    assert (sketch.estimate("hot"), sketch.estimate("cold"), sketch.records) == (3, 1, 4)
    for _ in range(40):
        sketch.record("hot")
    assert sketch.estimate("hot") <= FrequencySketch.MAX_COUNT
    with pytest.raises(ValueError, match="at least one"):
        FrequencySketch(0)
