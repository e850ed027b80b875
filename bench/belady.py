"""Offline cache simulators for the many-models benchmark: LRU (openmme's policy) and Belady's optimal.

Both replay a trace of model ids against a cache that holds ``capacity`` models and say, for every request,
whether it was a hit. A miss always admits the requested model (demand loading, as an endpoint must load a
model to answer it); when the cache is full, LRU evicts the least recently used model and Belady evicts the
one whose next request lies furthest in the future (never requested again counts as furthest). Belady's
is the highest hit ratio any demand-loading policy can reach on the trace, so it is the yardstick that
openmme's LRU is measured against. Pure functions: no I/O, tested by hand-checked traces.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Hashable, Sequence

__all__ = ["belady_hits", "hit_ratio", "lru_hits"]


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


def belady_hits(trace: Sequence[Hashable], capacity: int) -> list[bool]:
    """Hit or miss of every request under Belady's optimal (furthest next use) eviction."""
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
                negative_next, _, victim = heapq.heappop(heap)
                if cache.get(victim) == -negative_next:
                    del cache[victim]
                    break
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
