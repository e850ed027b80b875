"""Batch transform over S3 against any TargetModel of a multi-model endpoint: SageMaker's CreateTransformJob, which
cannot name one model of a multi-model endpoint, run by openmme against one that can.

    from openmme.transform import EndpointTarget, TransformJob, run_transform

    job = TransformJob.from_request({               # boto3 create_transform_job's arguments, plus TargetModel
        "TargetModel": "houston/model.tar.gz",
        "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://in/rows/"}},
                           "ContentType": "text/csv", "SplitType": "Line"},
        "TransformOutput": {"S3OutputPath": "s3://out/scores/", "AssembleWith": "Line"},
    })
    summary = run_transform(job, EndpointTarget("http://127.0.0.1:8080"))
    print(summary.text())

One job per module:

    spec.py      the job's settings, CreateTransformJob's names and checks          (light: no aiohttp, no boto3)
    jsonpath.py  DataProcessing's JSONPath subset                                    (light)
    records.py   records: split, batched, answers split back, joined, assembled      (light)
    options.py   the command line's flags and the job they make                      (light)
    storage.py   the inputs and outputs in S3, resume, shares of the inputs
    invoker.py   requests to an endpoint: signed, retried, errors in SageMaker's shape
    job.py       running a job: objects, batches in flight, failures kept to their object
    report.py    outcomes, the summary, the progress line
    embedded.py  an endpoint of the job's own (``--model-prefix``)
    command.py   ``openmme transform``

The runner and its clients (aiohttp, boto3) are imported when first asked for, so ``openmme --help`` and the job's
checks stay light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from openmme.transform.spec import DataProcessing, TransformConfigError, TransformJob

if TYPE_CHECKING:
    from openmme.transform.embedded import embedded_endpoint
    from openmme.transform.invoker import EndpointTarget, InvocationError
    from openmme.transform.job import run_transform, transform
    from openmme.transform.report import ObjectOutcome, ProgressLine, Summary
    from openmme.transform.storage import TransformStoreError

__all__ = [
    "DataProcessing",
    "EndpointTarget",
    "InvocationError",
    "ObjectOutcome",
    "ProgressLine",
    "Summary",
    "TransformConfigError",
    "TransformJob",
    "TransformStoreError",
    "embedded_endpoint",
    "run_transform",
    "transform",
]

_LAZY = {
    "EndpointTarget": "invoker",
    "InvocationError": "invoker",
    "run_transform": "job",
    "transform": "job",
    "ObjectOutcome": "report",
    "ProgressLine": "report",
    "Summary": "report",
    "TransformStoreError": "storage",
    "embedded_endpoint": "embedded",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"openmme.transform.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'openmme.transform' has no attribute {name!r}")
