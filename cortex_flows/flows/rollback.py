"""Rollback and refresh: rolling updates to a version that ran before, or to a restart of what runs.

Both take the zero-downtime path of a deploy; the version comes from the backend's revision history,
so they need no project directory.
"""

from __future__ import annotations

import secrets

from prefect import flow, task

from cortex_flows.backends.base import BackendError, Outcome, VersionSpec
from cortex_flows.blocks import CortexCluster
from cortex_flows.flows.rollouts import Rollout, run_rollouts
from cortex_flows.spec import RealtimeAPI
from cortex_flows.tasks.clusters import load_cluster
from cortex_flows.tasks.retry import INFRA_RETRIES

ROLLBACK_TARGETS = (Outcome.LIVE, Outcome.SUPERSEDED, Outcome.ROLLED_BACK)


@task(task_run_name="find revision of {name}", **INFRA_RETRIES)
async def find_version(name: str, cluster: CortexCluster, revision: int | None, current: bool) -> VersionSpec:
    """The version to roll to: `revision`, else the current one (`current`), else the newest revision
    before the current one that served."""
    backend = cluster.get_backend()
    status = await backend.status(name)
    if status is None or status.current is None:
        raise BackendError(f"API {name!r} is not deployed")
    history = await backend.history(name)
    live = status.current.revision
    if revision is None:
        revision = (
            live
            if current
            else next(
                (r.revision for r in history if r.revision < live and r.outcome in ROLLBACK_TARGETS), None
            )
        )
        if revision is None:
            raise BackendError(f"{name}: no earlier revision that served to roll back to")
    entry = next((r for r in history if r.revision == revision), None)
    if entry is None or entry.version is None:
        kept = ", ".join(str(r.revision) for r in history if r.version is not None) or "none"
        raise BackendError(f"{name}: revision {revision} is not in the history (kept: {kept})")
    return entry.version


def _rollout(version: VersionSpec, restart: str | None) -> Rollout:
    if version.replica.package is None:
        raise BackendError(f"revision {version.revision} has no package to run")
    return Rollout(RealtimeAPI.model_validate(version.spec), version.replica.package, restart)


@flow(name="rollback", flow_run_name="rollback {name}")
def rollback(
    name: str,
    to: int | None = None,
    cluster: str | None = None,
    timeout: float | None = None,
    wait: bool = True,
) -> dict[str, str]:
    """Roll the API back to revision `to` (default: the one before the current), as a new revision."""
    target = load_cluster(cluster)
    version = find_version.submit(name, target, to, current=False).result()
    return run_rollouts("rollback", [_rollout(version, version.restart)], target, project_dir=None,
                        timeout=timeout, smoke_payload=None, wait_for_others=wait, source=f"of {name} to r{version.revision}")  # fmt: skip


@flow(name="refresh", flow_run_name="refresh {name}")
def refresh(
    name: str, cluster: str | None = None, timeout: float | None = None, wait: bool = True
) -> dict[str, str]:
    """Restart every replica of the API by rolling, without a spec change (Cortex's `refresh`)."""
    target = load_cluster(cluster)
    version = find_version.submit(name, target, None, current=True).result()
    return run_rollouts("refresh", [_rollout(version, secrets.token_hex(8))], target, project_dir=None,
                        timeout=timeout, smoke_payload=None, wait_for_others=wait, source=f"of {name}")  # fmt: skip
