"""The metrics registry before anything happened: every series whose label values are known in advance is
there at 0 on the first scrape, as Prometheus' instrumentation practice asks (rate() and alerts then see the
first 503, rather than a series that appears with it)."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from openmme.endpoint.metrics import EVICTION_REASONS, INVOCATION_STATUSES, Metrics

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def first_scrape(metrics: Metrics) -> Samples:
    text = generate_latest(metrics.registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_every_known_status_and_reason_is_exported_at_zero_before_any_request() -> None:
    samples = first_scrape(Metrics())
    for status in ("200", "400", "424", "429", "500", "503", "507"):
        labels = (("status", status),)
        assert samples[("openmme_invocations_total", labels)] == 0, status
        assert samples[("openmme_invocation_seconds_count", labels)] == 0, status
        assert samples[("openmme_invocation_seconds_bucket", (("le", "+Inf"), ("status", status)))] == 0
    for reason in ("count", "memory", "disk", "request", "idle", "cache_disabled"):
        assert samples[("openmme_model_evictions_total", (("reason", reason),))] == 0, reason
    # Per-model series have no values known in advance: none exists before a model is invoked.
    assert not any(name.startswith("openmme_model_invocation") for name, _ in samples)


def test_the_statuses_set_up_front_are_the_ones_the_front_answers() -> None:
    """An invocation with any status still counts (a new series then appears), and the known ones are not
    duplicated when they happen."""
    metrics = Metrics()
    metrics.invocation("houston/model.tar.gz", 424, 0.01)
    metrics.invocation("houston/model.tar.gz", 409, 0.01)
    samples = first_scrape(metrics)
    assert samples[("openmme_invocations_total", (("status", "424"),))] == 1
    assert samples[("openmme_invocations_total", (("status", "409"),))] == 1
    statuses = {dict(labels)["status"] for name, labels in samples if name == "openmme_invocations_total"}
    assert statuses == {*INVOCATION_STATUSES, "409"}
    assert set(EVICTION_REASONS) == {"count", "memory", "disk", "request", "idle", "cache_disabled"}
