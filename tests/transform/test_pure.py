"""The transform's pure parts, without S3 or an endpoint: the JSONPath subset, records and batches, answers split
back (against the XGBoost handler's own encoders), joins, the job's checks, output names, manifests, shares of
the inputs, the command line, and what the endpoint's self-description makes of concurrency."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xgboost
from hypothesis import given
from hypothesis import strategies as st

from openmme.cli import parser
from openmme.endpoint.names import S3Location
from openmme.handlers.xgboost_service import batch_csv, container_csv, container_json, rows_csv
from openmme.publish.samples import make_rows
from openmme.transform import TransformConfigError, TransformJob, records
from openmme.transform.invoker import DEFAULT_CONCURRENCY, EndpointTarget, concurrency_from
from openmme.transform.jsonpath import JsonPathError, PathMismatch, parse
from openmme.transform.options import job_from_arguments, shard_from_arguments
from openmme.transform.records import (
    AnswerMismatch,
    RecordError,
    assemble,
    batch_body,
    csv_fields,
    csv_line,
    filter_inputs,
    join_outputs,
    payload_batches,
    split_answer,
    split_records,
)
from openmme.transform.report import ObjectOutcome
from openmme.transform.storage import InputObject, TransformStoreError, output_location, parse_manifest, shard

RECORD = {"id": 7, "features": [1.5, 2.5], "SageMakerOutput": {"label": 1}}
ROW = [b"id-1", b"0.1", b"0.2", b"0.3", b"0.4", b"0.5"]


# DataProcessing's JSONPath subset: the examples of SageMaker's guide and API reference.


@pytest.mark.parametrize(
    ("path", "value", "selected"),
    [
        ("$", RECORD, RECORD),
        ("$.features", RECORD, [1.5, 2.5]),
        ("$['id','SageMakerOutput']", RECORD, {"id": 7, "SageMakerOutput": {"label": 1}}),
        ("$.SageMakerOutput.*", RECORD, [1]),
        ("$.field1.['child1','child2']", {"field1": {"child1": 1, "child2": 2, "x": 3}}, {"child1": 1, "child2": 2}),
        ("$[1:]", ROW, ROW[1:]),
        ("$[0,5:]", ROW, [ROW[0], ROW[5]]),
        ("$[1,3,5]", ROW, [ROW[1], ROW[3], ROW[5]]),
        ("$[-1]", ROW, ROW[-1]),
        ("$[0,-1]", ROW, [ROW[0], ROW[-1]]),
        ("$[2:5]", ROW, ROW[2:5]),  # the end is exclusive, as in slice()
        ("$[:2]", ROW, ROW[:2]),
        ("$[*]", ROW, ROW),
        ("$.items[*].id", {"items": [{"id": 1}, {"id": 2}]}, [1, 2]),
    ],
)
def test_jsonpath_subset_selects_as_sagemaker_documents(path: str, value: Any, selected: Any) -> None:
    assert parse(path).apply(value) == selected


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("features", "must start with $"),
        ("$..id", "recursive descent"),
        ("$[?(@.id)]", "filter"),
        ("$[0:2,246:]", "one slice per bracket"),
        ("$[1:5:2]", "slice steps"),
        ("$.field1.['child1','child2.grandchild']", "nesting"),
        ("$['a','b'].c", "last step"),
        ("$[0", "never closed"),
        ("$[" + "1," * 40 + "1]", "longer than 63"),
    ],
)
def test_jsonpath_outside_the_subset_is_refused(path: str, reason: str) -> None:
    with pytest.raises(JsonPathError, match=re.escape(reason)):
        parse(path)


@pytest.mark.parametrize(
    ("path", "value", "reason"),
    [("$[6]", ROW, "outside the record's 6 elements"), ("$.id", ROW, "array"), ("$.nope", RECORD, "no attribute")],
)
def test_a_path_that_does_not_fit_a_record_says_why(path: str, value: Any, reason: str) -> None:
    with pytest.raises(PathMismatch, match=reason):
        parse(path).apply(value)


# Records and batches.


def test_line_records_skip_empty_lines_but_keep_their_numbers() -> None:
    records = split_records(b"a,1\r\n\nb,2\r\nc,3", "Line")
    assert records.items == [b"a,1", b"b,2", b"c,3"]
    assert [records.line(index) for index in range(3)] == [1, 3, 4]
    assert split_records(b"a\nb\n", "None").items == [b"a\nb\n"]
    assert split_records(b"", "Line").items == []


@given(st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=60), st.integers(40, 120))
def test_multi_record_batches_are_full_in_order_and_within_the_payload(sizes: list[int], limit: int) -> None:
    items = [b"x" * size for size in sizes]
    batches = payload_batches(items, "MultiRecord", limit)
    assert [index for start, end in batches for index in range(start, end)] == list(range(len(items)))
    for number, (start, end) in enumerate(batches):
        assert len(batch_body(items, start, end)) <= limit
        if number + 1 < len(batches):  # a batch stops only when the next record would not fit
            assert len(batch_body(items, start, end + 1)) > limit
    assert payload_batches(items, "SingleRecord", limit) == [(index, index + 1) for index in range(len(items))]


def test_a_record_over_the_payload_fails_with_its_place() -> None:
    with pytest.raises(RecordError, match="is 11 bytes, over MaxPayloadInMB") as raised:
        payload_batches([b"ok", b"x" * 11, b"x" * 12], "MultiRecord", 10)
    assert raised.value.index == 1


# Answers split back into one output per record: every shape the XGBoost handler answers gives the same outputs.


@pytest.mark.parametrize("objective", ["reg:squarederror", "multi:softprob"])
def test_every_answer_shape_of_the_xgboost_container_splits_into_the_same_records(objective: str) -> None:
    params = {"objective": objective, "num_class": 3} if objective.startswith("multi") else {"objective": objective}
    rows = make_rows(5, seed=1)
    booster = xgboost.train(params, xgboost.DMatrix(rows, label=[0, 1, 2, 1, 0]), num_boost_round=2)
    predictions = booster.predict(xgboost.DMatrix(rows))
    one_line = split_answer(container_csv(predictions).encode(), "text/csv", 5)
    assert split_answer(batch_csv(predictions).encode(), "text/csv", 5) == one_line  # $SAGEMAKER_BATCH
    as_json = split_answer(container_json(predictions).encode(), "application/json", 5)
    assert [json.loads(output) for output in as_json] == predictions.tolist()
    assert [json.loads(output) for output in one_line] == predictions.tolist()
    rows_answer = split_answer(rows_csv(predictions).encode(), "text/csv; format=rows", 5)
    assert [[float(value) for value in csv_fields(output)] for output in rows_answer] == np.atleast_2d(
        predictions.T
    ).T.tolist()


def test_answers_that_do_not_hold_one_output_per_record_are_refused() -> None:
    with pytest.raises(AnswerMismatch, match="2 lines for 3 records"):
        split_answer(b"1\n2\n", "text/csv", 3)
    with pytest.raises(AnswerMismatch, match="2 predictions for 3 records"):
        split_answer(b"[1, 2]", "application/json", 3)
    with pytest.raises(AnswerMismatch, match="cannot be split"):
        split_answer(b"\x93NUMPY", "application/x-npy", 2)
    assert split_answer(b"\x93NUMPY", "application/x-npy", 1) == [b"\x93NUMPY"]
    assert split_answer(b'{"predictions": [{"score": 1}, {"score": 2}]}', "application/json", 2) == [
        b'{"score": 1}',
        b'{"score": 2}',
    ]


def test_joins_follow_sagemakers_examples() -> None:
    # CSV: the input's fields, then the output's; quoted fields stay quoted.
    inputs = [b'1,"a,b",2', b"2,c,3"]
    assert join_outputs(inputs, [b"0.5", b"0.7"], "csv", "csv", True, parse("$")) == [b'1,"a,b",2,0.5', b"2,c,3,0.7"]
    assert join_outputs(inputs, [b"0.5", b"0.7"], "csv", "csv", True, parse("$[1,-1]")) == [b'"a,b",0.5', b"c,0.7"]
    assert join_outputs(inputs, [b"[0.1, 0.9]", b"[0.8, 0.2]"], "csv", "json", True, parse("$[0,3:]")) == [
        b"1,0.1,0.9",
        b"2,0.8,0.2",
    ]
    # JSON: SageMakerOutput added to an object, or SageMakerInput and SageMakerOutput around anything else.
    joined = join_outputs(
        [b'{"id": 1, "features": [1]}', b"[2]"], [b"0.5", b"0.7"], "jsonlines", "csv", True, parse("$")
    )
    assert [json.loads(line) for line in joined] == [
        {"id": 1, "features": [1], "SageMakerOutput": 0.5},
        {"SageMakerInput": [2], "SageMakerOutput": 0.7},
    ]
    assert join_outputs(
        [b'{"id": 1, "f": 2}'], [b'{"label": 1}'], "json", "json", True, parse("$['id','SageMakerOutput']")
    ) == [b'{"id":1,"SageMakerOutput":{"label":1}}']
    with pytest.raises(RecordError, match=re.escape("OutputFilter $[2]: index 2 is outside the record's 2")) as raised:
        join_outputs([b"1,2", b"3"], [b"0", b"1"], "csv", "csv", True, parse("$[2]"))
    assert raised.value.index == 1
    assert assemble([b"a", b"b"], "Line") == b"a\nb\n" and assemble([b"a", b"b"], "None") == b"ab"


PATHS = ["$", "$[0]", "$[-1]", "$[1:]", "$[:2]", "$[0,-1]", "$[2,0]", "$[1:3]", "$[-2:]", "$[0,3:]", "$[*]"]


@given(
    st.integers(1, 6),
    st.lists(st.text(alphabet="ab1.", min_size=0, max_size=4), min_size=1, max_size=4),
    st.sampled_from(PATHS),
    st.booleans(),
)
def test_the_fast_csv_paths_pick_what_the_jsonpath_picks(
    fields: int, outputs: list[str], path: str, join: bool
) -> None:
    inputs = [",".join(f"f{row}{column}" for column in range(fields)).encode() for row in range(len(outputs))]
    answers = [output.encode() for output in outputs]
    try:
        expected = []
        for record, answer in zip(inputs, answers, strict=True):
            picked = parse(path).apply((record.split(b",") if join else []) + answer.split(b","))
            expected.append(b",".join(picked) if isinstance(picked, list) else picked)
    except PathMismatch:  # a path past the row's end: both ways of picking must refuse it too
        expected = None
    for quoted in (False, True):  # the split-and-pick path, and the record-by-record one
        if expected is None:
            with pytest.raises(RecordError):
                join_outputs(inputs, answers, "csv", "csv", join, parse(path), quoted)
        else:
            assert join_outputs(inputs, answers, "csv", "csv", join, parse(path), quoted) == expected
    assert filter_inputs(inputs, "csv", parse("$[0:]")) == inputs


def test_objects_larger_than_a_chunk_are_split_and_picked_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(records, "_CHUNK_BYTES", 1000)  # many pieces of lines, cut anywhere
    lines = [f"id-{row},{row * 0.5},{-row}".encode() for row in range(5000)]
    data = b"\n".join(lines) + b"\n"
    assert split_records(data, "Line").items == lines
    outputs = [str(row).encode() for row in range(5000)]
    for quoted in (False, True):  # by the chunks of C loops, and record by record
        assert filter_inputs(lines, "csv", parse("$[1:]"), quoted) == [line.split(b",", 1)[1] for line in lines]
        joined = join_outputs(lines, outputs, "csv", "csv", True, parse("$[0,-1]"), quoted)
        assert joined == [line.split(b",")[0] + b"," + output for line, output in zip(lines, outputs, strict=True)]


def test_input_filters_drop_fields_and_attributes() -> None:
    assert filter_inputs([b'x,"1,5",2', b"y,3,4"], "csv", parse("$[1:]")) == [b'"1,5",2', b"3,4"]
    assert filter_inputs([b'{"id": 1, "features": [1, 2]}'], "jsonlines", parse("$.features")) == [b"[1,2]"]
    with pytest.raises(RecordError, match="not JSON") as raised:
        filter_inputs([b"{}", b"{"], "jsonlines", parse("$"))
    assert raised.value.index == 1
    assert csv_line([b"a", b'b"c', b"d,e"]) == b'a,"b""c","d,e"'


# The job's checks, in SageMaker's names.


def request(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "TransformJobName": "nightly",
        "ModelName": "unused-by-openmme",
        "TargetModel": "houston/model.tar.gz",
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://in/rows/"}},
            "ContentType": "text/csv",
            "SplitType": "Line",
        },
        "TransformOutput": {"S3OutputPath": "s3://out/scores", "AssembleWith": "Line", "Accept": "text/csv"},
        "TransformResources": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1},
        "DataProcessing": {"InputFilter": "$[1:]", "JoinSource": "Input", "OutputFilter": "$[0,-1]"},
    }
    return base | changes


def test_a_create_transform_job_request_is_a_job_and_back() -> None:
    job = TransformJob.from_request(request())
    assert (job.target_model, job.split_type, job.batch_strategy, job.max_payload_mb) == (
        "houston/model.tar.gz",
        "Line",
        "MultiRecord",
        6,
    )
    assert TransformJob.from_request(job.to_request()) == job
    assert job.fingerprint('"etag-1"') != job.fingerprint('"etag-2"')


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"MaxPayloadInMB": 7}, "MaxPayloadInMB: 7 is not 1 to 6"),
        ({"MaxPayloadInMB": 0}, "chunked payloads"),
        ({"BatchStrategy": "Everything"}, "BatchStrategy: 'Everything' is not one of MultiRecord, SingleRecord"),
        ({"DataProcessing": {"InputFilter": "$.features"}}, "a CSV record is an array"),
        ({"DataProcessing": {"OutputFilter": "$..x"}}, "DataProcessing.OutputFilter"),
        ({"TargetModel": "../etc/passwd"}, "TargetModel"),
        ({"TargetModel": "s3://models/houston/model.tar.gz"}, "TargetModel"),
        ({"Environment": {"A": "1"}}, "Environment"),
        ({"Unknown": 1}, "unknown CreateTransformJob fields: Unknown"),
        ({"TransformOutput": {"S3OutputPath": "s3://out/", "KmsKeyId": "k"}}, "KmsKeyId is not supported"),
        ({"TransformOutput": {"S3OutputPath": "https://out/"}}, "S3OutputPath: 'https://out/' is not an s3:// URI"),
        ({"ModelClientConfig": {"InvocationsMaxRetries": 9}}, "InvocationsMaxRetries must be 0 to 3"),
    ],
)
def test_settings_sagemaker_or_openmme_cannot_run_are_refused_by_name(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(TransformConfigError, match=re.escape(message)):
        TransformJob.from_request(request(**changes))


def test_csv_data_processing_needs_line_splitting_and_assembly_as_sagemaker_requires() -> None:
    without_split = request()
    without_split["TransformInput"] = {**without_split["TransformInput"], "SplitType": "None"}
    with pytest.raises(TransformConfigError, match="SplitType Line"):
        TransformJob.from_request(without_split)
    with pytest.raises(TransformConfigError, match="AssembleWith Line"):
        TransformJob.from_request(request(TransformOutput={"S3OutputPath": "s3://out/"}))
    with pytest.raises(TransformConfigError, match="TargetModel is required"):
        TransformJob.from_request({key: value for key, value in request().items() if key != "TargetModel"})


# Where outputs go, manifests, shares.


@pytest.mark.parametrize(
    ("output", "relative", "expected"),
    [
        ("s3://out/scores", "a.csv", "s3://out/scores/a.csv.out"),
        ("s3://out/scores/", "2024/05/a.csv", "s3://out/scores/2024/05/a.csv.out"),
        ("s3://out", "a.csv", "s3://out/a.csv.out"),
    ],
)
def test_outputs_are_named_after_the_input_under_the_output_path(output: str, relative: str, expected: str) -> None:
    job = TransformJob.from_request(request(TransformOutput={"S3OutputPath": output, "AssembleWith": "Line"}))
    assert str(output_location(job, InputObject(S3Location("in", f"rows/{relative}"), relative))) == expected


def test_a_manifest_lists_keys_under_its_prefix() -> None:
    prefix, relatives = parse_manifest(b'[{"prefix": "s3://in/rows/"}, "a.csv", "2024/b.csv"]', "m")
    assert (str(prefix), relatives) == ("s3://in/rows/", ["a.csv", "2024/b.csv"])
    for bad in (b'["a.csv"]', b'[{"prefix": "in/rows/"}, "a.csv"]', b'[{"prefix": "s3://in/"}, 3]', b"{"):
        with pytest.raises(TransformStoreError, match="manifest"):
            parse_manifest(bad, "m")


@given(st.integers(0, 40), st.integers(1, 9))
def test_shares_cover_every_input_once_and_differ_by_one_at_most(objects: int, count: int) -> None:
    items = [InputObject(S3Location("in", f"k{index:03d}"), f"k{index:03d}") for index in range(objects)]
    shares = [shard(items, index, count) for index in range(count)]
    assert sorted(item.relative for share in shares for item in share) == [item.relative for item in items]
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


# The command line.


def arguments(*argv: str) -> argparse.Namespace:
    return parser().parse_args(["transform", *argv])


def test_flags_override_a_request_file(tmp_path: Path) -> None:
    file = tmp_path / "job.json"
    file.write_text(json.dumps(request()))
    args = arguments(
        "--request",
        str(file),
        "--endpoint-url",
        "http://x:1",
        "--max-payload-in-mb",
        "2",
        "--target-model",
        "chicago/model.tar.gz",
    )
    job = job_from_arguments(args)
    assert (job.target_model, job.max_payload_mb, job.data_processing.join_source) == (
        "chicago/model.tar.gz",
        2,
        "Input",
    )
    with pytest.raises(TransformConfigError, match="--input, --output required"):
        job_from_arguments(arguments("--target-model", "a.tar.gz", "--endpoint-url", "http://x:1"))


def test_the_share_comes_from_the_flag_or_a_kubernetes_completion_index() -> None:
    args = arguments("--endpoint-url", "http://x:1", "--shard-count", "4")
    assert shard_from_arguments(args, {"JOB_COMPLETION_INDEX": "3"}) == (3, 4)
    assert shard_from_arguments(args, {}) == (0, 4)
    with pytest.raises(TransformConfigError, match="not 0 to --shard-count 4"):
        shard_from_arguments(args, {"JOB_COMPLETION_INDEX": "4"})


def test_concurrency_follows_what_the_endpoint_says_of_itself() -> None:
    assert concurrency_from({"MaxConcurrentTransforms": 6, "BatchStrategy": "MultiRecord"}, None) == 6
    assert concurrency_from(None, {"shards": {"a": {}, "b": {}, "c": {}}}) == 6
    assert concurrency_from(None, {"shards": {}}) == concurrency_from(None, None) == DEFAULT_CONCURRENCY
    assert EndpointTarget("http://h:1/").invocations_url == "http://h:1/invocations"
    assert EndpointTarget("http://h:1", "a b").invocations_url == "http://h:1/endpoints/a%20b/invocations"


def test_a_failure_names_the_object_record_and_line() -> None:
    outcome = ObjectOutcome("s3://in/b.csv", "s3://out/b.csv.out", error="ModelError: no", record=3, line=4)
    assert outcome.failure() == "s3://in/b.csv: record 3 (line 4): ModelError: no"
    assert ObjectOutcome("s3://in/b.csv", "o", error="S3 answered NoSuchKey").failure() == (
        "s3://in/b.csv: S3 answered NoSuchKey"
    )


def test_the_job_and_its_checks_load_no_http_or_s3_client() -> None:
    """What the command line imports at every start stays light: the runner and its clients come when a job runs."""
    probe = (
        "import sys, openmme.transform, openmme.transform.options, openmme.cli\n"
        "openmme.cli.parser()\n"
        "print(sorted(m for m in ('aiohttp', 'boto3', 'numpy', 'openmme.transform.job') if m in sys.modules))"
    )
    completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert completed.stdout.strip() == "[]"
