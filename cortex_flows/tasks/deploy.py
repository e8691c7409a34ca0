"""Tasks of the deploy flow: thin, retryable wrappers around packaging, planning and the backend."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import httpx
from prefect import get_run_logger, task

from cortex_flows.backends.base import BackendError, Outcome, VersionStatus
from cortex_flows.backends.versions import version_spec
from cortex_flows.blocks import CortexCluster
from cortex_flows.packaging.build import BuiltPackage, build_package
from cortex_flows.packaging.store import store_from_uri
from cortex_flows.rollout.plan import Action, DeployPlan, LiveVersion, plan_deploy
from cortex_flows.serving.config import PackageRef
from cortex_flows.spec import ProjectSpec, RealtimeAPI, load_spec, pod_hash, spec_hash
from cortex_flows.tasks.clusters import replica_aws_access, s3_client
from cortex_flows.tasks.retry import INFRA_RETRIES

CRASH_LOOP_RESTARTS = 3


class RolloutFailed(Exception):
    """The new version could not serve; what ran before keeps serving."""


@task(task_run_name="load spec")
def load_project(path: str) -> ProjectSpec:
    """Validate the spec; say once what an older Cortex spec holds that does not apply here."""
    project = load_spec(path)
    for notice in project.notices:
        get_run_logger().warning("%s: %s", notice.path, notice.message)
    return project


@task(task_run_name="build package")
def build(project: ProjectSpec) -> BuiltPackage:
    """Package the project without its spec file: spec-only changes must not change the package id."""
    spec_file = project.file.resolve().relative_to(project.project_dir.resolve()).as_posix()
    out = Path(tempfile.mkdtemp(prefix="cortex-flows-build-"))
    return build_package(project.project_dir, out, exclude=[f"/{spec_file}"])


@task(task_run_name="store package", **INFRA_RETRIES)
def store(built: BuiltPackage, cluster: CortexCluster) -> PackageRef:
    uri = cluster.store_uri()
    client = s3_client(cluster) if uri.startswith("s3://") else None
    package_uri, uploaded = store_from_uri(uri, client).put(built)
    get_run_logger().info(
        "package %s %s (%d files, %d bytes)", built.sha256[:12], "uploaded" if uploaded else "already stored",
        built.files, built.size,
    )  # fmt: skip
    return PackageRef(uri=package_uri, sha256=built.sha256)


@task(task_run_name="plan {api.name}", **INFRA_RETRIES)
async def plan(api: RealtimeAPI, package: PackageRef, cluster: CortexCluster) -> DeployPlan:
    backend = cluster.get_backend()
    status = await backend.status(api.name)
    live = [LiveVersion(v.revision, v.spec_hash, v.pod_hash, v.desired) for v in (status.versions if status else [])]
    history = await backend.history(api.name) if status else []
    decided = plan_deploy(
        spec_hash=spec_hash(api, package.sha256),
        pod_hash=pod_hash(api, package.sha256),
        live=live,
        last_revision=max((r.revision for r in history), default=0),
        init_replicas=api.init_replicas,
        min_replicas=api.autoscaling.min_replicas,
        max_replicas=api.autoscaling.max_replicas,
    )
    get_run_logger().info("%s: %s -> revision %d with %d replica(s)", api.name, decided.action, decided.revision,
                          decided.replicas)  # fmt: skip
    return decided


@task(task_run_name="prepare {api.name}", **INFRA_RETRIES)
async def prepare(
    api: RealtimeAPI, package: PackageRef, decided: DeployPlan, cluster: CortexCluster, project_dir: Path
) -> None:
    """Install the package's requirements where replicas will run, before anything changes: a requirement
    that cannot be installed fails here, with pip's message, and traffic never moves."""
    if decided.action not in (Action.CREATE, Action.ROLL):
        return  # the replicas that serve already have what they need
    if not (project_dir / api.dependencies.pip).is_file():
        return  # nothing to install (a file absent from the project is absent from its package)
    s3, secret_env = replica_aws_access(cluster)
    version = version_spec(api, package, decided.revision, s3)
    get_run_logger().info("%s: %s", api.name, await cluster.get_backend().prepare_version(api.name, version, secret_env))


@task(task_run_name="apply {api.name}", **INFRA_RETRIES)
async def apply(api: RealtimeAPI, package: PackageRef, decided: DeployPlan, cluster: CortexCluster) -> None:
    if decided.action is Action.UP_TO_DATE:
        return
    s3, secret_env = replica_aws_access(cluster)
    version = version_spec(api, package, decided.revision, s3)
    await cluster.get_backend().apply_version(api.name, version, decided.replicas, secret_env)


async def _abandon(cluster: CortexCluster, api: str, decided: DeployPlan) -> None:
    """Put traffic back on what served before and remove the new version."""
    if decided.action is Action.ROLL and decided.previous:
        backend = cluster.get_backend()
        await backend.set_traffic(api, {decided.previous[-1]: 100})
        await backend.remove_version(api, decided.revision, Outcome.FAILED)


@task(task_run_name="wait for {api_name}")
async def wait_ready(api_name: str, decided: DeployPlan, cluster: CortexCluster, timeout: float) -> VersionStatus:
    """Poll until every replica of the new version is ready; give up on the deadline or a crash loop."""
    backend = cluster.get_backend()
    deadline = time.monotonic() + timeout
    while True:
        status = await backend.status(api_name)
        version = next((v for v in status.versions if v.revision == decided.revision), None) if status else None
        if version is None:
            raise RolloutFailed(f"{api_name}: revision {decided.revision} disappeared")
        if version.ready >= version.desired:
            return version
        if version.restarts >= CRASH_LOOP_RESTARTS:
            reason = f"{api_name}: replicas crash-looping ({version.restarts} restarts): {version.message}"
        elif time.monotonic() > deadline:
            reason = f"{api_name}: not ready after {timeout:.0f}s ({version.ready}/{version.desired} ready)"
        else:
            await asyncio.sleep(0.1)
            continue
        await _abandon(cluster, api_name, decided)
        raise RolloutFailed(reason)


@task(task_run_name="smoke test {api.name}", **INFRA_RETRIES)
async def smoke_test(api: RealtimeAPI, decided: DeployPlan, cluster: CortexCluster, payload: object | None) -> str:
    """Send traffic to the new version through the gateway: its readiness, and the payload if given."""
    backend = cluster.get_backend()
    if decided.action is Action.ROLL:
        await backend.set_traffic(api.name, {decided.revision: 100})
    url = backend.endpoint_url(api.endpoint)
    async with httpx.AsyncClient(timeout=30.0) as client:
        checks = [client.get(f"{url}/readyz")]
        if payload is not None:
            checks.append(client.post(url, json=payload))
        responses = await asyncio.gather(*checks)
    bad = [r for r in responses if r.status_code >= 400]
    if bad:
        await _abandon(cluster, api.name, decided)
        if any(r.status_code >= 500 for r in bad):
            raise BackendError(f"{api.name}: smoke test got HTTP {bad[0].status_code}: {bad[0].text[:200]}")
        raise RolloutFailed(f"{api.name}: smoke test got HTTP {bad[0].status_code}: {bad[0].text[:200]}")
    return url


@task(task_run_name="finish {api_name}", **INFRA_RETRIES)
async def finish(api_name: str, decided: DeployPlan, cluster: CortexCluster) -> None:
    """Drain and remove what the new version replaced, and record it as live."""
    backend = cluster.get_backend()
    for revision in decided.previous:
        await backend.remove_version(api_name, revision, Outcome.SUPERSEDED)
    await backend.record_outcome(api_name, decided.revision, Outcome.LIVE)
