"""``--auth sigv4`` against a real endpoint (SeaweedFS, MMS, xgboost): the unchanged boto3 client with a right key
gets the same predictions as xgboost in-process, the same request sent again included (as on AWS); a wrong,
unknown or missing signature and a TargetModel outside the key's patterns get botocore ClientErrors with AWS's
codes; /ping stays open. And ``openmme serve`` refuses to start on a non-loopback address without
authentication, before it binds or starts anything."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.auth
import botocore.awsrequest
import botocore.credentials
import botocore.exceptions
import pytest
import xgboost

from openmme.publish import publish_archive
from openmme.publish.samples import make_rows, sample_archive
from openmme.seaweed import EmbeddedS3
from tests.conftest import Endpoint, Launcher, run_serve
from tests.support import answer, expected, wait_until

pytestmark = pytest.mark.integration

HOUSTON = ("AKIDHOUSTON", "houston-secret")
ADMIN = ("AKIDADMIN", "admin-secret")
# A space, '+' and '%' in a header. Not a non-ASCII letter: AWS's TargetModel pattern refuses one (limits.py);
# tests/endpoint/test_auth.py checks such headers' signatures.
ODD_TARGET = "houston/v 2+b%/model.tar.gz"


@pytest.fixture(scope="module")
def secured(
    s3: EmbeddedS3, tmp_path_factory: pytest.TempPathFactory, boosters: dict[str, xgboost.Booster]
) -> Iterator[Endpoint]:
    """One endpoint with --auth sigv4 and two front processes, a key for houston/* and an unrestricted key; four
    models."""
    prefix = f"s3://models/{uuid.uuid4().hex[:10]}/"
    for target, objective in (
        ("houston/model.tar.gz", "binary:logistic"),
        (ODD_TARGET, "reg:squarederror"),
        ("chicago/model.tar.gz", "multi:softmax"),
        ("dallas/model.tar.gz", "multi:softmax"),
    ):
        publish_archive(sample_archive(boosters[objective]), prefix, target)
    keys = tmp_path_factory.mktemp("auth") / "keys.json"
    keys.write_text(
        json.dumps(
            {
                "keys": [
                    {"access_key_id": HOUSTON[0], "secret_access_key": HOUSTON[1], "allow": ["houston/*"]},
                    {"access_key_id": ADMIN[0], "secret_access_key": ADMIN[1], "allow": ["*"]},
                ]
            }
        )
    )
    keys.chmod(0o600)
    launcher = Launcher(s3, tmp_path_factory)
    # Two front processes: every request below reaches the owner or the edge, and both must check it alike.
    yield launcher.start(prefix, "--auth", "sigv4", "--auth-keys-file", str(keys), "--fronts", "2")
    launcher.close()


def client_error(endpoint: Endpoint, credentials: tuple[str, str], target: str) -> dict[str, Any]:
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        endpoint.invoke(target, "1,2,3,4,5,6", client=endpoint.runtime(retries=1, credentials=credentials))
    response: dict[str, Any] = raised.value.response
    return response


def signed(endpoint: Endpoint, method: str, path: str, credentials: tuple[str, str], body: bytes = b"") -> Any:
    """A urllib request signed by botocore's SigV4Auth, for routes boto3 has no operation for."""
    request = botocore.awsrequest.AWSRequest(method, endpoint.url + path, data=body)
    botocore.auth.SigV4Auth(botocore.credentials.Credentials(*credentials), "sagemaker", "us-east-1").add_auth(request)
    prepared = request.prepare()
    return urllib.request.Request(prepared.url, data=body or None, headers=dict(prepared.headers), method=method)


def test_right_keys_get_xgboosts_predictions(secured: Endpoint, boosters: dict[str, xgboost.Booster]) -> None:
    rows = make_rows(4, seed=31)
    for credentials, target, objective in (
        (HOUSTON, "houston/model.tar.gz", "binary:logistic"),
        (HOUSTON, ODD_TARGET, "reg:squarederror"),
        (ADMIN, "chicago/model.tar.gz", "multi:softmax"),
        (ADMIN, "houston/model.tar.gz", "binary:logistic"),
    ):
        client = secured.runtime(retries=1, credentials=credentials)
        assert secured.predictions(target, rows, "text/csv", client) == expected(boosters[objective], rows), target


def test_target_model_outside_the_keys_patterns_is_access_denied(secured: Endpoint) -> None:
    for _ in range(2):  # a refused request does not use up its signature: the same one is refused the same way
        response = client_error(secured, HOUSTON, "dallas/model.tar.gz")
        assert response["Error"]["Code"] == "AccessDeniedException"
        assert response["ResponseMetadata"]["HTTPStatusCode"] == 403
        assert "dallas/model.tar.gz" in response["Error"]["Message"]
    status, body, _ = answer(signed(secured, "GET", "/models", ADMIN))
    assert status == 200
    assert "dallas/model.tar.gz" not in {model["modelName"] for model in json.loads(body)["models"]}


def test_wrong_secret_and_unknown_key_are_refused(secured: Endpoint) -> None:
    wrong = client_error(secured, (HOUSTON[0], "guessed"), "houston/model.tar.gz")
    assert (wrong["Error"]["Code"], wrong["ResponseMetadata"]["HTTPStatusCode"]) == ("InvalidSignatureException", 403)
    unknown = client_error(secured, ("AKIDSTRANGER", "secret"), "houston/model.tar.gz")
    assert unknown["Error"]["Code"] == "UnrecognizedClientException"


def test_an_odd_endpoint_name_is_signed_as_botocore_encodes_it(secured: Endpoint) -> None:
    """The signature over ``/endpoints/a%20b%2Fc/invocations`` holds; the name itself is then not this endpoint's."""
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        secured.invoke("houston/model.tar.gz", "1", client=secured.runtime(credentials=ADMIN), EndpointName="a b/c%d")
    assert raised.value.response["Error"]["Code"] == "ValidationError"
    assert "a b/c%d" in raised.value.response["Error"]["Message"]


def test_unsigned_requests_get_403_in_sagemakers_shape_but_ping_is_open(secured: Endpoint) -> None:
    for path, data in (("/invocations", b"1,2"), ("/models", None), ("/metrics", None)):
        request = urllib.request.Request(
            secured.url + path, data=data, headers={"X-Amzn-SageMaker-Target-Model": "houston/model.tar.gz"}
        )
        status, body, headers = answer(request)
        assert status == 403, path
        assert headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"
        assert set(json.loads(body)) == {"__type", "message"}
    assert answer(secured.url + "/ping")[0] == 200


def test_management_and_metrics_need_an_unrestricted_key(secured: Endpoint) -> None:
    assert answer(signed(secured, "GET", "/models", HOUSTON))[0] == 403
    status, body, _ = answer(signed(secured, "GET", "/models", ADMIN))
    assert status == 200 and "models" in json.loads(body)
    assert answer(signed(secured, "GET", "/metrics", HOUSTON))[0] == 403
    status, body, _ = answer(signed(secured, "GET", "/metrics", ADMIN))
    assert status == 200 and b"openmme_loaded_models" in body


def test_the_same_request_twenty_times_in_a_row_gets_twenty_answers_as_on_aws(
    secured: Endpoint, boosters: dict[str, xgboost.Booster]
) -> None:
    """SigV4 has no nonce: boto3 sending one request 20 times within a second sends the same signature each time,
    and AWS serves them all. So does openmme (--auth-refuse-replays, off here, would refuse all but the first)."""
    rows = make_rows(2, seed=5)
    client = secured.runtime(retries=1, credentials=HOUSTON)
    signatures: list[str] = []
    client.meta.events.register(
        "before-send", lambda request, **_: signatures.append(request.headers["Authorization"].decode()[-64:])
    )
    secured.predictions("houston/model.tar.gz", rows, client=client)  # loaded first: the 20 then take milliseconds
    signatures.clear()
    time.sleep(1 - time.time() % 1)  # start as a second begins: the 20 share their X-Amz-Date
    served = [secured.predictions("houston/model.tar.gz", rows, "text/csv", client) for _ in range(20)]
    assert served == [expected(boosters["binary:logistic"], rows)] * 20
    assert len(signatures) == 20 and len(set(signatures)) < 20  # identical signed requests, all served


def test_a_request_captured_and_sent_again_is_served_within_its_window(secured: Endpoint) -> None:
    """The same bytes twice on the wire: what a replay looks like, and what a client resending looks like. Only TLS
    keeps the first from being captured (see README, "Authentication")."""
    request = botocore.awsrequest.AWSRequest(
        "POST",
        secured.url + "/invocations",
        data=b"0.1,0.2,0.3,0.4,0.5,0.6",
        headers={"X-Amzn-SageMaker-Target-Model": "houston/model.tar.gz", "Content-Type": "text/csv"},
    )
    botocore.auth.SigV4Auth(botocore.credentials.Credentials(*HOUSTON), "sagemaker", "us-east-1").add_auth(request)
    prepared = request.prepare()
    first = answer(urllib.request.Request(prepared.url, prepared.body, dict(prepared.headers), method="POST"))
    again = answer(urllib.request.Request(prepared.url, prepared.body, dict(prepared.headers), method="POST"))
    assert (first[0], again[0]) == (200, 200)
    assert first[1] == again[1]


def test_refusals_are_logged_without_secrets(secured: Endpoint) -> None:
    client_error(secured, (HOUSTON[0], "guessed-secret"), "houston/model.tar.gz")
    lines = [json.loads(line) for line in secured.log().splitlines() if line.startswith('{"time"')]
    refusals = [line for line in lines if line.get("event") == "refused"]
    assert any(r["access_key_id"] == HOUSTON[0] and r["error"] == "InvalidSignatureException" for r in refusals)
    for secret in ("guessed-secret", HOUSTON[1], ADMIN[1]):
        assert secret not in secured.log()


# Starting: what `openmme serve` refuses before it starts or binds anything.


def test_serve_on_every_interface_without_auth_exits_with_one_line(tmp_path: Path) -> None:
    result = run_serve("--cache-dir", str(tmp_path / "cache"), "--host", "0.0.0.0")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("openmme serve: refusing to listen on 0.0.0.0 without authentication")
    assert "--auth sigv4" in lines[0] and "--allow-unauthenticated-remote" in lines[0]
    assert not (tmp_path / "cache").exists()  # nothing was started


def test_serve_with_auth_but_no_keys_exits_with_one_line(tmp_path: Path) -> None:
    result = run_serve(
        "--cache-dir", str(tmp_path / "cache"), "--auth", "sigv4", environ={"OPENMME_AUTH_ACCESS_KEY_ID": "AKID"}
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "openmme serve: OPENMME_AUTH_ACCESS_KEY_ID and OPENMME_AUTH_SECRET_ACCESS_KEY must be set together"
    ]
    assert not (tmp_path / "cache").exists()


def test_both_fronts_check_signatures_and_the_edge_answers_signed_warm_requests(secured: Endpoint) -> None:
    target, body = "houston/model.tar.gz", "1,2,3,4,5,6"

    def unsigned() -> int:
        connection = http.client.HTTPConnection(secured.url.removeprefix("http://"), timeout=30)
        headers = {"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": target}
        connection.request("POST", f"/endpoints/{secured.name}/invocations", body=body, headers=headers)
        status = connection.getresponse().status
        connection.close()
        return status

    def signed() -> int:  # a new client: a new connection, which either front may take
        response = secured.invoke(target, body, client=secured.runtime(retries=1, credentials=HOUSTON))
        return int(response["ResponseMetadata"]["HTTPStatusCode"])

    def answered_by_edge() -> bool:
        lines = [json.loads(line) for line in secured.log().splitlines() if line.startswith('{"time"')]
        return any(line.get("front") == "edge-1" and line.get("target_model") == target for line in lines)

    assert signed() == 200
    assert wait_until(lambda: signed() == 200 and answered_by_edge())
    assert [unsigned() for _ in range(16)] == [403] * 16
    assert [signed() for _ in range(8)] == [200] * 8
