"""Deploy planning: what changes roll replicas, what applies in place, what is a no-op."""

import pytest

from cortex_flows.rollout.plan import Action, LiveVersion, plan_deploy

BOUNDS = {"init_replicas": 2, "min_replicas": 1, "max_replicas": 5}


def plan(live, spec="s1", pod="p1", last=0, **bounds):
    return plan_deploy(spec_hash=spec, pod_hash=pod, live=live, last_revision=last, **{**BOUNDS, **bounds})


def test_new_api_starts_at_init_replicas_after_the_last_recorded_revision():
    p = plan([], last=3)
    assert (p.action, p.revision, p.replicas, p.previous) == (Action.CREATE, 4, 2, ())


def test_same_spec_is_up_to_date():
    p = plan([LiveVersion(3, "s1", "p1", 4)])
    assert (p.action, p.revision, p.replicas) == (Action.UP_TO_DATE, 3, 4)


def test_autoscaling_only_change_applies_in_place_and_clamps_replicas():
    p = plan([LiveVersion(3, "s0", "p1", 9)], spec="s1")
    assert (p.action, p.revision, p.replicas) == (Action.IN_PLACE, 3, 5)


def test_pod_change_rolls_to_a_new_revision_keeping_live_replica_count():
    p = plan([LiveVersion(3, "s0", "p0", 4)], last=3)
    assert (p.action, p.revision, p.replicas, p.previous) == (Action.ROLL, 4, 4, (3,))


def test_revision_numbers_never_reuse_history():
    assert plan([LiveVersion(3, "s0", "p0", 1)], last=7).revision == 8


def test_scaled_to_zero_api_rolls_with_init_replicas():
    assert plan([LiveVersion(1, "s0", "p0", 0)], min_replicas=0).replicas == 2


def test_leftover_versions_are_drained_even_when_spec_matches():
    p = plan([LiveVersion(2, "s0", "p0", 1), LiveVersion(3, "s1", "p1", 1)])
    assert (p.action, p.previous) == (Action.IN_PLACE, (2,))


@pytest.mark.parametrize("live_desired,expected", [(0, 2), (1, 1), (5, 5), (50, 5)])
def test_roll_replicas_clamped(live_desired, expected):
    assert plan([LiveVersion(1, "s0", "p0", live_desired)]).replicas == expected


def test_an_interrupted_rollout_resumes_towards_its_target():
    p = plan([LiveVersion(2, "s0", "p0", 1), LiveVersion(3, "s1", "p1", 2, target=4)])
    assert (p.action, p.revision, p.replicas, p.previous) == (Action.IN_PLACE, 3, 4, (2,))


def test_a_target_is_ignored_once_the_rollout_finished():
    p = plan([LiveVersion(3, "s0", "p1", 2, target=4)], spec="s1")
    assert (p.action, p.replicas) == (Action.IN_PLACE, 2)
