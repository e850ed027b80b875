"""The errors ``openmme.publish`` raises; the tree is drawn in the package docstring.

Every message is one line written for the operator: it names the thing (prefix, TargetModel, training job,
file) and says what to do. The CLI prints ``str(exc)`` as it is.
"""

from __future__ import annotations

__all__ = [
    "ArtifactExists",
    "BucketNotFound",
    "InvalidPrefix",
    "InvalidTargetModel",
    "ModelCheckFailed",
    "ModelNotFound",
    "PublishError",
    "StoreError",
    "TrainingJobError",
]


class PublishError(Exception):
    """Base class: publishing, listing or removing failed, and nothing was written."""


class InvalidPrefix(PublishError, ValueError):
    """The model prefix is not an ``s3://bucket/prefix/`` URI."""


class InvalidTargetModel(PublishError, ValueError):
    """A name the endpoint would refuse as a TargetModel, so the model could never be invoked."""


class BucketNotFound(PublishError):
    """The prefix's bucket does not exist."""


class ArtifactExists(PublishError, FileExistsError):
    """The prefix already holds an artifact under that name, and overwriting was not asked for.

    Endpoints keep serving the copy they cached, so a changed model needs a new name: ``suggestion`` is a
    free one.
    """

    def __init__(self, message: str, suggestion: str) -> None:
        super().__init__(message)
        self.suggestion = suggestion

    def __str__(self) -> str:
        return str(self.args[0])


class ModelNotFound(PublishError, LookupError):
    """The prefix holds no artifact under that name."""


class TrainingJobError(PublishError):
    """A training job cannot be published: unreadable, not Completed, or without a model artifact."""

    def __init__(self, job_name: str, message: str) -> None:
        super().__init__(f"training job {job_name!r}: {message}")
        self.job_name = job_name


class ModelCheckFailed(PublishError):
    """The local model cannot be packaged, or the handler openmme would use cannot load or run it."""


class StoreError(PublishError):
    """S3 refused the request (access denied, …) or cannot be reached."""
