"""Alias changes against the real SeaweedFS: the document and its history record written, every refusal leaving the
prefix untouched, two writers racing (one wins, the other is told), a change half-written by a writer that stopped
finished by the next one, rollbacks, and the ``openmme alias`` commands."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
import xgboost

from openmme.cli import main
from openmme.endpoint.alias_state import AliasDocument, Variant, history_key, state_key
from openmme.publish.aliases import (
    AliasConflict,
    AliasContext,
    AliasNotFound,
    AliasRefused,
    Routing,
    ShadowSpec,
    VersionSpec,
    alias_history,
    commit_alias,
    get_alias,
    list_aliases,
    remove_alias,
    rollback_alias,
    set_alias,
)
from openmme.publish.samples import sample_archive, train_booster
from tests.conftest import BUCKET, Published
from tests.publish.conftest import keys_under

pytestmark = pytest.mark.integration

V1, V2, V3 = (f"houston/v{number}/model.tar.gz" for number in (1, 2, 3))


@pytest.fixture
def versions(prefix: str, publish: Callable[..., Published], boosters: dict[str, xgboost.Booster]) -> str:
    """A prefix holding three loadable versions of houston."""
    for target, objective in zip((V1, V2, V3), boosters, strict=False):
        publish(prefix, target, boosters[objective])
    return prefix


def variant_of(target: str) -> Variant:
    """All the traffic to ``target`` (``houston/v2/model.tar.gz``), as variant ``v2``."""
    return Variant(target.split("/")[1], target, 100.0)


def reserved_keys(s3_client: Any, prefix: str) -> list[str]:
    return sorted(key for key in keys_under(s3_client, prefix) if "/.openmme/" in key and "probe" not in key)


def stored(s3_client: Any, prefix: str, key: str) -> dict[str, Any]:
    return dict(json.loads(s3_client.get_object(Bucket=BUCKET, Key=key)["Body"].read()))


def test_set_writes_the_document_and_its_history_record(versions: str, s3_client: Any) -> None:
    key_prefix = versions.split("/", 3)[3]
    first = set_alias(versions, "houston", [V1], reason="first release", client=s3_client)
    second = set_alias(versions, "houston", [f"{V1}=90", f"{V2}=10"], reason="canary by hand", client=s3_client)

    assert (first.generation, second.generation) == (1, 2)
    assert [(v.name, v.target, v.weight) for v in second.variants] == [("v1", V1, 90.0), ("v2", V2, 10.0)]
    assert get_alias(versions, "houston", client=s3_client) == second
    document = stored(s3_client, versions, state_key(key_prefix, "houston"))
    assert AliasDocument.parse(document, "houston") == second
    # Every generation has its record, holding exactly the document it made, with who, when, why and from what.
    assert reserved_keys(s3_client, versions) == sorted(
        [state_key(key_prefix, "houston"), *(history_key(key_prefix, "houston", n) for n in (1, 2))]
    )
    history = alias_history(versions, "houston", client=s3_client)
    assert history == [first, second]
    change = second.change
    assert change is not None
    assert (change.action, change.reason, change.by) == (
        "set",
        "canary by hand",
        s3_client._request_signer._credentials.access_key,
    )
    assert "@" in change.user and change.at.endswith("Z")
    assert change.previous == first.routing()
    assert [alias.alias for alias in list_aliases(versions, client=s3_client)] == ["houston"]


@pytest.mark.parametrize(
    ("versions_asked", "message"),
    [
        ([f"{V1}=60", f"{V2}=30"], "must add up to 100, not 60 + 30 = 90"),
        (["houston/v9/model.tar.gz"], "houston/v9/model.tar.gz is not in"),
        (["broken/model.tar.gz"], "broken/model.tar.gz cannot be served"),
        (["other"], "other is an alias; an alias points at archives and pipelines only"),
        (["houston"], "cannot point at itself (a cycle)"),
        ([f"{V1}=150", f"{V2}=-50"], "must be a percent from 0 to 100"),
        ([VersionSpec(V1, 50, "Bad_Name"), VersionSpec(V2, 50)], "'Bad_Name' is not a variant name"),
        ([f"{V1}=50", f"{V1}=50"], "given twice"),
    ],
)
def test_a_refused_alias_writes_nothing(
    versions: str, s3_client: Any, publish: Callable[..., Published], versions_asked: list[Any], message: str
) -> None:
    publish(versions, "broken/model.tar.gz", archive=sample_archive(train_booster("binary:logistic", 0))[:200])
    set_alias(versions, "other", [V3], client=s3_client)
    before = reserved_keys(s3_client, versions)
    with pytest.raises(AliasRefused) as refused:
        set_alias(versions, "houston", versions_asked, client=s3_client)
    assert message in str(refused.value) and "\n" not in str(refused.value)
    assert reserved_keys(s3_client, versions) == before


def test_an_alias_cannot_take_an_archives_name_or_a_bad_name(versions: str, s3_client: Any) -> None:
    with pytest.raises(AliasRefused, match="ends like an archive"):
        set_alias(versions, V1, [V2], client=s3_client)
    with pytest.raises(AliasRefused, match="not an alias name"):
        set_alias(versions, "../up", [V2], client=s3_client)
    bare = versions.split("/", 3)[3] + "bare-archive"
    s3_client.put_object(Bucket=BUCKET, Key=bare, Body=sample_archive(train_booster("binary:logistic", 0)))
    with pytest.raises(AliasRefused, match="bare-archive is an archive of"):
        set_alias(versions, "bare-archive", [V2], client=s3_client)
    assert reserved_keys(s3_client, versions) == []


def test_concurrent_changes_one_wins_the_other_is_told(versions: str, s3_client: Any) -> None:
    set_alias(versions, "houston", [V1], client=s3_client)
    both_read = threading.Barrier(2)
    outcomes: dict[str, Any] = {}

    def change(target: str) -> None:
        def make(current: AliasDocument | None, context: AliasContext) -> Routing:
            both_read.wait(10)  # both writers have read generation 1 before either writes
            return Routing((variant_of(target),), None, "inference-id", None)

        try:
            outcomes[target] = commit_alias(versions, "houston", make, "set", f"to {target}", client=s3_client)
        except AliasConflict as exc:
            outcomes[target] = exc

    writers = [threading.Thread(target=change, args=(target,)) for target in (V2, V3)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(30)
    won = [value for value in outcomes.values() if isinstance(value, AliasDocument)]
    lost = [value for value in outcomes.values() if isinstance(value, AliasConflict)]
    assert (len(won), len(lost)) == (1, 1)
    assert "changed by someone else" in str(lost[0]) and lost[0].current == won[0]
    assert get_alias(versions, "houston", client=s3_client) == won[0]
    assert [document.generation for document in alias_history(versions, "houston", client=s3_client)] == [1, 2]


def test_expect_generation_refuses_a_change_made_since_the_operator_looked(versions: str, s3_client: Any) -> None:
    looked = set_alias(versions, "houston", [V1], client=s3_client)
    set_alias(versions, "houston", [V2], reason="someone else", client=s3_client)
    with pytest.raises(AliasConflict, match="at generation 2, not 1"):
        set_alias(versions, "houston", [V3], expect_generation=looked.generation, client=s3_client)
    assert get_alias(versions, "houston", client=s3_client).variants[0].target == V2


def test_a_change_whose_writer_stopped_after_its_record_is_finished_by_the_next(versions: str, s3_client: Any) -> None:
    key_prefix = versions.split("/", 3)[3]
    first = set_alias(versions, "houston", [V1], client=s3_client)
    # A writer that created generation 2's record (the commit) and stopped before replacing the document.
    stopped = AliasDocument("houston", 2, (variant_of(V2),), change=first.change)
    s3_client.put_object(
        Bucket=BUCKET, Key=history_key(key_prefix, "houston", 2), Body=json.dumps(stopped.describe()).encode()
    )
    third = set_alias(versions, "houston", [V3], client=s3_client)
    assert third.generation == 3 and third.change is not None
    assert third.change.previous is not None and third.change.previous["generation"] == 2  # built on the finished one
    assert [document.generation for document in alias_history(versions, "houston", client=s3_client)] == [1, 2, 3]


def test_rollback_goes_back_to_the_last_sole_version_or_to_a_known_version_only(versions: str, s3_client: Any) -> None:
    set_alias(versions, "houston", [V1], client=s3_client)
    set_alias(versions, "houston", [f"{V1}=80", f"{V2}=20"], shadow=ShadowSpec(V3, 5), client=s3_client)
    back = rollback_alias(versions, "houston", reason="canary is slow", client=s3_client)
    assert [(v.name, v.weight) for v in back.variants] == [("v1", 100.0)] and back.shadow is None
    assert back.change is not None and back.change.action == "rollback"
    # Promoted through a canary's steps: back to the version before them, not to the last step.
    for weights in ((90, 10), (50, 50), (0, 100)):
        set_alias(versions, "houston", [f"{V1}={weights[0]}", f"{V2}={weights[1]}"], client=s3_client)
    assert [v.target for v in rollback_alias(versions, "houston", client=s3_client).variants] == [V1]
    assert [v.target for v in rollback_alias(versions, "houston", client=s3_client).variants] == [V2]  # undone
    to_v3 = rollback_alias(versions, "houston", to="v3", client=s3_client)  # once a shadow: a known version
    assert [(v.name, v.target) for v in to_v3.variants] == [("v3", V3)]
    before = reserved_keys(s3_client, versions)
    with pytest.raises(
        AliasRefused, match="unknown version v9: alias houston never pointed at it; its versions so far"
    ):
        rollback_alias(versions, "houston", to="v9", client=s3_client)
    assert reserved_keys(s3_client, versions) == before


def test_remove_leaves_a_tombstone_and_the_history(versions: str, s3_client: Any) -> None:
    set_alias(versions, "houston", [V1], client=s3_client)
    removed = remove_alias(versions, "houston", reason="retired", client=s3_client)
    assert removed.removed and removed.generation == 2
    with pytest.raises(AliasNotFound):
        get_alias(versions, "houston", client=s3_client)
    assert list_aliases(versions, client=s3_client) == []
    assert len(alias_history(versions, "houston", client=s3_client)) == 2
    again = set_alias(versions, "houston", [V2], client=s3_client)
    assert again.generation == 3


def test_the_alias_commands(versions: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["alias", "set", "houston", V1, "--prefix", versions, "--reason", "first"]) == 0
    assert "houston → v1=houston/v1/model.tar.gz 100% (generation 1)" in capsys.readouterr().out
    assert (
        main(["alias", "set", "houston", f"{V1}=90", f"{V2}=10", "--prefix", versions, "--expect-generation", "1"]) == 0
    )
    capsys.readouterr()
    assert main(["alias", "show", "houston", "--prefix", versions]) == 0
    shown = capsys.readouterr().out
    assert "generation 2" in shown and "v2=houston/v2/model.tar.gz 10%" in shown
    assert main(["alias", "list", "--prefix", versions]) == 0
    assert capsys.readouterr().out.startswith("houston\t2\t")
    assert main(["alias", "history", "houston", "--prefix", versions]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("1\t") and "first" in lines[0]
    # A refusal: one line on stderr, exit code 1.
    assert main(["alias", "set", "houston", f"{V1}=50", "--prefix", versions]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "must add up to 100" in error
    assert main(["alias", "set", "houston", V3, "--prefix", versions, "--expect-generation", "1"]) == 1
    assert "at generation 2, not 1" in capsys.readouterr().err
