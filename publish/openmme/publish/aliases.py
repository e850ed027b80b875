"""Aliases of a model prefix: setting, showing, listing, removing and rolling back, with every change recorded.

An alias (``houston``) is a TargetModel that stands for versions, immutable archives of the prefix
(``houston/v7/model.tar.gz``), with weights and an optional shadow; the document format and layout are in
``openmme.endpoint.alias_state``. Endpoints read the documents themselves; changing an alias is writing its
document, which this module does safely:

- **Checked first, nothing written on a refusal.** A version must be an archive of the prefix (not an alias: an
  alias points at archives only, so there are no chains and no cycles), and every version new to the alias is
  downloaded and loaded with the handler the endpoint will use, as ``openmme publish path`` checks a model (and
  answers ``sample`` when given). Weights are percents that add up to 100. The alias's name must not be an
  archive's.
- **No lost update.** A change reads the current document (generation N, its ETag), builds generation N+1, then
  creates the history record ``.openmme/history/<alias>/<N+1>.json`` with ``If-None-Match: *``: of two writers
  that read N, exactly one can create it; the other is told (``AliasConflict``) and nothing of its change is
  written. That record is the commit; the current document is then replaced with ``If-Match: <ETag of N>``. A
  writer that stops between the two leaves a record ahead of the document (endpoints do not see it yet): the
  next change finds it and writes the document from it first, so no committed change is lost or skipped.
  ``expect_generation`` refuses a change when someone else changed the alias since the operator looked
  (``openmme alias show``).
- **Audited.** Every record carries who (the access key id, and the user@host it ran on), when, why (``reason``),
  what the alias pointed at before, and the new document.

Conditional writes are S3's ``If-None-Match``/``If-Match`` on PutObject (AWS S3 since 2024; SeaweedFS, MinIO).
A store that ignores them would make both writers win: before the first write to a prefix, a probe object is
created twice with ``If-None-Match: *``, and a store that accepts the second is refused
(``ConditionalWritesUnsupported``) rather than trusted.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import socket
import tempfile
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import botocore.exceptions

from openmme.endpoint.alias_state import (
    DEFAULT_STICKY,
    AliasDocument,
    AliasInvalid,
    Change,
    Shadow,
    Variant,
    alias_from_state_key,
    check_alias_name,
    check_sticky,
    history_key,
    history_prefix,
    state_key,
    state_prefix,
    variant_name_for,
)
from openmme.endpoint.names import RESERVED_FOLDER, S3Location
from openmme.endpoint.pipeline_manifest import PipelineInvalid, PipelineManifest, is_pipeline
from openmme.publish._errors import PublishError, StoreError
from openmme.publish._s3 import (
    check_target_model,
    object_size,
    parse_prefix,
    put_json_if,
    read_object,
    require_bucket,
    s3_client,
    translate,
)
from openmme.publish.check import check_archive

__all__ = [
    "AliasConflict",
    "AliasContext",
    "AliasNotFound",
    "AliasRefused",
    "ConditionalWritesUnsupported",
    "Routing",
    "ShadowSpec",
    "VersionSpec",
    "alias_history",
    "commit_alias",
    "get_alias",
    "list_aliases",
    "remove_alias",
    "rollback_alias",
    "set_alias",
]

# Rolling a half-written change forward, then trying again, happens at most this often per change.
_MAX_ROLL_FORWARD = 3
_PROBE_NAME = "conditional-write-probe"
_probed: set[tuple[str, str, str]] = set()
_probe_lock = threading.Lock()
T = TypeVar("T")


class AliasRefused(PublishError, ValueError):
    """The change cannot be made as asked: a bad name, weights, a version missing, unloadable or unknown, a cycle.
    Nothing was written."""


class AliasConflict(PublishError):
    """Someone else changed the alias first (or since ``expect_generation``); nothing of this change was written."""

    def __init__(self, message: str, current: AliasDocument | None) -> None:
        super().__init__(message)
        self.current = current


class AliasNotFound(PublishError, LookupError):
    """The prefix has no such alias (or it was removed)."""


class ConditionalWritesUnsupported(StoreError):
    """The S3 store ignores If-None-Match/If-Match on PutObject: alias changes could overwrite each other."""


@dataclass(frozen=True)
class VersionSpec:
    """A version asked for: an archive of the prefix, its percent of the traffic, its variant name (None: derived
    from the archive's name, ``houston/v7/model.tar.gz`` → ``v7``, or the name it already has in the alias)."""

    target: str
    weight: float = 100.0
    name: str | None = None

    @classmethod
    def parse(cls, text: str, name: str | None = None) -> VersionSpec:
        """``TARGET`` (all the traffic) or ``TARGET=PERCENT``."""
        target, equals, weight = text.rpartition("=")
        if equals:
            try:
                return cls(target, float(weight), name)
            except ValueError:
                pass
        return cls(text, 100.0, name)


@dataclass(frozen=True)
class ShadowSpec:
    """A shadow version asked for: an archive that gets ``percent`` of the alias's requests mirrored."""

    target: str
    percent: float
    name: str | None = None

    @classmethod
    def parse(cls, text: str, name: str | None = None) -> ShadowSpec:
        """``TARGET=PERCENT``."""
        target, equals, percent = text.rpartition("=")
        try:
            return cls(target, float(percent), name) if equals else cls(text, 100.0, name)
        except ValueError as exc:
            raise AliasRefused(f"a shadow is TARGET=PERCENT, e.g. houston/v9/model.tar.gz=5, not {text!r}") from exc


# ---- reading ------------------------------------------------------------------------------------------------


def get_alias(prefix: str, alias: str, *, client: Any | None = None) -> AliasDocument:
    """The current document of ``alias``; AliasNotFound when it has none or was removed."""
    client = client or s3_client()
    location = parse_prefix(prefix)
    document, _ = _read_current(client, location, _checked_name(alias))
    if document is None or document.removed:
        raise AliasNotFound(f"{location} has no alias {alias}{_listing_hint(client, location)}")
    return document


def list_aliases(prefix: str, *, client: Any | None = None) -> list[AliasDocument]:
    """Every alias of ``prefix`` (removed ones left out), by name."""
    client = client or s3_client()
    location = parse_prefix(prefix)
    found = []
    for alias in _alias_names(client, location):
        document, _ = _read_current(client, location, alias)
        if document is not None and not document.removed:
            found.append(document)
    return found


def alias_history(prefix: str, alias: str, *, client: Any | None = None, limit: int = 0) -> list[AliasDocument]:
    """Every recorded generation of ``alias``, oldest first (``limit``: only the last so many)."""
    client = client or s3_client()
    location = parse_prefix(prefix)
    alias = _checked_name(alias)
    keys: list[str] = []
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=location.bucket, Prefix=history_prefix(location.key, alias), Delimiter="/"
    )
    try:
        for page in pages:
            keys.extend(str(item["Key"]) for item in page.get("Contents", []))
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise translate(exc, f"listing the history of alias {alias}") from exc
    keys.sort()
    if limit:
        keys = keys[-limit:]
    if not keys:
        raise AliasNotFound(f"{location} has no history of alias {alias}{_listing_hint(client, location)}")
    records = []
    for key in keys:
        record = _read_json(client, S3Location(location.bucket, key), alias)
        if record is not None:
            records.append(record[0])
    return records


# ---- changing -----------------------------------------------------------------------------------------------


def set_alias(
    prefix: str,
    alias: str,
    versions: Sequence[VersionSpec | str],
    *,
    shadow: ShadowSpec | None = None,
    sticky: str | None = None,
    reason: str = "",
    expect_generation: int | None = None,
    check: bool = True,
    sample: bytes | None = None,
    sample_content_type: str = "text/csv",
    client: Any | None = None,
    by: str | None = None,
) -> AliasDocument:
    """Point ``alias`` at ``versions`` (and ``shadow``); returns the document written.

    ``sticky``: which request key keeps a caller on one version (``inference-id``, ``custom-attribute:KEY``, or
    ``none``; None keeps the alias's, ``inference-id`` for a new one). ``check=False`` skips loading new versions
    (they must still exist). Raises AliasRefused, AliasConflict, ConditionalWritesUnsupported, StoreError,
    InvalidPrefix, BucketNotFound; nothing is written unless it returns."""
    specs = [VersionSpec.parse(item) if isinstance(item, str) else item for item in versions]
    if not specs:
        raise AliasRefused(f"alias {alias}: give at least one version (an archive of the prefix)")
    if sticky is not None:
        _refused_if_invalid(lambda: check_sticky(sticky))

    def make(current: AliasDocument | None, context: AliasContext) -> Routing:
        names = _names_in(current)

        def name_of(given: str | None, target: str) -> str:
            return given or names.get(target) or variant_name_for(alias, target)

        variants = tuple(Variant(name_of(spec.name, spec.target), spec.target, spec.weight) for spec in specs)
        shadowed = Shadow(name_of(shadow.name, shadow.target), shadow.target, shadow.percent) if shadow else None
        routing = Routing(variants, shadowed, sticky or (current.sticky if current else DEFAULT_STICKY), None)
        context.check_versions(routing, current, check=check, sample=sample, content_type=sample_content_type)
        return routing

    return commit_alias(prefix, alias, make, "set", reason, expect_generation=expect_generation, client=client, by=by)


def remove_alias(
    prefix: str,
    alias: str,
    *,
    reason: str = "",
    expect_generation: int | None = None,
    client: Any | None = None,
    by: str | None = None,
) -> AliasDocument:
    """Remove ``alias``: its document becomes a tombstone (endpoints stop answering it), its history stays."""

    def make(current: AliasDocument | None, context: AliasContext) -> Routing:
        if current is None or current.removed:
            raise AliasNotFound(f"{context.location} has no alias {alias}")
        return Routing((), None, current.sticky, None)

    return commit_alias(
        prefix, alias, make, "remove", reason, expect_generation=expect_generation, client=client, by=by
    )


def rollback_alias(
    prefix: str,
    alias: str,
    to: str | None = None,
    *,
    reason: str = "",
    expect_generation: int | None = None,
    client: Any | None = None,
    by: str | None = None,
    action: str = "rollback",
) -> AliasDocument:
    """Send all of ``alias``'s traffic to one version: ``to`` (a variant name or an archive the alias pointed at in
    any recorded generation), or by default the last version that took all of it before what serves now (the live
    version, during a rollout; the one before a promotion, after it). AliasRefused for a version the alias never
    had, or when there is nothing to go back to. One alias write, as any change."""

    def make(current: AliasDocument | None, context: AliasContext) -> Routing:
        if current is None or current.removed:
            raise AliasNotFound(f"{context.location} has no alias {alias}")
        version = _known_version(context, alias, current, to) if to is not None else _last_sole(context, current)
        routing = Routing((Variant(version.name, version.target, 100.0),), None, current.sticky, None)
        context.check_versions(routing, None, check=False)
        return routing

    return commit_alias(prefix, alias, make, action, reason, expect_generation=expect_generation, client=client, by=by)


@dataclass(frozen=True)
class Routing:
    """What a change sets: the versions, the shadow, the sticky key and the rollout record."""

    variants: tuple[Variant, ...]
    shadow: Shadow | None
    sticky: str
    rollout: dict[str, Any] | None


@dataclass
class AliasContext:
    """What a change's ``make`` may use: the client and prefix, and the checks of versions."""

    client: Any
    location: S3Location
    alias: str

    def check_versions(
        self,
        routing: Routing,
        current: AliasDocument | None,
        *,
        check: bool,
        sample: bytes | None = None,
        content_type: str = "text/csv",
    ) -> None:
        """Every version must be an archive or a pipeline of the prefix (not an alias); archives new to the alias
        must load, pipelines new to it must be manifests an endpoint can run (their steps were checked when the
        pipeline was published: openmme pipeline publish)."""
        known = set(current.targets()) if current is not None else set()
        versions: list[Variant | Shadow] = [*routing.variants, *([routing.shadow] if routing.shadow else [])]
        for version in versions:
            try:
                target = check_target_model(version.target)
            except ValueError as exc:
                raise AliasRefused(f"alias {self.alias}: version {version.name}: {exc}") from exc
            if target == self.alias:
                raise AliasRefused(f"alias {self.alias} cannot point at itself (a cycle)")
            aliased, _ = _read_current(self.client, self.location, target) if _is_alias_name(target) else (None, None)
            if aliased is not None and not aliased.removed:
                back = " (and it points back here: a cycle)" if self.alias in aliased.targets() else ""
                raise AliasRefused(
                    f"{target} is an alias{back}; an alias points at archives and pipelines only: give a version of"
                    " it, e.g."
                    f" {aliased.variants[0].target}"
                )
            size = object_size(self.client, self.location.child(target))
            if size is None:
                raise AliasRefused(
                    f"{target} is not in {self.location}: publish it first (openmme publish path … --name"
                    f" {target.removesuffix('/model.tar.gz')})"
                )
            if is_pipeline(target):
                self._read_pipeline(target)
            elif check and target not in known:
                self._load(target, sample if isinstance(version, Variant) else None, content_type)

    def _read_pipeline(self, target: str) -> None:
        found = read_object(self.client, self.location.child(target))
        if found is None:  # deleted since its size was read
            raise AliasRefused(f"{target} is not in {self.location}: publish it first (openmme pipeline publish)")
        try:
            PipelineManifest.from_bytes(found[0], target)
        except PipelineInvalid as exc:
            raise AliasRefused(f"{target} cannot be served: {exc}") from exc

    def _load(self, target: str, sample: bytes | None, content_type: str) -> None:
        location = self.location.child(target)
        with tempfile.TemporaryDirectory(prefix="openmme-alias-") as scratch:
            archive = Path(scratch) / "model.tar.gz"
            try:
                self.client.download_file(location.bucket, location.key, str(archive))
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                raise translate(exc, f"downloading {location} to check it") from exc
            try:
                check_archive(archive, sample=sample, content_type=content_type)
            except PublishError as exc:
                raise AliasRefused(f"{target} cannot be served: {exc}") from exc


def commit_alias(
    prefix: str,
    alias: str,
    make: Callable[[AliasDocument | None, AliasContext], Routing],
    action: str,
    reason: str,
    *,
    expect_generation: int | None = None,
    client: Any | None = None,
    by: str | None = None,
    rollout: Callable[[AliasDocument | None, Routing], dict[str, Any] | None] | None = None,
) -> AliasDocument:
    """One change of ``alias``: ``make`` builds the new routing from the current document (None: no alias yet) and
    may refuse; the new generation is then committed as the module docstring says. ``rollout`` gives the rollout
    record to keep in the document (default: none). Returns the document written."""
    client = client or s3_client()
    location = parse_prefix(prefix)
    alias = _checked_name(alias)
    require_bucket(client, location)
    current, etag = _current_rolled_forward(client, location, alias)
    generation = current.generation if current is not None else 0
    if expect_generation is not None and generation != expect_generation:
        raise AliasConflict(
            f"alias {alias} is at generation {generation}, not {expect_generation}: {_last_change(current)}; nothing"
            " was written (look again with openmme alias show)",
            current,
        )
    if current is None and object_size(client, location.child(alias)) is not None:
        raise AliasRefused(f"{alias} is an archive of {location}; an alias cannot take an archive's name")
    context = AliasContext(client, location, alias)
    routing = make(current, context)
    if rollout is not None:
        routing = Routing(routing.variants, routing.shadow, routing.sticky, rollout(current, routing))
    change = Change(
        action=action,
        by=by or _access_key_id(client),
        user=_user(),
        at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        reason=reason,
        id=uuid.uuid4().hex,
        previous=current.routing() if current is not None else None,
    )
    document = _refused_if_invalid(
        lambda: AliasDocument(
            alias, generation + 1, routing.variants, routing.shadow, routing.sticky, change, routing.rollout
        ).check()
    )
    _require_conditional_writes(client, location)
    body = json.dumps(document.describe(), indent=1).encode()
    record = S3Location(location.bucket, history_key(location.key, alias, document.generation))
    if not put_json_if(client, record, body, unsupported=_unsupported, IfNoneMatch="*"):
        found = _read_json(client, record, alias)
        winner = found[0] if found is not None else current
        raise AliasConflict(
            f"alias {alias} was changed by someone else while this change was prepared ({_last_change(winner)});"
            " nothing was written: look again (openmme alias show) and retry",
            winner,
        )
    _write_current(client, location, alias, body, etag, document)
    return document


# ---- the commit's steps --------------------------------------------------------------------------------------


def _current_rolled_forward(client: Any, location: S3Location, alias: str) -> tuple[AliasDocument | None, str | None]:
    """The current document and its ETag, after finishing any change whose history record was written but whose
    document was not (its writer stopped between the two)."""
    for _ in range(_MAX_ROLL_FORWARD):
        current, etag = _read_current(client, location, alias)
        generation = current.generation if current is not None else 0
        ahead = _read_json(client, S3Location(location.bucket, history_key(location.key, alias, generation + 1)), alias)
        if ahead is None:
            return current, etag
        put_json_if(client, location_of_state(location, alias), ahead[1], unsupported=_unsupported, **_condition(etag))
    raise StoreError(f"alias {alias}: its document keeps falling behind its history; try again")


def _write_current(
    client: Any, location: S3Location, alias: str, body: bytes, etag: str | None, document: AliasDocument
) -> None:
    """Replace the current document with the committed one, unless someone rolled it forward already."""
    if put_json_if(client, location_of_state(location, alias), body, unsupported=_unsupported, **_condition(etag)):
        return
    now, _ = _read_current(client, location, alias)
    if now is not None and now.generation >= document.generation:
        return  # rolled forward by the next writer (our record is the commit either way)
    raise StoreError(
        f"alias {alias}: generation {document.generation} is recorded but its document could not be written; the"
        " next change of the alias finishes it"
    )


def location_of_state(location: S3Location, alias: str) -> S3Location:
    return S3Location(location.bucket, state_key(location.key, alias))


def _condition(etag: str | None) -> dict[str, str]:
    return {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}


def _require_conditional_writes(client: Any, location: S3Location) -> None:
    """ConditionalWritesUnsupported unless the store refuses a second create-only write of the same key."""
    key = (str(client.meta.endpoint_url), location.bucket, location.key)
    with _probe_lock:
        if key in _probed:
            return
    probe = S3Location(location.bucket, f"{location.key}{RESERVED_FOLDER}{_PROBE_NAME}")
    put_json_if(client, probe, b"probe", unsupported=_unsupported, IfNoneMatch="*")  # created now, or there already
    if put_json_if(client, probe, b"probe", unsupported=_unsupported, IfNoneMatch="*"):
        raise _unsupported(location)
    with _probe_lock:
        _probed.add(key)


def _unsupported(location: S3Location) -> ConditionalWritesUnsupported:
    return ConditionalWritesUnsupported(
        f"the S3 store of {location} ignores conditional writes (If-None-Match/If-Match on PutObject), so two alias"
        " changes could overwrite each other: use a store that honours them (AWS S3, SeaweedFS, MinIO)"
    )


def _read_current(client: Any, location: S3Location, alias: str) -> tuple[AliasDocument | None, str | None]:
    """The current document of ``alias`` and its ETag; (None, None) when it has none."""
    found = _read_json(client, location_of_state(location, alias), alias)
    return (found[0], found[2]) if found is not None else (None, None)


def _read_json(client: Any, location: S3Location, alias: str) -> tuple[AliasDocument, bytes, str] | None:
    """The alias document at ``location``, its body and ETag; None when there is none."""
    found = read_object(client, location)
    if found is None:
        return None
    body, etag = found
    try:
        document = AliasDocument.parse(json.loads(body), alias)
    except (ValueError, AliasInvalid) as exc:
        raise StoreError(f"{location} is not an alias document openmme can read: {exc}") from exc
    return document, body, etag


def _alias_names(client: Any, location: S3Location) -> list[str]:
    names = []
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=state_prefix(location.key))
    try:
        for page in pages:
            for item in page.get("Contents", []):
                alias = alias_from_state_key(location.key, str(item["Key"]))
                if alias is not None:
                    names.append(alias)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise translate(exc, f"listing the aliases of {location}") from exc
    return sorted(names)


# ---- small helpers -------------------------------------------------------------------------------------------


def _checked_name(alias: str) -> str:
    return _refused_if_invalid(lambda: check_alias_name(alias))


def _refused_if_invalid(check: Callable[[], T]) -> T:
    """``check()``'s result; its AliasInvalid or InvalidTargetModel (both ValueErrors) as AliasRefused."""
    try:
        return check()
    except ValueError as exc:
        raise AliasRefused(str(exc)) from exc


def _is_alias_name(name: str) -> bool:
    try:
        check_alias_name(name)
    except AliasInvalid:
        return False
    return True


def _names_in(current: AliasDocument | None) -> dict[str, str]:
    """The variant name each archive already has in the alias, so that re-weighting keeps names."""
    if current is None:
        return {}
    names = {variant.target: variant.name for variant in current.variants}
    if current.shadow is not None:
        names[current.shadow.target] = current.shadow.name
    return names


def _last_sole(context: AliasContext, current: AliasDocument) -> Variant:
    """The version to roll back to by default: during a rollout its live version; otherwise the newest earlier
    generation where one version took all the traffic, other than the versions serving now."""
    alias = current.alias
    if current.rollout:
        return Variant(str(current.rollout["live"]), str(current.rollout["live_target"]), 100.0)
    serving = {variant.target for variant in current.variants if variant.weight > 0}
    for document in reversed(alias_history(str(context.location), alias, client=context.client)):
        sole = [variant for variant in document.variants if variant.weight > 0]
        if document.generation < current.generation and len(sole) == 1 and {sole[0].target} != serving:
            return sole[0]
    raise AliasRefused(f"alias {alias} has no earlier version to go back to; name one with --to")


def _known_version(context: AliasContext, alias: str, current: AliasDocument, wanted: str) -> Variant:
    """The version ``wanted`` names (a variant name or an archive) in any recorded generation of ``alias``."""
    seen: list[Variant] = []
    records = alias_history(str(context.location), alias, client=context.client)
    for document in [current, *reversed(records)]:
        candidates: list[Variant | Shadow] = [*document.variants, *([document.shadow] if document.shadow else [])]
        for version in candidates:
            if wanted in (version.name, version.target):
                return Variant(version.name, version.target, 100.0)
            if all(version.target != known.target for known in seen):
                seen.append(Variant(version.name, version.target, 0.0))
    listed = ", ".join(f"{version.name} ({version.target})" for version in seen) or "none"
    raise AliasRefused(f"unknown version {wanted}: alias {alias} never pointed at it; its versions so far: {listed}")


def _last_change(document: AliasDocument | None) -> str:
    if document is None or document.change is None:
        return "no change recorded"
    change = document.change
    return f"generation {document.generation}, {change.action} by {change.by} at {change.at}"


def _listing_hint(client: Any, location: S3Location) -> str:
    with contextlib.suppress(PublishError):
        names = _alias_names(client, location)
        if names:
            return f" (its aliases: {', '.join(names[:10])}{' …' if len(names) > 10 else ''})"
    return ""


def _access_key_id(client: Any) -> str:
    """Who writes: the access key id the client signs with."""
    signer = getattr(client, "_request_signer", None)
    credentials = getattr(signer, "_credentials", None)
    key = getattr(credentials, "access_key", None)
    return str(key) if key else "unknown"


def _user() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"
