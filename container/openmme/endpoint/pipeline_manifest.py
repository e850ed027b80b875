"""The pipeline manifest: a TargetModel that runs several models of the prefix in sequence, as SageMaker's serial
inference pipeline runs its containers. A leaf (it imports only names.py and errors.py), shared by the endpoint
(pipelines.py reads manifests, dataplane.py runs them) and ``openmme.publish.pipelines`` (which checks and writes
them).

A manifest is a small JSON object in the model prefix whose key ends in ``.pipeline.json``; its key is the
TargetModel clients invoke, through boto3 unchanged::

    {"steps": ["featurizer/model.tar.gz", "churn/xgboost.tar.gz", {"model": "labels/model.tar.gz"}]}

Each step names an archive of the prefix, or an alias (its version picked per request, as for a direct call), or
``{TargetModel}``: the model named after the manifest in the request's TargetModel
(``featurize.pipeline.json/houston/model.tar.gz``), or, with ``--pipeline``, by the whole TargetModel: one shared
featurizer in front of whichever model a request names, SageMaker's ``PipelineModel([featurizer,
MultiDataModel])``. A step may be an object with ``"accept"``: the Accept its answer is asked in when it is not
the last step (otherwise the step answers in its own default, ``SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT``, which an
archive may set in its ``openmme.json``).

Like an archive, a manifest is immutable once an endpoint has read it (SageMaker's multi-model endpoints never
reload a TargetModel that was overwritten): a new pipeline gets a new key, and an alias moves clients to it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from openmme.endpoint.errors import ValidationError
from openmme.endpoint.names import validate_target_model

__all__ = [
    "MANIFEST_MAX_BYTES",
    "MAX_STEPS",
    "MIN_STEPS",
    "PIPELINE_SUFFIX",
    "TARGET_STEP",
    "PipelineInvalid",
    "PipelineManifest",
    "Step",
    "check_step_model",
    "is_pipeline",
    "split_pipeline_target",
]

PIPELINE_SUFFIX = ".pipeline.json"
# The step that stands for the model the request names.
TARGET_STEP = "{TargetModel}"
# SageMaker's serial inference pipelines: two to fifteen containers.
MIN_STEPS, MAX_STEPS = 2, 15
MANIFEST_MAX_BYTES = 64 * 1024
_STEP_KEYS = {"model", "accept"}


class PipelineInvalid(ValueError):
    """A manifest no endpoint can run; the message says what is wrong."""


@dataclass(frozen=True)
class Step:
    """One step: the model it names (an archive, an alias, or ``TARGET_STEP``) and the Accept it is asked in
    when another step follows (None: its own default)."""

    model: str
    accept: str | None = None

    def describe(self) -> str | dict[str, str]:
        return self.model if self.accept is None else {"model": self.model, "accept": self.accept}


@dataclass(frozen=True)
class PipelineManifest:
    """The steps of one pipeline, in order."""

    name: str
    steps: tuple[Step, ...]

    @property
    def takes_target(self) -> bool:
        """Whether one step is ``{TargetModel}`` (the shared-featurizer shape)."""
        return any(step.model == TARGET_STEP for step in self.steps)

    def bound(self, target: str | None) -> tuple[Step, ...]:
        """The steps with ``{TargetModel}`` replaced by ``target``; a ValidationError when the manifest needs a
        model and the request named none, or named one the manifest has no place for."""
        if not self.takes_target:
            if target is not None:
                raise ValidationError(
                    f"pipeline {self.name!r} has no {TARGET_STEP} step: invoke it as TargetModel={self.name!r},"
                    f" without {target!r} after it"
                )
            return self.steps
        if target is None:
            raise ValidationError(
                f"pipeline {self.name!r} runs in front of a model: invoke it as TargetModel="
                f"'{self.name}/<model>' (e.g. '{self.name}/houston/model.tar.gz')"
            )
        if is_pipeline(target):
            raise ValidationError(f"pipeline {self.name!r} cannot run pipeline {target!r} as a step: steps are models")
        return tuple(Step(target, step.accept) if step.model == TARGET_STEP else step for step in self.steps)

    def to_json(self) -> str:
        return json.dumps({"steps": [step.describe() for step in self.steps]}, indent=2) + "\n"

    @classmethod
    def parse(cls, data: Any, name: str) -> PipelineManifest:
        """The manifest ``name`` from its decoded JSON; PipelineInvalid saying what is wrong."""
        if not isinstance(data, dict) or not isinstance(data.get("steps"), list):
            raise PipelineInvalid(
                f'pipeline {name!r} must be a JSON object with a "steps" list, e.g. {{"steps": '
                '["featurizer/model.tar.gz", "xgboost/model.tar.gz"]}'
            )
        unknown = sorted(set(data) - {"steps"})
        if unknown:
            raise PipelineInvalid(f"pipeline {name!r} has unknown fields {', '.join(unknown)}; it takes steps")
        raw = data["steps"]
        if not MIN_STEPS <= len(raw) <= MAX_STEPS:
            raise PipelineInvalid(f"pipeline {name!r} has {len(raw)} steps; a pipeline has {MIN_STEPS} to {MAX_STEPS}")
        steps = tuple(_parse_step(item, index, name) for index, item in enumerate(raw, 1))
        if sum(step.model == TARGET_STEP for step in steps) > 1:
            raise PipelineInvalid(f"pipeline {name!r} names {TARGET_STEP} more than once")
        return cls(name, steps)

    @classmethod
    def from_bytes(cls, body: bytes, name: str) -> PipelineManifest:
        if len(body) > MANIFEST_MAX_BYTES:
            raise PipelineInvalid(f"pipeline {name!r} is {len(body)} bytes; a manifest is at most {MANIFEST_MAX_BYTES}")
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise PipelineInvalid(f"pipeline {name!r} is not JSON: {exc}") from exc
        return cls.parse(data, name)


def _parse_step(item: Any, index: int, name: str) -> Step:
    where = f"step {index} of pipeline {name!r}"
    if isinstance(item, str):
        model, accept = item, None
    elif isinstance(item, dict) and isinstance(item.get("model"), str):
        unknown = sorted(set(item) - _STEP_KEYS)
        if unknown:
            raise PipelineInvalid(f"{where} has unknown fields {', '.join(unknown)}; a step takes model and accept")
        model, accept = item["model"], item.get("accept")
        if accept is not None and (not isinstance(accept, str) or "/" not in accept or not accept.isprintable()):
            raise PipelineInvalid(f'{where}: "accept" must be a MIME type such as "text/csv", not {accept!r}')
    else:
        raise PipelineInvalid(f'{where} must be a model name or an object {{"model": ..., "accept": ...}}')
    return Step(model if model == TARGET_STEP else check_step_model(model, where), accept)


def check_step_model(model: str, where: str) -> str:
    """``model`` unchanged when a step may run it: a TargetModel, and not a pipeline (pipelines do not nest);
    PipelineInvalid, its message starting with ``where``, otherwise."""
    try:
        validate_target_model(model)
    except ValidationError as exc:
        raise PipelineInvalid(f"{where}: {exc.message}") from exc
    if is_pipeline(model):
        raise PipelineInvalid(f"{where} names pipeline {model!r}: a step is a model, pipelines do not nest")
    return model


def is_pipeline(target: str) -> bool:
    """Whether a TargetModel names a pipeline (alone, or followed by the model it runs in front of)."""
    return target.endswith(PIPELINE_SUFFIX) or f"{PIPELINE_SUFFIX}/" in target


def split_pipeline_target(target: str) -> tuple[str, str | None]:
    """``x.pipeline.json/houston/model.tar.gz`` → (``x.pipeline.json``, ``houston/model.tar.gz``); a manifest
    alone → (it, None)."""
    if target.endswith(PIPELINE_SUFFIX):
        return target, None
    cut = target.index(f"{PIPELINE_SUFFIX}/") + len(PIPELINE_SUFFIX)
    return target[:cut], target[cut + 1 :]
