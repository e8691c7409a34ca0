"""Per-version metrics: `VersionMetrics.since`/`as_arm`, and the local agent's monotonic tally of replicas."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from cortex_flows.backends.base import VersionMetrics
from cortex_flows.backends.local.scrape import Counts, _as_metrics, _Tally, parse_counts
from cortex_flows.rollout.analysis import ArmMetrics, Decision, Thresholds, analyse
from cortex_flows.serving.metrics import ReplicaMetrics

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
INF = math.inf


def snapshot(seconds: float = 0, *, started: datetime | None = T0, **counts: object) -> VersionMetrics:
    by_status = counts.pop("by_status", {})
    assert isinstance(by_status, dict)
    defaults: dict[str, object] = {
        "requests": sum(by_status.values()),
        "errors": sum(n for code, n in by_status.items() if code.startswith("5")),
    }
    return VersionMetrics.model_validate(
        {**defaults, "by_status": by_status, **counts, "started": started, "at": T0 + timedelta(seconds=seconds)}
    )


def assert_no_negatives(m: VersionMetrics) -> None:
    assert m.requests >= 0 and m.errors >= 0 and m.value_count >= 0
    assert all(n >= 0 for n in (*m.by_status.values(), *m.classes.values()))
    counts = [n for _, n in m.latency_buckets]
    assert all(n >= 0 for n in counts) and counts == sorted(counts)


def test_since_is_the_window_between_two_snapshots() -> None:
    earlier = snapshot(
        10, by_status={"200": 50, "500": 2}, latency_buckets=[(0.01, 40), (0.1, 50), (INF, 52)],
        classes={"a": 30, "b": 20}, value_count=4, value_sum=2.0, replicas_seen=2,
    )  # fmt: skip
    later = snapshot(
        70, by_status={"200": 150, "500": 7, "400": 1}, latency_buckets=[(0.01, 100), (0.1, 150), (INF, 158)],
        classes={"a": 90, "b": 50, "c": 10}, value_count=10, value_sum=5.0, replicas_seen=3,
    )  # fmt: skip
    delta = later.since(earlier)
    assert (delta.requests, delta.errors) == (106, 5)
    assert delta.by_status == {"200": 100, "500": 5, "400": 1}
    assert delta.latency_buckets == [(0.01, 60), (0.1, 100), (INF, 106)]
    assert delta.classes == {"a": 60, "b": 30, "c": 10}
    assert (delta.value_count, delta.value_sum, delta.replicas_seen) == (6, 3.0, 3)
    assert (delta.started, delta.at) == (earlier.at, later.at)
    assert later.since(None) == later
    assert_no_negatives(delta)


def test_since_never_goes_negative_when_counts_went_backwards() -> None:
    earlier = snapshot(
        10, by_status={"200": 50, "500": 9}, latency_buckets=[(0.01, 40), (0.1, 55), (INF, 59)],
        classes={"a": 30, "b": 20}, value_count=4, value_sum=2.0,
    )  # fmt: skip
    later = snapshot(
        20, by_status={"200": 60, "500": 3}, latency_buckets=[(0.01, 35), (0.1, 60), (INF, 63)],
        classes={"a": 10, "b": 25}, value_count=1, value_sum=-1.0,
    )  # fmt: skip
    delta = later.since(earlier)
    assert_no_negatives(delta)
    assert delta.by_status == {"200": 10, "500": 0}
    assert (delta.requests, delta.errors) == (10, 0)
    assert delta.classes == {"a": 0, "b": 5}
    assert delta.latency_buckets == [(0.01, 0), (0.1, 5), (INF, 5)]
    assert (delta.value_count, delta.value_sum) == (0, 0.0)
    assert_no_negatives(snapshot(5).since(later))  # an empty snapshot after a full one: all zero
    assert snapshot(5).since(later).requests == 0


def test_since_a_different_counting_start_is_a_counter_reset() -> None:
    """The agent restarted between the snapshots: what it counts since its restart is the window's."""
    earlier = snapshot(10, by_status={"200": 500}, classes={"a": 500})
    later = snapshot(70, started=T0 + timedelta(seconds=30), by_status={"200": 40}, classes={"a": 40})
    delta = later.since(earlier)
    assert (delta.requests, delta.classes) == (40, {"a": 40})
    unknown = snapshot(70, started=None, by_status={"200": 40})
    assert unknown.since(earlier).requests == 0  # no start to compare: counts are only clamped


def test_metrics_survive_json_with_the_inf_bucket() -> None:
    m = snapshot(1, by_status={"200": 3}, latency_buckets=[(0.1, 2), (INF, 3)], classes={"x": 3})
    assert VersionMetrics.model_validate_json(m.model_dump_json()) == m
    assert '"Infinity"' in m.model_dump_json()


def test_as_arm_and_since_feed_the_canary_analysis() -> None:
    buckets = [(0.005, 0), (0.01, 0), (0.025, 0), (0.05, 0), (0.1, 0), (INF, 0)]
    base = snapshot(0, by_status={"200": 0}, latency_buckets=buckets)
    stable = snapshot(
        60, by_status={"200": 300, "500": 1},
        latency_buckets=[(0.005, 100), (0.01, 250), (0.025, 290), (0.05, 300), (0.1, 301), (INF, 301)],
        classes={"a": 200, "b": 100},
    )  # fmt: skip
    candidate = snapshot(
        60, by_status={"200": 280, "500": 40},
        latency_buckets=[(0.005, 90), (0.01, 230), (0.025, 300), (0.05, 315), (0.1, 320), (INF, 320)],
        classes={"a": 100, "b": 180},
    )  # fmt: skip
    arm = candidate.since(base).as_arm()
    assert isinstance(arm, ArmMetrics)
    assert (arm.requests, arm.errors, arm.latency_count, arm.classes) == (320, 40, 320, {"a": 100, "b": 180})
    verdict = analyse(stable.since(base).as_arm(), arm, Thresholds(), final_step=False)
    assert verdict.decision is Decision.ROLLBACK
    assert {c.name for c in verdict.checks if c.status.value == "fail"} >= {"error_rate", "class_drift"}
    same = analyse(stable.since(base).as_arm(), stable.since(base).as_arm(), Thresholds(), final_step=True)
    assert same.decision is Decision.PROMOTE
    empty = snapshot(0).as_arm()
    assert (empty.requests, empty.latency_count, empty.classes) == (0, 0, {})


def test_as_arm_refuses_buckets_without_inf() -> None:
    with pytest.raises(ValueError, match="Inf"):
        snapshot(0, by_status={"200": 1}, latency_buckets=[(0.1, 1), (1.0, 1)]).as_arm()


# --- the local agent's tally ------------------------------------------------------------------------------


def exposition(api: str = "iris", revision: int = 2, **results: int) -> str:
    """A real replica's /metrics text after answering `results` (status -> count) with class "x"."""
    m = ReplicaMetrics(api, revision, lambda: 0)
    for status, n in results.items():
        for _ in range(n):
            m.observe(int(status.removeprefix("s")), 0.003)
            if status == "s200":
                m.observe_result("x")
    m.observe_result({"prediction": 0.25})
    return m.render().decode()


def test_parse_counts_reads_a_replica_exposition() -> None:
    counts = parse_counts(exposition(s200=5, s500=2, s400=1), "iris", 2)
    assert counts.by_status == {"200": 5, "500": 2, "400": 1}
    assert counts.classes == {"x": 5}
    assert (counts.value_count, counts.value_sum) == (1, 0.25)
    assert counts.buckets[0.001] == 0 and counts.buckets[0.005] == 8 and counts.buckets[INF] == 8
    assert parse_counts(exposition(s200=5), "iris", 3) == Counts()  # another version's series
    m = _as_metrics(counts, 1, T0)
    assert (m.requests, m.errors, m.latency_buckets[-1]) == (8, 2, (INF, 8))


def counts(ok: int, errors: int = 0) -> Counts:
    return Counts(by_status={"200": ok, "500": errors}, buckets={0.1: ok + errors, INF: ok + errors},
                  classes={"x": ok})  # fmt: skip


def test_tally_carries_replicas_that_went_away_or_restarted() -> None:
    tally = _Tally(T0)
    seen = []

    def total() -> int:
        t = tally.total()
        seen.append(sum(t.by_status.values()))
        assert t.buckets[INF] == seen[-1] and t.classes.get("x", 0) <= seen[-1]
        return seen[-1]

    tally.seen("a/1", counts(10))
    tally.seen("b/2", counts(5, 1))
    assert total() == 16
    tally.seen("a/1", counts(12))
    tally.gone({"a/1"})  # b's process exited: its last values are carried
    assert total() == 18
    tally.seen("a/1", counts(3))  # went backwards under the same key: a restart, 12 carried
    assert total() == 18 + 3
    tally.seen("a/3", counts(4))  # a new process of a replica
    tally.gone({"a/3"})  # a/1 is gone: carried
    assert total() == 25
    tally.gone(set())
    assert total() == 25
    assert seen == sorted(seen)
