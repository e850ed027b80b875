"""The pipelines one endpoint serves: manifests (pipeline_manifest.py) read from the model prefix on first use and
kept, and those served from local files (``--pipeline-file``); the data plane (dataplane.py) runs their steps.

A manifest is read once per endpoint, as an archive is downloaded once: SageMaker's multi-model endpoints never
reload a TargetModel that was overwritten, and neither do these (a new pipeline gets a new key). Concurrent first
requests for one manifest share one GetObject. A manifest that cannot be read, or is invalid, is not kept: the
next request reads it again. At most ``KEPT_MANIFESTS`` are kept, least recently used dropped first.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

from openmme.endpoint.errors import ValidationError
from openmme.endpoint.pipeline_manifest import MANIFEST_MAX_BYTES, PipelineInvalid, PipelineManifest
from openmme.endpoint.s3 import ModelSource
from openmme.endpoint.settings import Settings

__all__ = ["KEPT_MANIFESTS", "Pipelines"]

KEPT_MANIFESTS = 4096


class Pipelines:
    """Pipeline manifests by name: local files first, then the model prefix (read once, kept)."""

    def __init__(
        self, source: ModelSource | None, local: Mapping[str, PipelineManifest] | None = None, default: str = ""
    ) -> None:
        self.source = source
        self.local = dict(local or {})
        self.default = default  # --pipeline: the manifest every TargetModel that is no pipeline runs through
        self._kept: OrderedDict[str, PipelineManifest] = OrderedDict()
        self._reading: dict[str, asyncio.Future[PipelineManifest]] = {}

    @classmethod
    def from_settings(cls, settings: Settings, source: ModelSource | None) -> Pipelines:
        """Raises ValueError, naming the file, for a ``--pipeline-file`` that cannot be read or is invalid."""
        local = {name: _read_local(name, path) for name, path in settings.pipeline_file}
        return cls(source, local, settings.pipeline)

    async def manifest(self, name: str) -> PipelineManifest:
        """The manifest ``name``; ValidationError when there is none or it is not one an endpoint can run."""
        found = self.local.get(name) or self._kept.get(name)
        if found is not None:
            if name in self._kept:
                self._kept.move_to_end(name)
            return found
        reading = self._reading.get(name)
        if reading is None:
            reading = asyncio.get_running_loop().create_future()
            self._reading[name] = reading
            try:
                manifest = await self._read(name)
            except BaseException as exc:
                reading.set_exception(exc)
                reading.exception()  # retrieved: nobody else may be waiting
                raise
            else:
                reading.set_result(manifest)
                self._keep(manifest)
                return manifest
            finally:
                del self._reading[name]
        return await asyncio.shield(reading)

    def describe(self) -> dict[str, object]:
        """What ``GET /models`` says of the pipelines: the manifests read, and the endpoint-wide one."""
        return {"default": self.default or None, "local": sorted(self.local), "read": len(self._kept)}

    async def _read(self, name: str) -> PipelineManifest:
        if self.source is None:
            raise ValidationError(f"pipeline {name!r} is not served here: this endpoint has no model prefix")
        try:
            body = await asyncio.to_thread(self.source.read, name, MANIFEST_MAX_BYTES)
        except ValidationError as error:  # not in the prefix, too large, not readable (S3 down: as it is)
            raise ValidationError(f"pipeline {name!r} cannot be read: {error.message}") from error
        try:
            return PipelineManifest.from_bytes(body, name)
        except PipelineInvalid as exc:
            raise ValidationError(str(exc)) from exc

    def _keep(self, manifest: PipelineManifest) -> None:
        self._kept[manifest.name] = manifest
        while len(self._kept) > KEPT_MANIFESTS:
            self._kept.popitem(last=False)


def _read_local(name: str, path: Path) -> PipelineManifest:
    try:
        return PipelineManifest.from_bytes(path.read_bytes(), name)
    except OSError as exc:
        raise ValueError(f"--pipeline-file {name}={path}: {exc.strerror or exc}") from exc
    except PipelineInvalid as exc:
        raise ValueError(f"--pipeline-file {name}={path}: {exc}") from exc
