"""The rollout controller: its verdict on a canary's figures against the live version's (pure, on synthetic
figures: a noisy but healthy canary is promoted, a bad one rolled back, over seeded random trials), and, against the
real SeaweedFS and a stand-in endpoint (``/ping`` and ``GET /aliases`` with no traffic), a rollout without traffic
rolled back, one refused before any write because an endpoint does not answer, a rollout taken over by a promote by
hand, what cannot start, ``openmme rollout status``, and the bake's progress on a terminal only. The end-to-end
rollouts under load (a failing canary rolled back within its bake, a good one promoted) are in
tests/integration/test_aliases.py."""

from __future__ import annotations

import bisect
import http.server
import json
import random
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import xgboost

from openmme.cli import main
from openmme.endpoint.alias_figures import STATS_BUCKETS
from openmme.ports import free_port
from openmme.publish.aliases import AliasRefused, alias_history, get_alias, set_alias
from openmme.publish.rollout import (
    Figures,
    Guardrails,
    Outcome,
    judge,
    promote_rollout,
    rollback_rollout,
    rollout_status,
    start_rollout,
)
from openmme.publish.samples import train_booster
from tests.conftest import Published
from tests.support import run_on_a_terminal

V1, V2 = "houston/v1/model.tar.gz", "houston/v2/model.tar.gz"
BOUNDS = list(STATS_BUCKETS)
NOBODY = ["http://127.0.0.1:9"]  # nothing answers there


def figures(requests: int, errors: int, seconds: float) -> Figures:
    """``requests`` calls that all took ``seconds``, ``errors`` of them errors."""
    buckets = [0] * (len(BOUNDS) + 1)
    buckets[next(index for index, bound in enumerate(BOUNDS) if seconds <= bound)] = requests
    return Figures(requests, errors, buckets)


GUARDRAILS = Guardrails(min_requests=20, max_error_rate_increase=0.01, max_latency_ratio=1.5, latency_slack_ms=5)


@pytest.mark.parametrize(
    ("live", "canary", "verdict"),
    [
        (figures(200, 0, 0.002), figures(19, 19, 0.002), None),  # too few canary requests to judge
        (figures(200, 0, 0.002), figures(20, 20, 0.002), "canary error rate 100.0% (20 of 20) against live 0.0%"),
        (figures(200, 0, 0.002), figures(20, 1, 0.002), None),  # one error in 20 is no evidence of a worse version
        (figures(200, 10, 0.002), figures(40, 2, 0.002), None),  # 5 % against 5 %: as good as live
        (figures(2000, 20, 0.002), figures(1000, 100, 0.002), "canary error rate 10.0% (100 of 1000) against live"),
        (figures(200, 0, 0.010), figures(40, 0, 0.030), "canary p50 latency above"),
        (figures(200, 0, 0.010), figures(40, 0, 0.014), None),  # under 1.5 times live
        (figures(200, 0, 0.002), figures(40, 0, 0.006), None),  # 3 times live, but 4 ms: under the 5 ms floor
        (figures(5, 0, 0.001), figures(40, 0, 0.5), None),  # live too quiet to bound its latency
    ],
)
def test_the_verdict_on_a_canary(live: Figures, canary: Figures, verdict: str | None) -> None:
    found = judge(live, canary, BOUNDS, GUARDRAILS)
    assert (found is None) == (verdict is None), found
    if verdict is not None:
        assert found is not None and found.startswith(verdict)


def noisy_step(
    rng: random.Random,
    *,
    base_s: float = 0.002,
    canary_slower: float = 1.0,
    live_errors: float = 0.01,
    canary_errors: float = 0.01,
    polls: int = 12,
) -> str | None:
    """One step of a rollout at 20 % on a busy machine, judged after each of its polls as the controller does (the
    first verdict ends it). Every poll, 120 live and 30 canary requests take ``base_s`` (times ``canary_slower``
    for the canary) times a log-normal spread, times the poll's own load (shared: the versions' requests
    interleave), plus a stall of up to 100 ms for one in 20 and of 500 ms for one in 200."""
    live, canary = Figures(0, 0, [0] * (len(BOUNDS) + 1)), Figures(0, 0, [0] * (len(BOUNDS) + 1))
    for _ in range(polls):
        load = rng.lognormvariate(0, 0.7)
        for version, count, slower, errors in (
            (live, 120, 1.0, live_errors),
            (canary, 30, canary_slower, canary_errors),
        ):
            for _ in range(count):
                seconds = base_s * slower * load * rng.lognormvariate(0, 0.5)
                seconds += rng.uniform(0, 0.1) if rng.random() < 0.05 else 0.0
                seconds += 0.5 if rng.random() < 0.005 else 0.0
                version.requests += 1
                version.errors += rng.random() < errors
                version.buckets[bisect.bisect_left(BOUNDS, seconds)] += 1
        verdict = judge(live, canary, BOUNDS, Guardrails())
        if verdict is not None:
            return verdict
    return None


def test_a_healthy_canary_on_a_noisy_machine_is_promoted_and_a_bad_one_is_rolled_back() -> None:
    # The same version twice, under heavy noise: 1000 seeded steps, each judged 12 times. README: at most 1 in 1000.
    rolled_back = [(seed, verdict) for seed in range(1000) if (verdict := noisy_step(random.Random(seed)))]
    assert len(rolled_back) <= 1, rolled_back
    # Five times the errors (over 900 canary requests), or three times the latency, under the same noise: rolled
    # back in every seeded step.
    for seed in range(200):
        errors = noisy_step(random.Random(seed), live_errors=0.02, canary_errors=0.10, polls=30)
        assert errors is not None and errors.startswith("canary error rate"), (seed, errors)
        slower = noisy_step(random.Random(seed), base_s=0.010, canary_slower=3.0)
        assert slower is not None and " latency above " in slower, (seed, slower)


def test_a_quantile_is_bounded_only_as_far_as_its_requests_tell() -> None:
    z = 3.72  # one-sided 0.9999
    assert figures(3, 0, 0.004).quantile_bounds(BOUNDS, 0.9, z)[1] == float("inf")  # a p90 of 3: no upper bound
    above, at_most = figures(400, 0, 0.004).quantile_bounds(BOUNDS, 0.5, z)
    assert above < 0.004 <= at_most and at_most / above == pytest.approx(1.25, rel=1e-3)  # one bucket: 0.004 is in it
    assert Figures().quantile_bounds(BOUNDS, 0.5, z) == (0.0, float("inf"))


def test_figures_count_from_a_step_start_and_from_zero_after_a_restart() -> None:
    before, now = figures(100, 2, 0.002), figures(150, 5, 0.002)
    assert (now.minus(before).requests, now.minus(before).errors) == (50, 3)
    restarted = figures(10, 1, 0.002)  # the endpoint's counters began again
    assert restarted.minus(before).requests == 10
    assert figures(10, 0, 0.004).quantile(BOUNDS) == pytest.approx(next(b for b in BOUNDS if b >= 0.004))


@pytest.fixture
def houston(prefix: str, publish: Callable[..., Published], boosters: dict[str, xgboost.Booster]) -> str:
    publish(prefix, V1, train_booster("reg:squarederror", 1))
    publish(prefix, V2, train_booster("reg:squarederror", 2))
    set_alias(prefix, "houston", [V1])
    return prefix


class QuietEndpoint(http.server.ThreadingHTTPServer):
    """An endpoint's ``/ping`` and ``GET /aliases`` as ``openmme serve`` answers them, serving ``aliases`` (name →
    generation) and no traffic at all: what the controller reads, without MMS."""

    def __init__(self, aliases: dict[str, int]) -> None:
        super().__init__(("127.0.0.1", free_port()), _QuietHandler)
        self.aliases = aliases
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _QuietHandler(http.server.BaseHTTPRequestHandler):
    server: QuietEndpoint

    def do_GET(self) -> None:
        if self.path == "/ping":
            body = b""
        elif self.path == "/aliases":
            served = {alias: {"generation": generation} for alias, generation in self.server.aliases.items()}
            body = json.dumps({"aliases": served, "versions": [], "shadows": [], "buckets": BOUNDS}).encode()
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def quiet() -> Iterator[QuietEndpoint]:
    server = QuietEndpoint({"houston": 1})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(10)


@pytest.mark.integration
def test_a_rollout_without_canary_traffic_is_rolled_back(
    houston: str, quiet: QuietEndpoint, capsys: pytest.CaptureFixture[str]
) -> None:
    command = ["rollout", "start", "houston", V2, "--prefix", houston, "--endpoint", quiet.url, "--steps", "20"]
    assert main([*command, "--bake", "0.2", "--poll", "0.05", "--skip-check"]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == "houston: step 1 of 1: v1=houston/v1/model.tar.gz 80%, v2=houston/v2/model.tar.gz 20%"
    assert lines[-1].startswith("houston: rolled-back: automatic rollback at step 1: not enough canary traffic to")
    assert captured.err == ""  # not a terminal: no progress line
    document = get_alias(houston, "houston")
    assert [(v.target, v.weight) for v in document.variants] == [(V1, 100.0)] and document.rollout is None
    actions = [record.change.action for record in alias_history(houston, "houston") if record.change]
    assert actions == ["set", "rollout-start", "rollback"]


@pytest.mark.integration
def test_an_endpoint_that_does_not_answer_or_serve_the_alias_refuses_the_rollout_before_any_write(
    houston: str, quiet: QuietEndpoint, capsys: pytest.CaptureFixture[str]
) -> None:
    command = ["rollout", "start", "houston", V2, "--prefix", houston, "--skip-check"]
    assert main([*command, "--endpoint", quiet.url, "--endpoint", NOBODY[0]]) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"openmme rollout: endpoint {NOBODY[0]} did not answer /ping (") and "\n" not in error[:-1]
    assert error.rstrip().endswith("nothing was written")
    quiet.aliases = {"dallas": 1}  # an endpoint of another prefix, or with aliases off
    with pytest.raises(AliasRefused, match=f"endpoint {quiet.url} does not serve alias houston: is it serving"):
        start_rollout(houston, "houston", V2, [quiet.url], check=False)
    quiet.aliases = {"houston": 7}  # ahead of the prefix's generation 1
    with pytest.raises(AliasRefused, match=r"at generation 7, ahead of s3://.*'s 1: it serves another prefix"):
        start_rollout(houston, "houston", V2, [quiet.url], check=False)
    assert [record.generation for record in alias_history(houston, "houston")] == [1]


@pytest.mark.integration
def test_the_bake_shows_its_progress_on_a_terminal(houston: str, quiet: QuietEndpoint) -> None:
    command = [sys.executable, "-m", "openmme.cli", "rollout", "start", "houston", V2, "--prefix", houston,
               "--endpoint", quiet.url, "--steps", "20", "--bake", "0.3", "--poll", "0.05", "--skip-check"]  # fmt: skip
    process, terminal, out = run_on_a_terminal(command)
    assert process.wait(60) == 1

    assert "\rhouston: step 1 of 1 baking [" in terminal.decode()
    assert "/ 0.3 s" in terminal.decode()
    assert out.splitlines()[-1].startswith("houston: rolled-back: automatic rollback at step 1: not enough canary")


@pytest.mark.integration
def test_a_promote_by_hand_takes_the_rollout_over(
    houston: str, quiet: QuietEndpoint, capsys: pytest.CaptureFixture[str]
) -> None:
    outcomes: list[Outcome] = []
    guardrails = Guardrails(steps=(10.0, 50.0), bake_seconds=60, poll_seconds=0.1)
    controller = threading.Thread(
        target=lambda: outcomes.append(start_rollout(houston, "houston", V2, [quiet.url], guardrails, check=False))
    )
    controller.start()
    for _ in range(100):
        status: dict[str, Any] = rollout_status(houston, "houston")
        if status["rollout"]:
            break
        threading.Event().wait(0.05)
    assert status["rollout"]["canary_target"] == V2 and status["rollout"]["step"] == 0
    assert main(["rollout", "status", "houston", "--prefix", houston]) == 0
    assert "rollout of houston: v2 against v1, step 1 of 2" in capsys.readouterr().out
    promoted = promote_rollout(houston, "houston", reason="looks fine")
    controller.join(30)
    assert [(v.target, v.weight) for v in promoted.variants] == [(V2, 100.0)] and promoted.rollout is None
    assert outcomes[0].result == "taken-over" and "promote by" in outcomes[0].reason
    # Without a rollout in progress: nothing to promote; a rollback goes to the last sole version.
    with pytest.raises(AliasRefused, match="no rollout of houston is in progress"):
        promote_rollout(houston, "houston")
    assert [v.target for v in rollback_rollout(houston, "houston").variants] == [V1]


@pytest.mark.integration
def test_what_cannot_start(houston: str) -> None:
    with pytest.raises(AliasRefused, match="already the live version"):
        start_rollout(houston, "houston", V1, NOBODY, check=False)
    with pytest.raises(AliasRefused, match="needs the endpoints' URLs"):
        start_rollout(houston, "houston", V2, [], check=False)
    with pytest.raises(AliasRefused, match="steps must grow"):
        start_rollout(houston, "houston", V2, NOBODY, Guardrails(steps=(50.0, 10.0)), check=False)
    set_alias(houston, "houston", [f"{V1}=50", f"{V2}=50"])
    with pytest.raises(AliasRefused, match="splits its traffic"):
        start_rollout(houston, "houston", V2, NOBODY, check=False)
    assert [record.generation for record in alias_history(houston, "houston")] == [1, 2]
