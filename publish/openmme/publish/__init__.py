"""Publishing models into an endpoint's S3 prefix, listing what a prefix holds, and removing models.

An endpoint serves whatever ``<prefix><TargetModel>`` archives exist: publishing a model is putting one there.
``openmme publish`` and ``openmme models`` are thin wrappers over these functions.

- ``publish_training_job`` / ``publish_training_jobs``: DescribeTrainingJob, then a server-side S3 copy of the
  job's ``model.tar.gz`` to ``<prefix><job>/model.tar.gz`` (``training_jobs``);
- ``publish_path``: package a local archive, directory or model file, check it by loading it with the handler
  openmme will use, upload it (``local``, ``check``); ``publish_archive`` uploads archive bytes unchecked;
- ``list_models`` / ``remove_model``: the TargetModel names a prefix holds (``catalog``).

Names follow the endpoint's own rules, so what publishes can be invoked. Nothing is ever replaced unless
``overwrite`` is asked for: as on SageMaker, endpoints keep serving the copy they cached, so a changed model
gets a new name. S3 and SageMaker are reached through the standard AWS settings (``AWS_ENDPOINT_URL_S3``,
``AWS_ENDPOINT_URL_SAGEMAKER``, credentials, region, profiles).

Every failure is a ``PublishError`` with a one-line message, and leaves nothing written:

    PublishError
    ├── InvalidPrefix         (ValueError)       not s3://bucket/prefix/
    ├── InvalidTargetModel    (ValueError)       a name the endpoint would refuse
    ├── BucketNotFound                           the prefix's bucket does not exist
    ├── ArtifactExists        (FileExistsError)  the name is taken; .suggestion is a free one
    ├── ModelNotFound         (LookupError)      remove: no model by that name
    ├── TrainingJobError                         unreadable, not Completed, no artifact, artifact missing
    ├── ModelCheckFailed                         cannot package, the handler cannot load it, the sample failed
    └── StoreError                               S3 refused (access denied …) or cannot be reached
"""

from __future__ import annotations

from openmme.publish._errors import (
    ArtifactExists,
    BucketNotFound,
    InvalidPrefix,
    InvalidTargetModel,
    ModelCheckFailed,
    ModelNotFound,
    PublishError,
    StoreError,
    TrainingJobError,
)
from openmme.publish._s3 import (
    COPY_MULTIPART_CHUNKSIZE,
    COPY_MULTIPART_THRESHOLD,
    UPLOAD_MULTIPART_CHUNKSIZE,
    UPLOAD_MULTIPART_THRESHOLD,
    create_bucket,
    s3_client,
    target_model_for,
)
from openmme.publish.catalog import PublishedModel, list_models, remove_model
from openmme.publish.check import CheckReport, check_archive, check_model_dir
from openmme.publish.local import Publication, pack_directory, package, publish_archive, publish_path, write_archive
from openmme.publish.progress import Progress, ProgressLine
from openmme.publish.training_jobs import (
    JobOutcome,
    publish_training_job,
    publish_training_jobs,
    sagemaker_client,
    training_job_artifact,
)

__all__ = [
    "COPY_MULTIPART_CHUNKSIZE",
    "COPY_MULTIPART_THRESHOLD",
    "UPLOAD_MULTIPART_CHUNKSIZE",
    "UPLOAD_MULTIPART_THRESHOLD",
    "ArtifactExists",
    "BucketNotFound",
    "CheckReport",
    "InvalidPrefix",
    "InvalidTargetModel",
    "JobOutcome",
    "ModelCheckFailed",
    "ModelNotFound",
    "Progress",
    "ProgressLine",
    "Publication",
    "PublishError",
    "PublishedModel",
    "StoreError",
    "TrainingJobError",
    "check_archive",
    "check_model_dir",
    "create_bucket",
    "list_models",
    "pack_directory",
    "package",
    "publish_archive",
    "publish_path",
    "publish_training_job",
    "publish_training_jobs",
    "remove_model",
    "s3_client",
    "sagemaker_client",
    "target_model_for",
    "training_job_artifact",
    "write_archive",
]
