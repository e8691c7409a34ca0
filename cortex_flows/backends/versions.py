"""Turn specs into what a backend runs: an API's spec and stored package into a VersionSpec, a
TrafficSplitter's spec into a SplitterSpec."""

from __future__ import annotations

from cortex_flows.backends.base import SplitterSpec, VersionSpec
from cortex_flows.rollout.plan import DeployPlan
from cortex_flows.serving.config import HandlerRef, PackageRef, ReplicaConfig, S3Access
from cortex_flows.spec import RealtimeAPI, TrafficSplitter, pod_hash, spec_hash, splitter_spec_hash


def version_spec(
    api: RealtimeAPI, package: PackageRef, plan: DeployPlan, s3: S3Access | None = None, keys_digest: str = ""
) -> VersionSpec:
    """The version a deploy plan asks for; its hashes include the plan's refresh token and the digest of
    the API's keys (the keys themselves travel only as secret env)."""
    revision = plan.revision
    replica = ReplicaConfig(
        api_name=api.name,
        revision=revision,
        handler=HandlerRef(
            type=api.handler.type,
            path=api.handler.path,
            class_name=api.handler.class_name,
            python_path=api.handler.python_path,
        ),
        package=package,
        s3=s3,
        model_path=api.model_path,
        config=api.config,
        env=api.env,
        requirements=api.dependencies.pip,
        max_concurrency=api.pod.max_concurrency,
        max_queue_length=api.pod.max_queue_length,
    )
    return VersionSpec(
        revision=revision,
        endpoint=api.endpoint,
        package_id=package.sha256,
        spec_hash=spec_hash(api, package.sha256, plan.restart, keys_digest),
        pod_hash=pod_hash(api, package.sha256, plan.restart, keys_digest),
        replica=replica,
        spec=api.model_dump(mode="json"),
        restart=plan.restart,
        target_replicas=plan.replicas,
    )


def splitter_spec(splitter: TrafficSplitter) -> SplitterSpec:
    shadow = splitter.shadow
    return SplitterSpec(
        name=splitter.name,
        endpoint=splitter.endpoint,
        weights=splitter.weights,
        shadow=shadow.name if shadow else None,
        shadow_percent=shadow.weight if shadow else 0,
        spec_hash=splitter_spec_hash(splitter),
    )
