"""Pure pieces of the endpoint, tested without starting anything: settings, names, MMS config text."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber

from openmme.endpoint.cache import Entry, mms_model_name
from openmme.endpoint.errors import ValidationError
from openmme.endpoint.mms import MmsConfig, java_command
from openmme.endpoint.names import S3Location, closest_target_model, is_target_model, validate_target_model
from openmme.endpoint.s3 import PrefixUnreachable, PrefixUnusable, check_prefix
from openmme.endpoint.settings import Settings, parse_bytes
from openmme.ports import PORT_CEILING, free_port, free_ports


@pytest.mark.parametrize(
    ("text", "size"),
    [("0", 0), ("1048576", 1048576), ("512MiB", 512 * 2**20), ("2G", 2 * 10**9), ("1.5kb", 1500), ("8GiB", 8 * 2**30)],
)
def test_parse_bytes(text: str, size: int) -> None:
    assert parse_bytes(text) == size


@pytest.mark.parametrize("text", ["", "many", "-1", "5 parsecs"])
def test_parse_bytes_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_bytes(text)


def test_flags_win_over_environment_over_defaults() -> None:
    env = {"OPENMME_PORT": "9000", "OPENMME_MAX_MODELS": "7", "OPENMME_ALLOW_PICKLE": "true"}
    settings = Settings.from_sources(["--port", "9100", "--memory-budget", "2GiB"], env)
    assert settings.port == 9100
    assert settings.max_models == 7
    assert settings.memory_budget == 2 * 2**30
    assert settings.allow_pickle is True
    assert settings.endpoint_name == "openmme"
    assert settings.host == "127.0.0.1"


def test_sagemaker_bind_to_port_sets_the_port_unless_openmme_port_does() -> None:
    assert Settings.from_sources([], {"SAGEMAKER_BIND_TO_PORT": "8081"}).port == 8081
    assert Settings.from_sources([], {"SAGEMAKER_BIND_TO_PORT": "8081", "OPENMME_PORT": "8082"}).port == 8082


def test_boolean_flags_take_no_value() -> None:
    assert Settings.from_sources(["--allow-pickle"], {}).allow_pickle is True
    assert Settings.from_sources([], {}).allow_pickle is False


def test_bad_values_exit_with_the_flag_named(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        Settings.from_sources(["--disk-budget", "lots"], {})
    assert "--disk-budget" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("uri", "bucket", "key"),
    [("s3://models/prod/", "models", "prod/"), ("s3://models/prod", "models", "prod/"), ("s3://models", "models", "")],
)
def test_prefix_parsing(uri: str, bucket: str, key: str) -> None:
    assert S3Location.parse_prefix(uri) == S3Location(bucket, key)
    assert S3Location.parse_prefix(uri).child("houston/model.tar.gz").key == key + "houston/model.tar.gz"


@pytest.mark.parametrize("uri", ["models/prod/", "http://models/prod", "s3:///prod"])
def test_bad_prefixes_are_refused(uri: str) -> None:
    with pytest.raises(ValueError):
        S3Location.parse_prefix(uri)


@pytest.mark.parametrize("target", ["houston/model.tar.gz", "m-17.tar.gz", "a b/c.tar.gz", "x" * 1024])
def test_valid_target_models(target: str) -> None:
    assert validate_target_model(target) == target


@pytest.mark.parametrize(
    "target",
    [
        None,
        "",
        " leading-space",
        "x" * 1025,
        "/abs.tar.gz",
        "../up.tar.gz",
        "a/../b",
        "a//b",
        "./a",
        "tab\there",
        "a\\b",
    ],
)
def test_invalid_target_models(target: str | None) -> None:
    with pytest.raises(ValidationError):
        validate_target_model(target)


@pytest.mark.parametrize(
    ("target", "says"),
    [
        # Under the prefix: the error names the TargetModel to give instead.
        ("s3://models/prod/houston/model.tar.gz", "give TargetModel='houston/model.tar.gz'"),
        ("S3://models/prod/m-17.tar.gz", "not a full S3 URI"),
        # Elsewhere (or the prefix itself): where to put it, and what to give then.
        ("s3://models/staging/houston/model.tar.gz", "is not an archive under it: publish the archive there"),
        ("s3://models/prod/", "is not an archive under it"),
    ],
)
def test_a_full_s3_uri_is_refused_with_the_relative_form_to_give(target: str, says: str) -> None:
    prefix = S3Location.parse_prefix("s3://models/prod/")
    with pytest.raises(ValidationError) as raised:
        validate_target_model(target, prefix)
    assert "relative to the endpoint's model prefix s3://models/prod/" in raised.value.message
    assert says in raised.value.message
    with pytest.raises(ValidationError, match="relative to the endpoint's model prefix, not an S3 URI"):
        validate_target_model(target)  # SageMaker-hosted mode: no prefix to name


HELD = ["austin/model.tar.gz", "dallas.tar.gz", "houston/model.tar.gz", "houston/v2/model.tar.gz", "a.tar.gz"]


@pytest.mark.parametrize(
    ("asked", "meant"),
    [
        ("houston", "houston/model.tar.gz"),  # a training job's folder, without its archive
        ("houstn/model.tar.gz", "houston/model.tar.gz"),  # a letter missing
        ("Houston/model.tar.gz", "houston/model.tar.gz"),  # the case
        ("houston.tar.gz", "houston/model.tar.gz"),  # the other archive layout
        ("dalas.tar.gz", "dallas.tar.gz"),
        ("housotn/v2/model.tar.gz", "houston/v2/model.tar.gz"),  # two letters swapped, deeper down
        ("b.tar.gz", None),  # short names a letter apart are different models
        ("chicago/model.tar.gz", None),
        ("", None),
    ],
)
def test_the_closest_target_model_is_a_likely_typo_or_none(asked: str, meant: str | None) -> None:
    assert closest_target_model(asked, HELD) == meant
    assert closest_target_model(asked, []) is None


def test_what_the_endpoint_refuses_is_no_target_model() -> None:
    assert is_target_model("houston/model.tar.gz")
    assert not any(map(is_target_model, ["folder/", "a//b", "./x", ".openmme/aliases/a.json"]))


@pytest.mark.parametrize(
    ("code", "status", "refusal", "says"),
    [
        ("AccessDenied", 403, PrefixUnusable, "the credentials may not list s3://models/prod/ (AccessDenied) at"
         " https://s3.example: allow them s3:ListBucket on bucket 'models' and s3:GetObject on the prefix"),
        ("PermanentRedirect", 301, PrefixUnusable, "S3 at https://s3.example refuses to list s3://models/prod/"
         " (PermanentRedirect): fix --model-prefix"),
        ("ServiceUnavailable", 503, PrefixUnreachable, "cannot reach S3 at https://s3.example (ServiceUnavailable:"),
    ],
)  # fmt: skip
def test_a_prefix_s3_refuses_to_list_says_what_to_do_and_5xx_is_worth_waiting_for(
    code: str, status: int, refusal: type[PrefixUnusable], says: str
) -> None:
    client = boto3.client(
        "s3",
        endpoint_url="https://s3.example",
        region_name="us-east-1",
        aws_access_key_id="k",
        aws_secret_access_key="s",
    )
    with Stubber(client) as stubbed:
        stubbed.add_client_error("list_objects_v2", service_error_code=code, http_status_code=status)
        with pytest.raises(PrefixUnusable) as raised:
            check_prefix(S3Location.parse_prefix("s3://models/prod/"), client)
    assert type(raised.value) is refusal
    assert str(raised.value).startswith(says)


def test_model_url_is_where_the_model_came_from_not_the_cache_path(tmp_path: Path) -> None:
    handed_over = Entry("m1", "m1-abc", tmp_path / "models" / "m1-abc", managed=False, url="/opt/ml/models/m1/model/")
    assert handed_over.describe()["modelUrl"] == "/opt/ml/models/m1/model/"  # as SageMaker sent it, byte for byte
    assert handed_over.describe()["path"] == str(tmp_path / "models" / "m1-abc")
    from_prefix = Entry("houston/model.tar.gz", "h-1", tmp_path / "h-1", url="s3://models/prod/houston/model.tar.gz")
    assert from_prefix.describe()["modelUrl"] == "s3://models/prod/houston/model.tar.gz"


def test_mms_names_are_safe_distinct_and_stable() -> None:
    names = {mms_model_name(t) for t in ["a/b.tar.gz", "a_b.tar.gz", "a-b.tar.gz", "A/B.tar.gz", "a/b"]}
    assert len(names) == 5
    assert all(name.replace("-", "").replace("_", "").isalnum() for name in names)
    assert mms_model_name("houston/model.tar.gz") == mms_model_name("houston/model.tar.gz")
    assert mms_model_name("houston/model.tar.gz").startswith("houston_model-")
    assert len(mms_model_name("y" * 1024)) <= 64


def test_mms_config_binds_loopback_and_converts_minutes(tmp_path: Path) -> None:
    config = MmsConfig(
        inference_port=20001,
        management_port=20002,
        model_store=tmp_path,
        workers_per_model=2,
        job_queue_size=50,
        response_timeout_s=90,
        heap="256m",
        tmp_dir=tmp_path / "tmp",
    )
    properties = dict(line.split("=", 1) for line in config.properties().splitlines())
    assert properties["inference_address"] == "http://127.0.0.1:20001"
    assert properties["management_address"] == "http://127.0.0.1:20002"
    assert properties["default_response_timeout"] == "2"  # MMS counts minutes: 90 s rounds up
    assert properties["default_workers_per_model"] == "2"
    assert int(properties["max_request_size"]) > 6 * 1024 * 1024
    command = java_command(config, tmp_path / "config.properties", python="/venv/bin/python")
    assert command[command.index("--python") + 1] == "/venv/bin/python"
    assert f"-Djava.io.tmpdir={tmp_path / 'tmp'}" in command
    assert "-Xmx256m" in command


def test_free_ports_are_below_the_ephemeral_range_and_distinct() -> None:
    ports = {free_port() for _ in range(20)}
    assert all(10_000 <= port < PORT_CEILING for port in ports)
    assert len(set(free_ports(8))) == 8


def test_hosting_is_dense_by_default_and_checked(capsys: pytest.CaptureFixture[str]) -> None:
    assert Settings.from_sources([], {}).hosting == "dense"
    assert Settings.from_sources([], {"OPENMME_HOSTING": "Isolated"}).hosting == "isolated"
    with pytest.raises(SystemExit):
        Settings.from_sources(["--hosting", "shared"], {})
    assert "dense or isolated" in capsys.readouterr().err


def test_home_shards_are_stable_and_spread_over_every_shard() -> None:
    from openmme.endpoint.dense import ShardPool

    pool = ShardPool(Settings(shards=4), {}, Path("shards.out"))
    targets = [f"city-{index}/model.tar.gz" for index in range(400)]
    homes = [pool.home(target).index for target in targets]
    assert homes == [ShardPool(Settings(shards=4), {}, Path("shards.out")).home(t).index for t in targets]
    assert all(60 <= homes.count(index) <= 140 for index in range(4))


def test_a_model_spreads_only_when_every_shard_holding_it_is_busy_and_another_is_not() -> None:
    from openmme.endpoint.dense import HOT_IN_FLIGHT, ShardPool

    pool = ShardPool(Settings(shards=3), {}, Path("shards.out"))
    for shard in pool.shards:
        shard.ready.set()
    first, second, third = pool.shards
    first.in_flight = HOT_IN_FLIGHT - 1
    assert pool.spread_to({0: 1}) is None  # not busy yet
    first.in_flight, second.in_flight, third.in_flight = HOT_IN_FLIGHT, HOT_IN_FLIGHT + 3, 0
    assert pool.spread_to({0: 1}) is third  # the quietest other shard
    assert pool.pick({0: 1, 2: 1}) is third
    third.in_flight = HOT_IN_FLIGHT
    assert pool.spread_to({0: 1}) is None  # every other shard is as busy
    third.ready.clear()
    third.in_flight = 0
    assert pool.spread_to({0: 1}) is None  # a shard being restarted takes nothing


def test_a_bad_environment_value_is_reported_under_the_variables_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        Settings.from_sources([], {"OPENMME_HOSTING": "shared"})
    assert "OPENMME_HOSTING: not a hosting mode" in capsys.readouterr().err
