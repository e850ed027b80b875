"""Publishing pipelines against the real SeaweedFS: the manifest written once (create-only), every refusal leaving the
prefix without it, and ``openmme pipeline publish|show``. Two tests run the check's embedded endpoint (a real
``openmme serve`` + MMS): a script step that scales CSV rows in front of a booster, answered end to end before the
manifest is uploaded, and a step that raises, after which nothing is. The rest resolves steps only (``--no-check``,
or a refusal before the check): step archives there need only exist, so they hold a few bytes."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xgboost

from openmme.cli import main
from openmme.endpoint.pipeline_manifest import PipelineManifest, Step
from openmme.publish import ArtifactExists
from openmme.publish.aliases import set_alias
from openmme.publish.local import pack_directory
from openmme.publish.pipelines import (
    PipelineCheckFailed,
    PipelineRefused,
    get_pipeline,
    publish_pipeline,
    resolve_steps,
)
from openmme.publish.samples import make_rows
from tests.conftest import BUCKET, Published
from tests.publish.conftest import keys_under
from tests.support import csv_body, expected, served_csv

pytestmark = pytest.mark.integration

# Doubles every value of its CSV rows, and answers CSV: the booster after it reads that.
SCALE_PY = """
def model_fn(model_dir):
    return 2.0


def transform_fn(factor, body, content_type, accept):
    text = body.decode() if isinstance(body, (bytes, bytearray)) else body
    rows = [[float(value) * factor for value in line.split(",")] for line in text.strip().splitlines()]
    return "\\n".join(",".join(repr(value) for value in row) for row in rows), "text/csv"
"""
RAISES_PY = """
def model_fn(model_dir):
    return None


def transform_fn(model, body, content_type, accept):
    raise ValueError("the featurizer refused the rows: boom")
"""


def script_archive(directory: Path, source: str) -> bytes:
    (directory / "code").mkdir(parents=True)
    (directory / "code" / "inference.py").write_text(source)
    return pack_directory(directory)


def manifests(s3_client: Any, prefix: str) -> list[str]:
    return [key for key in keys_under(s3_client, prefix) if key.endswith(".pipeline.json")]


def stored(s3_client: Any, prefix: str, name: str) -> bytes:
    return bytes(s3_client.get_object(Bucket=BUCKET, Key=prefix.split("/", 3)[3] + name)["Body"].read())


@pytest.fixture
def steps(prefix: str, s3_client: Any) -> str:
    """A prefix with two step archives (a few bytes each: only resolved, never loaded, here)."""
    key = prefix.split("/", 3)[3]
    for name in ("featurizer/model.tar.gz", "booster.tar.gz", "labels.tar.gz"):
        s3_client.put_object(Bucket=BUCKET, Key=key + name, Body=b"not loaded here")
    return prefix


# ---- with the check's endpoint --------------------------------------------------------------------------------


def test_a_checked_pipeline_answers_the_sample_end_to_end_then_is_uploaded(
    prefix: str,
    s3_client: Any,
    publish: Callable[..., Published],
    boosters: dict[str, xgboost.Booster],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    booster = boosters["reg:squarederror"]
    publish(prefix, "scale.tar.gz", archive=script_archive(tmp_path / "scale", SCALE_PY))
    publish(prefix, "booster.tar.gz", booster)
    rows = make_rows(3, seed=4)
    sample = tmp_path / "rows.csv"
    sample.write_text(csv_body(rows))

    command = ["pipeline", "publish", "scaled.pipeline.json", "scale.tar.gz", "booster.tar.gz", "--accept-of",
               "1=text/csv", "--model-prefix", prefix, "--sample", str(sample), "--accept", "text/csv"]  # fmt: skip
    assert main(command) == 0
    out = capsys.readouterr().out
    assert "step 1 of 2: scale.tar.gz (archive, " in out and "answers in text/csv)" in out
    checked = next(line for line in out.splitlines() if line.startswith("checked: "))
    assert checked.startswith("checked: TargetModel scaled.pipeline.json answered 200 (text/csv")
    # The booster's predictions for the doubled rows (the script step ran, and its CSV reached the booster), in the
    # real-time container's one CSV line: the check's endpoint answers as the pipeline will be served.
    answered = served_csv(checked.split("): ", 1)[1].encode())
    assert np.allclose(answered, expected(booster, rows * 2), rtol=1e-5)
    assert f"published {prefix}scaled.pipeline.json\nTargetModel: scaled.pipeline.json" in out
    manifest = PipelineManifest.from_bytes(stored(s3_client, prefix, "scaled.pipeline.json"), "scaled.pipeline.json")
    assert manifest.steps == (Step("scale.tar.gz", "text/csv"), Step("booster.tar.gz"))


def test_a_step_that_raises_fails_the_check_and_nothing_is_uploaded(
    prefix: str,
    s3_client: Any,
    publish: Callable[..., Published],
    boosters: dict[str, xgboost.Booster],
    tmp_path: Path,
) -> None:
    publish(prefix, "raises.tar.gz", archive=script_archive(tmp_path / "raises", RAISES_PY))
    publish(prefix, "booster.tar.gz", boosters["reg:squarederror"])
    with pytest.raises(PipelineCheckFailed) as failed:
        publish_pipeline(
            prefix,
            "broken.pipeline.json",
            ["raises.tar.gz", "booster.tar.gz"],
            sample=csv_body(make_rows(2, seed=1)).encode(),
            client=s3_client,
        )
    message = str(failed.value)
    assert failed.value.status == 424 and failed.value.code == "ModelError"
    # The endpoint's own message, naming the step, and the step's.
    assert "step 1 of 2" in message and "raises.tar.gz" in message and "boom" in message, message
    assert "nothing was written" in message and "\n" not in message
    assert manifests(s3_client, prefix) == []


# ---- in process: resolving, writing, refusing ----------------------------------------------------------------


def test_a_missing_step_is_named_and_nothing_is_uploaded(
    steps: str, s3_client: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sample = tmp_path / "rows.csv"
    sample.write_text("1,2,3\n")
    command = ["pipeline", "publish", "churn.pipeline.json", "featurizer/model.tar.gz", "nope.tar.gz", "gone",
               "--model-prefix", steps, "--sample", str(sample)]  # fmt: skip
    assert main(command) == 1
    error = capsys.readouterr().err
    # Every step that does not resolve is named, before any endpoint is started for the check.
    assert "pipeline 'churn.pipeline.json' step 2 of 3 ('nope.tar.gz'): not in " in error
    assert "step 3 of 3 ('gone'): not in " in error and "featurizer" not in error
    assert manifests(s3_client, steps) == []


def test_a_pipeline_name_must_end_in_its_suffix_and_the_manifest_must_be_valid(steps: str, s3_client: Any) -> None:
    with pytest.raises(
        PipelineRefused, match=r"ends in \.pipeline\.json \(e\.g\. churn\.pipeline\.json\), not 'churn'"
    ):
        publish_pipeline(steps, "churn", ["booster.tar.gz", "labels.tar.gz"], check=False, client=s3_client)
    with pytest.raises(PipelineRefused, match="has 1 steps; a pipeline has 2 to 15"):
        publish_pipeline(steps, "one.pipeline.json", ["booster.tar.gz"], check=False, client=s3_client)
    with pytest.raises(PipelineRefused, match="pipelines do not nest"):
        publish_pipeline(steps, "n.pipeline.json", ["booster.tar.gz", "x.pipeline.json"], check=False, client=s3_client)
    with pytest.raises(PipelineRefused, match=r"has no \{TargetModel\} step to check with booster.tar.gz"):
        publish_pipeline(steps, "t.pipeline.json", ["booster.tar.gz", "labels.tar.gz"], check_target="booster.tar.gz",
                         check=False, client=s3_client)  # fmt: skip
    with pytest.raises(PipelineRefused, match="give a sample request"):
        publish_pipeline(steps, "s.pipeline.json", ["booster.tar.gz", "labels.tar.gz"], client=s3_client)
    assert manifests(s3_client, steps) == []


def test_publishing_again_is_idempotent_a_change_is_refused_unless_forced(
    steps: str, s3_client: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    first = ["pipeline", "publish", "churn.pipeline.json", "featurizer/model.tar.gz", "booster.tar.gz",
             "--model-prefix", steps, "--no-check"]  # fmt: skip
    assert main(first) == 0
    assert f"published {steps}churn.pipeline.json" in capsys.readouterr().out
    written = stored(s3_client, steps, "churn.pipeline.json")
    assert json.loads(written) == {"steps": ["featurizer/model.tar.gz", "booster.tar.gz"]}

    assert main(first) == 0
    assert "already holds this manifest; nothing was written" in capsys.readouterr().out

    changed = [*first[:4], "labels.tar.gz", *first[4:]]
    assert main(changed) == 1
    error = capsys.readouterr().err
    assert "holds a different manifest" in error and "e.g. churn-v2.pipeline.json" in error
    assert stored(s3_client, steps, "churn.pipeline.json") == written
    with pytest.raises(ArtifactExists) as taken:
        publish_pipeline(
            steps, "churn.pipeline.json", ["booster.tar.gz", "labels.tar.gz"], check=False, client=s3_client
        )
    assert taken.value.suggestion == "churn-v2.pipeline.json"

    assert main([*changed, "--force"]) == 0
    assert f"replaced {steps}churn.pipeline.json" in capsys.readouterr().out
    assert json.loads(stored(s3_client, steps, "churn.pipeline.json")) == {
        "steps": ["featurizer/model.tar.gz", "labels.tar.gz", "booster.tar.gz"]
    }


class _Terminal(io.StringIO):
    """stderr as a terminal: what the CLI draws its progress on."""

    def isatty(self) -> bool:
        return True


def test_publish_shows_its_progress_on_a_terminal_only(
    steps: str, s3_client: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    command = ["pipeline", "publish", "piped.pipeline.json", "featurizer/model.tar.gz", "booster.tar.gz",
               "--model-prefix", steps, "--no-check"]  # fmt: skip
    assert main(command) == 0
    piped = capsys.readouterr()
    assert piped.err == ""
    assert piped.out.splitlines()[-2:] == [f"published {steps}piped.pipeline.json", "TargetModel: piped.pipeline.json"]

    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main([*command[:2], "shown.pipeline.json", *command[3:]]) == 0
    assert terminal.getvalue().startswith("\rpipeline shown.pipeline.json: resolving its steps … 0 s\x1b[K")
    assert terminal.getvalue().endswith("\n")
    assert capsys.readouterr().out.splitlines()[-2] == f"published {steps}shown.pipeline.json"


def test_alias_and_target_model_steps_resolve_and_show_prints_them(
    steps: str, s3_client: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    set_alias(steps, "labels", ["labels.tar.gz"], check=False, client=s3_client)
    names = ["featurizer/model.tar.gz", "{TargetModel}", "labels"]
    with pytest.raises(PipelineRefused, match=r"give a model of the prefix to check it with \(--check-target"):
        publish_pipeline(steps, "shared.pipeline.json", names, sample=b"1,2\n", client=s3_client)
    with pytest.raises(PipelineRefused, match=r"step 2 of 3 \('houston/model.tar.gz'\): not in"):
        publish_pipeline(steps, "shared.pipeline.json", names, check=False, check_target="houston/model.tar.gz",
                         client=s3_client)  # fmt: skip
    report = publish_pipeline(
        steps, "shared.pipeline.json", names, check=False, check_target="booster.tar.gz", client=s3_client
    )
    assert report.outcome == "published" and report.answer is None
    assert [(step.model, step.kind) for step in report.steps] == [
        ("featurizer/model.tar.gz", "archive"),
        ("booster.tar.gz", "archive"),
        ("labels", "alias"),
    ]
    assert report.target_model.startswith("shared.pipeline.json/<model>")
    manifest = get_pipeline(steps, "shared.pipeline.json", client=s3_client)
    assert manifest.takes_target and [step.model for step in manifest.steps] == names
    unchecked = resolve_steps(steps, manifest, client=s3_client)
    assert unchecked[1].kind == "unchecked"

    assert main(["pipeline", "show", "shared.pipeline.json", "--model-prefix", steps]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "pipeline shared.pipeline.json (3 steps)",
        "  step 1 of 3: featurizer/model.tar.gz (archive, 15 bytes)",
        "  step 2 of 3: {TargetModel} (unchecked, no --check-target given)",
        "  step 3 of 3: labels (alias, generation 1: labels=labels.tar.gz 100%)",
    ]
    assert main(["pipeline", "show", "other.pipeline.json", "--model-prefix", steps]) == 1
    assert "has no pipeline other.pipeline.json" in capsys.readouterr().err


def test_accept_of_names_a_step_before_the_last(steps: str, s3_client: Any, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["pipeline", "publish", "a.pipeline.json", "booster.tar.gz", "labels.tar.gz", "--prefix", steps,
            "--no-check"]  # fmt: skip
    assert main([*base, "--accept-of", "2=text/csv"]) == 1
    assert "step 2 is the last, which answers in the client's Accept" in capsys.readouterr().err
    assert main([*base, "--accept-of", "one=text/csv"]) == 1
    assert "--accept-of takes INDEX=MIME" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # no sample and no --no-check: a usage error
        main(base[:-1])
    assert main([*base, "--accept-of", "1=application/json"]) == 0
    assert json.loads(stored(s3_client, steps, "a.pipeline.json")) == {
        "steps": [{"model": "booster.tar.gz", "accept": "application/json"}, "labels.tar.gz"]
    }
