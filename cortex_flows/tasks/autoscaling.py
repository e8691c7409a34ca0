"""Tasks of the setup-autoscaling flow: check that a spec change is in place, size the node group, and
read and update its EC2 Auto Scaling group through the cluster's AwsCredentials block (loaded by name
here, never passed as a parameter). AWS calls retry throttling and 5xx with the infrastructure policy."""

from __future__ import annotations

from botocore.client import BaseClient
from prefect import get_run_logger, task

from cortex_flows.autoscaling.capacity import (
    ALL_ON_DEMAND,
    ApiDemand,
    CapacityPlan,
    GroupSize,
    InstanceShape,
    Prices,
    PurchasePolicy,
    Resources,
    plan_capacity,
)
from cortex_flows.aws.autoscaling import (
    NodeGroup,
    autoscaling_client,
    describe_group,
    mixed_instances_policy,
    update_group,
)
from cortex_flows.blocks import CortexCluster
from cortex_flows.rollout.plan import Action, DeployPlan
from cortex_flows.spec import RealtimeAPI
from cortex_flows.spec.quantities import cpu_millicores, memory_bytes
from cortex_flows.tasks.retry import INFRA_RETRIES

NODE_SHAPE_FIELDS = ("instance_type", "instance_cpu", "instance_memory")


class NeedsDeploy(Exception):
    """The spec asks for more than an in-place change: only the deploy flow may do it."""


class NodeGroupConfigError(ValueError):
    """The CortexCluster block names a node group but does not describe its nodes."""


def check_in_place(api: RealtimeAPI, decided: DeployPlan, path: str) -> None:
    """Setup-autoscaling changes what applies in place (autoscaling, update strategy, networking) and
    nothing else; any other plan is a deploy's job."""
    if decided.action is Action.CREATE:
        raise NeedsDeploy(
            f"API {api.name!r} is not deployed on this cluster: run `cortex-flows deploy {path}` first"
        )
    if decided.action is Action.ROLL:
        raise NeedsDeploy(
            f"API {api.name!r}: the package or pod settings (handler, model, config, env, dependencies, compute, "
            f"pod) differ from the running version, which needs a rolling update: run `cortex-flows deploy {path}`"
        )
    if decided.previous:
        raise NeedsDeploy(
            f"API {api.name!r} has an unfinished rollout (revisions {sorted(decided.previous)} still live): run "
            f"`cortex-flows deploy {path}` to finish it first"
        )


def autoscaling_client_for(cluster: CortexCluster) -> BaseClient:
    """An autoscaling client from the cluster's AwsCredentials block (else boto3's default chain)."""
    if cluster.aws_credentials is None:
        return autoscaling_client()
    from prefect_aws import AwsCredentials

    creds = AwsCredentials.load(cluster.aws_credentials, _sync=True)
    params = creds.aws_client_parameters.get_params_override() if creds.aws_client_parameters else {}
    return autoscaling_client(creds.get_boto3_session(), region=creds.region_name, **params)


def instance_shape(cluster: CortexCluster) -> InstanceShape:
    """One node of the group as the block describes it."""
    missing = [name for name in NODE_SHAPE_FIELDS if getattr(cluster, name) in (None, "")]
    if missing:
        raise NodeGroupConfigError(
            f"the CortexCluster block names node group {cluster.node_group!r} but not {', '.join(missing)}: "
            "set them (e.g. instance_type m5.large, instance_cpu 2, instance_memory 8Gi) to size it"
        )
    assert cluster.instance_type and cluster.instance_cpu and cluster.instance_memory  # for the type checker
    return InstanceShape(
        instance_type=cluster.instance_type,
        capacity=Resources(
            cpu_millicores(cluster.instance_cpu), memory_bytes(cluster.instance_memory), cluster.instance_gpu
        ),
        reserve=Resources(
            cpu_millicores(cluster.node_reserved_cpu), memory_bytes(cluster.node_reserved_memory), 0
        ),
    )


def purchase_policy(cluster: CortexCluster, group: NodeGroup) -> PurchasePolicy:
    """The block's split when it asks for spot; else the group's own policy, if it has one; else on-demand."""
    if cluster.spot:
        return PurchasePolicy(cluster.on_demand_base_capacity, cluster.on_demand_percentage_above_base)
    if group.on_demand_base_capacity is not None and group.on_demand_percentage_above_base is not None:
        return PurchasePolicy(group.on_demand_base_capacity, group.on_demand_percentage_above_base)
    return ALL_ON_DEMAND


def demand(api: RealtimeAPI) -> ApiDemand:
    compute = api.compute
    return ApiDemand(
        name=api.name,
        min_replicas=api.autoscaling.min_replicas,
        max_replicas=api.autoscaling.max_replicas,
        request=Resources(compute.cpu_millicores, compute.mem_bytes or 0, compute.gpu),
    )


@task(task_run_name="replicas of {api} r{revision}", **INFRA_RETRIES)
async def running_replicas(api: str, revision: int, cluster: CortexCluster) -> int | None:
    """The desired replicas of a running version (None if it is not running)."""
    status = await cluster.get_backend().status(api)
    version = next((v for v in status.versions if v.revision == revision), None) if status else None
    return version.desired if version else None


@task(task_run_name="describe node group {cluster.node_group}", **INFRA_RETRIES)
def describe_node_group(cluster: CortexCluster) -> NodeGroup:
    assert cluster.node_group
    group = describe_group(autoscaling_client_for(cluster), cluster.node_group)
    get_run_logger().info(
        "%s: min %d, max %d, desired %d, %d instance(s)",
        group.name,
        group.min_size,
        group.max_size,
        group.desired,
        group.instances,
    )
    return group


@task(task_run_name="size node group {cluster.node_group}")
def size_node_group(apis: list[RealtimeAPI], cluster: CortexCluster, group: NodeGroup) -> CapacityPlan:
    """The arithmetic (pure): nodes at min/max replicas, the group's new bounds, split and cost."""
    plan = plan_capacity(
        [demand(api) for api in apis],
        instance_shape(cluster),
        GroupSize(group.min_size, group.max_size, group.desired),
        policy=purchase_policy(cluster, group),
        prices=Prices(cluster.on_demand_price, cluster.spot_price),
        max_nodes=cluster.max_nodes,
    )
    get_run_logger().info(
        "%s: needs %d node(s) at max replicas, %d at min",
        group.name,
        plan.need.nodes_at_max,
        plan.need.nodes_at_min,
    )
    return plan


@task(task_run_name="resize node group {cluster.node_group}", **INFRA_RETRIES)
def resize_node_group(cluster: CortexCluster, plan: CapacityPlan, group: NodeGroup) -> NodeGroup:
    """Set the group's min/max (desired only when outside them) and, with spot, its mixed-instances policy;
    returns the group as read back."""
    client = autoscaling_client_for(cluster)
    policy = None
    if cluster.spot:
        assert cluster.instance_type
        policy = mixed_instances_policy(
            group,
            [cluster.instance_type, *cluster.spot_instance_types],
            cluster.on_demand_base_capacity,
            cluster.on_demand_percentage_above_base,
        )
    target = plan.target
    update_group(
        client,
        group.name,
        min_size=target.min_size,
        max_size=target.max_size,
        desired=target.desired,
        policy=policy,
    )
    after = describe_group(client, group.name)
    get_run_logger().info(
        "%s: min %d -> %d, max %d -> %d, desired %d -> %d",
        group.name,
        group.min_size,
        after.min_size,
        group.max_size,
        after.max_size,
        group.desired,
        after.desired,
    )
    return after
