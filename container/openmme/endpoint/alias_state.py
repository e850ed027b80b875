"""The alias document: what an alias of a model prefix points at, how it is laid out in the prefix, and how one
request picks a version. A leaf (it imports only names.py, errors.py and pipeline_manifest.py), shared by the
endpoint (aliases.py, which resolves invocations with it) and ``openmme.publish.aliases`` (which writes it).

An alias is a TargetModel that names no archive but a set of versions (immutable archives of the prefix, or
pipeline manifests: pipeline_manifest.py), each
with a *variant* name (SageMaker's VariantName rules: the ``x-Amzn-Invoked-Production-Variant`` answered, and what
``TargetVariant`` pins) and a weight, the percent of the alias's traffic it gets; an optional *shadow* version
gets a mirrored sample whose answers are never returned. Layout, under the prefix:

    .openmme/aliases/<alias>.json                    the current document (the one object endpoints read)
    .openmme/history/<alias>/<generation>.json       one immutable record per change: the document it made

``.openmme/`` is reserved (names.py refuses TargetModels under it). Every change has the next generation number;
its history record is created first (create-only) and is the commit, the current document is then replaced with a
conditional write: see ``openmme.publish.aliases`` for why, and the README for the numbers.

Choosing a version: with ``TargetVariant`` the named one; otherwise a point in [0, 1) falls into the variants'
cumulative weights, in their order. The point is a hash of the alias and the request's sticky key (its InferenceId,
or one key of its CustomAttributes, as the alias says) when it has one, so one key always gets one version, and a
fresh random draw when it has none. Weights are laid out live version first, canary last, so a key that reached
the canary at 10 % still reaches it at 50 %.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from openmme.endpoint.errors import ValidationError
from openmme.endpoint.names import RESERVED_FOLDER, validate_target_model
from openmme.endpoint.pipeline_manifest import PIPELINE_SUFFIX, is_pipeline

__all__ = [
    "ALIAS_FORMAT",
    "DEFAULT_STICKY",
    "MAX_VARIANTS",
    "AliasDocument",
    "AliasInvalid",
    "Change",
    "Shadow",
    "Split",
    "Variant",
    "alias_from_state_key",
    "check_alias_name",
    "history_key",
    "history_prefix",
    "state_key",
    "state_prefix",
    "sticky_key",
    "variant_name_for",
]

ALIAS_FORMAT = 1
MAX_VARIANTS = 8
MAX_ALIAS_LENGTH = 255
DEFAULT_STICKY = "inference-id"
STATE_FOLDER = f"{RESERVED_FOLDER}aliases/"
HISTORY_FOLDER = f"{RESERVED_FOLDER}history/"
# SageMaker's VariantName (and TargetVariant) pattern, from botocore's sagemaker-runtime model.
_VARIANT_NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")
_ALIAS_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_STICKY_ATTRIBUTE = "custom-attribute:"
_WEIGHT_SLACK = 1e-6


class AliasInvalid(ValueError):
    """An alias name or document that cannot be: the message is one line for the operator."""


@dataclass(frozen=True)
class Variant:
    """One version of an alias: its variant name, the archive it serves, the percent of traffic it gets."""

    name: str
    target: str
    weight: float  # 0: reached only with TargetVariant

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "target": self.target, "weight": self.weight}


@dataclass(frozen=True)
class Shadow:
    """A version that gets ``percent`` of the alias's requests mirrored; its answers are never returned."""

    name: str
    target: str
    percent: float

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "target": self.target, "percent": self.percent}


@dataclass(frozen=True)
class Change:
    """Who made a generation, when, why, and from what (the routing of the generation before)."""

    action: str  # set, remove, rollout-start, rollout-step, promote, rollback
    by: str  # the access key id that wrote it
    user: str  # the operating-system user and host it was written from
    at: str  # ISO 8601, UTC
    reason: str
    id: str  # random: tells a writer its own record from a competitor's
    previous: Mapping[str, Any] | None = None  # {"generation", "variants", "shadow"} before this change

    def describe(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "by": self.by,
            "user": self.user,
            "at": self.at,
            "reason": self.reason,
            "id": self.id,
            "previous": dict(self.previous) if self.previous is not None else None,
        }


@dataclass(frozen=True)
class AliasDocument:
    """One generation of an alias. No variants: the alias was removed (a tombstone keeps the generations going)."""

    alias: str
    generation: int
    variants: tuple[Variant, ...]
    shadow: Shadow | None = None
    sticky: str = DEFAULT_STICKY
    change: Change | None = None
    rollout: Mapping[str, Any] | None = None  # a rollout in progress (openmme.publish.rollout); endpoints ignore it
    format: int = ALIAS_FORMAT

    @property
    def removed(self) -> bool:
        return not self.variants

    def variant(self, name: str) -> Variant | None:
        return next((variant for variant in self.variants if variant.name == name), None)

    def targets(self) -> list[str]:
        """Every archive the alias may route to: its variants' and its shadow's."""
        found = [variant.target for variant in self.variants]
        return found + ([self.shadow.target] if self.shadow is not None else [])

    def routing(self) -> dict[str, Any]:
        """What requests see of this generation (a change's ``previous``)."""
        return {
            "generation": self.generation,
            "variants": [variant.describe() for variant in self.variants],
            "shadow": self.shadow.describe() if self.shadow is not None else None,
        }

    def describe(self) -> dict[str, Any]:
        """The document as stored (JSON)."""
        return {
            "format": self.format,
            "alias": self.alias,
            "generation": self.generation,
            "variants": [variant.describe() for variant in self.variants],
            "shadow": self.shadow.describe() if self.shadow is not None else None,
            "sticky": self.sticky,
            "rollout": dict(self.rollout) if self.rollout is not None else None,
            "change": self.change.describe() if self.change is not None else None,
        }

    def summary(self) -> str:
        """One line: ``v7=houston/v7/model.tar.gz 90%, v8=… 10% (+ shadow v9=… 5%)``."""
        if self.removed:
            return "(removed)"
        parts = [f"{variant.name}={variant.target} {_percent(variant.weight)}" for variant in self.variants]
        text = ", ".join(parts)
        if self.shadow is not None:
            text += f" (shadow {self.shadow.name}={self.shadow.target} {_percent(self.shadow.percent)})"
        return text

    @classmethod
    def parse(cls, data: Any, alias: str | None = None) -> AliasDocument:
        """A stored document, checked (``check``); ``alias``: the name its key says it has."""
        if not isinstance(data, Mapping):
            raise AliasInvalid("an alias document is a JSON object")
        try:
            fmt = int(data.get("format", ALIAS_FORMAT))
            if fmt > ALIAS_FORMAT:
                raise AliasInvalid(f"alias document format {fmt} is newer than this openmme reads ({ALIAS_FORMAT})")
            variants = tuple(
                Variant(str(item["name"]), str(item["target"]), float(item["weight"]))
                for item in data.get("variants") or ()
            )
            raw_shadow = data.get("shadow")
            shadow = (
                Shadow(str(raw_shadow["name"]), str(raw_shadow["target"]), float(raw_shadow["percent"]))
                if raw_shadow
                else None
            )
            raw_change = data.get("change")
            change = (
                Change(
                    str(raw_change.get("action", "")),
                    str(raw_change.get("by", "")),
                    str(raw_change.get("user", "")),
                    str(raw_change.get("at", "")),
                    str(raw_change.get("reason", "")),
                    str(raw_change.get("id", "")),
                    raw_change.get("previous"),
                )
                if raw_change
                else None
            )
            document = cls(
                alias=str(data["alias"]),
                generation=int(data["generation"]),
                variants=variants,
                shadow=shadow,
                sticky=str(data.get("sticky") or DEFAULT_STICKY),
                change=change,
                rollout=data.get("rollout"),
                format=fmt,
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, AliasInvalid):
                raise
            raise AliasInvalid(f"malformed alias document: {exc!r}") from exc
        if alias is not None and document.alias != alias:
            raise AliasInvalid(f"the document of alias {alias!r} names alias {document.alias!r}")
        return document.check()

    def check(self) -> AliasDocument:
        """This document, when it is one an endpoint can serve; AliasInvalid with the first reason otherwise."""
        check_alias_name(self.alias)
        if self.generation < 1:
            raise AliasInvalid(f"alias {self.alias}: generation must be 1 or more, not {self.generation}")
        check_sticky(self.sticky)
        if self.removed:
            if self.shadow is not None:
                raise AliasInvalid(f"alias {self.alias}: a removed alias has no shadow")
            return self
        if len(self.variants) > MAX_VARIANTS:
            raise AliasInvalid(f"alias {self.alias}: at most {MAX_VARIANTS} versions, not {len(self.variants)}")
        names: set[str] = set()
        targets: set[str] = set()
        every: list[Variant | Shadow] = [*self.variants, *([self.shadow] if self.shadow is not None else [])]
        for version in every:
            if not _VARIANT_NAME.fullmatch(version.name):
                raise AliasInvalid(
                    f"alias {self.alias}: {version.name!r} is not a variant name (SageMaker's VariantName: letters,"
                    " digits and inner hyphens, at most 63)"
                )
            try:
                validate_target_model(version.target)
            except ValidationError as exc:
                raise AliasInvalid(f"alias {self.alias}: version {version.name}: {exc.message}") from exc
            if version.target in targets:
                raise AliasInvalid(f"alias {self.alias}: {version.target} is given twice")
            if version.target == self.alias:
                raise AliasInvalid(f"alias {self.alias} cannot point at itself (a cycle)")
            targets.add(version.target)
            if version.name in names:
                raise AliasInvalid(f"alias {self.alias}: two versions are named {version.name!r} (name them apart)")
            names.add(version.name)
        for variant in self.variants:
            if not math.isfinite(variant.weight) or not 0 <= variant.weight <= 100:
                raise AliasInvalid(
                    f"alias {self.alias}: the weight of {variant.name} must be a percent from 0 to 100, not"
                    f" {variant.weight:g}"
                )
        total = sum(variant.weight for variant in self.variants)
        if abs(total - 100) > _WEIGHT_SLACK:
            shown = " + ".join(f"{variant.weight:g}" for variant in self.variants)
            raise AliasInvalid(f"alias {self.alias}: the weights must add up to 100, not {shown} = {total:g}")
        if self.shadow is not None and not (0 < self.shadow.percent <= 100 and math.isfinite(self.shadow.percent)):
            raise AliasInvalid(
                f"alias {self.alias}: the shadow's percent must be more than 0 and at most 100, not"
                f" {self.shadow.percent:g}"
            )
        return self

    def with_routing(
        self, variants: Sequence[Variant], shadow: Shadow | None, sticky: str | None = None
    ) -> AliasDocument:
        return replace(self, variants=tuple(variants), shadow=shadow, sticky=sticky or self.sticky)


@dataclass(frozen=True)
class Split:
    """An alias document made ready for the request path: cumulative weights, variants by name."""

    document: AliasDocument
    bounds: tuple[float, ...] = field(init=False)
    by_name: Mapping[str, Variant] = field(init=False)
    attribute: str | None = field(init=False)  # the CustomAttributes key that is the sticky key, if one is

    def __post_init__(self) -> None:
        total, bounds = 0.0, []
        for variant in self.document.variants:
            total += variant.weight / 100.0
            bounds.append(total)
        object.__setattr__(self, "bounds", tuple(bounds))
        object.__setattr__(self, "by_name", {variant.name: variant for variant in self.document.variants})
        sticky = self.document.sticky
        object.__setattr__(
            self, "attribute", sticky[len(_STICKY_ATTRIBUTE) :] if sticky.startswith(_STICKY_ATTRIBUTE) else None
        )

    def choose(self, key: str | None, draw: float) -> Variant:
        """The variant for a request whose sticky key is ``key`` (None: none), ``draw`` a uniform random in [0, 1)
        used when it has no key."""
        point = _unit_hash(self.document.alias, key) if key is not None else draw
        variants = self.document.variants
        for variant, bound in zip(variants, self.bounds, strict=True):
            if point < bound and variant.weight > 0:
                return variant
        return next(variant for variant in reversed(variants) if variant.weight > 0)


def sticky_key(
    sticky: str, attribute: str | None, inference_id: str | None, custom_attributes: str | None
) -> str | None:
    """The request's sticky key as the alias's ``sticky`` setting says: its InferenceId, the value of one key of its
    CustomAttributes (``user=42; trace=abc``: pairs separated by ``;`` or ``,``), or none."""
    if sticky == DEFAULT_STICKY:
        return inference_id or None
    if attribute is not None and custom_attributes:
        for pair in re.split(r"[;,]", custom_attributes):
            name, equals, value = pair.partition("=")
            if equals and name.strip() == attribute:
                return value.strip() or None
    return None


def check_sticky(sticky: str) -> str:
    if sticky in (DEFAULT_STICKY, "none"):
        return sticky
    if sticky.startswith(_STICKY_ATTRIBUTE) and re.fullmatch(r"[A-Za-z0-9_.-]+", sticky[len(_STICKY_ATTRIBUTE) :]):
        return sticky
    raise AliasInvalid(
        f"sticky must be inference-id, custom-attribute:KEY (letters, digits, _ . -) or none, not {sticky!r}"
    )


def check_alias_name(alias: str) -> str:
    """``alias`` unchanged when it can name an alias: ``/``-separated segments of letters, digits, ``_ . -`` (each
    starting with a letter or digit), not an archive's name (``.tar.gz``, ``.tgz``, ``.tar``), at most 255."""
    if not alias or len(alias) > MAX_ALIAS_LENGTH:
        raise AliasInvalid(f"an alias name has 1 to {MAX_ALIAS_LENGTH} characters: {alias!r}")
    if alias.startswith(RESERVED_FOLDER) or not all(_ALIAS_SEGMENT.fullmatch(part) for part in alias.split("/")):
        raise AliasInvalid(
            f"{alias!r} is not an alias name: segments of letters, digits, '_', '.', '-' separated by '/', each"
            " starting with a letter or digit"
        )
    if alias.endswith(_ARCHIVE_SUFFIXES) or is_pipeline(alias):
        raise AliasInvalid(
            f"{alias!r} ends like an archive or a pipeline; an alias name must not (e.g. houston, houston/live)"
        )
    return alias


def variant_name_for(alias: str, target: str) -> str:
    """A variant name for ``target`` as a version of ``alias``: ``houston/v7/model.tar.gz`` → ``v7``,
    ``houston/model-v2.tar.gz`` → ``model-v2``, ``m-17.tar.gz`` → ``m-17``."""
    stem = target
    for suffix in (*_ARCHIVE_SUFFIXES, PIPELINE_SUFFIX):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    stem = stem.removesuffix("/model").removeprefix(alias + "/")
    name = re.sub(r"[^A-Za-z0-9]+", "-", stem).strip("-")[:63].strip("-")
    return name or "version"


def state_prefix(prefix_key: str) -> str:
    """The key prefix every alias's current document is under (``prefix_key``: the model prefix's key)."""
    return prefix_key + STATE_FOLDER


def state_key(prefix_key: str, alias: str) -> str:
    return f"{prefix_key}{STATE_FOLDER}{alias}.json"


def alias_from_state_key(prefix_key: str, key: str) -> str | None:
    """The alias a listed key is the document of; None for anything else."""
    start = state_prefix(prefix_key)
    if not key.startswith(start) or not key.endswith(".json"):
        return None
    alias = key[len(start) : -len(".json")]
    try:
        return check_alias_name(alias)
    except AliasInvalid:
        return None


def history_prefix(prefix_key: str, alias: str) -> str:
    return f"{prefix_key}{HISTORY_FOLDER}{alias}/"


def history_key(prefix_key: str, alias: str, generation: int) -> str:
    """Zero-padded, so the records list in generation order."""
    return f"{history_prefix(prefix_key, alias)}{generation:010d}.json"


def _unit_hash(alias: str, key: str) -> float:
    """A stable point in [0, 1) for ``key`` under ``alias`` (the same on every replica and every restart)."""
    digest = hashlib.blake2b(f"{alias}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def _percent(value: float) -> str:
    return f"{value:g}%"
