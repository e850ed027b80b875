"""Invocations through the unchanged boto3 client and the sagemaker SDK against a real endpoint: real SeaweedFS,
real MMS workers, real xgboost. Predictions must equal the same booster predicting in-process, and answers be the
SageMaker XGBoost container's bytes (JSON by default, ``json.dumps(predictions.tolist())``)."""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import xgboost

from openmme.handlers import HOSTINGS
from openmme.publish import publish_archive
from openmme.publish.samples import make_rows, sample_archive
from openmme.seaweed import EmbeddedS3
from tests.conftest import Endpoint, EndpointFactory, Launcher
from tests.support import CountingProxy, container_csv, container_json, csv_body, expected, served_csv, served_json

pytestmark = pytest.mark.integration

OBJECTIVES = ("binary:logistic", "multi:softmax", "reg:squarederror")
ONE_ROW_ARRAY = make_rows(1)
ONE_ROW = csv_body(ONE_ROW_ARRAY)


@pytest.fixture(scope="module", params=HOSTINGS)
def module_endpoint(
    request: pytest.FixtureRequest,
    s3: EmbeddedS3,
    tmp_path_factory: pytest.TempPathFactory,
    boosters: dict[str, xgboost.Booster],
) -> Iterator[Endpoint]:
    """One endpoint with one model per objective, shared by the tests that do not change its state; once per
    hosting mode, whose answers must be the same."""
    prefix = f"s3://models/{uuid.uuid4().hex[:10]}/"
    for objective, booster in boosters.items():
        publish_archive(sample_archive(booster), prefix, target_for(objective))
    launcher = Launcher(s3, tmp_path_factory)
    yield launcher.start(prefix, "--hosting", request.param)
    launcher.close()


def target_for(objective: str) -> str:
    return f"{objective.replace(':', '-')}/model.tar.gz"


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_boto3_csv_without_accept_gets_the_containers_json(
    module_endpoint: Endpoint, boosters: dict[str, xgboost.Booster], objective: str
) -> None:
    rows = make_rows(5, seed=7)
    response = module_endpoint.invoke(target_for(objective), csv_body(rows))
    assert response["ContentType"] == "application/json"
    assert response["InvokedProductionVariant"] == "AllTraffic"
    body = response["Body"].read()
    assert body == container_json(boosters[objective], rows)
    assert served_json(body) == expected(boosters[objective], rows)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_boto3_accept_csv_gets_the_containers_one_line(
    module_endpoint: Endpoint, boosters: dict[str, xgboost.Booster], objective: str
) -> None:
    rows = make_rows(5, seed=7)
    response = module_endpoint.invoke(target_for(objective), csv_body(rows), accept="text/csv")
    assert response["ContentType"] == "text/csv"
    body = response["Body"].read()
    assert body == container_csv(boosters[objective], rows)
    assert served_csv(body) == expected(boosters[objective], rows)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_boto3_json_predictions_equal_in_process_xgboost(
    module_endpoint: Endpoint, boosters: dict[str, xgboost.Booster], objective: str
) -> None:
    rows = make_rows(4, seed=8)
    body = json.dumps([[float(value) for value in row] for row in rows])
    response = module_endpoint.invoke(target_for(objective), body, "application/json", accept="application/json")
    assert response["ContentType"] == "application/json"
    assert response["Body"].read() == container_json(boosters[objective], rows)


def test_openmmes_own_answer_shapes_are_asked_for_by_name(
    module_endpoint: Endpoint, boosters: dict[str, xgboost.Booster]
) -> None:
    rows = make_rows(3, seed=13)
    want = expected(boosters["reg:squarederror"], rows)
    answers = {
        accept: module_endpoint.invoke(target_for("reg:squarederror"), csv_body(rows), accept=accept)["Body"].read()
        for accept in ("application/json; format=predictions", "text/csv; format=rows")
    }
    assert json.loads(answers["application/json; format=predictions"]) == {
        "predictions": [{"score": value} for value in want]
    }
    assert answers["text/csv; format=rows"].decode() == "\n".join(repr(value) for value in want)


def test_sagemaker_sdk_predictor_gets_the_same_answer(
    module_endpoint: Endpoint, boosters: dict[str, xgboost.Booster]
) -> None:
    from sagemaker.deserializers import CSVDeserializer, JSONDeserializer
    from sagemaker.serializers import CSVSerializer

    rows = make_rows(3, seed=9)
    want = expected(boosters["binary:logistic"], rows)
    as_csv = module_endpoint.predictor(CSVSerializer(), CSVDeserializer())
    as_json = module_endpoint.predictor(CSVSerializer(), JSONDeserializer())
    # CSVDeserializer (Accept: text/csv) splits the answer into lines of values: one line, one value per row.
    answer = as_csv.predict(rows.tolist(), target_model=target_for("binary:logistic"))
    assert [[float(value) for value in line] for line in answer] == [want]
    # JSONDeserializer (Accept: application/json) reads the bare array.
    assert as_json.predict(rows.tolist(), target_model=target_for("binary:logistic")) == want


@pytest.mark.parametrize("content_type", ["text/libsvm", "application/x-recordio-protobuf"])
def test_libsvm_and_recordio_protobuf_bodies(
    module_endpoint: Endpoint, boosters: dict[str, xgboost.Booster], content_type: str
) -> None:
    from sagemaker.serializers import RecordSerializer

    rows = make_rows(3, seed=14)
    if content_type == "text/libsvm":
        body = "\n".join(
            "1 " + " ".join(f"{index}:{float(value)!r}" for index, value in enumerate(row)) for row in rows
        )
        payload: bytes = body.encode()
    else:
        payload = RecordSerializer().serialize(rows).getvalue()
    response = module_endpoint.invoke(target_for("multi:softmax"), payload, content_type)
    assert response["Body"].read() == container_json(boosters["multi:softmax"], rows)


def test_plain_http_invocations_route_with_target_model_header(
    module_endpoint: Endpoint, boosters: dict[str, xgboost.Booster]
) -> None:
    rows = make_rows(2, seed=10)
    request = urllib.request.Request(
        module_endpoint.url + "/invocations",
        data=csv_body(rows).encode(),
        headers={"X-Amzn-SageMaker-Target-Model": target_for("reg:squarederror"), "Content-Type": "text/csv"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.read() == container_json(boosters["reg:squarederror"], rows)


def test_custom_attributes_and_inference_id_are_echoed(module_endpoint: Endpoint) -> None:
    response = module_endpoint.invoke(
        target_for("binary:logistic"), ONE_ROW, CustomAttributes="trace=abc123", InferenceId="request-17"
    )
    assert response["CustomAttributes"] == "trace=abc123"


def test_models_listing_shows_states_in_sagemaker_shape(module_endpoint: Endpoint) -> None:
    module_endpoint.invoke(target_for("binary:logistic"), ONE_ROW)
    with urllib.request.urlopen(module_endpoint.url + "/models", timeout=10) as response:
        listing = json.loads(response.read())
    by_name = {model["modelName"]: model for model in listing["models"]}
    entry = by_name[target_for("binary:logistic")]
    assert entry["state"] == "ready"
    # Where the model comes from (the archive's S3 URI); where it is extracted is "path".
    assert entry["modelUrl"] == module_endpoint.prefix + target_for("binary:logistic")
    assert entry["path"].startswith(str(module_endpoint.cache_dir))
    assert entry["memoryBytes"] > 0 and entry["diskBytes"] > 0
    assert listing["loadedModels"] == sum(model["state"] == "ready" for model in listing["models"])


# ---- errors, asserted through botocore's typed exceptions -------------------------------------------------


def test_unknown_endpoint_name_is_a_validation_error(module_endpoint: Endpoint) -> None:
    client = module_endpoint.runtime()
    with pytest.raises(client.exceptions.ValidationError, match="not found"):
        module_endpoint.invoke(target_for("binary:logistic"), ONE_ROW, EndpointName="someone-elses-endpoint")


def test_missing_target_model_is_a_validation_error(module_endpoint: Endpoint) -> None:
    client = module_endpoint.runtime()
    with pytest.raises(client.exceptions.ValidationError, match="Target-Model header is required"):
        module_endpoint.invoke(None, ONE_ROW)


@pytest.mark.parametrize(
    "target", ["../outside/model.tar.gz", "houston/../../etc/passwd", "/absolute/model.tar.gz", "a//b.tar.gz"]
)
def test_path_tricks_in_target_model_are_validation_errors(module_endpoint: Endpoint, target: str) -> None:
    client = module_endpoint.runtime()
    with pytest.raises(client.exceptions.ValidationError):
        module_endpoint.invoke(target, ONE_ROW)


def test_target_model_not_in_prefix_is_a_validation_error(module_endpoint: Endpoint) -> None:
    client = module_endpoint.runtime()
    with pytest.raises(client.exceptions.ValidationError, match="not in the model prefix"):
        module_endpoint.invoke("atlantis/model.tar.gz", ONE_ROW)


def test_a_target_model_with_a_typo_is_answered_with_the_name_it_likely_meant(
    start_endpoint: EndpointFactory,
    prefix: str,
    publish: Any,
    boosters: dict[str, xgboost.Booster],
    s3_proxy: CountingProxy,
) -> None:
    booster = boosters["binary:logistic"]
    publish(prefix, "houston/model.tar.gz", booster)
    publish(prefix, "dallas/model.tar.gz", booster)
    bucket = "/" + prefix.split("/")[2]  # a ListObjectsV2 of the bucket, as S3 paths it
    # No aliases: their refresh would list the prefix too.
    endpoint = start_endpoint(prefix, "--alias-refresh", "0", s3_url=s3_proxy.url)
    assert endpoint.predictions("houston/model.tar.gz", ONE_ROW_ARRAY) == expected(booster, ONE_ROW_ARRAY)
    listed_at_start = s3_proxy.count("GET", bucket)  # serve's check of the prefix; warm and cold hits list nothing
    assert listed_at_start == 1

    client = endpoint.runtime()
    for asked, meant in [("houstn/model.tar.gz", "houston/model.tar.gz"), ("dallas", "dallas/model.tar.gz")]:
        with pytest.raises(client.exceptions.ValidationError) as refused:
            endpoint.invoke(asked, ONE_ROW, client=client)
        error = refused.value.response
        assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
        assert error["Error"]["Message"] == (
            f"model {asked!r} is not in the model prefix {prefix}. Did you mean {meant!r}?"
        )
    with pytest.raises(client.exceptions.ValidationError, match=r"not in the model prefix \S+$"):
        endpoint.invoke("atlantis/model.tar.gz", ONE_ROW, client=client)  # nothing like it: no suggestion

    assert s3_proxy.count("GET", bucket) == listed_at_start + 1  # the misses shared one listing
    assert endpoint.predictions("houston/model.tar.gz", ONE_ROW_ARRAY) == expected(booster, ONE_ROW_ARRAY)
    assert s3_proxy.count("GET", bucket) == listed_at_start + 1


def test_body_over_six_mib_is_a_validation_error(module_endpoint: Endpoint) -> None:
    client = module_endpoint.runtime()
    with pytest.raises(client.exceptions.ValidationError, match="exceeds"):
        module_endpoint.invoke(target_for("binary:logistic"), b"1," * (3 * 1024 * 1024 + 1))


def test_a_body_just_under_six_mib_is_served_whole(
    module_endpoint: Endpoint, boosters: dict[str, xgboost.Booster]
) -> None:
    row = csv_body(make_rows(1, seed=12))
    copies = (6 * 1024 * 1024 - 1) // (len(row) + 1)
    body = "\n".join([row] * copies)
    assert 5 * 1024 * 1024 < len(body) <= 6 * 1024 * 1024
    response = module_endpoint.invoke(target_for("reg:squarederror"), body)
    served = served_json(response["Body"].read())
    assert served == expected(boosters["reg:squarederror"], make_rows(1, seed=12)) * copies


def test_bad_rows_are_a_model_error_with_the_original_status(module_endpoint: Endpoint) -> None:
    client = module_endpoint.runtime()
    with pytest.raises(client.exceptions.ModelError) as caught:
        module_endpoint.invoke(target_for("binary:logistic"), "1.0,2.0")
    error = caught.value.response
    assert error["Error"]["Code"] == "ModelError"
    assert error["OriginalStatusCode"] == 400
    assert "feature" in error["OriginalMessage"]
    assert "Traceback" not in json.dumps(error, default=str)


@pytest.mark.parametrize(
    ("content_type", "accept", "body", "message"),
    [
        ("image/png", None, b"\x89PNG", "Content-Type image/png is not supported"),
        ("text/csv; label_size=2", None, ONE_ROW, "label_size must be 1"),
        ("text/csv", "application/xml", ONE_ROW, "Accept application/xml is not supported"),
    ],
    ids=["content-type", "label-size", "accept"],
)
def test_unsupported_content_type_or_accept_is_a_model_error_415(
    module_endpoint: Endpoint, content_type: str, accept: str | None, body: str | bytes, message: str
) -> None:
    client = module_endpoint.runtime()
    with pytest.raises(client.exceptions.ModelError) as caught:
        module_endpoint.invoke(target_for("binary:logistic"), body, content_type, accept)
    assert caught.value.response["OriginalStatusCode"] == 415
    assert message in caught.value.response["OriginalMessage"]


def test_an_empty_body_is_a_model_error_400(module_endpoint: Endpoint) -> None:
    client = module_endpoint.runtime()
    with pytest.raises(client.exceptions.ModelError) as caught:
        module_endpoint.invoke(target_for("binary:logistic"), b"")
    error = caught.value.response
    assert error["OriginalStatusCode"] == 400
    assert error["OriginalMessage"] == "Unable to evaluate payload provided: the request body is empty"


def test_endpoint_is_still_healthy_after_the_errors(module_endpoint: Endpoint) -> None:
    with urllib.request.urlopen(module_endpoint.url + "/ping", timeout=10) as response:
        assert response.status == 200


def test_a_new_model_is_served_after_upload_without_restart(
    start_endpoint: EndpointFactory, prefix: str, publish: Any, boosters: dict[str, xgboost.Booster]
) -> None:
    endpoint = start_endpoint(prefix)
    client = endpoint.runtime()
    with pytest.raises(client.exceptions.ValidationError):
        endpoint.invoke("late/model.tar.gz", ONE_ROW)
    publish(prefix, "late/model.tar.gz", boosters["reg:squarederror"])
    rows = make_rows(3, seed=11)
    assert endpoint.predictions("late/model.tar.gz", rows) == expected(boosters["reg:squarederror"], rows)
