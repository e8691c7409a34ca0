"""The plan of a canary rollout, and the rule that moves it from step to step.

The candidate version runs beside the stable one and takes `canary.steps` percent of the traffic in turn,
baking at each step while the analysis compares the two. Each version (arm) autoscales on its own
in-flight load; the plan gives the replicas each needs for its share, so the rollout can start the
candidate's replicas for the next weight *before* traffic moves (nothing is overloaded by a move), and
scale the stable down to its share only *after* traffic moved away from it:

- candidate before traffic moves to weight w: ceil(w% x total), at least 1, at most max_replicas, where
  total is `candidate_target` clamped to [max(min_replicas, 1), max_replicas];
- stable after the move: ceil((100 - w)% x stable_replicas); at 100% one replica stays warm until the
  promotion (unless the stable had none), so a rollback from the last step never waits for a cold start.
  With `keep_stable` the stable keeps all its replicas until the promotion instead (a rollback from any
  step moves traffic back to full capacity, at the cost of up to twice the replicas).

With `canary.shadow` > 0 a shadow step comes first: the candidate receives a copy of that share of the
requests (its responses discarded) and no live traffic, for one bake, analysed like any step.

`next_action` is the whole state machine: the flow analyses, asks it what to do, and does exactly that;
so the plan `cortex-flows plan` prints is the sequence of weights the rollout goes through.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from cortex_flows.spec.models import ISSUES_ERROR, Canary
from cortex_flows.spec.quantities import check_duration

# Seconds from a rollback decision until the gateway routes all traffic to the stable version: applying
# new weights is one control call (local agent) or one HTTPRoute update (Kubernetes), which gateways
# apply within about a second or two. An assumption, not a measurement of a particular backend.
TRAFFIC_SWITCH_SECONDS = 2.0
NOT_STARTED = -1  # step index of a rollout whose candidate runs but takes no traffic yet


class Verdict(StrEnum):
    """An analysis' outcome (the same strings as the analysis module's verdicts)."""

    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"  # too few samples, or no clear answer


class Action(StrEnum):
    ADVANCE = "advance"  # scale the candidate for the next step, then move traffic to its weight
    EXTEND = "extend"  # bake this step once more (inconclusive, policy "extend")
    HOLD = "hold"  # stay at this weight until a person decides (inconclusive, policy "hold")
    PAUSE = "pause"  # outside the time windows: stay at this weight, keep analysing, ask again when open
    ROLLBACK = "rollback"  # all traffic back to the stable version, then remove the candidate
    PROMOTE = "promote"  # the candidate becomes the stable version; the old one drains


@dataclass(frozen=True)
class CanaryStep:
    weight: int  # % of live traffic the candidate takes at this step (0 for the shadow step)
    candidate_replicas: int  # ready before traffic moves to `weight`
    stable_replicas: int  # once traffic moved
    bake_seconds: float
    analyses: int  # analyses in one bake (one every analysis interval)
    extra_replicas: int  # above the stable's starting count while the move happens
    mirror: float = 0.0  # share of requests copied to the candidate (the shadow step only)

    @property
    def shadow(self) -> bool:
        return self.mirror > 0 and self.weight == 0


@dataclass(frozen=True)
class CanaryPlan:
    steps: tuple[CanaryStep, ...]
    stable_replicas: int  # what the stable ran when the plan was made
    candidate_target: int  # replicas the candidate aims for at 100% (clamped)
    analysis_interval_seconds: float
    inconclusive: str
    max_extensions: int
    minimum_duration: float  # seconds: every bake once (not counting replica starts or closed windows)
    maximum_duration: float | None  # seconds: every bake extended the most; None when "hold" may wait forever
    worst_case_rollback: float  # seconds from a failure showing in the metrics to all traffic on the stable
    peak_extra_replicas: int  # the most replicas above `stable_replicas` at any time

    @property
    def weights(self) -> tuple[int, ...]:
        return tuple(step.weight for step in self.steps)


@dataclass(frozen=True)
class Decision:
    action: Action
    step_index: int  # the step the rollout is at after the action (NOT_STARTED after a rollback)
    weight: int  # % of live traffic on the candidate after the action
    extensions: int  # bakes added to the step so far (0 after moving to another step)
    reason: str


def plan_canary(
    canary: Canary,
    *,
    stable_replicas: int,
    candidate_target: int,
    min_replicas: int,
    max_replicas: int,
    keep_stable: bool = False,
) -> CanaryPlan:
    """The steps of a canary rollout with the replicas each arm needs (see the module docstring)."""
    if min(stable_replicas, candidate_target, min_replicas) < 0 or max_replicas < 1:
        raise ValueError("replica counts must be >= 0 and max_replicas >= 1")
    if min_replicas > max_replicas:
        raise ValueError(f"min_replicas ({min_replicas}) must be <= max_replicas ({max_replicas})")
    total = max(max(min_replicas, 1), min(candidate_target, max_replicas))
    bake, interval = canary.bake_seconds, canary.analysis_interval_seconds
    analyses = int(bake // interval)
    # (weight, share of requests the candidate serves or receives copies of, mirror)
    shares = [(0, Decimal(str(canary.shadow)), canary.shadow)] if canary.shadow > 0 else []
    shares += [(weight, Decimal(weight) / 100, 0.0) for weight in canary.steps]
    steps: list[CanaryStep] = []
    before = stable_replicas
    for weight, share, mirror in shares:
        replicas = min(max_replicas, max(1, math.ceil(share * total)))
        if keep_stable:
            after = stable_replicas
        elif weight == 100:
            after = min(1, stable_replicas)
        else:
            after = -(-(100 - weight) * stable_replicas // 100)
        extra = replicas + before - stable_replicas
        steps.append(CanaryStep(weight, replicas, after, bake, analyses, extra, mirror))
        before = after
    minimum = sum(step.bake_seconds for step in steps)
    maximum = {"extend": minimum * (1 + canary.max_extensions), "rollback": minimum}.get(canary.inconclusive)
    return CanaryPlan(
        steps=tuple(steps),
        stable_replicas=stable_replicas,
        candidate_target=total,
        analysis_interval_seconds=interval,
        inconclusive=canary.inconclusive,
        max_extensions=canary.max_extensions,
        minimum_duration=minimum,
        maximum_duration=maximum,
        worst_case_rollback=interval + TRAFFIC_SWITCH_SECONDS,
        peak_extra_replicas=max(0, *(step.extra_replicas for step in steps)),
    )


def next_action(
    plan: CanaryPlan,
    step_index: int,
    verdict: Verdict | str,
    *,
    extensions: int = 0,
    window_open: bool = True,
) -> Decision:
    """What to do after an analysis at `step_index` (NOT_STARTED: candidate ready, no traffic yet).

    A failure rolls back at once, inside a time window or not. A pass moves forward (the next step, or
    the promotion after the last) only inside a window; outside one it pauses at the current weight. An
    inconclusive verdict follows `plan.inconclusive`: "extend" bakes the step again until it was extended
    `max_extensions` times and then rolls back (never promote on no evidence), "hold" waits for a person,
    "rollback" rolls back. `extensions` counts the bakes already added to this step.
    """
    verdict = Verdict(verdict)
    if not NOT_STARTED <= step_index < len(plan.steps):
        raise ValueError(f"step_index must be in [{NOT_STARTED}, {len(plan.steps) - 1}], got {step_index}")
    if extensions < 0:
        raise ValueError(f"extensions must be >= 0, got {extensions}")
    here = 0 if step_index == NOT_STARTED else plan.steps[step_index].weight
    where = "before the first step" if step_index == NOT_STARTED else f"at step {_describe(plan, step_index)}"

    def stay(action: Action, count: int, reason: str) -> Decision:
        return Decision(action, step_index, here, count, reason)

    def rollback(reason: str) -> Decision:
        return Decision(Action.ROLLBACK, NOT_STARTED, 0, 0, reason)

    if verdict is Verdict.FAIL:
        return rollback(f"analysis failed {where}")
    if verdict is Verdict.INCONCLUSIVE:
        if plan.inconclusive == "rollback":
            return rollback(f"analysis inconclusive {where} (policy: rollback)")
        if plan.inconclusive == "hold":
            return stay(Action.HOLD, extensions, f"analysis inconclusive {where}: holding for a decision")
        if extensions < plan.max_extensions:
            count = extensions + 1
            return stay(
                Action.EXTEND,
                count,
                f"analysis inconclusive {where}: extension {count} of {plan.max_extensions}",
            )
        return rollback(f"analysis still inconclusive {where} after {extensions} extensions")
    last = step_index == len(plan.steps) - 1
    if not window_open:
        move = "promotion" if last else "next step"
        return stay(
            Action.PAUSE, extensions, f"analysis passed {where}; outside the time windows: {move} waits"
        )
    if last:
        return Decision(Action.PROMOTE, step_index, here, 0, f"analysis passed {where}: promoting")
    following = step_index + 1
    reason = f"analysis passed {where}: moving to step {_describe(plan, following)}"
    return Decision(Action.ADVANCE, following, plan.steps[following].weight, 0, reason)


def _describe(plan: CanaryPlan, index: int) -> str:
    step = plan.steps[index]
    traffic = f"shadow, {_percent(step.mirror)} mirrored" if step.shadow else f"{step.weight}%"
    return f"{index + 1} ({traffic})"


def render_plan(plan: CanaryPlan) -> str:
    """The plan as a Markdown table and a summary (reads as plain text too), steps in the order they run."""
    lines = [
        "| step | candidate traffic | candidate ready before | stable after | bake | analyses |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for number, step in enumerate(plan.steps, start=1):
        name, traffic = (
            (f"{number} (shadow)", f"0% + {_percent(step.mirror)} mirrored")
            if step.shadow
            else (str(number), f"{step.weight}%")
        )
        lines.append(
            f"| {name} | {traffic} | {step.candidate_replicas} | {step.stable_replicas}"
            f" | {_duration(step.bake_seconds)} | {step.analyses} |"
        )
    final = plan.steps[-1].candidate_replicas
    lines.append(f"| promote | 100% | {final} | 0 | - | - |")
    if plan.maximum_duration is None:
        longest = "unbounded (an inconclusive step holds until someone decides)"
    elif plan.inconclusive == "extend":
        longest = f"{_duration(plan.maximum_duration)} (every step extended {plan.max_extensions} times)"
    else:
        longest = f"{_duration(plan.maximum_duration)} (an inconclusive step rolls back)"
    interval, switch = _duration(plan.analysis_interval_seconds), _duration(TRAFFIC_SWITCH_SECONDS)
    minimum = f"{_duration(plan.minimum_duration)} (bakes only; replica starts and closed windows add to it)"
    parts = f"{interval} analysis interval + {switch} to move traffic back"
    rollback = f"{_duration(plan.worst_case_rollback)} ({parts})"
    lines += [
        "",
        f"Minimum duration: {minimum}",
        f"Maximum duration: {longest}",
        f"Worst-case time to rollback: {rollback}",
        f"Peak extra replicas: {plan.peak_extra_replicas} (above the stable's {plan.stable_replicas})",
    ]
    return "\n".join(lines)


def apply_overrides(canary: Canary, overrides: Mapping[str, Any]) -> Canary:
    """The spec's canary policy with flow-parameter overrides on top (None values keep the spec's value).

    Validated as a whole, so the spec's rules hold for the result; a bad override raises ValueError with
    one `canary.<field>: <problem>` line per problem. Fields the override does not name keep what the
    spec wrote, and derived defaults are derived again (overriding drift_test resets an unwritten
    drift_threshold to that test's default).
    """
    changes = {key: value for key, value in overrides.items() if value is not None}
    if not changes:
        return canary
    written = canary.model_dump(mode="json", exclude_unset=True)
    try:
        return Canary.model_validate({**written, **changes})
    except ValidationError as exc:
        raise ValueError("\n".join(_problems(exc))) from None


def _problems(exc: ValidationError) -> list[str]:
    problems = []
    for error in exc.errors(include_url=False):
        loc = ".".join(str(part) for part in ("canary", *error["loc"]))
        if error["type"] == ISSUES_ERROR:
            problems += [
                f"{loc}.{field}".rstrip(".") + f": {message}" for field, message in error["ctx"]["issues"]
            ]
        else:
            problems.append(f"{loc}: {error['msg'].removeprefix('Value error, ')}")
    return problems


def _percent(share: float) -> str:
    return f"{share * 100:g}%"


def _duration(seconds: float) -> str:
    return check_duration(seconds)
