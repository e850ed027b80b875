"""The eviction policy, as pure functions of what the cache holds: which models leave memory, or the disk, so
that a new one fits the budgets. The cache (cache/core.py) builds the inputs from its entries and carries the
decisions out; tests check the policy's properties without any process (tests/endpoint/test_policy.py).

Least recently used first, and only models that may go: a model with requests in flight or waiting, or one
that SageMaker handed over, is never chosen. No more victims than needed are chosen; when the idle models do
not free enough, the new model is admitted over budget and the cache tries again as requests finish.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Slot", "disk_victims", "memory_victims"]


@dataclass(frozen=True)
class Slot:
    """One model as the policy sees it, in least-recently-used-first order."""

    key: str
    loaded: bool  # registered in MMS, or being registered
    evictable: bool  # idle, owned by openmme, and in a state it may leave (ready, or on disk only)
    memory: int = 0
    disk: int = 0


def memory_victims(
    slots: Sequence[Slot], new_memory: int, max_models: int, memory_budget: int
) -> list[tuple[str, str]]:
    """Loaded models to unload, with the budget that needs each (``count`` or ``memory``), so that one more
    model of ``new_memory`` bytes fits. ``slots`` excludes the new model; budgets of 0 are off."""
    loaded = [slot for slot in slots if slot.loaded]
    count = len(loaded) + 1
    memory = sum(slot.memory for slot in loaded) + new_memory
    victims: list[tuple[str, str]] = []
    for slot in loaded:
        if max_models and count > max_models:
            reason = "count"
        elif memory_budget and memory > memory_budget:
            reason = "memory"
        else:
            break
        if not slot.evictable:
            continue
        victims.append((slot.key, reason))
        count -= 1
        memory -= slot.memory
    return victims


def disk_victims(slots: Sequence[Slot], incoming: int, disk_budget: int) -> list[str]:
    """Models to delete from disk so that ``incoming`` more bytes fit: unloaded ones first (they cost only a
    download to bring back), then loaded ones, least recently used first within each."""
    if not disk_budget:
        return []
    used = sum(slot.disk for slot in slots)
    ordered = [slot for slot in slots if not slot.loaded] + [slot for slot in slots if slot.loaded]
    victims: list[str] = []
    for slot in ordered:
        if used + incoming <= disk_budget:
            break
        if slot.evictable and slot.disk > 0:
            victims.append(slot.key)
            used -= slot.disk
    return victims
