"""Fixtures for the publish tests: moto's SageMaker (server mode) for DescribeTrainingJob, training jobs whose
artifacts sit in a real SeaweedFS bucket other than the models', and S3 inspection helpers.

moto stands in for the SageMaker control plane only; every S3 request goes to the real SeaweedFS. moto records
every training job as Completed with an artifact at ``<S3OutputPath><job>/output/model.tar.gz`` and has no API to
say otherwise, so the jobs that are still running, failed or wrote no artifact are made by changing the job in
moto's own backend (its server runs in this process); DescribeTrainingJob then answers over HTTP from that state.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto.core import DEFAULT_ACCOUNT_ID
from moto.sagemaker.models import sagemaker_backends
from moto.server import ThreadedMotoServer

from openmme.ports import free_port
from openmme.seaweed import EmbeddedS3

# The training jobs' output bucket: not the models' bucket, so every publish from a job is a cross-bucket copy.
OUTPUT_BUCKET = "training-output"
REGION = "us-east-1"


@pytest.fixture(scope="session")
def moto_sagemaker_url() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def sagemaker_env(moto_sagemaker_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the standard AWS setting for SageMaker's endpoint at moto, as a user would at any endpoint."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER", moto_sagemaker_url)
    return moto_sagemaker_url


@dataclass
class TrainingJobs:
    """Makes training jobs in moto whose model artifacts are real objects in SeaweedFS."""

    sagemaker: Any
    s3: Any
    output_path: str

    def create(self, artifact: bytes | None, name: str | None = None) -> tuple[str, str]:
        """A Completed job; its artifact is uploaded unless None (the job then points at a missing object).

        Returns the job name and its artifact URI.
        """
        name = name or f"job-{uuid.uuid4().hex[:12]}"
        self.sagemaker.create_training_job(
            TrainingJobName=name,
            AlgorithmSpecification={"TrainingImage": "xgboost:latest", "TrainingInputMode": "File"},
            RoleArn=f"arn:aws:iam::{DEFAULT_ACCOUNT_ID}:role/training",
            OutputDataConfig={"S3OutputPath": self.output_path},
            ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1},
            StoppingCondition={"MaxRuntimeInSeconds": 600},
        )
        uri = self.sagemaker.describe_training_job(TrainingJobName=name)["ModelArtifacts"]["S3ModelArtifacts"]
        if artifact is not None:
            bucket, _, key = uri[len("s3://") :].partition("/")
            self.s3.put_object(Bucket=bucket, Key=key, Body=artifact)
        return name, uri

    def change(self, name: str, **attributes: Any) -> None:
        """Set a moto job's attributes (``training_job_status``, ``failure_reason``, ``model_artifacts``)."""
        job = sagemaker_backends[DEFAULT_ACCOUNT_ID][REGION].training_jobs[name]
        for attribute, value in attributes.items():
            setattr(job, attribute, value)


@pytest.fixture
def training_jobs(sagemaker_env: str, s3: EmbeddedS3, s3_client: Any) -> TrainingJobs:
    with contextlib.suppress(s3_client.exceptions.BucketAlreadyOwnedByYou):
        s3_client.create_bucket(Bucket=OUTPUT_BUCKET)
    sagemaker = boto3.session.Session().client("sagemaker", region_name=REGION)
    return TrainingJobs(sagemaker, s3_client, f"s3://{OUTPUT_BUCKET}/{uuid.uuid4().hex[:10]}/")


def read_object(s3_client: Any, uri: str) -> bytes:
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bytes(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read())


def keys_under(s3_client: Any, prefix: str) -> list[str]:
    """Every key under an ``s3://bucket/prefix/``, all pages."""
    bucket, _, key = prefix[len("s3://") :].partition("/")
    pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def unfinished_uploads(s3_client: Any, bucket: str) -> list[str]:
    """Keys of the multipart uploads started and neither completed nor aborted in ``bucket``."""
    return [upload["Key"] for upload in s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
