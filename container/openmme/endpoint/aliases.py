"""The endpoint's aliases: which TargetModels are aliases, what each resolves to for one request, and keeping that
in step with the alias documents in the model prefix (alias_state.py) without a cold start.

The request path (``resolve``) is a dict lookup: a TargetModel that is no alias costs one ``dict.get``. Everything
that touches S3 runs in the background (``run``): every ``--alias-refresh`` seconds one ListObjectsV2 of
``.openmme/aliases/`` gives every alias's ETag, and only documents whose ETag changed are read. A changed alias is
*switched warm*: when this replica has served it lately (or holds one of its versions), the versions it will route
to are loaded into the cache first, through the cache like any request, and only then does the new document take
the requests (ModelMesh's VModels move the same way); until then the previous one keeps answering. A load that
fails keeps the previous document and is tried again after ``RETRY_AFTER_S``. A generation older than the one
served is never installed.

When S3 cannot be reached the last documents keep serving, as cached models do; how old they are is
``openmme_alias_state_age_seconds`` and ``GET /aliases``, and ``--alias-max-staleness`` (off by default) turns
alias invocations into 503 past a bound. The documents served are also written to ``<cache-dir>/aliases.json``, so
an endpoint that restarts while S3 is unreachable comes back on them; with S3 up it starts on S3's.

Each alias invocation and each mirrored one is counted by alias and variant (alias_figures.py): in full in
``GET /aliases``, which ``openmme rollout`` reads to compare a canary with the live version, and in Prometheus.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import botocore.exceptions
from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from openmme.endpoint.alias_figures import AliasFigures
from openmme.endpoint.alias_state import (
    AliasDocument,
    AliasInvalid,
    Shadow,
    Split,
    alias_from_state_key,
    state_key,
    state_prefix,
    sticky_key,
)
from openmme.endpoint.errors import EndpointError, ServiceUnavailable, ValidationError
from openmme.endpoint.logs import event_log, log_json, log_task_failure
from openmme.endpoint.names import S3Location
from openmme.endpoint.s3 import make_client

if TYPE_CHECKING:
    from openmme.endpoint.cache.core import ModelCache
    from openmme.endpoint.metrics import Metrics
    from openmme.endpoint.settings import Settings

__all__ = ["ALL_TRAFFIC", "AliasReader", "AliasTable", "Resolution"]

log = logging.getLogger(__name__)

# The variant every answer names when its TargetModel is an archive (SageMaker's default variant name).
ALL_TRAFFIC = "AllTraffic"
SNAPSHOT_FILE_NAME = "aliases.json"
# An alias counts as served here for this long after its last request: then its new versions are loaded first.
IN_USE_WINDOW_S = 600.0
# How long a warm switch waits for a version to load, and when a switch that failed is tried again.
WARM_WAIT_S = 600.0
RETRY_AFTER_S = 30.0


@dataclass(frozen=True)
class Resolution:
    """What one invocation means: the archive to run, the variant to name in the answer, and for an alias its name
    and the shadow version this request is mirrored to (if it is)."""

    target: str
    variant: str = ALL_TRAFFIC
    alias: str | None = None
    shadow: Shadow | None = None


@dataclass
class _Route:
    """An installed alias document, ready for requests."""

    split: Split
    etag: str
    installed_at: float  # wall clock
    switch_seconds: float = 0.0  # how long its versions took to load before it took the requests


class AliasReader:
    """The alias documents of one model prefix, read from S3 (blocking: the table calls it in a thread)."""

    def __init__(self, prefix: S3Location, client: Any | None = None) -> None:
        self.prefix = prefix
        # Short time-outs and one retry: a refresh that cannot reach S3 gives up quickly and tries again later.
        self.client = client or make_client(connect_timeout=2, read_timeout=5, max_attempts=2, pool=4)

    def list(self) -> dict[str, str]:
        """Every alias with a document, and its document's ETag."""
        found: dict[str, str] = {}
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.prefix.bucket, Prefix=state_prefix(self.prefix.key)):
            for item in page.get("Contents", []):
                alias = alias_from_state_key(self.prefix.key, str(item["Key"]))
                if alias is not None:
                    found[alias] = str(item.get("ETag", ""))
        return found

    def get(self, alias: str) -> tuple[AliasDocument, str]:
        """The current document of ``alias`` and its ETag; AliasInvalid when it is not one an endpoint can serve."""
        response = self.client.get_object(Bucket=self.prefix.bucket, Key=state_key(self.prefix.key, alias))
        body = response["Body"].read()
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise AliasInvalid(f"the document of alias {alias} is not JSON: {exc}") from exc
        return AliasDocument.parse(data, alias), str(response.get("ETag", ""))


class _AliasState(Collector):
    """Gauges read at scrape time: aliases served, and the age of what they were last refreshed from."""

    def __init__(self, table: AliasTable) -> None:
        self.table = table

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("openmme_aliases", "Aliases this endpoint serves.", value=len(self.table.routes))
        yield GaugeMetricFamily(
            "openmme_alias_state_age_seconds",
            "Seconds since the alias documents were last read from S3 (grows while S3 cannot be reached).",
            value=self.table.age(),
        )


class AliasTable:
    """The aliases one endpoint serves: resolved on the request path, refreshed from S3 in the background."""

    def __init__(
        self,
        settings: Settings,
        cache: ModelCache,
        metrics: Metrics,
        reader: AliasReader,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.cache = cache
        self.metrics = metrics
        self.reader = reader
        self.draw = draw
        self.routes: dict[str, _Route] = {}
        self.refreshed_at = 0.0  # wall clock of the last complete read of S3 (or of the snapshot's)
        self._seen: dict[str, str] = {}  # ETag of each document last read, installed or not
        self._last_used: dict[str, float] = {}  # monotonic time of each alias's last request here
        self._switching: dict[str, tuple[int, asyncio.Task[None]]] = {}
        self._blocked: dict[str, tuple[int, float]] = {}  # a switch that failed: its generation, retry time
        self._unreachable = False
        self.figures = AliasFigures(metrics)
        # The archives a version that is a pipeline runs (set by the data plane when pipelines are served): a warm
        # switch loads them. None: every version is an archive.
        self.expand: Callable[[str], Awaitable[list[str]]] | None = None
        registry = metrics.registry
        self.refresh_failures = Counter(
            "openmme_alias_refresh_failures", "Refreshes of the alias documents that could not read S3.",
            registry=registry,
        )  # fmt: skip
        self.moves = Counter(
            "openmme_alias_moves", "Alias documents installed (a new generation took the requests).", registry=registry
        )
        registry.register(_AliasState(self))

    # ---- the request path ---------------------------------------------------------------------------------

    def resolve(
        self, name: str, inference_id: str | None, custom_attributes: str | None, variant: str | None
    ) -> Resolution | None:
        """What ``name`` means for this request when it is an alias (None: it is not one). ``variant``: the
        request's TargetVariant."""
        route = self.routes.get(name)
        if route is None:
            return None
        self._last_used[name] = time.monotonic()
        limit = self.settings.alias_max_staleness
        if limit and self.age() > limit:
            raise ServiceUnavailable(
                f"the state of alias {name} is {self.age():.0f} s old (S3 cannot be reached; the bound is {limit:g} s);"
                " retry later or invoke a version directly"
            )
        split = route.split
        if variant is not None:
            chosen = split.by_name.get(variant)
            if chosen is None:
                names = ", ".join(split.by_name)
                raise ValidationError(
                    f"TargetVariant {variant} is not a variant of alias {name}; its variants: {names}"
                )
        else:
            key = sticky_key(split.document.sticky, split.attribute, inference_id, custom_attributes)
            chosen = split.choose(key, self.draw())
        shadow = split.document.shadow
        mirrored = shadow if shadow is not None and self.draw() * 100.0 < shadow.percent else None
        return Resolution(chosen.target, chosen.name, name, mirrored)

    def record(self, resolution: Resolution, status: int, seconds: float) -> None:
        """One alias invocation answered ``status`` after ``seconds``."""
        assert resolution.alias is not None
        self.figures.record(resolution.alias, resolution.variant, resolution.target, status, seconds)

    def record_shadow(
        self, alias: str, shadow: Shadow, outcome: str, seconds: float = 0.0, delta: float | None = None
    ) -> None:
        """One mirrored invocation of ``shadow`` (alias_figures.py)."""
        self.figures.record_shadow(alias, shadow, outcome, seconds, delta)

    def age(self) -> float:
        """Seconds since the documents were last read from S3 (or since the snapshot read at start was saved)."""
        return max(time.time() - self.refreshed_at, 0.0) if self.refreshed_at else 0.0

    # ---- the background: refreshing from S3, warm switches ------------------------------------------------

    async def start(self) -> None:
        """Before the front serves: the documents as S3 has them, or, when S3 cannot be reached, as they were last
        served (the snapshot in the cache directory)."""
        if await self.refresh(warm=False):
            return
        snapshot = await asyncio.to_thread(_read_snapshot, self.snapshot_path)
        if snapshot is None:
            return
        saved_at, documents = snapshot
        for etag, document in documents:
            self._install(document, etag, quiet=True)
        self.refreshed_at = saved_at
        log.warning(
            "alias documents read from %s (saved %.0f s ago): S3 cannot be reached",
            self.snapshot_path,
            time.time() - saved_at,
        )

    async def run(self) -> None:
        """Refresh every ``--alias-refresh`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.settings.alias_refresh)
            try:
                await self.refresh()
            except Exception:
                log.exception("refreshing the alias documents failed")

    async def refresh(self, warm: bool = True) -> bool:
        """One read of the alias documents: the changed ones are switched to (warm, in the background, unless
        ``warm`` is False: then at once). False when S3 could not be read (what is served stays)."""
        try:
            listed = await asyncio.to_thread(self.reader.list)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            self._unreachable_now(exc)
            return False
        changed = False
        for alias, etag in listed.items():
            if self._seen.get(alias) == etag:
                continue
            try:
                document, etag = await asyncio.to_thread(self.reader.get, alias)
            except AliasInvalid as exc:
                self._seen[alias] = etag  # read again only once it changes
                log_json(event_log, {"event": "alias_invalid", "alias": alias, "error": str(exc)})
                continue
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                self._unreachable_now(exc)
                return False
            self._seen[alias] = etag
            changed |= self._consider(document, etag, warm)
        for alias in [alias for alias in self.routes if alias not in listed]:  # its document was deleted by hand
            self._seen.pop(alias, None)
            self._uninstall(alias, "document deleted")
            changed = True
        self.refreshed_at = time.time()
        if self._unreachable:
            self._unreachable = False
            log.info("the alias documents can be read from S3 again")
        if changed:
            await self.save()
        return True

    async def settle(self) -> None:
        """Wait for the switches under way (tests, and the end of a refresh at start)."""
        while self._switching:
            await asyncio.gather(*(task for _, task in self._switching.values()), return_exceptions=True)

    async def close(self) -> None:
        for _, task in self._switching.values():
            task.cancel()
        await asyncio.gather(*(task for _, task in self._switching.values()), return_exceptions=True)

    def _consider(self, document: AliasDocument, etag: str, warm: bool) -> bool:
        """Switch to ``document`` unless what is served (or being switched to) is as new; True when installed now."""
        alias = document.alias
        served = self.routes.get(alias)
        if served is not None and served.split.document.generation >= document.generation:
            return False
        pending = self._switching.get(alias)
        if pending is not None:
            if pending[0] >= document.generation:
                return False
            pending[1].cancel()  # superseded; the loads it started go on in the cache
        blocked = self._blocked.get(alias)
        if blocked is not None and blocked[0] == document.generation and time.monotonic() < blocked[1]:
            self._seen.pop(alias, None)  # read again at a later refresh, and tried again after RETRY_AFTER_S
            return False
        to_load = self._to_load(document) if warm else []
        if not to_load:
            self._install(document, etag)
            return True
        task = asyncio.create_task(self._switch(document, etag, to_load), name=f"switch alias {alias}")
        task.add_done_callback(log_task_failure)
        self._switching[alias] = (document.generation, task)
        return False

    def _to_load(self, document: AliasDocument) -> list[str]:
        """The versions to load before ``document`` takes the requests: those it routes to that are not loaded
        here, when the alias is served here (asked for lately, or one of its versions is loaded)."""
        if document.removed:
            return []
        alias = document.alias
        served = self.routes.get(alias)
        recently = time.monotonic() - self._last_used.get(alias, -IN_USE_WINDOW_S * 2) < IN_USE_WINDOW_S
        holds = served is not None and any(self.cache.is_ready(target) for target in served.split.document.targets())
        if not (recently or holds):
            return []
        wanted = [variant.target for variant in document.variants if variant.weight > 0]
        if document.shadow is not None:
            wanted.append(document.shadow.target)
        return [target for target in wanted if not self.cache.is_ready(target)]

    async def _switch(self, document: AliasDocument, etag: str, to_load: list[str]) -> None:
        alias = document.alias
        started = time.perf_counter()
        try:
            outcomes = await asyncio.gather(*(self._load(target) for target in to_load), return_exceptions=True)
            failures = {target: outcome for target, outcome in zip(to_load, outcomes, strict=True) if outcome}
            if failures:
                self._blocked[alias] = (document.generation, time.monotonic() + RETRY_AFTER_S)
                self._seen.pop(alias, None)
                log_json(
                    event_log,
                    {
                        "event": "alias_switch_failed",
                        "alias": alias,
                        "generation": document.generation,
                        "errors": {target: str(error) for target, error in failures.items()},
                        "retry_after_s": RETRY_AFTER_S,
                    },
                )
                return
            self._blocked.pop(alias, None)
            self._install(document, etag, switch_seconds=time.perf_counter() - started)
            await self.save()
        finally:
            current = self._switching.get(alias)
            if current is not None and current[1] is asyncio.current_task():
                del self._switching[alias]

    async def _load(self, target: str) -> BaseException | None:
        """Load ``target`` as a request would (evicting what the budgets say), or each archive it runs when it is a
        pipeline; the error, or None."""
        try:
            for archive in await self.expand(target) if self.expand is not None else [target]:
                async with self.cache.use(archive, wait=WARM_WAIT_S, counted=False):
                    pass
        except (EndpointError, OSError) as exc:
            return exc
        return None

    def _install(self, document: AliasDocument, etag: str, switch_seconds: float = 0.0, quiet: bool = False) -> None:
        alias = document.alias
        previous = self.routes.get(alias)
        if document.removed:
            self._uninstall(alias, "removed", document)
            return
        self.routes[alias] = _Route(Split(document), etag, time.time(), switch_seconds)
        if quiet:
            return
        self.moves.inc()
        change = document.change
        log_json(
            event_log,
            {
                "event": "alias_moved",
                "alias": alias,
                "generation": document.generation,
                "from": previous.split.document.summary() if previous is not None else None,
                "to": document.summary(),
                "by": change.by if change is not None else None,
                "reason": change.reason if change is not None else None,
                "switch_ms": round(switch_seconds * 1000, 2),
            },
        )

    def _uninstall(self, alias: str, why: str, document: AliasDocument | None = None) -> None:
        previous = self.routes.pop(alias, None)
        if previous is None:
            return
        self.moves.inc()
        change = document.change if document is not None else None
        log_json(
            event_log,
            {
                "event": "alias_removed",
                "alias": alias,
                "why": why,
                "from": previous.split.document.summary(),
                "by": change.by if change is not None else None,
                "reason": change.reason if change is not None else None,
            },
        )

    def _unreachable_now(self, exc: BaseException) -> None:
        self.refresh_failures.inc()
        if not self._unreachable:
            self._unreachable = True
            denied = isinstance(exc, botocore.exceptions.ClientError) and "AccessDenied" in str(exc)
            hint = " (it needs s3:ListBucket on the prefix; --alias-refresh 0 turns aliases off)" if denied else ""
            log.warning("cannot read the alias documents from S3 (%s); the last ones keep serving%s", exc, hint)

    # ---- the last documents served, for a restart without S3 -----------------------------------------------

    @property
    def snapshot_path(self) -> Path:
        return self.settings.cache_dir / SNAPSHOT_FILE_NAME

    async def save(self) -> None:
        routes = {alias: (route.etag, route.split.document.describe()) for alias, route in self.routes.items()}
        try:
            await asyncio.to_thread(_write_snapshot, self.snapshot_path, self.refreshed_at or time.time(), routes)
        except OSError as exc:
            log.warning("could not write %s: %s", self.snapshot_path, exc)

    # ---- figures --------------------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """``GET /aliases``: each alias served, its document, and the figures of its versions and shadow."""
        aliases: dict[str, Any] = {}
        for alias, route in sorted(self.routes.items()):
            document = route.split.document
            switching = self._switching.get(alias)
            aliases[alias] = {
                "generation": document.generation,
                "document": document.describe(),
                "installed_at": route.installed_at,
                "switch_ms": round(route.switch_seconds * 1000, 2),
                "switching_to": switching[0] if switching is not None else None,
            }
        return {
            "aliases": aliases,
            **self.figures.describe(),
            "refreshed_at": self.refreshed_at,
            "age_seconds": round(self.age(), 3),
            "refresh_seconds": self.settings.alias_refresh,
        }


def _write_snapshot(path: Path, saved_at: float, routes: Mapping[str, tuple[str, dict[str, Any]]]) -> None:
    data = {
        "saved_at": saved_at,
        "aliases": [{"etag": etag, "document": document} for etag, document in routes.values()],
    }
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data))
    os.replace(partial, path)


def _read_snapshot(path: Path) -> tuple[float, list[tuple[str, AliasDocument]]] | None:
    """The snapshot's save time and documents; None when there is none (or it cannot be read)."""
    with contextlib.suppress(FileNotFoundError):
        try:
            data = json.loads(path.read_text())
            documents = [(str(item["etag"]), AliasDocument.parse(item["document"])) for item in data.get("aliases", [])]
            return float(data["saved_at"]), documents
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring %s: %s", path, exc)
    return None
