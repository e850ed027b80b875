"""Prometheus metrics of the endpoint (``GET /metrics``), in its own registry.

SageMaker's endpoint-level MME metrics under openmme names (ModelCacheHit → hits and misses,
ModelDownloadingTime, ModelLoadingTime, ModelLoadingWaitTime, ModelUnloadingTime, LoadedModelCount), plus
what SageMaker does not show: extraction time, cache memory and disk (the cache filesystem's free space, measured
by housekeeping, and loads refused for lack of it), evictions by reason, invocations by
status, pinned models and pre-loading, data capture's records written and dropped and its buffer, the async
invocation queue (depth, oldest age, outcomes).

Per-model series carry a ``model`` label, but only for a bounded set of models: the first
``model_labels`` TargetModels seen get their own label, every later one is counted under ``model="other"``.
So a prefix of a million models costs at most ``model_labels`` series per metric, and the models a dashboard
is usually asked about (the early, busy ones) keep names. ``GET /models`` has every model's figures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from openmme.endpoint.cache.entry import LOADED, Entry, State
from openmme.endpoint.cache.events import CacheEvents, CacheView, ShardFigures
from openmme.endpoint.cache.keeping import PRELOAD_STATES, Preload
from openmme.endpoint.errors import InsufficientStorage

__all__ = [
    "ASYNC_OUTCOMES",
    "CAPTURE_OUTCOMES",
    "EVICTION_REASONS",
    "INVOCATION_STATUSES",
    "OTHER_MODELS",
    "AsyncQueueView",
    "Metrics",
]

OTHER_MODELS = "other"
# Label values known in advance get their series at 0 from the first scrape (Prometheus' instrumentation practice:
# a series that appears only at its first event hides that event from rate() and from alerts on it).
# idle: --idle-ttl; cache_disabled: unloaded after its call (--model-cache disabled, or the archive's openmme.json).
EVICTION_REASONS = ("count", "memory", "disk", "request", "idle", "cache_disabled")
# Every status an invocation is answered with: the prediction, or one of the front's errors (errors.py).
INVOCATION_STATUSES = ("200", "400", "424", "429", "500", "503", "507")
# What became of an invocation data capture picked (capture.py): written to S3, or dropped (buffer full, S3 failed).
CAPTURE_OUTCOMES = ("written", "dropped")
# What became of an InvokeEndpointAsync call (asyncinvoke/): accepted or refused (queue full); once run, its outcome.
ASYNC_OUTCOMES = ("accepted", "refused", "succeeded", "failed", "expired", "timed_out")
# Loads take from tens of milliseconds (a file) to minutes (a large archive over a slow link).
_LOAD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, float("inf"))
# Invocations: sub-millisecond to the 60 s a client waits.
_REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, float("inf"))


class _CacheState(Collector):
    """Gauges read from the cache at scrape time, so they can never drift from it."""

    def __init__(self, cache: CacheView, shards: Callable[[], Iterable[ShardFigures]]) -> None:
        self.cache = cache
        self.shards = shards

    def collect(self) -> Iterator[Metric]:
        cache = self.cache
        models = cache.models()
        on_disk = sum(entry.disk_bytes > 0 for entry in models)
        budgets = cache.budgets
        for name, documentation, value in (
            ("openmme_loaded_models", "Models loaded in MMS (loading or ready).", cache.loaded_count()),
            ("openmme_cached_models_on_disk", "Models extracted on the cache disk.", on_disk),
            (
                "openmme_model_memory_bytes",
                "Memory held by loaded models: isolated models' MMS workers (PSS), dense models' heap in their shards.",
                cache.memory_in_use(),
            ),
            ("openmme_cache_disk_bytes", "Bytes of extracted models on the cache disk.", cache.disk_in_use()),
            ("openmme_max_models", "The loaded-model count budget (0: none).", budgets.max_models),
            ("openmme_memory_budget_bytes", "The memory budget for loaded models.", budgets.memory_bytes),
            ("openmme_disk_budget_bytes", "The disk budget for extracted models.", budgets.disk_bytes),
        ):
            yield GaugeMetricFamily(name, documentation, value=value)
        pinned = [entry for entry in models if entry.pinned and entry.state in LOADED]
        yield GaugeMetricFamily(
            "openmme_pinned_models", "Pinned models loaded (--pin: never evicted).", value=len(pinned)
        )
        yield GaugeMetricFamily(
            "openmme_pinned_memory_bytes",
            "Memory held by pinned models: the part of the memory budget eviction cannot free.",
            value=sum(entry.memory_bytes for entry in pinned),
        )
        states = GaugeMetricFamily("openmme_models", "Models the endpoint knows, by state.", labels=["state"])
        for state in State:
            states.add_metric([state.value], sum(entry.state is state for entry in models))
        yield states
        shard_memory = GaugeMetricFamily(
            "openmme_shard_memory_bytes", "PSS of each dense shard's MMS worker, last measured.", labels=["shard"]
        )
        shard_requests = GaugeMetricFamily(
            "openmme_shard_requests_in_flight", "Requests inside each dense shard's worker.", labels=["shard"]
        )
        for shard in self.shards():
            shard_memory.add_metric([shard.name], shard.memory_bytes)
            shard_requests.add_metric([shard.name], shard.in_flight)
        yield shard_memory
        yield shard_requests


class AsyncQueueView(Protocol):
    """What the async invocations' gauges read (asyncinvoke.AsyncInvocations)."""

    capacity: int

    def queued(self) -> int: ...

    def running(self) -> int: ...

    def oldest_queued_age(self) -> float: ...


class _AsyncQueueState(Collector):
    """The async invocation queue, read at scrape time."""

    def __init__(self, view: AsyncQueueView) -> None:
        self.view = view

    def collect(self) -> Iterator[Metric]:
        requests = GaugeMetricFamily(
            "openmme_async_queue_requests",
            "Async invocations accepted and not finished, by state: queued (not started) or running.",
            labels=["state"],
        )
        requests.add_metric(["queued"], self.view.queued())
        requests.add_metric(["running"], self.view.running())
        yield requests
        yield GaugeMetricFamily(
            "openmme_async_oldest_queued_age_seconds",
            "How long the oldest async invocation not started yet has waited (0: none waits).",
            value=self.view.oldest_queued_age(),
        )
        yield GaugeMetricFamily(
            "openmme_async_queue_capacity",
            "Async invocations the queue holds at most (--async-max-queue); past it calls are refused (503).",
            value=self.view.capacity,
        )


class _PreloadState(Collector):
    """The pre-load's progress, read at scrape time."""

    def __init__(self, preload: Preload) -> None:
        self.preload = preload

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "openmme_preload_models",
            "Models of the start-time pre-load (--preload, --preload-top), by state: pending, loaded, skipped (no"
            " room), failed.",
            labels=["state"],
        )
        status = self.preload.status()
        for state in PRELOAD_STATES:
            family.add_metric([state], status[state])
        yield family


class Metrics(CacheEvents):
    """The endpoint's metrics: fed by the cache's events and by the front for each invocation."""

    def __init__(self, model_labels: int = 50) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.model_labels = model_labels
        self._labelled: set[str] = set()
        registry = self.registry
        self.hits = Counter("openmme_model_cache_hits", "Requests whose model was loaded.", registry=registry)
        self.misses = Counter(
            "openmme_model_cache_misses", "Requests that had to wait for a download or load.", registry=registry
        )
        self.download = Histogram(
            "openmme_model_download_seconds", "Archive download time.", buckets=_LOAD_BUCKETS, registry=registry
        )
        self.extract = Histogram(
            "openmme_model_extract_seconds", "Archive extraction time.", buckets=_LOAD_BUCKETS, registry=registry
        )
        self.load = Histogram(
            "openmme_model_load_seconds", "MMS registration time.", buckets=_LOAD_BUCKETS, registry=registry
        )
        self.unload = Histogram(
            "openmme_model_unload_seconds", "MMS unregistration time.", buckets=_LOAD_BUCKETS, registry=registry
        )
        self.loading_wait = Histogram(
            "openmme_model_loading_wait_seconds",
            "Time a request waited for its model to download and load.",
            buckets=_LOAD_BUCKETS,
            registry=registry,
        )
        self.load_failures = Counter(
            "openmme_model_load_failures",
            "Downloads or loads that failed (but those refused for lack of cache disk: openmme_cache_disk_refusals).",
            registry=registry,
        )
        self.disk_refusals = Counter(
            "openmme_cache_disk_refusals",
            "Model downloads refused, or stopped, for lack of room on the cache disk (answered 507"
            " InsufficientStorage): the operator's to fix, not counted among the load failures.",
            registry=registry,
        )
        self.disk_free = Gauge(
            "openmme_cache_disk_free_bytes",
            "Free bytes of the cache filesystem (--cache-dir's), measured by housekeeping every few seconds; NaN until"
            " its first round.",
            registry=registry,
        )
        self.disk_free.set(float("nan"))  # unknown, not empty: an alert on it stays quiet until measured
        self.evictions = Counter(
            "openmme_model_evictions", "Models evicted, by the budget that needed room.", ["reason"], registry=registry
        )
        for reason in EVICTION_REASONS:
            self.evictions.labels(reason)
        self.invocations = Counter(
            "openmme_invocations", "Invocations, by HTTP status answered.", ["status"], registry=registry
        )
        self.invocation_seconds = Histogram(
            "openmme_invocation_seconds",
            "Invocation latency at the front, waits and loads included, by HTTP status.",
            ["status"],
            buckets=_REQUEST_BUCKETS,
            registry=registry,
        )
        for status in INVOCATION_STATUSES:
            self.invocations.labels(status)
            self.invocation_seconds.labels(status)
        self.model_invocations = Counter(
            "openmme_model_invocations",
            f"Invocations by model (first {model_labels} models by name, the rest as '{OTHER_MODELS}') and status.",
            ["model", "status"],
            registry=registry,
        )
        self.model_invocation_seconds = Histogram(
            "openmme_model_invocation_seconds",
            "Invocation latency by model (bounded labels, as above).",
            ["model"],
            buckets=(0.005, 0.025, 0.1, 0.5, 2.5, float("inf")),
            registry=registry,
        )
        self.model_loads = Counter(
            "openmme_model_loads", "Loads into MMS by model (bounded labels): a high rate is thrashing.", ["model"],
            registry=registry,
        )  # fmt: skip
        self.capture_records = Counter(
            "openmme_capture_records",
            "Invocations data capture picked, by outcome: written to S3, or dropped (buffer full, or S3 failed).",
            ["outcome"],
            registry=registry,
        )
        for outcome in CAPTURE_OUTCOMES:
            self.capture_records.labels(outcome)
        self.capture_buffer_records = Gauge(
            "openmme_capture_buffer_records",
            "Captured invocations held in memory, waiting to be written to S3.",
            registry=registry,
        )
        self.async_requests = Counter(
            "openmme_async_requests",
            "InvokeEndpointAsync calls: accepted, refused (queue full), and how accepted ones ended (succeeded, failed,"
            " expired past their RequestTTLSeconds, timed_out past their InvocationTimeoutSeconds).",
            ["outcome"],
            registry=registry,
        )
        for outcome in ASYNC_OUTCOMES:
            self.async_requests.labels(outcome)

    def watch_async(self, view: AsyncQueueView) -> None:
        """Export the async invocation queue's gauges from now on."""
        self.registry.register(_AsyncQueueState(view))

    def async_request(self, outcome: str) -> None:
        """An async invocation ``accepted``, ``refused``, or finished (``succeeded``, ``failed``, ``expired``,
        ``timed_out``)."""
        self.async_requests.labels(outcome).inc()

    def watch(self, cache: CacheView, shards: Callable[[], Iterable[ShardFigures]] = tuple) -> None:
        """Export the cache's gauges (and the dense shards', as ``shards`` lists them) from now on."""
        self.registry.register(_CacheState(cache, shards))

    def captured(self, outcome: str, records: int = 1) -> None:
        """``records`` captured invocations ``written`` to S3 or ``dropped``."""
        self.capture_records.labels(outcome).inc(records)

    def watch_preload(self, preload: Preload) -> None:
        """Export the start-time pre-load's progress from now on."""
        self.registry.register(_PreloadState(preload))

    def model_label(self, target: str) -> str:
        if target in self._labelled:
            return target
        if len(self._labelled) < self.model_labels:
            self._labelled.add(target)
            return target
        return OTHER_MODELS

    def invocation(self, target: str | None, status: int, seconds: float) -> None:
        self.invocations.labels(str(status)).inc()
        self.invocation_seconds.labels(str(status)).observe(seconds)
        if target is not None:
            label = self.model_label(target)
            self.model_invocations.labels(label, str(status)).inc()
            self.model_invocation_seconds.labels(label).observe(seconds)

    # ---- CacheEvents -------------------------------------------------------------------------------

    def lookup(self, entry: Entry, hit: bool) -> None:
        (self.hits if hit else self.misses).inc()

    def waited(self, entry: Entry, seconds: float) -> None:
        self.loading_wait.observe(seconds)

    def fetched(self, entry: Entry) -> None:
        self.download.observe(entry.timings.get("download", 0.0))
        self.extract.observe(entry.timings.get("extract", 0.0))

    def loaded(self, entry: Entry) -> None:
        self.load.observe(entry.timings.get("register", 0.0))
        self.model_loads.labels(self.model_label(entry.target)).inc()

    def load_failed(self, entry: Entry, error: BaseException) -> None:
        (self.disk_refusals if isinstance(error, InsufficientStorage) else self.load_failures).inc()

    def unloaded(self, entry: Entry, reason: str | None) -> None:
        self.unload.observe(entry.timings.get("unload", 0.0))
        if reason:
            self.evictions.labels(reason).inc()

    def removed(self, entry: Entry, reason: str = "disk") -> None:
        if reason == "disk":  # otherwise its unload was counted already
            self.evictions.labels("disk").inc()

    def disk_measured(self, free_bytes: int) -> None:
        self.disk_free.set(free_bytes)


def metric_names(lines: Iterable[str]) -> set[str]:
    """Sample names in a Prometheus text exposition (for tests and the dashboard check)."""
    return {line.split("{")[0].split(" ")[0] for line in lines if line and not line.startswith("#")}
