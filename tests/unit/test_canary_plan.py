"""The canary plan (replicas per arm, durations, peak extra replicas), its rendering, and the state machine."""

from __future__ import annotations

import itertools
import math

import pytest

from cortex_flows.rollout.canary import (
    NOT_STARTED,
    TRAFFIC_SWITCH_SECONDS,
    Action,
    CanaryPlan,
    CanaryStep,
    Verdict,
    apply_overrides,
    next_action,
    plan_canary,
    render_plan,
)
from cortex_flows.spec import Canary

DEFAULT = Canary()


def plan(
    canary: Canary = DEFAULT,
    stable: int = 10,
    target: int | None = None,
    low: int = 1,
    high: int = 100,
    keep_stable: bool = False,
) -> CanaryPlan:
    return plan_canary(
        canary,
        stable_replicas=stable,
        candidate_target=stable if target is None else target,
        min_replicas=low,
        max_replicas=high,
        keep_stable=keep_stable,
    )


def rows(p: CanaryPlan) -> list[tuple[int, int, int, int]]:
    """(weight, candidate ready before the move, stable after it, extra replicas during the move)."""
    return [(s.weight, s.candidate_replicas, s.stable_replicas, s.extra_replicas) for s in p.steps]


# --- the plan's numbers -------------------------------------------------------------------------------------


def test_default_plan_for_ten_replicas() -> None:
    p = plan()
    assert rows(p) == [(5, 1, 10, 1), (25, 3, 8, 3), (50, 5, 5, 3), (100, 10, 1, 5)]
    assert p.weights == (5, 25, 50, 100)
    assert (p.minimum_duration, p.maximum_duration) == (240.0, 960.0)  # 4 x 1m; each step extended 3 times
    assert p.worst_case_rollback == 60.0 + TRAFFIC_SWITCH_SECONDS == 62.0
    assert (p.peak_extra_replicas, p.stable_replicas, p.candidate_target) == (5, 10, 10)
    assert all((s.bake_seconds, s.analyses, s.mirror) == (60.0, 1, 0.0) for s in p.steps)


@pytest.mark.parametrize(
    ("stable", "target", "expected", "peak"),
    [(3, 3, [(5, 1, 3, 1), (25, 1, 3, 1), (50, 2, 2, 2), (100, 3, 1, 2)], 2),
     (1, 1, [(5, 1, 1, 1), (25, 1, 1, 1), (50, 1, 1, 1), (100, 1, 1, 1)], 1),  # one warm stable to the end
     (0, 0, [(5, 1, 0, 1), (25, 1, 0, 1), (50, 1, 0, 1), (100, 1, 0, 1)], 1),  # scaled to zero: one candidate
     (4, 8, [(5, 1, 4, 1), (25, 2, 3, 2), (50, 4, 2, 3), (100, 8, 1, 6)], 6),  # the candidate aims higher
     (20, 20, [(5, 1, 19, 1), (25, 5, 15, 4), (50, 10, 10, 5), (100, 20, 1, 10)], 10)],
)  # fmt: skip
def test_plan_numbers(stable: int, target: int, expected: list[tuple[int, ...]], peak: int) -> None:
    p = plan(stable=stable, target=target)
    assert rows(p) == expected
    assert p.peak_extra_replicas == peak


def test_candidate_target_is_clamped_to_the_replica_bounds() -> None:
    assert plan(stable=10, target=50, high=20).candidate_target == 20
    assert rows(plan(stable=10, target=50, high=20))[-1][:2] == (100, 20)
    assert plan(stable=1, target=1, low=4).candidate_target == 4
    assert plan(stable=0, target=0, low=0).candidate_target == 1  # a candidate needs one replica


def test_keep_stable_keeps_every_stable_replica_until_the_promotion() -> None:
    p = plan(keep_stable=True)
    assert rows(p) == [(5, 1, 10, 1), (25, 3, 10, 3), (50, 5, 10, 5), (100, 10, 10, 10)]
    assert p.peak_extra_replicas == 10


def test_custom_steps_bake_and_interval() -> None:
    c = Canary(steps=[10, 100], bake="10m", analysis_interval="2m30s", inconclusive="rollback")
    p = plan(c, stable=6)
    assert rows(p) == [(10, 1, 6, 1), (100, 6, 1, 6)]
    assert [s.analyses for s in p.steps] == [4, 4]
    assert (p.minimum_duration, p.maximum_duration, p.worst_case_rollback) == (1200.0, 1200.0, 152.0)


def test_a_hold_policy_has_no_maximum_duration() -> None:
    assert plan(Canary(inconclusive="hold")).maximum_duration is None
    assert plan(Canary(max_extensions=0)).maximum_duration == 240.0


def test_one_step_straight_to_100() -> None:
    p = plan(Canary(steps=[100]), stable=5)
    assert rows(p) == [(100, 5, 1, 5)]


@pytest.mark.parametrize(("shadow", "replicas"), [(0.3, 3), (0.05, 1), (0.25, 3), (1.0, 10)])
def test_a_shadow_step_comes_first(shadow: float, replicas: int) -> None:
    p = plan(Canary(shadow=shadow))
    first = p.steps[0]
    assert (first.weight, first.mirror, first.shadow) == (0, shadow, True)
    assert (first.candidate_replicas, first.stable_replicas, first.extra_replicas) == (replicas, 10, replicas)
    assert p.weights == (0, 5, 25, 50, 100)
    assert p.minimum_duration == 300.0
    assert not any(step.shadow for step in p.steps[1:])


@pytest.mark.parametrize(
    ("stable", "target", "high", "keep"),
    list(itertools.product([0, 1, 2, 3, 7, 10, 33], [0, 1, 4, 10, 50], [1, 5, 100], [False, True])),
)
def test_plan_invariants(stable: int, target: int, high: int, keep: bool) -> None:
    """Every arm has the replicas its share needs when it gets that share; the candidate grows from step to
    step (after the shadow step, whose mirrored share may exceed the first weight), the stable shrinks."""
    steps = [3, 10, 33, 60, 99, 100]
    p = plan(Canary(steps=steps, shadow=0.2), stable=stable, target=target, high=high, keep_stable=keep)
    total = p.candidate_target
    assert 1 <= total <= high
    previous = CanaryStep(0, 0, stable, 0, 0, 0)
    for step in p.steps:
        share = step.mirror if step.shadow else step.weight / 100
        assert step.candidate_replicas >= min(high, max(1, math.ceil(share * total - 1e-9)))
        assert step.candidate_replicas <= high
        assert previous.shadow or step.candidate_replicas >= previous.candidate_replicas
        assert step.stable_replicas >= math.ceil((100 - step.weight) * stable / 100 - 1e-9)
        assert step.stable_replicas <= previous.stable_replicas
        assert step.extra_replicas == step.candidate_replicas + previous.stable_replicas - stable
        previous = step
    assert p.peak_extra_replicas == max(0, *(s.extra_replicas for s in p.steps))
    assert p.steps[-1].stable_replicas == (stable if keep else min(1, stable))


def test_bad_replica_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        plan(stable=-1)
    with pytest.raises(ValueError, match="max_replicas"):
        plan(high=0)
    with pytest.raises(ValueError, match="min_replicas"):
        plan(low=5, high=4)


# --- render -------------------------------------------------------------------------------------------------


def test_render_shows_the_steps_in_order_with_their_weights() -> None:
    text = render_plan(plan())
    lines = text.splitlines()
    assert lines[:7] == [
        "| step | candidate traffic | candidate ready before | stable after | bake | analyses |",
        "|---|---:|---:|---:|---:|---:|",
        "| 1 | 5% | 1 | 10 | 1m | 1 |",
        "| 2 | 25% | 3 | 8 | 1m | 1 |",
        "| 3 | 50% | 5 | 5 | 1m | 1 |",
        "| 4 | 100% | 10 | 1 | 1m | 1 |",
        "| promote | 100% | 10 | 0 | - | - |",
    ]
    assert "Minimum duration: 4m (bakes only; replica starts and closed windows add to it)" in lines
    assert "Maximum duration: 16m (every step extended 3 times)" in lines
    assert "Worst-case time to rollback: 1m2s (1m analysis interval + 2s to move traffic back)" in lines
    assert "Peak extra replicas: 5 (above the stable's 10)" in lines


def test_render_of_a_shadow_step_and_other_policies() -> None:
    text = render_plan(plan(Canary(shadow=0.1, steps=[50, 100], inconclusive="hold")))
    assert "| 1 (shadow) | 0% + 10% mirrored | 1 | 10 | 1m | 1 |" in text
    assert "| 2 | 50% | 5 | 5 | 1m | 1 |" in text
    assert "Maximum duration: unbounded (an inconclusive step holds until someone decides)" in text
    assert "Maximum duration: 2m (an inconclusive step rolls back)" in render_plan(
        plan(Canary(steps=[50, 100], inconclusive="rollback"))
    )


@pytest.mark.parametrize("steps", [[1, 2, 3, 100], [50, 100], [100], [5, 10, 20, 40, 80, 100]])
def test_render_lists_every_weight_once_in_order(steps: list[int]) -> None:
    text = render_plan(plan(Canary(steps=steps)))
    table = [line.split(" | ") for line in text.splitlines() if line.startswith("| ") and "step" not in line]
    assert [row[1] for row in table[:-1]] == [f"{weight}%" for weight in steps]


# --- the state machine --------------------------------------------------------------------------------------


def walk(p: CanaryPlan, verdicts: dict[int, list[str]] | None = None, window=lambda index: True) -> list:
    """Follow `next_action` from the start as a flow would: (action, step_index, weight) per decision."""
    verdicts = {k: list(v) for k, v in (verdicts or {}).items()}
    index, extensions, seen = NOT_STARTED, 0, []
    for _ in range(100):
        queue = verdicts.get(index, [])
        verdict = queue.pop(0) if queue else "pass"
        decision = next_action(p, index, verdict, extensions=extensions, window_open=window(index))
        seen.append((decision.action, decision.step_index, decision.weight))
        if decision.action in (Action.PROMOTE, Action.ROLLBACK, Action.HOLD):
            return seen
        index, extensions = decision.step_index, decision.extensions
    raise AssertionError("the rollout never finished")


@pytest.mark.parametrize("canary", [DEFAULT, Canary(steps=[1, 2, 100]), Canary(shadow=0.5), Canary(steps=[100])])
def test_a_passing_rollout_goes_through_exactly_the_planned_weights(canary: Canary) -> None:
    p = plan(canary)
    seen = walk(p)
    assert [weight for action, _, weight in seen if action is Action.ADVANCE] == list(p.weights)
    assert [index for action, index, _ in seen if action is Action.ADVANCE] == list(range(len(p.steps)))
    assert seen[-1] == (Action.PROMOTE, len(p.steps) - 1, 100)


@pytest.mark.parametrize("index", [NOT_STARTED, 0, 1, 2, 3])
def test_a_failure_rolls_back_from_any_step_even_outside_the_windows(index: int) -> None:
    for window_open in (True, False):
        decision = next_action(plan(), index, Verdict.FAIL, extensions=2, window_open=window_open)
        assert (decision.action, decision.step_index, decision.weight, decision.extensions) == (
            Action.ROLLBACK, NOT_STARTED, 0, 0
        )  # fmt: skip
        assert "analysis failed" in decision.reason


def test_inconclusive_extend_extends_up_to_max_extensions_then_rolls_back() -> None:
    p = plan(Canary(max_extensions=2))
    first = next_action(p, 1, "inconclusive")
    assert (first.action, first.step_index, first.weight, first.extensions) == (Action.EXTEND, 1, 25, 1)
    assert first.reason == "analysis inconclusive at step 2 (25%): extension 1 of 2"
    second = next_action(p, 1, "inconclusive", extensions=1)
    assert (second.action, second.extensions) == (Action.EXTEND, 2)
    third = next_action(p, 1, "inconclusive", extensions=2)
    assert (third.action, third.weight) == (Action.ROLLBACK, 0)
    assert third.reason == "analysis still inconclusive at step 2 (25%) after 2 extensions"
    # a pass after extensions moves on and starts the next step's count afresh
    assert next_action(p, 1, "pass", extensions=2).extensions == 0


def test_extensions_are_counted_per_step_along_a_rollout() -> None:
    p = plan(Canary(max_extensions=1))
    seen = walk(p, {0: ["inconclusive", "pass"], 1: ["inconclusive", "pass"]})
    assert [a for a, _, _ in seen] == [Action.ADVANCE, Action.EXTEND, Action.ADVANCE, Action.EXTEND,
                                        Action.ADVANCE, Action.ADVANCE, Action.PROMOTE]  # fmt: skip
    rolled = walk(p, {2: ["inconclusive", "inconclusive"]})
    assert rolled[-2:] == [(Action.EXTEND, 2, 50), (Action.ROLLBACK, NOT_STARTED, 0)]


def test_zero_extensions_rolls_back_on_the_first_inconclusive_verdict() -> None:
    assert next_action(plan(Canary(max_extensions=0)), 0, "inconclusive").action is Action.ROLLBACK


def test_inconclusive_hold_waits_and_rollback_rolls_back() -> None:
    held = next_action(plan(Canary(inconclusive="hold")), 2, "inconclusive", extensions=1)
    assert (held.action, held.step_index, held.weight, held.extensions) == (Action.HOLD, 2, 50, 1)
    assert held.reason == "analysis inconclusive at step 3 (50%): holding for a decision"
    rolled = next_action(plan(Canary(inconclusive="rollback")), 2, "inconclusive")
    assert (rolled.action, rolled.weight) == (Action.ROLLBACK, 0)


def test_outside_the_windows_a_pass_pauses_at_the_current_weight() -> None:
    p = plan()
    for index in (NOT_STARTED, 0, 1, 2, 3):
        paused = next_action(p, index, "pass", extensions=1, window_open=False)
        here = 0 if index == NOT_STARTED else p.steps[index].weight
        assert (paused.action, paused.step_index, paused.weight, paused.extensions) == (
            Action.PAUSE, index, here, 1
        )  # fmt: skip
    assert next_action(p, 3, "pass", window_open=False).reason.endswith("promotion waits")
    # extend and hold do not move traffic: they go on outside the windows
    assert next_action(p, 1, "inconclusive", window_open=False).action is Action.EXTEND


def test_a_rollout_paused_by_its_window_resumes_at_the_same_step() -> None:
    closed_once = {1}
    calls: list[int] = []

    def window(index: int) -> bool:
        calls.append(index)
        return not (index in closed_once and calls.count(index) == 1)

    seen = walk(plan(), window=window)
    assert [a for a, _, _ in seen].count(Action.PAUSE) == 1
    assert [w for a, _, w in seen if a is Action.ADVANCE] == [5, 25, 50, 100]


def test_reasons_name_the_step() -> None:
    p = plan(Canary(shadow=0.1))
    assert next_action(p, NOT_STARTED, "pass").reason == (
        "analysis passed before the first step: moving to step 1 (shadow, 10% mirrored)"
    )
    assert next_action(p, 0, "pass").reason == "analysis passed at step 1 (shadow, 10% mirrored): moving to step 2 (5%)"
    assert next_action(p, 4, "pass").reason == "analysis passed at step 5 (100%): promoting"


def test_bad_state_machine_inputs_are_refused() -> None:
    p = plan()
    with pytest.raises(ValueError, match=r"step_index must be in \[-1, 3\], got 4"):
        next_action(p, 4, "pass")
    with pytest.raises(ValueError, match="got -2"):
        next_action(p, -2, "pass")
    with pytest.raises(ValueError, match="extensions must be >= 0"):
        next_action(p, 0, "pass", extensions=-1)
    with pytest.raises(ValueError, match="'maybe' is not a valid Verdict"):
        next_action(p, 0, "maybe")


def test_verdicts_and_actions_are_plain_strings() -> None:
    assert [v.value for v in Verdict] == ["pass", "fail", "inconclusive"]
    assert Action.PROMOTE == "promote" and Verdict("fail") is Verdict.FAIL


# --- flow-parameter overrides -------------------------------------------------------------------------------


def test_overrides_replace_what_they_name_and_keep_the_rest() -> None:
    spec = Canary(steps=[10, 100], bake="5m", windows=[{"start": "09:00", "end": "17:00"}], timezone="Asia/Tokyo")
    changed = apply_overrides(spec, {"bake": "2m", "steps": [50, 100], "inconclusive": None})
    assert (changed.steps, changed.bake, changed.inconclusive) == ([50, 100], "2m", "extend")
    assert changed.windows == spec.windows and changed.windows[0].timezone == "Asia/Tokyo"
    assert apply_overrides(spec, {}) is spec
    assert apply_overrides(spec, {"bake": None}) is spec


def test_overriding_the_drift_test_rederives_an_unwritten_threshold() -> None:
    assert apply_overrides(Canary(), {"drift_test": "psi"}).drift_threshold == 0.2
    assert apply_overrides(Canary(drift_threshold=0.05), {"drift_test": "ks"}).drift_threshold == 0.05


def test_overriding_the_canary_time_zone_moves_windows_that_name_none() -> None:
    spec = Canary(windows=[{"start": "09:00", "end": "17:00"}, {"timezone": "UTC"}])
    moved = apply_overrides(spec, {"timezone": "Europe/Berlin"})
    assert [w.timezone for w in moved.windows] == ["Europe/Berlin", "UTC"]


def test_bad_overrides_name_the_field_and_the_rule() -> None:
    with pytest.raises(ValueError) as info:
        apply_overrides(Canary(), {"steps": [50, 25, 100], "bake": "5s", "shadow": 2})
    assert str(info.value).splitlines() == [
        "canary.shadow: Input should be less than or equal to 1",
    ]
    with pytest.raises(ValueError) as info:
        apply_overrides(Canary(), {"steps": [50, 25, 100], "bake": "5s"})
    assert str(info.value).splitlines() == [
        "canary.steps: must be strictly increasing (e.g. [5, 25, 50, 100]), got [50, 25, 100]",
        "canary.bake: must be >= analysis_interval (1m), so every step is analysed, got '5s'",
    ]
    with pytest.raises(ValueError, match=r"canary\.windows\.0\.timezone: unknown time zone 'Mars/Base'"):
        apply_overrides(Canary(), {"windows": [{"timezone": "Mars/Base"}]})
    with pytest.raises(ValueError, match=r"canary\.stepz: Extra inputs are not permitted"):
        apply_overrides(Canary(), {"stepz": [100]})
