"""The eviction policy, as pure functions of what the cache holds: which models leave memory, or the disk, so
that a new one fits the budgets. The cache (cache/core.py) builds the inputs from its entries and carries the
decisions out; tests check the policy's properties without any process (tests/endpoint/test_policy.py).

Least recently used first, and only models that may go: a model with requests in flight or waiting, or one
that SageMaker handed over, is never chosen. No more victims than needed are chosen; when the idle models do
not free enough, the new model is admitted over budget and the cache tries again as requests finish.

With ``--admission tinylfu``, a frequency sketch (TinyLFU: Einziger, Friedman and Manes, 2017) sits in front of
that eviction: a newcomer takes the victims' places only when it was asked for more often lately than each of
them. A newcomer that is not admitted is still loaded (a multi-model endpoint must load a model to answer it), but
it is the first model unloaded once its request ends, and the victims stay.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["FrequencySketch", "Slot", "admits", "disk_victims", "memory_victims", "room_victims"]


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


def _disk_order(slots: Sequence[Slot]) -> list[Slot]:
    """The models that may leave the disk, in the order they leave: unloaded ones first (they cost only a download
    to bring back), then loaded ones, least recently used first within each."""
    ordered = [slot for slot in slots if not slot.loaded] + [slot for slot in slots if slot.loaded]
    return [slot for slot in ordered if slot.evictable and slot.disk > 0]


def disk_victims(slots: Sequence[Slot], incoming: int, disk_budget: int) -> list[str]:
    """Models to delete from disk so that ``incoming`` more bytes fit the budget, in ``_disk_order``."""
    if not disk_budget:
        return []
    used = sum(slot.disk for slot in slots)
    victims: list[str] = []
    for slot in _disk_order(slots):
        if used + incoming <= disk_budget:
            break
        victims.append(slot.key)
        used -= slot.disk
    return victims


def room_victims(slots: Sequence[Slot], shortfall: int) -> list[str] | None:
    """Models to delete from disk so that ``shortfall`` more bytes are free on the cache filesystem itself, in
    ``_disk_order``; None when deleting every model that may go would still not free enough (then none should go:
    unlike the budget, the filesystem cannot be overrun)."""
    if shortfall <= 0:
        return []
    victims: list[str] = []
    for slot in _disk_order(slots):
        victims.append(slot.key)
        shortfall -= slot.disk
        if shortfall <= 0:
            return victims
    return None


# Odd 64-bit multipliers, one per row of the sketch: multiplicative hashing spreads one checksum over the rows.
_ROW_SEEDS = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93)
_MASK_64 = (1 << 64) - 1


class FrequencySketch:
    """How often each model was asked for lately, estimated in a few kilobytes whatever the catalogue's size.

    A count-min sketch: every key increments one small counter in each of four rows, and its estimate is the
    smallest of its four counters, so collisions can only make it larger than the truth, never smaller. Counters
    stop at 15 (TinyLFU's 4 bits: "asked for often" is all admission needs). After ``sample_size`` records
    every counter is halved (aging), so that models popular long ago make way for those popular now. Keys are
    hashed with CRC-32, not ``hash()``: the same trace gives the same estimates in every process.
    """

    MAX_COUNT = 15

    def __init__(self, sample_size: int) -> None:
        if sample_size < 1:
            raise ValueError(f"a sketch samples at least one request, not {sample_size}")
        self.sample_size = sample_size
        # Rows as wide as the sample (a power of two): few collisions among the keys one sample can hold.
        bits = max(4, (sample_size - 1).bit_length())
        self._width = 1 << bits
        self._shift = 64 - bits
        self._table = bytearray(len(_ROW_SEEDS) * self._width)
        self.records = 0  # since the last halving, itself halved with the counters

    def record(self, key: str) -> None:
        """One request for ``key``."""
        table = self._table
        for index in self._indexes(key):
            if table[index] < self.MAX_COUNT:
                table[index] += 1
        self.records += 1
        if self.records >= self.sample_size:
            self._table = bytearray(count >> 1 for count in table)
            self.records //= 2

    def estimate(self, key: str) -> int:
        """Requests for ``key`` lately: at least the true count (up to 15) since the last halving."""
        return min(self._table[index] for index in self._indexes(key))

    def _indexes(self, key: str) -> list[int]:
        checksum = zlib.crc32(key.encode())
        return [
            row * self._width + (((checksum * seed) & _MASK_64) >> self._shift) for row, seed in enumerate(_ROW_SEEDS)
        ]


def admits(sketch: FrequencySketch, newcomer: str, victims: Sequence[str]) -> bool:
    """TinyLFU's admission: may ``newcomer`` take the place of ``victims``? Only if it was asked for more often
    lately than every one of them (ties keep the models already loaded: a one-off request does not churn)."""
    estimate = sketch.estimate(newcomer)
    return all(estimate > sketch.estimate(victim) for victim in victims)
