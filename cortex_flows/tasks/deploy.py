"""Tasks of the deploy flow: thin, retryable wrappers around packaging, planning and the backend."""

from __future__ import annotations

import tempfile
from pathlib import Path

from prefect import get_run_logger, task
from prefect.blocks.system import Secret

from cortex_flows.backends.base import NotFound, Outcome, Revision
from cortex_flows.backends.versions import splitter_spec, version_spec
from cortex_flows.blocks import CortexCluster
from cortex_flows.packaging.build import BuiltPackage, build_package
from cortex_flows.packaging.store import store_from_uri
from cortex_flows.rollout.plan import Action, DeployPlan, LiveVersion, plan_deploy
from cortex_flows.serving.auth import ApiKeysError, api_keys_env, keys_digest, parse_api_keys
from cortex_flows.serving.config import PackageRef
from cortex_flows.spec import (
    Problem,
    ProjectSpec,
    RealtimeAPI,
    SpecError,
    TrafficSplitter,
    load_spec,
    pod_hash,
    spec_hash,
)
from cortex_flows.tasks.clusters import replica_aws_access, s3_client
from cortex_flows.tasks.retry import INFRA_RETRIES


def load_api_keys(api: RealtimeAPI) -> tuple[str, ...]:
    """The API's keys, loaded by name from the Secret block `networking.api_keys` names (none without one).
    Called inside tasks only, so keys never travel as parameters or results; errors name the block, never a key."""
    name = api.networking.api_keys
    if name is None:
        return ()
    try:
        block = Secret.load(name, _sync=True)
    except ValueError:  # Prefect's "Unable to find block document named ..."
        example = f"prefect.blocks.system.Secret(value=['<key>', ...]).save({name!r})"
        raise ApiKeysError(f"no Secret block named {name!r}; save the API's keys in one: {example}") from None
    try:
        return parse_api_keys(block.value.get_secret_value())
    except ApiKeysError as exc:
        raise ApiKeysError(f"the Secret block {name!r} cannot be used: {exc}") from None


def _keys_of(api: RealtimeAPI) -> tuple[str, ...]:
    """`load_api_keys` with the field path in its error (rollback and refresh run without the spec file)."""
    try:
        return load_api_keys(api)
    except ApiKeysError as exc:
        raise ApiKeysError(f"{api.name}.networking.api_keys: {exc}") from None


def _digest(keys: tuple[str, ...]) -> str:
    """What the pod identity covers of the keys ("" without keys, so hashes stay as they were)."""
    return keys_digest(keys) if keys else ""


@task(task_run_name="load spec")
def load_project(path: str) -> ProjectSpec:
    """Validate the spec, and the Secret blocks its APIs take keys from, before anything changes; say once
    what an older Cortex spec holds that does not apply here."""
    project = load_spec(path)
    problems = []
    for api in project.realtime_apis:
        try:
            load_api_keys(api)
        except ApiKeysError as exc:
            problems.append(Problem(f"{api.name}.networking.api_keys", str(exc)))
    if problems:
        raise SpecError(project.file, problems)
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
async def plan(api: RealtimeAPI, package: PackageRef, cluster: CortexCluster, restart: str | None = None) -> DeployPlan:
    """Decide what the deploy does. The pod identity carries the live version's refresh token, so a
    deploy after `refresh` is up to date; `restart` (from `refresh`) sets a new token, forcing a roll."""
    async with cluster.get_backend() as backend:
        status = await backend.status(api.name)
        versions = status.versions if status else []
        live = [LiveVersion(v.revision, v.spec_hash, v.pod_hash, v.desired, v.target) for v in versions]
        history = await backend.history(api.name) if status else []
        newest = max(versions, key=lambda v: v.revision, default=None)
        token = restart if restart is not None else newest.restart if newest else ""
        digest = _digest(_keys_of(api))
        decided = plan_deploy(
            spec_hash=spec_hash(api, package.sha256, token, digest),
            pod_hash=pod_hash(api, package.sha256, token, digest),
            live=live,
            last_revision=max((r.revision for r in history), default=0),
            init_replicas=api.init_replicas,
            min_replicas=api.autoscaling.min_replicas,
            max_replicas=api.autoscaling.max_replicas,
            restart=token,
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
    s3, secret_env = replica_aws_access(cluster)  # not the API keys: installing needs none
    version = version_spec(api, package, decided, s3, _digest(_keys_of(api)))
    get_run_logger().info("%s: %s", api.name, await cluster.get_backend().prepare_version(api.name, version, secret_env))


@task(task_run_name="apply {api.name}", **INFRA_RETRIES)
async def apply(api: RealtimeAPI, package: PackageRef, decided: DeployPlan, cluster: CortexCluster) -> None:
    """Create the plan's version with no replicas (the rollout starts them), or update it in place
    keeping its replicas. The secret env is always given whole (possibly empty), so credentials or keys
    that were removed do not linger where replicas read them."""
    if decided.action is Action.UP_TO_DATE:
        return
    s3, aws_env = replica_aws_access(cluster)
    keys = _keys_of(api)
    secret_env = {**(aws_env or {}), **(api_keys_env(keys) if keys else {})}
    version = version_spec(api, package, decided, s3, _digest(keys))
    async with cluster.get_backend() as backend:
        status = await backend.status(api.name)
        current = next((v for v in status.versions if v.revision == decided.revision), None) if status else None
        await backend.apply_version(api.name, version, current.desired if current else 0, secret_env)


@task(task_run_name="finish {api_name}", **INFRA_RETRIES)
async def finish(api_name: str, decided: DeployPlan, cluster: CortexCluster) -> None:
    """Drain and remove what the new version replaced, and record it as live."""
    async with cluster.get_backend() as backend:
        for revision in decided.previous:
            await backend.remove_version(api_name, revision, Outcome.SUPERSEDED)
        await backend.record_outcome(api_name, decided.revision, Outcome.LIVE)


@task(task_run_name="read history of {api_name}", **INFRA_RETRIES)
async def read_history(api_name: str, cluster: CortexCluster) -> list[Revision]:
    """The API's revision history, newest first (for the revisions table artifact); none if it is not
    deployed (a first deploy that failed before applying)."""
    try:
        return await cluster.get_backend().history(api_name)
    except NotFound:
        return []


@task(task_run_name="check splitter targets", **INFRA_RETRIES)
async def check_splitters(project: ProjectSpec, cluster: CortexCluster) -> None:
    """Before anything changes: every API a splitter names is in the project or already deployed."""
    async with cluster.get_backend() as backend:
        in_file = {api.name for api in project.realtime_apis}
        for splitter in project.splitters:
            for target in splitter.apis:
                if target.name in in_file:
                    continue
                status = await backend.status(target.name)
                if status is None or status.kind != "RealtimeAPI":
                    what = "is not deployed" if status is None else f"is a {status.kind}"
                    raise ValueError(
                        f"{project.file}: {splitter.name}.apis: {target.name!r} {what}; a TrafficSplitter sends traffic "
                        f"only to RealtimeAPIs that are deployed or in the same file"
                    )


@task(task_run_name="route {splitter.name}", **INFRA_RETRIES)
async def route_splitter(splitter: TrafficSplitter, cluster: CortexCluster) -> str:
    """Create or update the splitter's route; returns its URL."""
    async with cluster.get_backend() as backend:
        await backend.apply_splitter(splitter_spec(splitter))
        return backend.endpoint_url(splitter.endpoint)
