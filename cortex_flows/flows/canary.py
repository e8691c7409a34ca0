"""The canary rollout flow: the candidate runs beside the stable version and takes traffic step by step,
judged every analysis interval; a failing verdict sends all traffic back at once, the last step promotes.

The loop follows `rollout.canary.next_action` (steps, extensions, time windows); each move, bake, rollback
and promotion is a task, so the run's task list is the rollout's history.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.events import emit_event
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput

from cortex_flows.flows.provenance import provenance
from cortex_flows.rollout.analysis import Thresholds, markdown_table
from cortex_flows.rollout.canary import (
    NOT_STARTED,
    Action,
    Decision,
    apply_overrides,
    next_action,
    plan_canary,
    render_plan,
)
from cortex_flows.rollout.plan import Action as DeployAction
from cortex_flows.rollout.shadow import ShadowPolicy
from cortex_flows.rollout.windows import is_open, next_open
from cortex_flows.spec import RealtimeAPI
from cortex_flows.tasks.canary import (
    arm_metrics,
    bake,
    live_replicas,
    move,
    promote,
    roll_back,
    serving_weights,
    shadow_report,
)
from cortex_flows.tasks.clusters import load_cluster
from cortex_flows.tasks.deploy import apply, build, load_project, plan, prepare, store
from cortex_flows.tasks.notify import check_notifier, send_notice
from cortex_flows.tasks.rollout import RolloutFailed, smoke_test

MAX_PAUSE_SLEEP = 300.0  # a paused rollout looks at the clock at least this often
HOLD_POLL_SECONDS = 2  # how often a held rollout asks the Prefect API whether someone answered


class Clock:
    """Wall-clock time for the time windows (tests substitute a fixed clock that jumps when it sleeps)."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


CLOCK = Clock()


class HoldDecision(RunInput):
    """What a person answers to a held canary (the form the Prefect UI shows on the paused run)."""

    decision: Literal["advance", "extend", "rollback"] = "rollback"  # advance: as if the step had passed
    reason: str = ""  # kept in the ledger


@flow(name="canary-rollout", flow_run_name="canary {path}")
def canary_rollout(
    path: str = ".",
    api: str | None = None,
    cluster: str | None = None,
    steps: list[int] | None = None,
    bake_time: str | None = None,
    analysis_interval: str | None = None,
    min_samples: int | None = None,
    inconclusive: str | None = None,
    smoke_payload: dict[str, Any] | list[Any] | None = None,
    wait: bool = True,
    hold_timeout: int = 24 * 3600,
    notify: str | None = None,
) -> dict[str, Any]:
    """Canary the project's API (the spec's `canary:` policy, with these overrides) and promote it, or
    roll it back and fail. Returns the outcome, the revisions and the step ledger.

    With `inconclusive: hold` a step without a clear answer pauses the flow run until someone resumes it
    with a `HoldDecision` (the Prefect UI shows the form); nobody answering within `hold_timeout`
    seconds rolls back. `notify` names a Prefect notification block ('<block-type-slug>/<block-name>') to
    tell when the canary rolls back."""
    logger = get_run_logger()
    target = load_cluster(cluster)
    if notify:
        check_notifier.submit(notify).result()
    project = load_project(path)
    spec = project.select(api)
    policy = apply_overrides(spec.canary, {"steps": steps, "bake": bake_time, "analysis_interval": analysis_interval,
                                           "min_samples": min_samples, "inconclusive": inconclusive})  # fmt: skip
    package = store(build(project), target)
    backend = target.get_backend()
    with backend.hold(spec.name, wait=wait, what=f"canary of {spec.name}"):
        serving = _call(serving_weights, spec.name, target)
        if len(serving) > 1:  # an interrupted rollout: a canary from here would judge the wrong baseline
            raise RolloutFailed(_left_over(spec.name, serving, path))
        decided = plan.submit(spec, package, target).result()
        if decided.action is DeployAction.UP_TO_DATE:  # e.g. a scheduled run with no new model: nothing to do
            logger.info("%s r%d is up to date: no canary", spec.name, decided.revision)
            return {"outcome": "up to date", "reason": "", "revision": decided.revision, "ledger": []}
        if decided.action is not DeployAction.ROLL or len(decided.previous) != 1:
            raise RolloutFailed(
                f"{spec.name}: a canary needs one serving version and a pod change; the plan is {decided.action}"
                f" (use `deploy` for new APIs, in-place changes and unfinished rollouts)"
            )
        prepare.submit(spec, package, decided, target, project.project_dir).result()
        apply.submit(spec, package, decided, target).result()
        stable = decided.previous[0]
        revisions = (stable, decided.revision)
        stable_replicas = _call(live_replicas, spec.name, stable, target)
        steps_plan = plan_canary(
            policy, stable_replicas=stable_replicas, candidate_target=decided.replicas,
            min_replicas=spec.autoscaling.min_replicas, max_replicas=spec.autoscaling.max_replicas,
        )  # fmt: skip
        logger.info("canary plan for %s r%d:\n%s", spec.name, decided.revision, render_plan(steps_plan))
        ledger: list[dict[str, str]] = []
        outcome = _run(spec, policy, steps_plan, revisions, target, ledger, smoke_payload, hold_timeout)
    report = [f"# Canary of {spec.name}: r{stable} -> r{decided.revision}, {outcome['outcome']}", "",
              "## Who, what, why", "", *provenance(), f"- package: `{package.sha256}`", "",
              render_plan(steps_plan), "", "## Ledger", "", markdown_table(ledger)]  # fmt: skip
    create_markdown_artifact(key="canary-report", markdown="\n".join(report), description="cortex-flows canary")
    if outcome["outcome"] != "promoted":
        subject = f"cortex-flows: canary of {spec.name} r{decided.revision} rolled back to r{stable}"
        send_notice(notify, subject, [outcome["reason"]])
        raise RolloutFailed(f"{spec.name}: canary rolled back: {outcome['reason']}")
    return {**outcome, "ledger": ledger}


def _run(
    spec: RealtimeAPI, policy: Any, steps_plan: Any, revisions: tuple[int, int], cluster: Any,
    ledger: list[dict[str, str]], smoke_payload: Any, hold_timeout: int,
) -> dict[str, Any]:  # fmt: skip
    """Walk the plan; returns the outcome. The candidate takes no traffic until its first step."""
    name, (stable, candidate) = spec.name, revisions
    thresholds = Thresholds.from_canary(policy)
    progress = create_progress_artifact(0.0, description=f"canary of {name} r{candidate}")
    deadline = time.time() + spec.update_strategy.progress_deadline_seconds
    first = steps_plan.steps[0]
    _call(move, name, revisions, 0, (first.stable_replicas if first.weight == 0 else steps_plan.stable_replicas,
                              first.candidate_replicas), cluster, deadline)  # fmt: skip
    _call(smoke_test, name, candidate, cluster, smoke_payload)
    reference = _call(arm_metrics, name, revisions, cluster)[0]
    index, extensions, reason, step_started = NOT_STARTED, 0, "", time.monotonic()
    decision = next_action(steps_plan, index, "pass", window_open=_open(policy))
    while True:
        if decision.action is Action.HOLD:
            decision = _ask(name, candidate, steps_plan, index, decision, policy, ledger, hold_timeout)
        if decision.action is Action.ROLLBACK:
            began = time.monotonic()
            back = began - step_started + _call(roll_back, name, revisions, steps_plan.stable_replicas, cluster)
            _event("cortex.canary.rolled-back", name, candidate, {"reason": decision.reason, "seconds": back})
            reason = f"{decision.reason} (all traffic on stable {back:.1f}s after the step began)"
            return {"outcome": "rolled back", "reason": reason, "revision": stable, "seconds_to_stable": back}
        if decision.action is Action.PROMOTE:
            _call(promote, name, revisions, steps_plan.candidate_target, cluster)
            _event("cortex.canary.promoted", name, candidate, {})
            return {"outcome": "promoted", "reason": "", "revision": candidate}
        if decision.action is Action.PAUSE:
            ledger.append({"step": f"{decision.weight}%", "decision": "paused", "reasons": decision.reason,
                           "then": f"waits for the window at {_sleep_until_open(policy):%Y-%m-%d %H:%M %Z}"})  # fmt: skip
            if index == NOT_STARTED:  # no traffic to analyse yet: ask again once the window opens
                decision = next_action(steps_plan, index, "pass", window_open=_open(policy))
                continue
        elif decision.action is Action.ADVANCE:
            index, extensions = decision.step_index, 0
            step = steps_plan.steps[index]
            _call(move, name, revisions, step.weight, (step.stable_replicas, step.candidate_replicas), cluster, deadline,
                  step.mirror)  # fmt: skip
            step_started = time.monotonic()
            _event("cortex.canary.step", name, candidate, {"weight": step.weight, "mirror": step.mirror, "step": index + 1})
            update_progress_artifact(progress, 100.0 * index / len(steps_plan.steps))
        else:
            extensions = decision.extensions  # EXTEND / HOLD: bake the same step again
        step = steps_plan.steps[index]
        verdict, reason = _bake(name, revisions, step, policy, thresholds, index == len(steps_plan.steps) - 1,
                                cluster, ledger, extensions, reference)  # fmt: skip
        decision = next_action(steps_plan, index, verdict.outcome, extensions=extensions, window_open=_open(policy))
        if decision.action is Action.ROLLBACK and reason:
            decision = dataclasses.replace(decision, reason=f"{decision.reason}: {reason}")
        ledger[-1]["then"] = decision.action.value


def _ask(
    name: str, candidate: int, steps_plan: Any, index: int, held: Decision, policy: Any,
    ledger: list[dict[str, str]], timeout: int,
) -> Decision:  # fmt: skip
    """Pause the flow run until a person answers what to do with a held step (the weights stay)."""
    logger = get_run_logger()
    logger.warning("%s: %s; resume the flow run with a decision (advance, extend or rollback)", name, held.reason)
    _event("cortex.canary.held", name, candidate, {"reason": held.reason})
    try:
        answer = pause_flow_run(wait_for_input=HoldDecision, timeout=timeout, poll_interval=HOLD_POLL_SECONDS)
    except FlowPauseTimeout:
        answer = HoldDecision(decision="rollback", reason=f"nobody decided within {timeout}s")
    said = f"{answer.decision}: {answer.reason}" if answer.reason else answer.decision
    ledger.append({"step": f"{held.weight}%", "decision": "held", "reasons": held.reason, "then": f"person: {said}"})
    logger.info("%s: the held canary goes on: %s", name, said)
    if answer.decision == "rollback":
        return Decision(Action.ROLLBACK, NOT_STARTED, 0, 0, f"rolled back by a person after a hold ({said})")
    if answer.decision == "extend":
        return Decision(Action.EXTEND, index, held.weight, held.extensions + 1, f"extended by a person ({said})")
    return next_action(steps_plan, index, "pass", extensions=held.extensions, window_open=_open(policy))


def _bake(
    name: str, revisions: tuple[int, int], step: Any, policy: Any, thresholds: Thresholds, final: bool,
    cluster: Any, ledger: list[dict[str, str]], extensions: int, reference: Any,
) -> tuple[Any, str]:  # fmt: skip
    """Analyse every interval of the step's bake; a failure ends the bake at once. `reference` is the
    stable's metrics when the canary began, so a 100% step compares with all it answered since."""
    baseline = _call(arm_metrics, name, revisions, cluster)
    if step.weight == 100:  # the stable takes no traffic now: compare with what it answered earlier
        baseline = (reference, baseline[1])
    shadow = None
    if step.shadow:  # the candidate answers copies of the stable's requests: compare the answers too
        shadow = ShadowPolicy(_call(shadow_report, name, cluster), policy.min_samples, policy.min_agreement,
                              policy.max_latency_ratio)  # fmt: skip
    label = f"shadow {step.mirror:.0%}" if step.shadow else f"{step.weight}%"
    verdict = None
    for analysis in range(1, step.analyses + 1):
        verdict = _call(bake, name, revisions, baseline, step.weight, policy.analysis_interval_seconds, thresholds,
                       final, cluster, shadow)  # fmt: skip
        ledger.append(verdict.as_row(step=label, analysis=f"{analysis}/{step.analyses}",
                                     extension=str(extensions), at=datetime.now(UTC).strftime("%H:%M:%S")))  # fmt: skip
        if verdict.outcome == "fail":
            break
    assert verdict is not None
    return verdict, "; ".join(verdict.reasons)


def _open(policy: Any) -> bool:
    return is_open(policy.windows, policy.freeze_ranges, CLOCK.now(), timezone=policy.timezone)


def _sleep_until_open(policy: Any) -> datetime:
    """Sleep until the next window opens (at most MAX_PAUSE_SLEEP at a time); returns when it opens."""
    opens = next_open(policy.windows, policy.freeze_ranges, CLOCK.now(), timezone=policy.timezone)
    if opens is None:
        raise RolloutFailed("the canary's windows never open again within a year")
    CLOCK.sleep(min(MAX_PAUSE_SLEEP, max(1.0, (opens - CLOCK.now()).total_seconds())))
    return opens


def _left_over(name: str, serving: dict[int, int], path: str) -> str:
    """What an interrupted rollout left and the two ways on from it."""
    stable, *rest = sorted(serving)
    weights = ", ".join(f"r{rev} {weight}%" for rev, weight in sorted(serving.items()))
    left = ", ".join(f"r{rev}" for rev in rest)
    return (f"{name}: {left} {'is' if len(rest) == 1 else 'are'} left over from an interrupted rollout ({weights}); "
            f"run `cortex-flows rollback {name} --to {stable}` to go back to r{stable}, then canary again, or "
            f"`cortex-flows deploy {path}` to finish without analysis")  # fmt: skip


def _call(task: Any, *args: Any) -> Any:
    """Run an (async) task from this sync flow and wait for its result."""
    return task.submit(*args).result()


def _event(event: str, api: str, revision: int, payload: dict[str, Any]) -> None:
    resource = {"prefect.resource.id": f"cortex.api.{api}", "prefect.resource.name": api}
    emit_event(event=event, resource=resource, payload={"revision": revision, **payload})
