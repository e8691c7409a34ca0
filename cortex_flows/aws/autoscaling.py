"""EC2 Auto Scaling calls for a cluster's node group: read its capacity, set min/max/desired and its
mixed-instances (spot) policy.

Clients are made with **no botocore retries** by default: throttling (`Throttling`, `RequestLimitExceeded`,
HTTP 429/5xx) surfaces as a ClientError that `is_transient_aws_error` classifies, so the calling task's
retry policy retries it with backoff, and each attempt is visible in the flow run. A `config` the caller
passes (e.g. from an AwsCredentials block's client parameters) overrides this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import boto3
from botocore.client import BaseClient
from botocore.config import Config

NO_RETRY_CONFIG = Config(retries={"mode": "standard", "total_max_attempts": 1}, connect_timeout=5, read_timeout=30)
SPOT_ALLOCATION_STRATEGY = "price-capacity-optimized"


class NodeGroupNotFound(LookupError):
    """The named Auto Scaling group does not exist (in this account and region)."""


class NodeGroupUnsupported(ValueError):
    """The group cannot take the requested change (e.g. spot on a launch-configuration group)."""


@dataclass(frozen=True)
class NodeGroup:
    """What setup-autoscaling reads from a group: its bounds, instances and purchase options."""

    name: str
    min_size: int
    max_size: int
    desired: int
    instances: int
    launch_template: dict[str, str] | None  # LaunchTemplateId/Name and Version, however the group names it
    launch_configuration: str | None
    on_demand_base_capacity: int | None  # None: no mixed-instances policy
    on_demand_percentage_above_base: int | None
    instance_types: tuple[str, ...]  # the policy's overrides, else the launch template's type is implied


def autoscaling_client(
    session: boto3.session.Session | None = None,
    *,
    region: str | None = None,
    config: Config | None = None,
    **overrides: Any,
) -> BaseClient:
    """An autoscaling client; `overrides` are client arguments such as endpoint_url, verify, use_ssl."""
    session = session or boto3.session.Session()
    merged = NO_RETRY_CONFIG.merge(config) if config is not None else NO_RETRY_CONFIG
    return session.client("autoscaling", region_name=region, config=merged, **overrides)


def describe_group(client: BaseClient, name: str) -> NodeGroup:
    """The group named `name`; NodeGroupNotFound (naming it and the region) when there is none."""
    groups = client.describe_auto_scaling_groups(AutoScalingGroupNames=[name]).get("AutoScalingGroups", [])
    group = next((g for g in groups if g.get("AutoScalingGroupName") == name), None)
    if group is None:
        raise NodeGroupNotFound(
            f"Auto Scaling group {name!r} not found in region {client.meta.region_name} (the CortexCluster "
            "block's node_group): check the name, or the region and account of its AwsCredentials block"
        )
    policy = group.get("MixedInstancesPolicy") or {}
    distribution = policy.get("InstancesDistribution") or {}
    template = (policy.get("LaunchTemplate") or {}).get("LaunchTemplateSpecification") or group.get(
        "LaunchTemplate"
    )
    overrides = (policy.get("LaunchTemplate") or {}).get("Overrides") or []
    return NodeGroup(
        name=name,
        min_size=group["MinSize"],
        max_size=group["MaxSize"],
        desired=group["DesiredCapacity"],
        instances=len(group.get("Instances") or []),
        launch_template=dict(template) if template else None,
        launch_configuration=group.get("LaunchConfigurationName"),
        on_demand_base_capacity=distribution.get("OnDemandBaseCapacity", 0) if policy else None,
        on_demand_percentage_above_base=distribution.get("OnDemandPercentageAboveBaseCapacity", 100)
        if policy
        else None,
        instance_types=tuple(o["InstanceType"] for o in overrides if "InstanceType" in o),
    )


def mixed_instances_policy(
    group: NodeGroup,
    instance_types: list[str],
    on_demand_base_capacity: int,
    on_demand_percentage_above_base: int,
) -> dict[str, Any]:
    """A MixedInstancesPolicy on the group's own launch template: on-demand uses the first instance type
    (prioritized), spot any of them (price-capacity-optimized)."""
    if group.launch_template is None:
        raise NodeGroupUnsupported(
            f"Auto Scaling group {group.name!r} uses launch configuration {group.launch_configuration!r}; spot "
            "instances need a mixed-instances policy, which needs a launch template: move the group to one"
        )
    template = group.launch_template
    spec = (
        {"LaunchTemplateId": template["LaunchTemplateId"]}
        if template.get("LaunchTemplateId")
        else {"LaunchTemplateName": template["LaunchTemplateName"]}
    )
    if template.get("Version"):
        spec["Version"] = template["Version"]
    return {
        "LaunchTemplate": {
            "LaunchTemplateSpecification": spec,
            "Overrides": [{"InstanceType": t} for t in dict.fromkeys(instance_types)],
        },
        "InstancesDistribution": {
            "OnDemandAllocationStrategy": "prioritized",
            "OnDemandBaseCapacity": on_demand_base_capacity,
            "OnDemandPercentageAboveBaseCapacity": on_demand_percentage_above_base,
            "SpotAllocationStrategy": SPOT_ALLOCATION_STRATEGY,
        },
    }


def update_group(
    client: BaseClient,
    name: str,
    *,
    min_size: int,
    max_size: int,
    desired: int | None = None,
    policy: dict[str, Any] | None = None,
) -> None:
    """Set the group's bounds (and desired, and the mixed-instances policy, when given). Idempotent."""
    if not 0 <= min_size <= max_size or (desired is not None and not min_size <= desired <= max_size):
        raise ValueError(
            f"need 0 <= min <= desired <= max, got min {min_size}, desired {desired}, max {max_size}"
        )
    request: dict[str, Any] = {"AutoScalingGroupName": name, "MinSize": min_size, "MaxSize": max_size}
    if desired is not None:
        request["DesiredCapacity"] = desired
    if policy is not None:
        request["MixedInstancesPolicy"] = policy
    client.update_auto_scaling_group(**request)
