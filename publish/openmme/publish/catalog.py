"""What a prefix holds: listing its models (as ``MultiDataModel.list_models()`` does) and removing one.

A model is any object under the prefix whose key, relative to the prefix, the endpoint accepts as a TargetModel;
keys it would refuse (``a//b``, ``./x``, folder markers ending in ``/``) can never be invoked and are not listed.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import botocore.exceptions

from openmme.endpoint.names import SUGGESTION_CANDIDATES, closest_target_model, listed_target_models
from openmme.publish._errors import ModelNotFound
from openmme.publish._s3 import (
    check_target_model,
    object_size,
    parse_prefix,
    require_bucket,
    s3_client,
    translate,
)

__all__ = ["PublishedModel", "list_models", "remove_model"]


@dataclass(frozen=True)
class PublishedModel:
    """One model of a prefix."""

    target_model: str
    size: int
    last_modified: datetime


def list_models(prefix: str, *, client: Any | None = None) -> Iterator[PublishedModel]:
    """Every model under ``prefix``, named as TargetModel, in key order (all pages of ListObjectsV2).

    Raises InvalidPrefix, BucketNotFound, StoreError (when the first page is read, as this is a generator).
    """
    client = client or s3_client()
    location = parse_prefix(prefix)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=location.key)
    try:
        for relative, item in listed_target_models(pages, location.key):
            yield PublishedModel(relative, int(item["Size"]), item["LastModified"])
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise translate(exc, f"listing {location}") from exc


def remove_model(prefix: str, target_model: str, *, client: Any | None = None) -> int:
    """Delete ``<prefix><target_model>``; returns the size it had. ModelNotFound when there is no such model.

    Endpoints that loaded the model keep serving their cached copy until they evict it.
    """
    client = client or s3_client()
    location = parse_prefix(prefix)
    target = check_target_model(target_model)
    require_bucket(client, location)
    size = object_size(client, location.child(target))
    if size is None:
        held = itertools.islice(list_models(prefix, client=client), SUGGESTION_CANDIDATES)
        likely = closest_target_model(target, (model.target_model for model in held))
        hint = f"; did you mean {likely}?" if likely else ""
        raise ModelNotFound(f"{location} holds no model {target}{hint}")
    try:
        client.delete_object(Bucket=location.bucket, Key=location.child(target).key)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise translate(exc, f"removing {location.child(target)}") from exc
    return size
