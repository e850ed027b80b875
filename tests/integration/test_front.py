"""What the front answers before a model runs, against a real endpoint: ``modelUrl`` as SageMaker's container
contract wants it, a form body refused the way a model's 415 is, and a TargetModel given as a full S3 URI refused
with the relative name to give, each as botocore raises it."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import botocore.exceptions
import pytest
import xgboost

from openmme.publish import publish_archive
from openmme.publish.samples import make_rows, sample_archive
from openmme.seaweed import EmbeddedS3
from tests.conftest import BUCKET, Endpoint, Launcher
from tests.support import answer, csv_body, expected, served_csv

pytestmark = pytest.mark.integration

HOUSTON = "houston/model.tar.gz"
ROWS = make_rows(2, seed=11)


@pytest.fixture(scope="module")
def front(
    s3: EmbeddedS3, tmp_path_factory: pytest.TempPathFactory, boosters: dict[str, xgboost.Booster]
) -> Iterator[Endpoint]:
    """An endpoint with a prefix holding one model; it also takes SageMaker's POST /models."""
    prefix = f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}/"
    publish_archive(sample_archive(boosters["binary:logistic"]), prefix, HOUSTON)
    launcher = Launcher(s3, tmp_path_factory)
    yield launcher.start(prefix)
    launcher.close()


# ---- modelUrl ------------------------------------------------------------------------------------------------


def test_model_url_is_the_url_post_models_was_given_byte_for_byte(
    front: Endpoint, tmp_path: Path, boosters: dict[str, xgboost.Booster]
) -> None:
    model_dir = tmp_path / "opt" / "ml" / "models" / "abc123" / "model"
    model_dir.mkdir(parents=True)
    (model_dir / "xgboost-model").write_bytes(bytes(boosters["binary:logistic"].save_raw("ubj")))
    url = f"{model_dir}/"  # a trailing slash, as a path normalisation would drop it
    payload = json.dumps({"model_name": "abc123", "url": url}).encode()
    request = urllib.request.Request(front.url + "/models", payload, {"Content-Type": "application/json"})
    assert answer(request, timeout=120)[0] == 200

    assert front.get("/models/abc123")["modelUrl"] == url
    assert front.models()["abc123"]["modelUrl"] == url
    assert front.get("/models/abc123")["path"].startswith(str(front.cache_dir))  # where openmme linked it in


def test_model_url_of_a_model_from_the_prefix_is_its_archives_s3_uri(front: Endpoint) -> None:
    front.invoke(HOUSTON, csv_body(ROWS))
    assert front.get(f"/models/{HOUSTON}")["modelUrl"] == f"{front.prefix}{HOUSTON}"


# ---- a form body ---------------------------------------------------------------------------------------------


def test_a_form_body_as_curl_d_sends_it_is_refused_as_the_models_415(front: Endpoint) -> None:
    # urllib, like curl -d, sends a body as application/x-www-form-urlencoded unless told otherwise.
    request = urllib.request.Request(front.url + "/invocations", b"0.1,0.2", {"X-Amzn-SageMaker-Target-Model": HOUSTON})
    status, raw, headers = answer(request, timeout=120)
    body = json.loads(raw)
    assert request.get_header("Content-type") == "application/x-www-form-urlencoded"
    assert (status, headers["x-amzn-ErrorType"], body["OriginalStatusCode"]) == (424, "ModelError", 415)
    assert "Content-Type application/x-www-form-urlencoded is not supported" in body["OriginalMessage"]
    assert "curl -H 'Content-Type: text/csv' --data-binary @rows.csv" in body["OriginalMessage"]


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x"])
def test_boto3_gets_a_model_error_with_the_original_415_for_a_form_body(front: Endpoint, content_type: str) -> None:
    client = front.runtime(retries=1)
    with pytest.raises(client.exceptions.ModelError) as raised:
        front.invoke(HOUSTON, "a=1", content_type, client=client)
    response = raised.value.response
    assert response["OriginalStatusCode"] == 415
    assert response["Error"]["Message"].startswith(f"Received client error (415) from model '{HOUSTON}'")
    assert f"Content-Type {content_type.split(';')[0]} is not supported" in response["OriginalMessage"]


def test_the_same_rows_with_their_real_type_are_served(front: Endpoint, boosters: dict[str, xgboost.Booster]) -> None:
    request = urllib.request.Request(
        front.url + "/invocations",
        csv_body(ROWS).encode(),
        {"X-Amzn-SageMaker-Target-Model": HOUSTON, "Content-Type": "text/csv", "Accept": "text/csv"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        assert served_csv(response.read()) == expected(boosters["binary:logistic"], ROWS)


# ---- a TargetModel given as an S3 URI ------------------------------------------------------------------------


def test_a_full_s3_uri_target_model_is_a_validation_error_naming_the_relative_one(front: Endpoint) -> None:
    client = front.runtime(retries=1)
    with pytest.raises(client.exceptions.ValidationError) as raised:
        front.invoke(f"{front.prefix}{HOUSTON}", "1", client=client)
    message = raised.value.response["Error"]["Message"]
    assert f"relative to the endpoint's model prefix {front.prefix}, not a full S3 URI" in message
    assert f"give TargetModel='{HOUSTON}'" in message
    with pytest.raises(botocore.exceptions.ClientError, match="is not an archive under it"):
        front.invoke(f"s3://elsewhere/{HOUSTON}", "1", client=client)
