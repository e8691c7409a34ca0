"""Cortex's autoscaling recommendation: its own unit cases, the docs' examples, and properties."""

from __future__ import annotations

import itertools
import math

import pytest

from cortex_flows.autoscaling.recommend import History, Settings, recommend

NO_STABILIZATION = {"downscale_stabilization": 0.0, "upscale_stabilization": 0.0}


def settings(**overrides) -> Settings:
    return Settings(**{"min_replicas": 1, "max_replicas": 100, "target_in_flight": 1.0, **overrides})


def once(current: int, in_flight: float, **overrides) -> int:
    return recommend(current, in_flight, settings(**overrides), History(started=0.0), now=1000.0).request


def test_cortex_unit_cases():
    # pkg/autoscaler/autoscaler_test.go: floor = min(4, ceil(2.5)) = 3; ceiling = max(2, ceil(1.5)) = 2
    assert once(5, 2, max_downscale_factor=0.5, **NO_STABILIZATION) == 3
    assert once(1, 3, max_upscale_factor=1.5, **NO_STABILIZATION) == 2


def test_no_change_inside_the_stabilization_periods():
    fresh = History(started=990.0)
    assert recommend(5, 1, settings(), fresh, now=1000.0).request == 5  # downscale waits 5 min
    assert recommend(2, 10, settings(), History(started=990.0), now=1000.0).request == 2  # upscale waits 1 min
    assert recommend(1, 0, settings(min_replicas=0), History(started=990.0), now=1000.0).request == 1


def test_downscale_follows_the_highest_recent_recommendation():
    history = History(started=0.0)
    s = settings(downscale_stabilization=300.0, upscale_stabilization=0.0)
    assert recommend(10, 10, s, history, now=1000.0).request == 10
    decision = recommend(10, 0, s, history, now=1100.0)
    assert (decision.recommended, decision.request) == (8, 10)  # 10 was recommended 100 s ago
    assert recommend(10, 0, s, history, now=1301.0).request == 8  # the 10 has aged out


def test_upscale_follows_the_lowest_recent_recommendation():
    history = History(started=0.0)
    s = settings(upscale_stabilization=60.0, downscale_stabilization=0.0)
    assert recommend(4, 4, s, history, now=1000.0).request == 4
    assert recommend(4, 10, s, history, now=1030.0).request == 4  # 4 recommended 30 s ago
    assert recommend(4, 10, s, history, now=1061.0).request == 6  # x1.5 per step


@pytest.mark.parametrize(("raw_in_flight", "expected"), [(18.5, 20), (21.5, 20), (17.9, 18), (22.1, 23)])
def test_tolerance_ignores_small_changes(raw_in_flight, expected):
    # Docs: tolerance 0.1 at 20 replicas ignores recommendations 18-19 and 21-22.
    got = once(20, raw_in_flight, downscale_tolerance=0.1, upscale_tolerance=0.1, max_downscale_factor=0.5,
               max_upscale_factor=2.0, **NO_STABILIZATION)  # fmt: skip
    assert got == expected


@pytest.mark.parametrize(("target", "expected"), [(2.0, 4), (1.6, 5)])
def test_docs_overprovisioning_example(target, expected):
    assert once(4, 8, target_in_flight=target, **NO_STABILIZATION) == expected


def test_min_and_max_clamp_and_zero_is_allowed():
    assert once(3, 100, max_replicas=4, **NO_STABILIZATION) == 4
    assert once(3, 0, min_replicas=2, **NO_STABILIZATION) == 2
    assert once(1, 0, min_replicas=0, **NO_STABILIZATION) == 0


def test_old_history_is_forgotten():
    history = History(started=0.0)
    s = settings()
    for t in range(0, 1000, 10):
        recommend(3, 3, s, history, now=float(t))
    assert all(t >= 990 - 300 for t, _ in history.entries)


GRID = list(itertools.product(range(9), [0.0, 0.5, 1, 3, 7.5, 20, 100], [0.5, 1.0, 4.0], [0, 1, 3], [3, 8]))


@pytest.mark.parametrize(("current", "in_flight", "target", "low", "high"), GRID)
def test_never_outside_bounds_and_never_beyond_the_factors(current, in_flight, target, low, high):
    s = settings(min_replicas=low, max_replicas=high, target_in_flight=target, **NO_STABILIZATION)
    request = recommend(current, in_flight, s, History(started=0.0), now=1.0).request
    assert low <= request <= high
    floor = min(current - 1, math.ceil(current * s.max_downscale_factor))
    ceiling = max(current + 1, math.ceil(current * s.max_upscale_factor))
    assert min(max(floor, low), high) <= request <= max(min(ceiling, high), low)


@pytest.mark.parametrize(("in_flight", "target"), [(0, 1), (3, 1), (10, 2), (47, 4), (250, 1)])
def test_converges_under_constant_load(in_flight, target):
    s = settings(min_replicas=1, max_replicas=50, target_in_flight=target, upscale_stabilization=20.0,
                 downscale_stabilization=60.0)  # fmt: skip
    history, current = History(started=0.0), 5
    for tick in range(200):
        current = recommend(current, in_flight, s, history, now=10.0 * tick).request
    expected = min(max(math.ceil(in_flight / target), 1), 50)
    assert current == expected
    assert recommend(current, in_flight, s, history, now=2000.0).request == expected  # and stays
