"""Tasks of the canary rollout: move one arm, judge a bake interval, roll back or promote.

The decisions are `rollout.canary.next_action` and `rollout.analysis.analyse`; these tasks only read the
backend's per-version metrics, call those, and apply the result.
"""

from __future__ import annotations

import asyncio
import time

from prefect import get_run_logger, task

from cortex_flows.backends.base import Outcome, VersionMetrics
from cortex_flows.blocks import CortexCluster
from cortex_flows.rollout.analysis import Thresholds, Verdict, analyse, with_check
from cortex_flows.rollout.shadow import ShadowPolicy, ShadowReport, shadow_check
from cortex_flows.tasks.retry import INFRA_RETRIES
from cortex_flows.tasks.rollout import RolloutFailed, scale_down, scale_up, shift_traffic

VERIFY_SECONDS = 10.0


@task(task_run_name="metrics of {api}", **INFRA_RETRIES)
async def arm_metrics(api: str, revisions: tuple[int, int], cluster: CortexCluster) -> tuple[VersionMetrics, ...]:
    async with cluster.get_backend() as backend:
        return tuple(await asyncio.gather(*(backend.version_metrics(api, rev) for rev in revisions)))


@task(task_run_name="replicas of {api} r{revision}", **INFRA_RETRIES)
async def live_replicas(api: str, revision: int, cluster: CortexCluster) -> int:
    """The replicas a version runs now (the stable's size to return to on a rollback)."""
    status = await cluster.get_backend().status(api)
    version = next((v for v in status.versions if v.revision == revision), None) if status else None
    if version is None:
        raise RolloutFailed(f"{api}: revision {revision} is not running")
    return version.desired


@task(task_run_name="versions of {api}", **INFRA_RETRIES)
async def serving_weights(api: str, cluster: CortexCluster) -> dict[int, int]:
    """Revision -> traffic weight of every version the API runs now (empty if it is not deployed)."""
    status = await cluster.get_backend().status(api)
    return {v.revision: v.weight for v in status.versions} if status else {}


@task(task_run_name="analyse {api} at {weight}%")
async def bake(
    api: str,
    revisions: tuple[int, int],
    baseline: tuple[VersionMetrics, VersionMetrics],
    weight: int,
    seconds: float,
    thresholds: Thresholds,
    final_step: bool,
    cluster: CortexCluster,
    shadow: ShadowPolicy | None = None,
) -> Verdict:
    """Wait one analysis interval, then judge everything the two arms answered since the step began;
    on a shadow step also the candidate's responses against the stable's for the same requests."""
    await asyncio.sleep(seconds)
    stable, candidate = await arm_metrics(api, revisions, cluster)
    verdict = analyse(
        stable.since(baseline[0]).as_arm(), candidate.since(baseline[1]).as_arm(), thresholds, final_step=final_step
    )
    if shadow is not None:
        report = await cluster.get_backend().shadow_report(api)
        check, stats = shadow_check(report.since(shadow.baseline) if report else None, shadow)
        verdict = with_check(verdict, check, stats, thresholds, final_step=final_step)
    get_run_logger().info("%s at %d%%: %s (%s)", api, weight, verdict.decision, "; ".join(verdict.reasons))
    return verdict


@task(task_run_name="move {api} to {weight}%")
async def move(
    api: str, revisions: tuple[int, int], weight: int, replicas: tuple[int, int], cluster: CortexCluster,
    deadline: float, mirror: float = 0.0,
) -> None:  # fmt: skip
    """Scale the candidate for the step and wait for it, then move traffic (and copy `mirror` of the
    requests to the candidate), then shrink the stable. The counts are the arms' floors: each arm
    autoscales above its floor on its own load meanwhile."""
    stable, candidate = revisions
    await scale_up(api, candidate, replicas[1], cluster, deadline, arm=True)
    weights = {stable: 100 - weight, candidate: weight} if weight < 100 else {candidate: 100}
    await shift_traffic(api, weights, cluster, candidate if mirror else None, mirror)
    await scale_down(api, stable, replicas[0], cluster, arm=True)


@task(task_run_name="shadow report of {api}", **INFRA_RETRIES)
async def shadow_report(api: str, cluster: CortexCluster) -> ShadowReport | None:
    return await cluster.get_backend().shadow_report(api)


@task(task_run_name="roll back {api}", **INFRA_RETRIES)
async def roll_back(api: str, revisions: tuple[int, int], stable_replicas: int, cluster: CortexCluster) -> float:
    """All traffic to the stable version at once, then restore its replicas and remove the candidate;
    verify the stable version serves alone. Returns the seconds until all traffic was on stable."""
    async with cluster.get_backend() as backend:
        stable, candidate = revisions
        started = time.monotonic()
        await backend.set_traffic(api, {stable: 100})
        back = time.monotonic() - started
        await scale_up(api, stable, stable_replicas, cluster, time.time() + 600, new=False)
        await backend.remove_version(api, candidate, Outcome.FAILED)
        status = await backend.status(api)
        serving = {v.revision: v.weight for v in status.versions} if status else {}
        if serving != {stable: 100}:
            raise RolloutFailed(f"{api}: after the rollback the versions serve {serving}, not r{stable} alone")
        return back


@task(task_run_name="promote {api}", **INFRA_RETRIES)
async def promote(api: str, revisions: tuple[int, int], target: int, cluster: CortexCluster) -> None:
    """The candidate becomes the stable version at its full size; the old one drains and goes."""
    async with cluster.get_backend() as backend:
        stable, candidate = revisions
        await scale_up(api, candidate, target, cluster, time.time() + 600)
        await backend.set_traffic(api, {candidate: 100})
        await backend.remove_version(api, stable, Outcome.SUPERSEDED)
        await backend.record_outcome(api, candidate, Outcome.LIVE)
