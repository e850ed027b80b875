"""Listing and removing the models of a prefix in the real SeaweedFS: every page, exactly the names the endpoint
accepts (compared with the SageMaker SDK's ``MultiDataModel.list_models()`` and with the endpoint's answers)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import botocore.exceptions
import pytest
import xgboost

from openmme.cli import main
from openmme.publish import BucketNotFound, ModelNotFound, list_models, publish_archive, remove_model
from openmme.publish.samples import make_rows, sample_archive
from tests.conftest import BUCKET, EndpointFactory
from tests.publish.conftest import keys_under

pytestmark = pytest.mark.integration

# More than one ListObjectsV2 page (1000 keys).
MANY = 1005
# Keys the SDK lists but the endpoint refuses as TargetModel: a folder marker (empty last segment) and a name
# starting with a space. (SeaweedFS itself rejects "./x" and "x/../y" and folds "a//b" into "a/b".)
NOT_INVOCABLE = ["folder/", " leading-space.tar.gz"]


def sdk_list_models(prefix: str) -> list[str]:
    """What the SageMaker Python SDK's MultiDataModel shows for the prefix (through the same S3 settings)."""
    import sagemaker
    from sagemaker.multidatamodel import MultiDataModel

    session = sagemaker.Session(boto_session=boto3.Session())
    model = MultiDataModel(
        "openmme-test", prefix, image_uri="unused", role="arn:aws:iam::123456789012:role/r", sagemaker_session=session
    )
    return list(model.list_models())


def test_list_reads_every_page_and_shows_exactly_the_invocable_names(
    prefix: str, s3_client: Any, boosters: dict[str, xgboost.Booster], start_endpoint: EndpointFactory
) -> None:
    key_prefix = prefix.split("/", 3)[3]
    names = [f"city-{index:04d}/model.tar.gz" for index in range(MANY)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda name: s3_client.put_object(Bucket=BUCKET, Key=key_prefix + name, Body=b"x"), names))
    booster = boosters["binary:logistic"]
    publish_archive(sample_archive(booster), prefix, "zz-real/model.tar.gz")
    for name in NOT_INVOCABLE:
        s3_client.put_object(Bucket=BUCKET, Key=key_prefix + name, Body=b"x")

    first_page = s3_client.list_objects_v2(Bucket=BUCKET, Prefix=key_prefix)
    listed = [model.target_model for model in list_models(prefix)]

    assert first_page["IsTruncated"] and first_page["KeyCount"] == 1000

    assert listed == sorted([*names, "zz-real/model.tar.gz"])
    assert sorted(sdk_list_models(prefix)) == sorted([*listed, *NOT_INVOCABLE])
    endpoint = start_endpoint(prefix)
    runtime = endpoint.runtime()
    body = ",".join(repr(float(value)) for value in make_rows(1)[0])
    answer = runtime.invoke_endpoint(
        EndpointName=endpoint.name, TargetModel="zz-real/model.tar.gz", ContentType="text/csv", Body=body
    )
    assert json.loads(answer["Body"].read()) == booster.predict(xgboost.DMatrix(make_rows(1))).tolist()
    for name in NOT_INVOCABLE:
        with pytest.raises(botocore.exceptions.ClientError) as refused:
            runtime.invoke_endpoint(EndpointName=endpoint.name, TargetModel=name, ContentType="text/csv", Body=body)
        assert refused.value.response["Error"]["Code"] == "ValidationError"


def test_the_cli_lists_name_size_and_time(prefix: str, capsys: pytest.CaptureFixture[str]) -> None:
    publish_archive(b"12345", prefix, "b/model.tar.gz")
    publish_archive(b"123", prefix, "a/model.tar.gz")

    assert main(["models", "list", "--prefix", prefix]) == 0

    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [(name, size) for name, size, _ in lines] == [("a/model.tar.gz", "3"), ("b/model.tar.gz", "5")]


def test_the_cli_lists_the_aliases_after_the_archives(prefix: str, capsys: pytest.CaptureFixture[str]) -> None:
    from openmme.publish.aliases import set_alias

    publish_archive(b"123", prefix, "houston/v1/model.tar.gz")
    publish_archive(b"1234", prefix, "houston/v2/model.tar.gz")
    set_alias(prefix, "houston", ["houston/v1/model.tar.gz=90", "houston/v2/model.tar.gz=10"], check=False)

    assert main(["models", "list", "--prefix", prefix]) == 0

    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [line[0] for line in lines] == ["houston/v1/model.tar.gz", "houston/v2/model.tar.gz", "houston"]
    assert lines[2][1] == "alias"
    assert "houston/v1/model.tar.gz 90%" in lines[2][2] and "houston/v2/model.tar.gz 10%" in lines[2][2]


def test_listing_a_missing_bucket_says_so() -> None:
    with pytest.raises(BucketNotFound, match="the bucket does not exist"):
        list(list_models("s3://no-such-bucket/prod/"))


def test_remove_deletes_one_model(prefix: str, s3_client: Any, capsys: pytest.CaptureFixture[str]) -> None:
    key_prefix = prefix.split("/", 3)[3]
    publish_archive(b"old", prefix, "houston/model.tar.gz")
    publish_archive(b"other", prefix, "dallas/model.tar.gz")

    assert main(["models", "remove", "houston/model.tar.gz", "--prefix", prefix]) == 0

    assert "keep serving their cached copy" in capsys.readouterr().out
    assert keys_under(s3_client, prefix) == [f"{key_prefix}dallas/model.tar.gz"]


def test_removing_a_missing_model_is_refused_with_the_likely_name(prefix: str, s3_client: Any) -> None:
    publish_archive(b"model", prefix, "houston/model.tar.gz")

    with pytest.raises(ModelNotFound, match=r"holds no model houston; did you mean houston/model.tar.gz\?"):
        remove_model(prefix, "houston")
    with pytest.raises(ModelNotFound, match=r"holds no model houstn/model.tar.gz; did you mean houston/model.tar.gz\?"):
        remove_model(prefix, "houstn/model.tar.gz")
    with pytest.raises(ModelNotFound, match=r"holds no model chicago/model.tar.gz$"):
        remove_model(prefix, "chicago/model.tar.gz")

    assert len(keys_under(s3_client, prefix)) == 1
