"""The rolling update as tasks: each step scales one version and moves traffic; a failure rolls back.

`roll` walks the steps `rolling_steps` plans from what runs now, so re-running an interrupted deploy
resumes where it stopped. A new version takes traffic only once its replicas are ready and it passed the
smoke test; old replicas leave routing before they drain. Any crash of a new replica, or the progress
deadline passing, aborts: the old versions get back their replicas and all the traffic, then the new
version is drained and removed.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from prefect import get_run_logger, task
from prefect.artifacts import acreate_progress_artifact, aupdate_progress_artifact
from prefect.events import emit_event

from cortex_flows.backends.base import ApiStatus, Backend, BackendError, Outcome, VersionStatus
from cortex_flows.blocks import CortexCluster
from cortex_flows.rollout.plan import Action, DeployPlan
from cortex_flows.rollout.rolling import rolling_steps, shrink_oldest, traffic_weights
from cortex_flows.spec import RealtimeAPI
from cortex_flows.tasks.retry import INFRA_RETRIES

POLL_SECONDS = 0.1
STATUS_ATTEMPTS = 5  # reads retried over ~15 s: long enough for a killed local agent to be restarted
ROLLBACK_DEADLINE_SECONDS = 600.0


class RolloutFailed(Exception):
    """The new version could not serve; what ran before keeps serving."""


@dataclass
class Timeline:
    """What the rollout did, with wall-clock times, for the report."""

    events: list[tuple[datetime, str]] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.events.append((datetime.now(UTC), text))

    def lines(self) -> list[str]:
        return [f"{when:%H:%M:%S.%f}"[:-3] + f" {text}" for when, text in self.events]


def _emit(event: str, api: str, decided: DeployPlan, payload: dict[str, object]) -> None:
    resource = {"prefect.resource.id": f"cortex.api.{api}", "prefect.resource.name": api}
    emit_event(event=event, resource=resource, payload={"revision": decided.revision, **payload})


async def _status(backend: Backend, api: str) -> ApiStatus | None:
    """The API's status, read as a task would: transient failures (the agent restarting, a 503) are retried
    with backoff, so a rollout in progress outlives them; anything else fails at once."""
    for attempt in range(STATUS_ATTEMPTS - 1):
        try:
            return await backend.status(api)
        except BackendError as exc:
            if not exc.transient:
                raise
            await asyncio.sleep(2**attempt)
    return await backend.status(api)


def _version(status: object, revision: int) -> VersionStatus | None:
    versions = getattr(status, "versions", None) or []
    return next((v for v in versions if v.revision == revision), None)


async def _ready_counts(backend: Backend, api: str) -> dict[int, int]:
    status = await _status(backend, api)
    return {v.revision: v.ready for v in status.versions} if status else {}


@task(task_run_name="{api} r{revision}: {replicas} ready", **INFRA_RETRIES)
async def scale_up(
    api: str, revision: int, replicas: int, cluster: CortexCluster, deadline: float, new: bool = True,
    arm: bool = False,
) -> int:  # fmt: skip
    """Start replicas of a version and wait until `replicas` are ready; returns the wait in ms.

    Fails when the progress deadline (epoch seconds) passes and, for the `new` version, on the first
    crash of one of its replicas: a version that crashes while rolling out is not one to give traffic.
    `arm`: `replicas` is the floor of a canary arm (see `Backend.scale_version`).
    """
    async with cluster.get_backend() as backend:
        started = time.monotonic()
        await backend.scale_version(api, revision, replicas, arm)
        while True:
            version = _version(await _status(backend, api), revision)
            if version is None:
                raise RolloutFailed(f"{api}: revision {revision} disappeared")
            if new and version.restarts > 0:
                raise RolloutFailed(f"{api}: a replica of revision {revision} crashed: {version.message}")
            if version.ready >= replicas:
                return round((time.monotonic() - started) * 1000)
            if time.time() > deadline:
                raise RolloutFailed(
                    f"{api}: revision {revision} not ready by the progress deadline ({version.ready}/{replicas} ready)"
                )
            await asyncio.sleep(POLL_SECONDS)


@task(task_run_name="{api} traffic {weights}", **INFRA_RETRIES)
async def shift_traffic(
    api: str, weights: dict[int, int], cluster: CortexCluster, mirror: int | None = None, mirror_share: float = 0.0
) -> None:
    await cluster.get_backend().set_traffic(api, weights, mirror, mirror_share)


@task(task_run_name="{api} r{revision}: down to {replicas}", **INFRA_RETRIES)
async def scale_down(api: str, revision: int, replicas: int, cluster: CortexCluster, arm: bool = False) -> None:
    """Drain and stop replicas of an old version (the backend takes them out of routing first)."""
    await cluster.get_backend().scale_version(api, revision, replicas, arm)


@task(task_run_name="smoke test {api} r{revision}", **INFRA_RETRIES)
async def smoke_test(api: str, revision: int, cluster: CortexCluster, payload: object | None) -> None:
    """Ask the new version directly, before it has any traffic: readiness, and the payload if given."""
    async with cluster.get_backend() as backend:
        checks = [None] if payload is None else [None, payload]
        for check in checks:
            try:
                code, body = await backend.probe(api, revision, check)
            except BackendError as exc:
                version = _version(await _status(backend, api), revision)
                if version is not None and version.restarts > 0:  # the replica died under the probe
                    raise RolloutFailed(f"{api}: a replica of revision {revision} crashed: {version.message}") from exc
                if exc.transient:
                    raise  # e.g. no replica ready at this instant: the task retries
                raise RolloutFailed(f"{api}: smoke test of revision {revision} failed: {exc}") from exc
            if code >= 400:
                raise RolloutFailed(f"{api}: smoke test of revision {revision} got HTTP {code}: {body[:300]}")


async def _move_traffic(api: str, backend: Backend, cluster: CortexCluster, serving: set[int]) -> None:
    """Traffic in proportion to ready replicas of the versions allowed to serve."""
    ready = {rev: n for rev, n in (await _ready_counts(backend, api)).items() if rev in serving}
    if sum(ready.values()) > 0:
        await shift_traffic(api, traffic_weights(ready), cluster)


@task(task_run_name="roll {api.name}")
async def roll(
    api: RealtimeAPI,
    decided: DeployPlan,
    cluster: CortexCluster,
    deadline_seconds: float,
    smoke_payload: object | None,
) -> list[str]:
    """Bring the plan's revision to its replica count and the older versions to zero; the timeline."""
    logger = get_run_logger()
    async with cluster.get_backend() as backend:
        timeline = Timeline()
        if decided.action is Action.UP_TO_DATE:
            return []
        status = await _status(backend, api.name)
        new = _version(status, decided.revision)
        old = {v.revision: v.desired for v in status.versions if v.revision != decided.revision} if status else {}
        surge, unavailable = api.update_strategy.resolve(decided.replicas)
        steps = rolling_steps(
            desired=decided.replicas, old=sum(old.values()), new=new.desired if new else 0, surge=surge,
            unavailable=unavailable,
        )  # fmt: skip
        deadline = time.time() + deadline_seconds
        tested = decided.action is Action.IN_PLACE or (new is not None and new.weight > 0)
        progress = await acreate_progress_artifact(0.0, description=f"rollout of {api.name} r{decided.revision}")
        _emit("cortex.api.rollout.started", api.name, decided, {"steps": len(steps), "from": sorted(old)})
        timeline.add(f"r{decided.revision}: {len(steps)} steps (surge {surge}, unavailable {unavailable}), old {old}")
        try:
            for index, step in enumerate(steps, start=1):
                if new is None or step.new != new.desired:
                    waited = await scale_up(api.name, decided.revision, step.new, cluster, deadline)
                    timeline.add(f"r{decided.revision}: {step.new} ready ({waited} ms)")
                    if not tested:
                        await smoke_test(api.name, decided.revision, cluster, smoke_payload)
                        timeline.add(f"r{decided.revision}: smoke test passed")
                        tested = True
                    await _move_traffic(api.name, backend, cluster, {decided.revision, *old})
                if step.old != sum(old.values()):
                    targets = shrink_oldest(old, step.old)
                    serving = {decided.revision, *(rev for rev, n in targets.items() if n > 0)}
                    await _move_traffic(api.name, backend, cluster, serving)
                    for rev in sorted(targets):
                        if targets[rev] != old[rev]:
                            await scale_down(api.name, rev, targets[rev], cluster)
                            timeline.add(f"r{rev}: drained and stopped down to {targets[rev]}")
                    old = targets
                new = _version(await _status(backend, api.name), decided.revision)
                await aupdate_progress_artifact(progress, 100.0 * index / len(steps))
            await _move_traffic(api.name, backend, cluster, {decided.revision})
        except Exception as exc:  # whatever stopped the rollout, the traffic goes back
            logger.error("%s", exc)
            timeline.add(f"aborted: {exc}")
            await roll_back(api.name, decided, cluster, timeline)
            _emit("cortex.api.rolled-back", api.name, decided, {"reason": str(exc), "to": sorted(old)})
            raise RolloutFailed(f"{exc} (rolled back)\n" + "\n".join(timeline.lines())) from exc
        await aupdate_progress_artifact(progress, 100.0)
        return timeline.lines()


async def roll_back(api: str, decided: DeployPlan, cluster: CortexCluster, timeline: Timeline) -> None:
    """Give the older versions back their replicas (waiting until ready) and all the traffic, then drain
    and remove the new version. A new API has nothing to return to: it is removed, as if never deployed."""
    async with cluster.get_backend() as backend:
        status = await _status(backend, api)
        originals = {rev: n for rev, n in _original_replicas(status, decided).items() if rev != decided.revision}
        for rev, replicas in originals.items():
            await scale_up(api, rev, replicas, cluster, time.time() + ROLLBACK_DEADLINE_SECONDS, new=False)
            timeline.add(f"r{rev}: back to {replicas} ready")
        if originals:
            await _move_traffic(api, backend, cluster, set(originals))
            await backend.remove_version(api, decided.revision, Outcome.FAILED)
        else:
            await backend.delete_api(api)
        timeline.add(f"r{decided.revision}: removed; traffic back on {sorted(originals) or 'nothing'}")


def _original_replicas(status: object, decided: DeployPlan) -> dict[int, int]:
    """What the older versions ran before this rollout: the newest gets the plan's count back, others
    (leftovers of earlier rollouts) keep theirs."""
    versions = getattr(status, "versions", None) or []
    older = sorted(v.revision for v in versions if v.revision in decided.previous)
    if not older:
        return {}
    counts = {v.revision: v.desired for v in versions if v.revision in older}
    counts[older[-1]] = max(counts[older[-1]], decided.replicas)
    return counts
