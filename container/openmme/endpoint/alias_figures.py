"""The figures of aliases' versions and shadows: what ``GET /aliases`` shows in full (and ``openmme rollout`` reads
to compare a canary with the live version) and what Prometheus gets within the per-model label budget.

Per (alias, variant, archive): requests, errors and a latency histogram fine enough to tell 2 ms from 3 ms
(``STATS_BUCKETS``). An error is an answer of 424, 500, 503 or 507 (the model failed, or the endpoint could not
serve it); a 400 or a 429 is the caller's or the load's, not the version's. Per shadow: mirrored calls answered,
failed or skipped, their latency, and the mean and largest difference of their predictions from the live version's.
Prometheus series carry the alias under ``Metrics.model_label`` (the per-model budget); their label children are
looked up once per (alias, variant, archive), not per request.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Histogram

from openmme.endpoint.alias_state import Shadow

if TYPE_CHECKING:
    from openmme.endpoint.metrics import Metrics

__all__ = ["ERROR_STATUSES", "STATS_BUCKETS", "AliasFigures", "ShadowStats", "VariantStats"]

# Answers that count against a version: its model failed (424), or the endpoint could not serve it.
ERROR_STATUSES = frozenset({424, 500, 503, 507})
# Latency buckets of the per-variant figures (seconds): fine enough to tell 2 ms from 3 ms, up to a minute.
STATS_BUCKETS: tuple[float, ...] = tuple(round(0.0005 * 1.25**index, 6) for index in range(56))
_SERIES_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 2.5, float("inf"))


class VariantStats:
    """Cumulative figures of one (alias, variant, archive): requests, errors, latency histogram and sum."""

    __slots__ = ("buckets", "errors", "requests", "seconds")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.seconds = 0.0
        self.buckets = [0] * (len(STATS_BUCKETS) + 1)  # the last one: above every bound

    def record(self, status: int, seconds: float) -> None:
        self.requests += 1
        self.errors += status in ERROR_STATUSES
        self.seconds += seconds
        self.buckets[bisect.bisect_left(STATS_BUCKETS, seconds)] += 1

    def describe(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "seconds": round(self.seconds, 6),
            "buckets": list(self.buckets),
        }


@dataclass
class ShadowStats:
    """Cumulative figures of one (alias, shadow variant, archive)."""

    answered: int = 0
    errors: int = 0
    skipped: int = 0
    compared: int = 0  # answers whose predictions could be compared with the live version's
    delta_sum: float = 0.0  # of the mean absolute difference per compared answer
    delta_max: float = 0.0
    latency: VariantStats = field(default_factory=VariantStats)

    def describe(self) -> dict[str, Any]:
        return {
            "answered": self.answered,
            "errors": self.errors,
            "skipped": self.skipped,
            "compared": self.compared,
            "mean_abs_delta": self.delta_sum / self.compared if self.compared else None,
            "max_abs_delta": self.delta_max if self.compared else None,
            "latency": self.latency.describe(),
        }


@dataclass
class _Series:
    """The figures one (alias, variant, archive) is counted in: its stats and its Prometheus children, looked up
    once (a label lookup per request would cost more than the resolution itself)."""

    stats: VariantStats
    latency: Any
    label: str
    variant: str
    counters: dict[int, Any] = field(default_factory=dict)  # by status


class AliasFigures:
    """Every alias version's and shadow's figures on this endpoint, and their Prometheus series."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.stats: dict[tuple[str, str, str], VariantStats] = {}
        self.shadow_stats: dict[tuple[str, str, str], ShadowStats] = {}
        self._series: dict[tuple[str, str, str], _Series] = {}
        registry = metrics.registry
        self.invocations = Counter(
            "openmme_alias_invocations",
            "Invocations of aliases, by alias (under the per-model label budget), variant (version) and status.",
            ["alias", "variant", "status"],
            registry=registry,
        )
        self.invocation_seconds = Histogram(
            "openmme_alias_invocation_seconds",
            "Latency of alias invocations at the front, by alias and variant.",
            ["alias", "variant"],
            buckets=_SERIES_BUCKETS,
            registry=registry,
        )
        self.shadow_invocations = Counter(
            "openmme_shadow_invocations",
            "Mirrored invocations of shadow versions, by alias, variant and outcome: answered, error (never returned"
            " to the caller), skipped (too many in flight).",
            ["alias", "variant", "outcome"],
            registry=registry,
        )
        self.shadow_seconds = Histogram(
            "openmme_shadow_invocation_seconds",
            "Latency of shadow versions' mirrored invocations.",
            ["alias", "variant"],
            buckets=_SERIES_BUCKETS,
            registry=registry,
        )
        self.shadow_delta = Histogram(
            "openmme_shadow_prediction_delta",
            "Mean absolute difference between a shadow version's predictions and the live version's, per mirrored"
            " invocation whose answers could be compared.",
            ["alias", "variant"],
            buckets=(0.0, 1e-6, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.5, 1.0, 10.0, float("inf")),
            registry=registry,
        )

    def record(self, alias: str, variant: str, target: str, status: int, seconds: float) -> None:
        """One invocation of ``alias`` answered by its ``variant`` (archive ``target``) with ``status``."""
        key = (alias, variant, target)
        series = self._series.get(key)
        if series is None:
            label = self.metrics.model_label(alias)
            stats = self.stats[key] = VariantStats()
            series = self._series[key] = _Series(stats, self.invocation_seconds.labels(label, variant), label, variant)
        series.stats.record(status, seconds)
        series.latency.observe(seconds)
        counter = series.counters.get(status)
        if counter is None:
            counter = series.counters[status] = self.invocations.labels(series.label, series.variant, str(status))
        counter.inc()

    def _shadow(self, alias: str, shadow: Shadow) -> ShadowStats:
        key = (alias, shadow.name, shadow.target)
        figures = self.shadow_stats.get(key)
        if figures is None:
            figures = self.shadow_stats[key] = ShadowStats()
        return figures

    def record_shadow(
        self, alias: str, shadow: Shadow, outcome: str, seconds: float = 0.0, delta: float | None = None
    ) -> None:
        """One mirrored invocation of ``shadow``: ``answered`` (with the prediction ``delta`` when comparable),
        ``error`` or ``skipped``."""
        figures = self._shadow(alias, shadow)
        label = self.metrics.model_label(alias)
        self.shadow_invocations.labels(label, shadow.name, outcome).inc()
        if outcome == "skipped":
            figures.skipped += 1
            return
        figures.latency.record(200 if outcome == "answered" else 500, seconds)
        self.shadow_seconds.labels(label, shadow.name).observe(seconds)
        if outcome == "error":
            figures.errors += 1
            return
        figures.answered += 1
        if delta is not None:
            figures.compared += 1
            figures.delta_sum += delta
            figures.delta_max = max(figures.delta_max, delta)
            self.shadow_delta.labels(label, shadow.name).observe(delta)

    def describe(self) -> dict[str, Any]:
        """The versions' and shadows' figures, for ``GET /aliases``."""
        return {
            "versions": [
                {"alias": alias, "variant": variant, "target": target, **stats.describe()}
                for (alias, variant, target), stats in sorted(self.stats.items())
            ],
            "shadows": [
                {"alias": alias, "variant": variant, "target": target, **figures.describe()}
                for (alias, variant, target), figures in sorted(self.shadow_stats.items())
            ],
            "buckets": list(STATS_BUCKETS),
        }
