"""Offline cache simulators for the many-models benchmark: LRU (openmme's default policy), LRU behind TinyLFU
admission (``--admission tinylfu``) and Belady's optimal.

Both replay a trace of model ids against a cache that holds ``capacity`` models and say, for every request,
whether it was a hit. A miss always admits the requested model (demand loading, as an endpoint must load a
model to answer it); when the cache is full, LRU evicts the least recently used model and Belady evicts the
one whose next request lies furthest in the future (never requested again counts as furthest). TinyLFU
evicts as LRU does, but only when the newcomer was asked for more often lately than the LRU victim; otherwise
the newcomer answers its request and is the one unloaded, which leaves the cache as it was. Belady's
is the highest hit ratio any demand-loading policy can reach on the trace, so it is the yardstick that
openmme's LRU is measured against. Pure functions: no I/O, tested by hand-checked traces.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Hashable, Sequence

from openmme.endpoint.policy import FrequencySketch, admits

__all__ = ["belady_hits", "hit_ratio", "lru_hits", "tinylfu_hits"]


def lru_hits(trace: Sequence[Hashable], capacity: int) -> list[bool]:
    """Hit or miss of every request under least-recently-used eviction."""
    _check(capacity)
    cache: OrderedDict[Hashable, None] = OrderedDict()  # least recently used first
    hits = []
    for item in trace:
        if item in cache:
            cache.move_to_end(item)
            hits.append(True)
            continue
        hits.append(False)
        if len(cache) >= capacity:
            cache.popitem(last=False)
        cache[item] = None
    return hits


def tinylfu_hits(trace: Sequence[Hashable], capacity: int, sample_size: int | None = None) -> list[bool]:
    """Hit or miss of every request under LRU eviction behind TinyLFU admission, as openmme's cache does it
    with ``--admission tinylfu``: the sketch (the cache's own, keyed by ``str(item)``) records every request and
    ages after ``sample_size`` of them (default: ten times the capacity, as in the TinyLFU paper)."""
    _check(capacity)
    sketch = FrequencySketch(sample_size or 10 * capacity)
    cache: OrderedDict[Hashable, None] = OrderedDict()  # least recently used first
    hits = []
    for item in trace:
        sketch.record(str(item))
        if item in cache:
            cache.move_to_end(item)
            hits.append(True)
            continue
        hits.append(False)
        if len(cache) < capacity:
            cache[item] = None
        elif admits(sketch, str(item), [str(next(iter(cache)))]):
            cache.popitem(last=False)
            cache[item] = None
        # Not admitted: loaded to answer, then unloaded first; the cache holds what it held.
    return hits


def belady_hits(trace: Sequence[Hashable], capacity: int, *, bypass: bool = False) -> list[bool]:
    """Hit or miss of every request under Belady's optimal (furthest next use) eviction. ``bypass``: a newcomer
    may be answered and not kept (as TinyLFU does when it does not admit one), which it is when no cached model
    is needed later than it; the optimum of that wider choice, so never below the demand-loading one."""
    _check(capacity)
    never = len(trace)  # a position after the trace: "not requested again"
    next_use = [never] * len(trace)
    seen: dict[Hashable, int] = {}
    for position in range(len(trace) - 1, -1, -1):
        next_use[position] = seen.get(trace[position], never)
        seen[trace[position]] = position

    cache: dict[Hashable, int] = {}  # model -> position of its next request
    # Max-heap on next use. Entries go stale when a model is requested again (its next use moves on) or
    # evicted; a stale entry is skipped when it reaches the top, which keeps each step O(log n).
    heap: list[tuple[int, int, Hashable]] = []
    hits = []
    for position, item in enumerate(trace):
        hit = item in cache
        hits.append(hit)
        if not hit and len(cache) >= capacity:
            while True:
                negative_next, _, victim = heap[0]
                if cache.get(victim) == -negative_next:
                    break
                heapq.heappop(heap)
            if bypass and next_use[position] >= -negative_next:
                continue
            heapq.heappop(heap)
            del cache[victim]
        cache[item] = next_use[position]
        # The position breaks ties between models never requested again, so items themselves are never compared.
        heapq.heappush(heap, (-next_use[position], position, item))
    return hits


def hit_ratio(hits: Sequence[bool], skip: int = 0) -> float:
    """Share of hits among the requests after the first ``skip`` (a warm-up that fills the cache)."""
    counted = hits[skip:]
    if not counted:
        raise ValueError("no requests left to count after the warm-up")
    return sum(counted) / len(counted)


def _check(capacity: int) -> None:
    if capacity < 1:
        raise ValueError(f"a cache holds at least one model, not {capacity}")
