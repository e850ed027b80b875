"""Guarded rollouts of an alias: a canary version takes a growing share of the traffic in steps, each baked for a
while and judged against the live version on the figures the endpoints measure; it is promoted when every step
holds and rolled back by itself as soon as one does not (SageMaker's deployment guardrails do the same with
canary/linear traffic shifting, baking periods and alarms; here the alarms are the comparison below).

Every step is one alias change (``openmme.publish.aliases``: conditional, recorded), and the rollout in progress
is kept in the alias document (``rollout``), so ``openmme rollout status`` in another terminal sees it and
``promote``/``rollback`` by hand take over at any time: the controller notices that the alias changed under it
and stops. The controller is the process that runs ``start`` (``openmme rollout start`` runs it to the end; a CI
pipeline calls ``start_rollout``); if it dies, the alias stays at its last step, safe, until someone promotes or
rolls back.

The figures are read from each endpoint's ``GET /aliases`` (every replica: give each one's URL) and summed per
version: requests, errors (answers 424, 500, 503, 507) and a latency histogram, counted from the step's start.
A step fails when, with at least ``min_requests`` canary requests, the figures show at ``confidence`` (per bound,
per poll) that the canary's error rate exceeds the live version's by more than ``max_error_rate_increase``
(Newcombe's bound on the difference, from each rate's Wilson interval), or that its median or p90 latency exceeds
the live one's by more than ``max_latency_ratio`` times and by more than ``latency_slack_ms`` (each quantile's
order-statistic bounds, read off the histograms): a busy machine's noise is no failure, and neither is a
difference under those floors. A step that ends its bake with too few canary requests to judge bakes on, up to
three bakes, then rolls back: no traffic is no evidence. Before the first write, every endpoint must answer
``/ping`` and serve the alias (``GET /aliases``), or the rollout is refused, naming it.
With ``--auth sigv4`` on the endpoints, set ``OPENMME_ROLLOUT_ACCESS_KEY_ID`` and
``OPENMME_ROLLOUT_SECRET_ACCESS_KEY`` to an unrestricted key: the reads are signed with it.
"""

from __future__ import annotations

import json
import math
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from statistics import NormalDist
from typing import Any

from openmme.endpoint.alias_state import AliasDocument, Variant, variant_name_for
from openmme.endpoint.names import S3Location
from openmme.publish.aliases import (
    AliasConflict,
    AliasContext,
    AliasNotFound,
    AliasRefused,
    Routing,
    commit_alias,
    get_alias,
    rollback_alias,
)
from openmme.publish.progress import Progress

__all__ = [
    "Figures",
    "Guardrails",
    "Outcome",
    "judge",
    "promote_rollout",
    "read_figures",
    "rollback_rollout",
    "rollout_status",
    "start_rollout",
]

ACCESS_KEY_ENV = "OPENMME_ROLLOUT_ACCESS_KEY_ID"
SECRET_KEY_ENV = "OPENMME_ROLLOUT_SECRET_ACCESS_KEY"
# A step without enough canary traffic to judge bakes on for at most this many bakes, then rolls back.
MAX_BAKES = 3
# How long an endpoint has to answer /ping and GET /aliases before a rollout starts.
CHECK_TIMEOUT_S = 5.0
# The latency quantiles compared: the median and p90 are bounded well by a few dozen requests, where a p99 of a few
# hundred is one or two of the slowest, as likely a busy machine's as the canary's.
JUDGED_QUANTILES = (0.5, 0.9)


@dataclass(frozen=True)
class Guardrails:
    """How a rollout moves and what makes it roll back."""

    steps: tuple[float, ...] = (10.0, 50.0)  # the canary's percent at each step; promoted after the last
    bake_seconds: float = 60.0  # how long each step runs before the next
    poll_seconds: float = 2.0  # how often the figures are read during a bake
    max_error_rate_increase: float = 0.01  # canary error rate surely above the live one by more than this: roll back
    max_latency_ratio: float = 1.5  # a canary latency quantile surely above this many times the live one's …
    latency_slack_ms: float = 5.0  # … and this many ms above it: roll back (a smaller difference never does)
    min_requests: int = 20  # canary requests a step needs before it is judged, and to hold
    confidence: float = 0.9999  # of each bound the judge compares ("surely" above), at each poll

    def check(self) -> Guardrails:
        if not self.steps or any(not 0 < step < 100 for step in self.steps):
            raise AliasRefused("rollout steps are percents of traffic for the canary, each more than 0 and below 100")
        if list(self.steps) != sorted(set(self.steps)):
            raise AliasRefused("rollout steps must grow: e.g. 10,50")
        if self.bake_seconds <= 0 or self.poll_seconds <= 0 or self.min_requests < 1:
            raise AliasRefused("bake and poll are more than 0 seconds, min-requests at least 1")
        if self.max_error_rate_increase < 0 or self.max_latency_ratio < 1 or self.latency_slack_ms < 0:
            raise AliasRefused(
                "max-error-rate-increase and latency-slack-ms are at least 0, max-latency-ratio at least 1"
            )
        if not 0.5 < self.confidence < 1:
            raise AliasRefused("confidence is more than 0.5 and below 1 (e.g. 0.9999)")
        return self


@dataclass
class Figures:
    """One version's figures over a span of time, summed over the endpoints."""

    requests: int = 0
    errors: int = 0
    buckets: list[int] = field(default_factory=list)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def quantile_bounds(self, bounds: Sequence[float], q: float, z: float) -> tuple[float, float]:
        """The bucket bounds (seconds) the latency's ``q`` quantile is above and at most, each at the one-sided
        confidence of the normal quantile ``z``: a Wilson bound on the share of requests at or under each bucket
        bound (the order statistics' interval of the quantile, read off the histogram). 0.0 and inf where the
        figures cannot tell, as for a p90 of 3 requests."""
        total = sum(self.buckets)
        above, at_most, seen = 0.0, math.inf, 0
        for bound, count in zip(bounds, self.buckets, strict=False):  # the last bucket, above every bound, has none
            seen += count
            share_low, share_high = _wilson(seen, total, z)
            if share_high < q:
                above = bound
            if share_low >= q:
                at_most = bound
                break
        return above, at_most

    def quantile(self, bounds: Sequence[float], q: float = 0.99) -> float | None:
        """The upper bound (seconds) of the bucket holding the ``q`` quantile; None without requests."""
        total = sum(self.buckets)
        if not total:
            return None
        wanted, seen = math.ceil(q * total), 0
        for index, count in enumerate(self.buckets):
            seen += count
            if seen >= wanted:
                return bounds[index] if index < len(bounds) else math.inf
        return math.inf

    def minus(self, before: Figures) -> Figures:
        if self.requests < before.requests:  # the endpoint restarted: its counters began again
            return Figures(self.requests, self.errors, list(self.buckets))
        earlier = before.buckets or [0] * len(self.buckets)
        buckets = [now - then for now, then in zip(self.buckets, earlier, strict=True)]
        return Figures(self.requests - before.requests, self.errors - before.errors, buckets)

    def plus(self, other: Figures) -> Figures:
        if not self.buckets:
            return Figures(other.requests, other.errors, list(other.buckets))
        buckets = [a + b for a, b in zip(self.buckets, other.buckets or [0] * len(self.buckets), strict=True)]
        return Figures(self.requests + other.requests, self.errors + other.errors, buckets)


@dataclass(frozen=True)
class Outcome:
    """How a rollout ended: ``promoted``, ``rolled-back``, or ``taken-over`` (changed by someone else)."""

    result: str
    reason: str
    document: AliasDocument | None


Snapshot = dict[str, dict[str, Figures]]  # endpoint URL → version target → its cumulative figures


def judge(live: Figures, canary: Figures, bounds: Sequence[float], guardrails: Guardrails) -> str | None:
    """Why the canary fails against the live version over the same span (None: it holds, or the figures cannot
    tell yet). A failure is a difference beyond the guardrails' floors that the figures show at the guardrails'
    confidence however noisy they are; a difference they cannot tell from chance is no failure."""
    if canary.requests < guardrails.min_requests:
        return None
    z = NormalDist().inv_cdf(guardrails.confidence)
    error = _error_rate_increase(live, canary, z)
    if error > guardrails.max_error_rate_increase:
        return (
            f"canary error rate {canary.error_rate:.1%} ({canary.errors} of {canary.requests}) against live"
            f" {live.error_rate:.1%} ({live.errors} of {live.requests}): at least {error * 100:.1f} points more"
        )
    for q in JUDGED_QUANTILES:
        canary_above, _ = canary.quantile_bounds(bounds, q, z)
        _, live_below = live.quantile_bounds(bounds, q, z)
        limit = max(live_below * guardrails.max_latency_ratio, live_below + guardrails.latency_slack_ms / 1000)
        if canary_above > limit:
            return (
                f"canary p{q * 100:g} latency above {canary_above * 1000:.1f} ms against live at most"
                f" {live_below * 1000:.1f} ms (limit {limit * 1000:.1f} ms)"
            )
    return None


def read_figures(endpoints: Sequence[str], alias: str, timeout: float = 5.0) -> tuple[Snapshot, list[float]]:
    """Each reachable endpoint's cumulative figures of ``alias``'s versions (by archive), and the histogram bounds."""
    snapshot: Snapshot = {}
    bounds: list[float] = []
    for url in endpoints:
        try:
            body = _get_json(url.rstrip("/") + "/aliases", timeout)
        except (OSError, ValueError):
            continue  # a replica down or restarting: the others still count
        bounds = [float(bound) for bound in body.get("buckets", [])] or bounds
        versions: dict[str, Figures] = {}
        for item in body.get("versions", []):
            if item.get("alias") == alias:
                figures = Figures(int(item["requests"]), int(item["errors"]), [int(n) for n in item["buckets"]])
                target = str(item["target"])
                versions[target] = versions[target].plus(figures) if target in versions else figures
        snapshot[url] = versions
    return snapshot, bounds


def start_rollout(
    prefix: str,
    alias: str,
    target: str,
    endpoints: Sequence[str],
    guardrails: Guardrails | None = None,
    *,
    name: str | None = None,
    reason: str = "",
    check: bool = True,
    sample: bytes | None = None,
    sample_content_type: str = "text/csv",
    client: Any | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    report: Callable[[str], None] = lambda line: None,
    progress: Progress | None = None,
) -> Outcome:
    """Roll ``target`` out as the canary of ``alias`` (whose live version takes all its traffic now), step by step,
    judged on ``endpoints``' figures; returns when promoted, rolled back, or taken over by hand. ``report`` is
    told each step in one line, ``progress`` each bake's milliseconds (a ``ProgressLine(amount=format_ms)``).
    Raises AliasRefused (nothing written) for a rollout that cannot start, such as one with an endpoint that
    does not answer or does not serve ``alias``."""
    guardrails = (guardrails or Guardrails()).check()
    if not endpoints:
        raise AliasRefused("a rollout needs the endpoints' URLs (every replica's) to read the versions' figures")
    started_at = _now()

    def first_step(current: AliasDocument | None, context: AliasContext) -> Routing:
        if current is None or current.removed:
            raise AliasNotFound(f"{context.location} has no alias {alias}: set it first (openmme alias set)")
        if current.rollout:
            raise AliasRefused(
                f"a rollout of {alias} is in progress ({current.rollout.get('canary')}, started"
                f" {current.rollout.get('started_at')}): promote it or roll it back first"
            )
        live = _live_version(current)
        canary = Variant(name or variant_name_for(alias, target), target, guardrails.steps[0])
        if canary.target == live.target:
            raise AliasRefused(f"{target} is already the live version of {alias}")
        _require_endpoints(endpoints, alias, current.generation, context.location)
        routing = Routing(
            (Variant(live.name, live.target, 100 - canary.weight), canary), current.shadow, current.sticky, None
        )
        context.check_versions(routing, current, check=check, sample=sample, content_type=sample_content_type)
        return routing

    def record(current: AliasDocument | None, routing: Routing) -> dict[str, Any]:
        live, canary = routing.variants
        return {
            "live": live.name,
            "live_target": live.target,
            "canary": canary.name,
            "canary_target": canary.target,
            "step": 0,
            "steps": list(guardrails.steps),
            "bake_seconds": guardrails.bake_seconds,
            "guardrails": asdict(guardrails),
            "started_at": started_at,
            "step_started_at": started_at,
        }

    document = commit_alias(
        prefix, alias, first_step, "rollout-start", reason or f"rollout of {target}", client=client, rollout=record
    )
    report(f"step 1 of {len(guardrails.steps)}: {document.summary()}")
    step = 0
    while True:
        if progress is not None:
            progress.start(
                f"{alias}: step {step + 1} of {len(guardrails.steps)} baking", round(guardrails.bake_seconds * 1000)
            )
        try:
            verdict = _bake(prefix, alias, document, endpoints, guardrails, client, clock, sleep, progress)
        finally:
            if progress is not None:
                progress.finish()
        if isinstance(verdict, Outcome):
            return verdict
        if verdict is not None:
            return _roll_back(prefix, alias, document, f"automatic rollback at step {step + 1}: {verdict}", client)
        step += 1
        if step == len(guardrails.steps):
            promoted = _promote(prefix, alias, document, "every step held", client)
            if promoted.document is not None:
                report(f"all traffic: {promoted.document.summary()}")
            return promoted
        try:
            document = _next_step(prefix, alias, document, step, guardrails, client)
        except AliasConflict as taken:
            return Outcome("taken-over", str(taken), taken.current)
        report(f"step {step + 1} of {len(guardrails.steps)}: {document.summary()}")


def rollout_status(
    prefix: str, alias: str, endpoints: Sequence[str] = (), *, client: Any | None = None
) -> dict[str, Any]:
    """The rollout in progress (``rollout`` None when there is none) and, given ``endpoints``, the live and canary
    versions' figures since the step began (cumulative, as the endpoints count them)."""
    document = get_alias(prefix, alias, client=client)
    status: dict[str, Any] = {"alias": alias, "generation": document.generation, "rollout": document.rollout}
    if document.rollout and endpoints:
        snapshot, bounds = read_figures(endpoints, alias)
        totals = _totals(snapshot)
        for role in ("live", "canary"):
            figures = totals.get(str(document.rollout[f"{role}_target"]), Figures())
            p99 = figures.quantile(bounds)
            status[role] = {
                "requests": figures.requests,
                "errors": figures.errors,
                "error_rate": figures.error_rate,
                "p99_ms": round(p99 * 1000, 3) if p99 is not None and math.isfinite(p99) else None,
            }
    return status


def promote_rollout(prefix: str, alias: str, *, reason: str = "", client: Any | None = None) -> AliasDocument:
    """All traffic to the canary of the rollout in progress, now."""
    document = get_alias(prefix, alias, client=client)
    if not document.rollout:
        raise AliasRefused(f"no rollout of {alias} is in progress (openmme alias set moves it by hand)")
    outcome = _promote(prefix, alias, document, reason or "promoted by hand", client)
    assert outcome.document is not None
    return outcome.document


def rollback_rollout(
    prefix: str, alias: str, to: str | None = None, *, reason: str = "", client: Any | None = None
) -> AliasDocument:
    """All traffic back to the live version of the rollout in progress (or, with ``to``, to any version the alias
    had): one alias write. Without a rollout in progress, as ``openmme alias rollback``."""
    document = get_alias(prefix, alias, client=client)
    if document.rollout and to is None:
        outcome = _roll_back(prefix, alias, document, reason or "rolled back by hand", client)
        assert outcome.document is not None
        return outcome.document
    return rollback_alias(prefix, alias, to, reason=reason or "rolled back by hand", client=client)


# ---- the controller's steps ---------------------------------------------------------------------------------


def _bake(
    prefix: str,
    alias: str,
    document: AliasDocument,
    endpoints: Sequence[str],
    guardrails: Guardrails,
    client: Any,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    progress: Progress | None = None,
) -> str | Outcome | None:
    """Run one step: a failure's reason, an Outcome when taken over, or None when it held for its bake."""
    rollout = document.rollout or {}
    live_target, canary_target = str(rollout["live_target"]), str(rollout["canary_target"])
    baseline, _ = read_figures(endpoints, alias)
    started, shown_ms = clock(), 0
    while True:
        sleep(guardrails.poll_seconds)
        try:
            now = get_alias(prefix, alias, client=client)
        except AliasNotFound:
            return Outcome("taken-over", f"alias {alias} was removed during the rollout", None)
        if now.generation != document.generation:
            change = now.change
            by = f"{change.action} by {change.by} at {change.at}" if change is not None else "changed"
            return Outcome("taken-over", f"alias {alias} changed under the rollout ({by})", now)
        snapshot, bounds = read_figures(endpoints, alias)
        delta = _since(snapshot, baseline)
        live, canary = delta.get(live_target, Figures()), delta.get(canary_target, Figures())
        failure = judge(live, canary, bounds, guardrails)
        if failure is not None:
            return failure
        elapsed = clock() - started
        if progress is not None:
            progress.advance(round(elapsed * 1000) - shown_ms)
            shown_ms = round(elapsed * 1000)
        if elapsed >= guardrails.bake_seconds and canary.requests >= guardrails.min_requests:
            return None
        if elapsed >= guardrails.bake_seconds * MAX_BAKES:
            return (
                f"not enough canary traffic to judge: {canary.requests} requests in {elapsed:.0f} s (at least"
                f" {guardrails.min_requests} needed)"
            )


def _next_step(
    prefix: str, alias: str, document: AliasDocument, step: int, guardrails: Guardrails, client: Any
) -> AliasDocument:
    rollout = dict(document.rollout or {})
    percent = guardrails.steps[step]

    def make(current: AliasDocument | None, context: AliasContext) -> Routing:
        assert current is not None  # expect_generation: the rollout's own document
        live, canary = (
            Variant(str(rollout["live"]), str(rollout["live_target"]), 100 - percent),
            Variant(str(rollout["canary"]), str(rollout["canary_target"]), percent),
        )
        return Routing((live, canary), current.shadow, current.sticky, None)

    rollout.update(step=step, step_started_at=_now())
    return commit_alias(
        prefix,
        alias,
        make,
        "rollout-step",
        f"rollout step {step + 1}: {percent:g}% to {rollout['canary']}",
        expect_generation=document.generation,
        client=client,
        rollout=lambda current, routing: rollout,
    )


def _promote(prefix: str, alias: str, document: AliasDocument, reason: str, client: Any) -> Outcome:
    rollout = document.rollout or {}
    return _finish(prefix, alias, document, "promote", reason, str(rollout["canary"]),
                   str(rollout["canary_target"]), "promoted", client)  # fmt: skip


def _roll_back(prefix: str, alias: str, document: AliasDocument, reason: str, client: Any) -> Outcome:
    rollout = document.rollout or {}
    return _finish(prefix, alias, document, "rollback", reason, str(rollout["live"]), str(rollout["live_target"]),
                   "rolled-back", client)  # fmt: skip


def _finish(
    prefix: str,
    alias: str,
    document: AliasDocument,
    action: str,
    reason: str,
    name: str,
    target: str,
    result: str,
    client: Any,
) -> Outcome:
    """All traffic to one version and the rollout record dropped: one write, refused if the alias moved on."""

    def make(current: AliasDocument | None, context: AliasContext) -> Routing:
        return Routing((Variant(name, target, 100.0),), current.shadow if current else None,
                       current.sticky if current else "inference-id", None)  # fmt: skip

    try:
        done = commit_alias(prefix, alias, make, action, reason, expect_generation=document.generation, client=client)
    except AliasConflict as taken:
        return Outcome("taken-over", str(taken), taken.current)
    return Outcome(result, reason, done)


def _live_version(document: AliasDocument) -> Variant:
    serving = [variant for variant in document.variants if variant.weight > 0]
    if len(serving) != 1:
        raise AliasRefused(
            f"alias {document.alias} splits its traffic ({document.summary()}); a rollout starts from one live"
            " version: set it to one first (openmme alias set)"
        )
    return serving[0]


def _error_rate_increase(live: Figures, canary: Figures, z: float) -> float:
    """How much the canary's error rate exceeds the live one's at least, at the one-sided confidence of ``z``:
    Newcombe's hybrid score bound on a difference of two proportions, from each rate's Wilson interval."""
    canary_low, _ = _wilson(canary.errors, canary.requests, z)
    _, live_high = _wilson(live.errors, live.requests, z)
    return canary.error_rate - live.error_rate - math.hypot(canary.error_rate - canary_low, live_high - live.error_rate)


def _wilson(successes: int, trials: int, z: float) -> tuple[float, float]:
    """The Wilson score interval of a proportion, each side at the one-sided confidence of ``z`` ((0, 1) without
    trials): unlike the normal approximation it holds at 0 of 20 and 20 of 20."""
    if trials <= 0:
        return 0.0, 1.0
    share, z2 = successes / trials, z * z
    centre = (share + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z * math.sqrt(share * (1 - share) / trials + z2 / (4 * trials * trials)) / (1 + z2 / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def _totals(snapshot: Snapshot) -> dict[str, Figures]:
    totals: dict[str, Figures] = {}
    for versions in snapshot.values():
        for target, figures in versions.items():
            totals[target] = totals[target].plus(figures) if target in totals else figures
    return totals


def _since(snapshot: Snapshot, baseline: Snapshot) -> dict[str, Figures]:
    """Each version's figures since ``baseline``, summed over the endpoints (an endpoint that restarted counts
    from zero; one not in the baseline counts whole)."""
    totals: dict[str, Figures] = {}
    for url, versions in snapshot.items():
        before = baseline.get(url, {})
        for target, figures in versions.items():
            delta = figures.minus(before[target]) if target in before else figures
            totals[target] = totals[target].plus(delta) if target in totals else delta
    return totals


def _require_endpoints(endpoints: Sequence[str], alias: str, generation: int, location: S3Location) -> None:
    """Refuse the rollout, before anything is written, when an endpoint does not answer ``/ping`` or does not
    serve ``alias`` (of ``location``, at ``generation`` or one it has not caught up with yet): its figures would
    never come, and the rollout would shift traffic only to roll back for want of them a few bakes later."""
    done = "nothing was written"
    for url in endpoints:
        base = url.rstrip("/")
        try:
            with urllib.request.urlopen(base + "/ping", timeout=CHECK_TIMEOUT_S) as response:
                response.read()
        except urllib.error.HTTPError as error:
            raise AliasRefused(f"endpoint {url} answered /ping with {error.code}: it is not healthy; {done}") from error
        except (OSError, ValueError) as exc:
            raise AliasRefused(
                f"endpoint {url} did not answer /ping ({getattr(exc, 'reason', exc)}): start it, or give each"
                f" replica's URL with --endpoint; {done}"
            ) from exc
        try:
            body = _get_json(base + "/aliases", CHECK_TIMEOUT_S)
        except urllib.error.HTTPError as error:
            hint = (
                f"with --auth sigv4, set {ACCESS_KEY_ENV} and {SECRET_KEY_ENV} to an unrestricted key"
                if error.code in (401, 403)
                else "is it an openmme endpoint?"
            )
            raise AliasRefused(f"endpoint {url} answered GET /aliases with {error.code}: {hint}; {done}") from error
        except (OSError, ValueError) as exc:
            raise AliasRefused(
                f"endpoint {url} did not answer GET /aliases ({getattr(exc, 'reason', exc)}); {done}"
            ) from exc
        served = body.get("aliases")
        entry = served.get(alias) if isinstance(served, Mapping) else None
        if not isinstance(entry, Mapping):
            raise AliasRefused(
                f"endpoint {url} does not serve alias {alias}: is it serving {location} with aliases on"
                f" (--alias-refresh above 0)? An alias set moments ago shows there within one refresh; {done}"
            )
        if int(entry.get("generation", 0)) > generation:
            raise AliasRefused(
                f"endpoint {url} serves alias {alias} at generation {entry.get('generation')}, ahead of"
                f" {location}'s {generation}: it serves another prefix; {done}"
            )


def _get_json(url: str, timeout: float) -> Mapping[str, Any]:
    request = urllib.request.Request(url)
    key, secret = os.environ.get(ACCESS_KEY_ENV), os.environ.get(SECRET_KEY_ENV)
    if key and secret:
        request = _signed(url, key, secret)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        data = json.loads(response.read())
    if not isinstance(data, Mapping):
        raise ValueError(f"{url} answered {type(data).__name__}, not a JSON object")
    return data


def _signed(url: str, key: str, secret: str) -> urllib.request.Request:
    """A GET signed with SigV4 for the service ``sagemaker``, as the endpoint's --auth sigv4 checks it."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    aws = AWSRequest(method="GET", url=url)
    SigV4Auth(Credentials(key, secret), "sagemaker", os.environ.get("AWS_REGION", "us-east-1")).add_auth(aws)
    return urllib.request.Request(url, headers=dict(aws.headers.items()))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
