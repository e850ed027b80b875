"""Public SageMaker client code, replayed unchanged against openmme: the boto3 and SageMaker SDK v2 code of the
SageMaker multi-model XGBoost examples, the SDK's MultiDataModel on the prefix, and a data scientist's script
written for the SageMaker XGBoost container. Only the endpoint URL (and the S3 endpoint, through the standard
AWS settings) differs from what those users run against AWS.

Expected bytes are derived from what the SageMaker XGBoost container answers in multi-model mode
(aws/sagemaker-xgboost-container, algorithm_mode/handler_service.py: JSON is the inference toolkit's encoding of
``predictions.tolist()``, CSV is ``",".join(map(str, predictions.tolist()))``), and every value from the same
booster predicting in-process."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
import scipy.sparse
import xgboost

from openmme.handlers import HOSTINGS
from openmme.publish import publish_archive
from openmme.publish.local import pack_directory
from openmme.publish.samples import make_rows, sample_archive, train_booster
from openmme.seaweed import EmbeddedS3
from tests.conftest import BUCKET, Endpoint, Launcher
from tests.support import container_csv, container_json

pytestmark = pytest.mark.integration

# TargetModel names as the SageMaker example publishes them: one archive per city, at the prefix's top.
REGRESSION = "Chicago_IL.tar.gz"
CLASSIFIER = "Houston_TX.tar.gz"
SOFTPROB = "Seattle_WA.tar.gz"
SCRIPTED = "Denver_CO.tar.gz"

# A data scientist's script for the SageMaker XGBoost container that defines only model_fn: the container's
# user-module defaults decode the body into a DMatrix, predict and encode by Accept.
MODEL_FN_ONLY = """\
import os
import xgboost as xgb

def model_fn(model_dir):
    booster = xgb.Booster()
    booster.load_model(os.path.join(model_dir, "xgboost-model"))
    return booster
"""

# The same, with an input_fn as the public abalone example writes it, on the container's own helpers.
WITH_CONTAINER_ENCODER = """\
import os
import xgboost as xgb
import sagemaker_xgboost_container.encoder as xgb_encoders

def model_fn(model_dir):
    booster = xgb.Booster()
    booster.load_model(os.path.join(model_dir, "xgboost-model"))
    return booster

def input_fn(request_body, request_content_type):
    if request_content_type == "text/libsvm":
        return xgb_encoders.libsvm_to_dmatrix(request_body)
    return xgb_encoders.decode(request_body, request_content_type)
"""


@pytest.fixture(scope="module")
def models() -> dict[str, xgboost.Booster]:
    return {
        REGRESSION: train_booster("reg:squarederror", seed=21),
        CLASSIFIER: train_booster("binary:logistic", seed=22),
        SOFTPROB: train_booster("multi:softprob", seed=23),
        SCRIPTED: train_booster("reg:squarederror", seed=24),
    }


def script_archive(booster: xgboost.Booster, script: str, tmp: Path) -> bytes:
    (tmp / "code").mkdir(parents=True)
    (tmp / "code" / "inference.py").write_text(script)
    (tmp / "xgboost-model").write_bytes(bytes(booster.save_raw("ubj")))
    return pack_directory(tmp)


@pytest.fixture(scope="module", params=HOSTINGS)
def endpoint(
    request: pytest.FixtureRequest,
    s3: EmbeddedS3,
    tmp_path_factory: pytest.TempPathFactory,
    models: dict[str, xgboost.Booster],
) -> Iterator[Endpoint]:
    prefix = f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}/"
    for target in (REGRESSION, CLASSIFIER, SOFTPROB):
        publish_archive(sample_archive(models[target]), prefix, target)
    publish_archive(
        script_archive(models[SCRIPTED], MODEL_FN_ONLY, tmp_path_factory.mktemp("script")), prefix, SCRIPTED
    )
    publish_archive(
        script_archive(models[SCRIPTED], WITH_CONTAINER_ENCODER, tmp_path_factory.mktemp("encoder-script")),
        prefix,
        "encoder-script.tar.gz",
    )
    launcher = Launcher(s3, tmp_path_factory)
    yield launcher.start(prefix, "--hosting", request.param)
    launcher.close()


def in_process(booster: xgboost.Booster, rows: np.ndarray) -> list[Any]:
    """The booster's own predictions for ``rows``, as Python values (lists of lists for multi-output)."""
    result: list[Any] = booster.predict(xgboost.DMatrix(rows)).tolist()
    return result


def house(seed: int) -> list[float]:
    return [float(value) for value in make_rows(1, seed=seed)[0]]


# ---- the boto3 client of the SageMaker multi-model XGBoost example ---------------------------------------


@pytest.mark.parametrize("target", [REGRESSION, CLASSIFIER, SCRIPTED])
def test_the_examples_boto3_client_reads_the_first_prediction_from_json(
    endpoint: Endpoint, models: dict[str, xgboost.Booster], target: str
) -> None:
    runtime_sm_client = endpoint.runtime()
    features = house(seed=31)

    # As in the example: a CSV line with a trailing newline, no Accept, and json.loads(body)[0].
    body = ",".join(map(str, features)) + "\n"
    response = runtime_sm_client.invoke_endpoint(
        EndpointName=endpoint.name, ContentType="text/csv", TargetModel=target, Body=body
    )
    raw = response["Body"].read()
    predicted_value = json.loads(raw)[0]

    assert predicted_value == in_process(models[target], np.array([features], dtype=np.float32))[0]
    assert response["ContentType"] == "application/json"
    assert raw == container_json(models[target], np.array([features], dtype=np.float32))


def test_the_sdk_predictor_with_csv_serializer_and_json_deserializer(
    endpoint: Endpoint, models: dict[str, xgboost.Booster]
) -> None:
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.serializers import CSVSerializer

    predictor = endpoint.predictor(CSVSerializer(), JSONDeserializer())
    rows = make_rows(4, seed=32)

    answer = predictor.predict(rows.tolist(), target_model=REGRESSION)

    assert answer == in_process(models[REGRESSION], rows)


def test_several_rows_with_accept_csv_are_one_line_as_the_container_writes_it(
    endpoint: Endpoint, models: dict[str, xgboost.Booster]
) -> None:
    rows = make_rows(3, seed=33)
    body = "\n".join(",".join(map(str, map(float, row))) for row in rows)

    response = endpoint.runtime().invoke_endpoint(
        EndpointName=endpoint.name, TargetModel=CLASSIFIER, ContentType="text/csv", Accept="text/csv", Body=body
    )

    assert response["ContentType"] == "text/csv"
    assert response["Body"].read() == container_csv(models[CLASSIFIER], rows)


def test_softprob_answers_a_list_per_row_in_json_and_the_containers_one_line_quirk_in_csv(
    endpoint: Endpoint, models: dict[str, xgboost.Booster]
) -> None:
    rows = make_rows(2, seed=34)
    body = "\n".join(",".join(map(str, map(float, row))) for row in rows)
    probabilities = in_process(models[SOFTPROB], rows)
    runtime = endpoint.runtime()

    as_json = runtime.invoke_endpoint(
        EndpointName=endpoint.name, TargetModel=SOFTPROB, ContentType="text/csv", Body=body
    )
    as_csv = runtime.invoke_endpoint(
        EndpointName=endpoint.name, TargetModel=SOFTPROB, ContentType="text/csv", Accept="text/csv", Body=body
    )

    assert json.loads(as_json["Body"].read()) == probabilities
    # Not valid CSV, and what SageMaker answers: each row's list printed by Python, joined by commas.
    assert as_csv["Body"].read() == ",".join(map(str, probabilities)).encode()


def test_the_sdk_record_serializer_sends_recordio_protobuf(
    endpoint: Endpoint, models: dict[str, xgboost.Booster]
) -> None:
    from sagemaker.amazon.common import RecordSerializer
    from sagemaker.deserializers import JSONDeserializer

    predictor = endpoint.predictor(RecordSerializer(), JSONDeserializer())
    rows = make_rows(3, seed=35)

    assert predictor.predict(rows, target_model=CLASSIFIER) == in_process(models[CLASSIFIER], rows)


def test_one_based_libsvm_rows_are_read_as_the_container_reads_them(
    endpoint: Endpoint, models: dict[str, xgboost.Booster]
) -> None:
    rows = make_rows(2, seed=36)
    # Label first, 1-based indices: the usual LIBSVM file, which the container shifts down by one.
    body = "\n".join("0 " + " ".join(f"{index + 1}:{float(value)}" for index, value in enumerate(row)) for row in rows)

    for content_type in ("text/libsvm", "text/x-libsvm", "libsvm"):
        response = endpoint.runtime().invoke_endpoint(
            EndpointName=endpoint.name, TargetModel=REGRESSION, ContentType=content_type, Body=body
        )
        assert json.loads(response["Body"].read()) == in_process(models[REGRESSION], rows), content_type


def test_a_script_on_the_containers_encoder_helpers_deploys_as_it_is(
    endpoint: Endpoint, models: dict[str, xgboost.Booster]
) -> None:
    rows = make_rows(2, seed=37)
    libsvm = "\n".join(" ".join(f"{index}:{float(value)}" for index, value in enumerate(row)) for row in rows)
    csv = "\n".join(",".join(map(str, map(float, row))) for row in rows)
    runtime = endpoint.runtime()

    for content_type, body in (("text/libsvm", libsvm), ("text/csv", csv)):
        response = runtime.invoke_endpoint(
            EndpointName=endpoint.name, TargetModel="encoder-script.tar.gz", ContentType=content_type, Body=body
        )
        answer = json.loads(response["Body"].read())
        assert answer == in_process(models[SCRIPTED], rows), content_type


# ---- the SDK's MultiDataModel on the prefix ----------------------------------------------------------------


def test_multi_data_model_add_model_and_list_models_drive_the_endpoint(
    s3: EmbeddedS3, tmp_path: Path, start_endpoint: Any, models: dict[str, xgboost.Booster]
) -> None:
    import sagemaker
    from sagemaker.multidatamodel import MultiDataModel

    prefix = f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}/"
    # A training job's output elsewhere in the bucket, and an archive on the local disk.
    training_output = f"{uuid.uuid4().hex[:10]}/output/model.tar.gz"
    s3.client().put_object(Bucket=BUCKET, Key=training_output, Body=sample_archive(models[REGRESSION]))
    local_archive = tmp_path / "model.tar.gz"
    local_archive.write_bytes(sample_archive(models[CLASSIFIER]))

    session = sagemaker.Session(boto_session=boto3.Session())
    mme = MultiDataModel(
        name="openmme-dropin",
        model_data_prefix=prefix,
        image_uri="unused",
        role="arn:aws:iam::123456789012:role/r",
        sagemaker_session=session,
    )
    mme.add_model(model_data_source=f"s3://{BUCKET}/{training_output}", model_data_path=REGRESSION)
    mme.add_model(model_data_source=str(local_archive), model_data_path=CLASSIFIER)

    assert sorted(mme.list_models()) == sorted([REGRESSION, CLASSIFIER])

    endpoint = start_endpoint(prefix)
    rows = make_rows(2, seed=38)
    for target in mme.list_models():
        response = endpoint.runtime().invoke_endpoint(
            EndpointName=endpoint.name,
            TargetModel=target,
            ContentType="text/csv",
            Body="\n".join(",".join(map(str, map(float, row))) for row in rows),
        )
        assert json.loads(response["Body"].read()) == in_process(models[target], rows)


def test_sparse_recordio_from_the_sdk_is_read_as_missing_values(
    endpoint: Endpoint, models: dict[str, xgboost.Booster]
) -> None:
    from sagemaker.amazon.common import write_spmatrix_to_sparse_tensor

    rows = make_rows(3, seed=39)
    rows[0, 1] = rows[2, 0] = 0.0
    sparse = scipy.sparse.csr_matrix(rows)
    buffer = io.BytesIO()
    write_spmatrix_to_sparse_tensor(buffer, sparse)

    response = endpoint.runtime().invoke_endpoint(
        EndpointName=endpoint.name,
        TargetModel=REGRESSION,
        ContentType="application/x-recordio-protobuf",
        Body=buffer.getvalue(),
    )

    # A sparse record leaves out its zeros: XGBoost sees them as missing, as a sparse DMatrix built in-process does.
    expected = models[REGRESSION].predict(xgboost.DMatrix(sparse)).tolist()
    assert json.loads(response["Body"].read()) == expected
