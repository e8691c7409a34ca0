"""Rolling update steps: Kubernetes' surge/unavailable limits, plus never dropping to zero ready."""

from __future__ import annotations

import itertools

import pytest

from cortex_flows.rollout.rolling import Step, batches, rolling_steps, shrink_oldest, traffic_weights
from cortex_flows.spec import UpdateStrategy


@pytest.mark.parametrize(
    ("desired", "old", "surge", "unavailable", "expected"),
    [
        (3, 3, 1, 0, [(1, 3), (1, 2), (2, 2), (2, 1), (3, 1), (3, 0)]),  # Cortex's default 25% of 3
        (3, 3, 0, 1, [(0, 2), (1, 2), (1, 1), (2, 1), (2, 0), (3, 0)]),  # max_surge: 0
        (4, 4, 1, 1, [(1, 4), (1, 2), (3, 2), (3, 0), (4, 0)]),  # 25% / 25% of 4
        (3, 0, 1, 0, [(3, 0)]),  # a new API: all at once
        (2, 2, 2, 0, [(2, 2), (2, 0)]),  # surge covers everything: blue/green
        (1, 1, 0, 0, [(1, 1), (1, 0)]),  # no legal move: one replica of surge, never an outage
        (1, 1, 0, 1, [(1, 1), (1, 0)]),  # unavailable 1 of 1 would leave none ready
        (0, 2, 1, 0, [(0, 0)]),  # scaled to zero: nothing to start, the old ones go
        (2, 5, 0, 0, [(0, 2), (1, 2), (1, 1), (2, 1), (2, 0)]),  # more old than desired
    ],
)
def test_known_sequences(desired, old, surge, unavailable, expected):
    assert rolling_steps(desired=desired, old=old, surge=surge, unavailable=unavailable) == [
        Step(*s) for s in expected
    ]


def test_resuming_an_interrupted_update_starts_from_what_runs():
    assert rolling_steps(desired=3, old=1, new=2, surge=1, unavailable=0) == [Step(3, 1), Step(3, 0)]
    assert rolling_steps(desired=2, old=1, new=4, surge=1, unavailable=0) == [Step(2, 1), Step(2, 0)]
    assert rolling_steps(desired=3, old=0, new=3, surge=1, unavailable=0) == []


@pytest.mark.parametrize(
    ("desired", "old", "surge", "unavailable", "new"),
    list(itertools.product(range(7), range(7), range(4), range(4), range(3))),
)
def test_invariants(desired, old, surge, unavailable, new):
    steps = rolling_steps(desired=desired, old=old, surge=surge, unavailable=unavailable, new=new)
    floor = max(desired - unavailable, 1 if desired > 0 and old + new > 0 else 0)
    limit = desired + max(surge, 1)
    prev = Step(new, old)
    for i, step in enumerate(steps):
        trimmed = i == 0 and new > desired
        assert (step.new != prev.new) + (step.old != prev.old) == 1, "one version changes per step"
        assert step.new >= prev.new or trimmed, "new replicas only come"
        assert step.old <= prev.old, "old replicas only go"
        if step.new > prev.new:
            assert step.new + step.old <= limit, "surge limit"
            if surge > 0:
                assert step.new + step.old <= desired + surge
        if step.old < prev.old:
            assert step.new + step.old >= min(floor, prev.new + prev.old), "availability floor"
        prev = step
    assert prev == Step(desired, 0), "ends with the new version alone, at the desired count"
    assert len(steps) <= 2 * (desired + old) + 2


def test_negative_counts_are_rejected():
    with pytest.raises(ValueError, match=">= 0"):
        rolling_steps(desired=1, old=-1, surge=1, unavailable=0)


def test_batches_count_the_waits_for_new_replicas():
    assert batches(rolling_steps(desired=3, old=3, surge=1, unavailable=0)) == 3
    assert batches(rolling_steps(desired=4, old=4, surge=1, unavailable=1)) == 3
    assert batches(rolling_steps(desired=3, old=0, surge=1, unavailable=0)) == 1
    assert batches([Step(2, 1), Step(2, 0)], new=2) == 0


@pytest.mark.parametrize(("replicas", "expected"), [(1, 2), (3, 6), (4, 5), (10, 5)])
def test_cortex_default_strategy_step_counts(replicas, expected):
    surge, unavailable = UpdateStrategy().resolve(replicas)
    assert len(rolling_steps(desired=replicas, old=replicas, surge=surge, unavailable=unavailable)) == expected


@pytest.mark.parametrize(
    ("ready", "expected"),
    [
        ({1: 3}, {1: 100}),
        ({1: 2, 2: 1}, {1: 67, 2: 33}),
        ({1: 1, 2: 2}, {1: 33, 2: 67}),
        ({1: 1, 2: 1, 3: 1}, {1: 33, 2: 33, 3: 34}),
        ({1: 0, 2: 3}, {2: 100}),
        ({1: 1, 2: 1}, {1: 50, 2: 50}),
    ],
)
def test_traffic_weights_follow_ready_replicas(ready, expected):
    assert traffic_weights(ready) == expected


@pytest.mark.parametrize("ready", [{1: a, 2: b, 3: c} for a in range(4) for b in range(4) for c in range(5) if a + b + c])
def test_traffic_weights_always_sum_to_100_and_skip_empty_versions(ready):
    weights = traffic_weights(ready)
    assert sum(weights.values()) == 100
    assert set(weights) == {rev for rev, n in ready.items() if n}
    assert all(abs(weights[rev] - 100 * n / sum(ready.values())) < 1 for rev, n in ready.items() if n)


def test_traffic_weights_need_a_ready_replica():
    with pytest.raises(ValueError, match="no version"):
        traffic_weights({1: 0})


@pytest.mark.parametrize(
    ("replicas", "total", "expected"),
    [
        ({1: 2, 2: 3}, 5, {1: 2, 2: 3}),
        ({1: 2, 2: 3}, 4, {1: 1, 2: 3}),
        ({1: 2, 2: 3}, 2, {1: 0, 2: 2}),
        ({1: 2, 2: 3}, 0, {1: 0, 2: 0}),
    ],
)
def test_shrink_oldest_takes_from_the_oldest_version_first(replicas, total, expected):
    assert shrink_oldest(replicas, total) == expected


def test_shrink_oldest_rejects_growth():
    with pytest.raises(ValueError):
        shrink_oldest({1: 1}, 2)
