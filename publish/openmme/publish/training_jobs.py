"""Publishing the model a SageMaker training job wrote: DescribeTrainingJob, then a server-side S3 copy.

The job's ``ModelArtifacts.S3ModelArtifacts`` (its ``model.tar.gz``) is copied by S3 itself, across buckets,
into ``<prefix><job name>/model.tar.gz``: the bytes never pass through the publisher. The SageMaker client comes
from the standard AWS settings too (``AWS_ENDPOINT_URL_SAGEMAKER``, region, credentials), as does the S3 client
(``AWS_ENDPOINT_URL_S3``); the artifact and the prefix must be reachable through that one S3 endpoint.

Only ``Completed`` jobs are published: a stopped or failed job's artifact, if any, is not the model it was
meant to train.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.exceptions

from openmme.publish._errors import PublishError, TrainingJobError
from openmme.publish._s3 import (
    COPY_MULTIPART_CHUNKSIZE,
    COPY_MULTIPART_THRESHOLD,
    check_target_model,
    copy_object,
    object_size,
    parse_object_uri,
    parse_prefix,
    refuse_existing,
    require_bucket,
    s3_client,
)
from openmme.publish.local import Publication
from openmme.publish.progress import Progress

__all__ = [
    "JobOutcome",
    "publish_training_job",
    "publish_training_jobs",
    "sagemaker_client",
    "training_job_artifact",
]

_COMPLETED = "Completed"


@dataclass(frozen=True)
class JobOutcome:
    """What became of one training job of ``publish_training_jobs``: a publication or the reason there is none."""

    job_name: str
    publication: Publication | None = None
    error: PublishError | None = None


def sagemaker_client() -> Any:
    """A SageMaker client from the standard AWS settings (``AWS_ENDPOINT_URL_SAGEMAKER``, region, credentials)."""
    return boto3.session.Session().client("sagemaker")


def training_job_artifact(job_name: str, *, client: Any | None = None) -> str:
    """The ``s3://`` URI of the model a Completed training job wrote; TrainingJobError when there is none."""
    client = client or sagemaker_client()
    try:
        job = client.describe_training_job(TrainingJobName=job_name)
    except botocore.exceptions.ClientError as exc:
        error = exc.response.get("Error", {})
        code, message = str(error.get("Code", "")), str(error.get("Message", ""))
        raise TrainingJobError(job_name, f"cannot be read: {code}: {message}") from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise TrainingJobError(job_name, f"cannot be read: {exc}") from exc
    status = str(job.get("TrainingJobStatus", "unknown"))
    if status != _COMPLETED:
        reason = job.get("FailureReason")
        detail = f" ({reason})" if reason else ""
        message = f"is {status}{detail}, not Completed: only a completed job's model is published"
        raise TrainingJobError(job_name, message)
    artifact = (job.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
    if not artifact:
        raise TrainingJobError(job_name, "has no model artifact (ModelArtifacts.S3ModelArtifacts is empty)")
    if str(artifact).endswith("/"):
        raise TrainingJobError(
            job_name,
            f"wrote an uncompressed model ({artifact}); endpoints load one model.tar.gz: train with compression "
            "or pack the files and use `openmme publish path`",
        )
    return str(artifact)


def publish_training_job(
    job_name: str,
    prefix: str,
    *,
    target_model: str | None = None,
    overwrite: bool = False,
    s3: Any | None = None,
    sagemaker: Any | None = None,
    multipart_threshold: int = COPY_MULTIPART_THRESHOLD,
    multipart_chunksize: int = COPY_MULTIPART_CHUNKSIZE,
    progress: Progress | None = None,
) -> Publication:
    """Copy training job ``job_name``'s model into ``<prefix><target_model>`` (default ``<job>/model.tar.gz``).

    Raises TrainingJobError (unreadable, not Completed, no artifact, artifact missing), InvalidPrefix,
    InvalidTargetModel, BucketNotFound, ArtifactExists (unless ``overwrite``), StoreError.
    """
    s3 = s3 or s3_client()
    location = parse_prefix(prefix)
    target = check_target_model(target_model or f"{job_name}/model.tar.gz")
    destination = location.child(target)
    artifact = training_job_artifact(job_name, client=sagemaker)
    try:
        source = parse_object_uri(artifact)
    except ValueError as exc:
        raise TrainingJobError(job_name, f"its model artifact is not an S3 object: {exc}") from exc
    require_bucket(s3, location)
    size = object_size(s3, source)
    if size is None:
        raise TrainingJobError(job_name, f"its model artifact {artifact} does not exist (or its bucket does not)")
    if source == destination:
        # The prefix is the job's output location: the model is published already.
        return Publication(target, str(destination), size, artifact)
    if not overwrite:
        refuse_existing(s3, location, target)
    copy_object(
        s3,
        source,
        size,
        destination,
        multipart_threshold=multipart_threshold,
        multipart_chunksize=multipart_chunksize,
        progress=progress,
    )
    return Publication(target, str(destination), size, artifact)


def publish_training_jobs(
    job_names: Sequence[str],
    prefix: str,
    *,
    overwrite: bool = False,
    s3: Any | None = None,
    sagemaker: Any | None = None,
    multipart_threshold: int = COPY_MULTIPART_THRESHOLD,
    multipart_chunksize: int = COPY_MULTIPART_CHUNKSIZE,
    progress: Progress | None = None,
) -> list[JobOutcome]:
    """Publish each job as ``<prefix><job>/model.tar.gz``; one job's failure does not stop the others.

    A bad prefix or a missing bucket concerns every job, so it raises (InvalidPrefix, BucketNotFound) before
    any job is read.
    """
    s3 = s3 or s3_client()
    sagemaker = sagemaker or sagemaker_client()
    require_bucket(s3, parse_prefix(prefix))
    outcomes = []
    for job_name in job_names:
        try:
            publication = publish_training_job(
                job_name,
                prefix,
                overwrite=overwrite,
                s3=s3,
                sagemaker=sagemaker,
                multipart_threshold=multipart_threshold,
                multipart_chunksize=multipart_chunksize,
                progress=progress,
            )
        except PublishError as exc:
            outcomes.append(JobOutcome(job_name, error=exc))
        else:
            outcomes.append(JobOutcome(job_name, publication=publication))
    return outcomes
