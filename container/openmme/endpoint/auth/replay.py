"""The opt-in memory of spent signatures behind ``--auth-refuse-replays``: per process, in memory, bounded."""

from __future__ import annotations

import heapq
import logging

__all__ = ["REPLAY_CAPACITY", "ReplayCache"]

log = logging.getLogger(__name__)

REPLAY_CAPACITY = 100_000  # ~20 MB of remembered signatures; a 10-minute window at ~170 requests/s.


class ReplayCache:
    """Signatures accepted and not yet expired, in memory (per process), at most ``capacity``.

    When more signatures are live than that, the one that expires first is forgotten early (and counted in
    ``forgotten``): a replay of it would pass. That takes more than ``capacity`` signed requests in ten minutes.
    """

    def __init__(self, capacity: int = REPLAY_CAPACITY) -> None:
        self.capacity = capacity
        self.forgotten = 0
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._expiry)

    def spend(self, signature_: str, expires_at: float, now: float) -> bool:
        """Remember the signature; False when it was remembered already (a replay)."""
        self._drop_expired(now)
        if signature_ in self._expiry:
            return False
        if len(self._expiry) >= self.capacity:
            self._forget_soonest()
        self._expiry[signature_] = expires_at
        heapq.heappush(self._heap, (expires_at, signature_))
        if len(self._heap) > 2 * max(self.capacity, len(self._expiry)):  # entries of given-back signatures
            self._heap = [(expiry, sig) for sig, expiry in self._expiry.items()]
            heapq.heapify(self._heap)
        return True

    def give_back(self, signature_: str) -> None:
        """Forget a signature spent on a request the endpoint failed to serve: its retry may carry it again."""
        self._expiry.pop(signature_, None)

    def _drop_expired(self, now: float) -> None:
        while self._heap and self._heap[0][0] < now:
            expiry, sig = heapq.heappop(self._heap)
            if self._expiry.get(sig) == expiry:
                del self._expiry[sig]

    def _forget_soonest(self) -> None:
        while self._heap:
            expiry, sig = heapq.heappop(self._heap)
            if self._expiry.get(sig) == expiry:
                del self._expiry[sig]
                self.forgotten += 1
                if self.forgotten == 1 or self.forgotten % 10_000 == 0:
                    log.warning("replay cache full: %d live signatures forgotten early so far", self.forgotten)
                return
