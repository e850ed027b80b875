"""Publishing from SageMaker training jobs: DescribeTrainingJob answered by moto (server mode), every S3 request
by the real SeaweedFS, the artifact in another bucket than the models'. Outcomes: the copy's bytes equal the
artifact, the endpoint serves it with xgboost's own predictions, and a refused job leaves nothing in S3."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import xgboost

from openmme.publish import (
    ArtifactExists,
    TrainingJobError,
    publish_training_job,
    publish_training_jobs,
    training_job_artifact,
)
from openmme.publish.samples import make_rows, sample_archive
from tests.conftest import BUCKET, EndpointFactory
from tests.publish.conftest import OUTPUT_BUCKET, TrainingJobs, keys_under, read_object, unfinished_uploads

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


def csv_body(rows: np.ndarray) -> str:
    return "\n".join(",".join(repr(float(value)) for value in row) for row in rows)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``openmme`` as a user runs it: its own process, configured only by the standard AWS variables."""
    return subprocess.run(
        [sys.executable, "-m", "openmme.cli", *args], env=os.environ.copy(), capture_output=True, text=True, timeout=120
    )


def test_a_training_job_publishes_a_byte_equal_copy_that_the_endpoint_serves(
    training_jobs: TrainingJobs,
    prefix: str,
    s3_client: Any,
    boosters: dict[str, xgboost.Booster],
    start_endpoint: EndpointFactory,
) -> None:
    booster = boosters["binary:logistic"]
    artifact = sample_archive(booster)
    job, artifact_uri = training_jobs.create(artifact)
    assert artifact_uri.startswith(f"s3://{OUTPUT_BUCKET}/")

    result = run_cli("publish", "training-job", job, "--prefix", prefix)

    assert result.returncode == 0, result.stderr
    assert f"TargetModel: {job}/model.tar.gz" in result.stdout.splitlines()
    assert read_object(s3_client, f"{prefix}{job}/model.tar.gz") == artifact
    endpoint = start_endpoint(prefix)
    rows = make_rows(6, seed=11)
    response = endpoint.runtime().invoke_endpoint(
        EndpointName=endpoint.name, TargetModel=f"{job}/model.tar.gz", ContentType="text/csv", Body=csv_body(rows)
    )
    assert json.loads(response["Body"].read()) == booster.predict(xgboost.DMatrix(rows)).tolist()


def test_an_artifact_above_the_threshold_is_copied_in_parts(
    training_jobs: TrainingJobs, prefix: str, s3_client: Any
) -> None:
    # Not a model: a copy never opens the archive, and random bytes make a part boundary mistake visible.
    artifact = np.random.default_rng(5).bytes(11 * MiB)
    job, _ = training_jobs.create(artifact)

    publication = publish_training_job(job, prefix, multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)

    assert publication.size == len(artifact)
    assert read_object(s3_client, publication.uri) == artifact
    # S3's ETag of a multipart object is "<md5 of the part md5s>-<part count>": the copy went in 3 parts.
    etag = s3_client.head_object(Bucket=BUCKET, Key=publication.uri.split("/", 3)[3])["ETag"]
    assert etag.strip('"').endswith("-3")
    assert unfinished_uploads(s3_client, BUCKET) == []


def test_below_the_threshold_the_copy_is_one_request(training_jobs: TrainingJobs, prefix: str, s3_client: Any) -> None:
    artifact = np.random.default_rng(6).bytes(6 * MiB)
    job, _ = training_jobs.create(artifact)

    publication = publish_training_job(job, prefix)

    assert read_object(s3_client, publication.uri) == artifact
    etag = s3_client.head_object(Bucket=BUCKET, Key=publication.uri.split("/", 3)[3])["ETag"]
    assert "-" not in etag


def test_jobs_that_cannot_be_published_are_named_and_the_others_still_publish(
    training_jobs: TrainingJobs, prefix: str, s3_client: Any, boosters: dict[str, xgboost.Booster]
) -> None:
    artifact = sample_archive(boosters["reg:squarederror"])
    good, _ = training_jobs.create(artifact)
    running, _ = training_jobs.create(artifact)
    training_jobs.change(running, training_job_status="InProgress", secondary_status="Training")
    failed, _ = training_jobs.create(artifact)
    training_jobs.change(failed, training_job_status="Failed", failure_reason="AlgorithmError: out of memory")
    no_artifact, _ = training_jobs.create(artifact)
    training_jobs.change(no_artifact, model_artifacts=None)
    artifact_gone, gone_uri = training_jobs.create(None)
    unknown = "job-that-never-ran"

    result = run_cli("publish", "training-job", running, good, failed, no_artifact, artifact_gone, unknown,
                     "--prefix", prefix)  # fmt: skip

    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"published training job {good} as {prefix}{good}/model.tar.gz",
        f"TargetModel: {good}/model.tar.gz",
    ]
    assert result.stderr.splitlines() == [
        f"openmme publish: training job '{running}': is InProgress, not Completed: only a completed job's model "
        "is published",
        f"openmme publish: training job '{failed}': is Failed (AlgorithmError: out of memory), not Completed: only "
        "a completed job's model is published",
        f"openmme publish: training job '{no_artifact}': has no model artifact (ModelArtifacts.S3ModelArtifacts is "
        "empty)",
        f"openmme publish: training job '{artifact_gone}': its model artifact {gone_uri} does not exist (or its "
        "bucket does not)",
        f"openmme publish: training job '{unknown}': cannot be read: ValidationException: Could not find training "
        f"job 'arn:aws:sagemaker:us-east-1:123456789012:training-job/{unknown}'.",
        "openmme publish: 5 of 6 training jobs were not published",
    ]
    assert keys_under(s3_client, prefix) == [f"{prefix.split('/', 3)[3]}{good}/model.tar.gz"]
    assert unfinished_uploads(s3_client, BUCKET) == []


def test_an_uncompressed_model_output_is_refused(training_jobs: TrainingJobs) -> None:
    job, uri = training_jobs.create(b"unused")
    folder = uri.rsplit("/", 1)[0] + "/model/"
    training_jobs.change(job, model_artifacts={"S3ModelArtifacts": folder})

    with pytest.raises(TrainingJobError, match="wrote an uncompressed model"):
        training_job_artifact(job)


def test_name_publishes_under_it_and_applies_to_one_job_only(
    training_jobs: TrainingJobs, prefix: str, s3_client: Any
) -> None:
    job, _ = training_jobs.create(b"archive-bytes")

    named = run_cli("publish", "training-job", job, "--prefix", prefix, "--name", "houston")
    full = run_cli("publish", "training-job", job, "--prefix", prefix, "--name", "dallas/model-v1.tar.gz")
    two = run_cli("publish", "training-job", job, job, "--prefix", prefix, "--name", "houston")

    assert named.returncode == 0 and "TargetModel: houston/model.tar.gz" in named.stdout
    assert full.returncode == 0 and "TargetModel: dallas/model-v1.tar.gz" in full.stdout
    assert read_object(s3_client, f"{prefix}houston/model.tar.gz") == b"archive-bytes"
    assert two.returncode == 2
    assert "--name applies to a single training job" in two.stderr


def test_an_existing_name_is_refused_with_a_free_one_and_replaced_only_with_overwrite(
    training_jobs: TrainingJobs, prefix: str, s3_client: Any
) -> None:
    first, _ = training_jobs.create(b"first model")
    second, _ = training_jobs.create(b"second model")
    publish_training_job(first, prefix, target_model="houston/model.tar.gz")

    with pytest.raises(ArtifactExists) as refused:
        publish_training_job(second, prefix, target_model="houston/model.tar.gz")

    assert refused.value.suggestion == "houston/model-v2.tar.gz"
    assert "endpoints keep serving the copy they cached" in str(refused.value)
    assert read_object(s3_client, f"{prefix}houston/model.tar.gz") == b"first model"
    publish_training_job(second, prefix, target_model=refused.value.suggestion)
    publish_training_job(second, prefix, target_model="houston/model.tar.gz", overwrite=True)
    assert read_object(s3_client, f"{prefix}houston/model.tar.gz") == b"second model"
    assert read_object(s3_client, f"{prefix}houston/model-v2.tar.gz") == b"second model"


def test_a_missing_bucket_stops_before_any_job_is_read(training_jobs: TrainingJobs, s3_client: Any) -> None:
    job, _ = training_jobs.create(b"archive")

    result = run_cli("publish", "training-job", job, "--prefix", "s3://no-such-bucket/prod/")

    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "openmme publish: bucket 'no-such-bucket' of s3://no-such-bucket/prod/ does not exist"
    ]
    assert "no-such-bucket" not in [bucket["Name"] for bucket in s3_client.list_buckets()["Buckets"]]


def test_outcomes_of_the_library_call(training_jobs: TrainingJobs, prefix: str) -> None:
    good, _ = training_jobs.create(b"model")
    missing, _ = training_jobs.create(None)

    outcomes = publish_training_jobs([good, missing], prefix)

    assert [(o.job_name, o.publication is not None, type(o.error)) for o in outcomes] == [
        (good, True, type(None)),
        (missing, False, TrainingJobError),
    ]
