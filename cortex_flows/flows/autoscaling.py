"""The setup-autoscaling flow: apply a project's autoscaling settings to its running APIs in place (no
rollout, no restart) and size the cluster's AWS node group for them.

Everything is checked before anything changes: each API must be deployed with the same package and pod
settings (else: run `deploy`), the node group must exist, and its need must fit the block's `max_nodes`.
Then the APIs' settings are applied in place, the group's min/max (and desired, when outside them) and
mixed-instances policy are set, and a report shows the group before and after, the arithmetic and the
hourly cost estimate.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event

from cortex_flows.autoscaling.capacity import CapacityPlan, HourlyCost, arithmetic, format_cost
from cortex_flows.aws.autoscaling import NodeGroup
from cortex_flows.blocks import CortexCluster
from cortex_flows.rollout.plan import Action, DeployPlan
from cortex_flows.serving.config import PackageRef
from cortex_flows.spec import ProjectSpec, RealtimeAPI
from cortex_flows.tasks.autoscaling import (
    check_in_place,
    describe_node_group,
    resize_node_group,
    running_replicas,
    size_node_group,
)
from cortex_flows.tasks.clusters import load_cluster
from cortex_flows.tasks.deploy import apply, build, load_project, plan, store
from cortex_flows.tasks.rollout import scale_down, scale_up


class UnknownApi(ValueError):
    """An API named in `apis` is not in the project's spec."""


@flow(name="setup-autoscaling", flow_run_name="setup-autoscaling {path}", log_prints=True)
def setup_autoscaling(
    path: str = ".", cluster: str | None = None, apis: list[str] | None = None
) -> dict[str, Any]:
    """Apply the spec's autoscaling settings to running APIs in place and size the node group for them.

    Args:
        path: Project directory holding `cortex.yaml`, or the spec file itself.
        cluster: Name of a `CortexCluster` block; the local agent when omitted. When the block names a
            `node_group`, its EC2 Auto Scaling group is sized for the APIs (credentials from the block's
            `aws_credentials` AwsCredentials block).
        apis: Names of the APIs to apply and size for (default: every API of the project). The node group
            is sized for these APIs only, so name all that share it.

    Returns:
        `apis`: API name -> action ("in-place" or "up-to-date"), revision, min and max replicas;
        `node_group`: None, or the group's name, bounds before and after, nodes needed and hourly cost.
    """
    target = load_cluster(cluster)
    project = load_project(path)
    selected = _select(project, apis)
    package = store(build(project), target)
    backend = target.get_backend()
    with ExitStack() as held:
        for name in sorted(api.name for api in selected):  # one order everywhere: no deadlocks
            held.enter_context(backend.hold(name, wait=True, what=f"setup-autoscaling of {name}"))
        plans = {api.name: plan.submit(api, package, target).result() for api in selected}
        for api in selected:
            check_in_place(api, plans[api.name], path)
        group = capacity = None
        if target.node_group:
            group = describe_node_group(target)
            capacity = size_node_group(selected, target, group)
        for api in selected:
            _apply_in_place(api, package, plans[api.name], target)
        after = resize_node_group(target, capacity, group) if capacity and group else None

    _emit(selected, plans, group, after)
    create_markdown_artifact(
        key="setup-autoscaling-report",
        markdown=_report(project, selected, plans, target, group, capacity, after),
        description="cortex-flows setup-autoscaling report",
    )
    return {
        "apis": {
            api.name: {
                "action": str(plans[api.name].action),
                "revision": plans[api.name].revision,
                "min_replicas": api.autoscaling.min_replicas,
                "max_replicas": api.autoscaling.max_replicas,
            }
            for api in selected
        },
        "node_group": _group_summary(group, capacity, after),
    }


def _select(project: ProjectSpec, names: list[str] | None) -> list[RealtimeAPI]:
    if not names:
        return list(project.realtime_apis)
    known = {api.name: api for api in project.realtime_apis}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UnknownApi(
            f"no API named {', '.join(map(repr, unknown))} in {project.file} (it has "
            f"{', '.join(sorted(known))})"
        )
    return [known[n] for n in dict.fromkeys(names)]


def _apply_in_place(
    api: RealtimeAPI, package: PackageRef, decided: DeployPlan, cluster: CortexCluster
) -> None:
    """Write the new settings onto the running version; if its replica count falls outside the new
    [min, max], scale it into them (replicas that stay are never restarted)."""
    if decided.action is Action.UP_TO_DATE:
        get_run_logger().info("%s: up to date", api.name)
        return
    desired = running_replicas.submit(api.name, decided.revision, cluster).result()
    apply.submit(api, package, decided, cluster).result()
    if desired is None or desired == decided.replicas:
        return
    if decided.replicas > desired:
        deadline = time.time() + api.update_strategy.progress_deadline_seconds
        scale_up.submit(api.name, decided.revision, decided.replicas, cluster, deadline, new=False).result()
    else:
        scale_down.submit(api.name, decided.revision, decided.replicas, cluster).result()


def _emit(
    apis: list[RealtimeAPI], plans: dict[str, DeployPlan], before: NodeGroup | None, after: NodeGroup | None
) -> None:
    for api in apis:
        decided = plans[api.name]
        if decided.action is Action.IN_PLACE:
            emit_event(
                event="cortex.api.autoscaling.applied",
                resource={"prefect.resource.id": f"cortex.api.{api.name}", "prefect.resource.name": api.name},
                payload={
                    "revision": decided.revision,
                    "min_replicas": api.autoscaling.min_replicas,
                    "max_replicas": api.autoscaling.max_replicas,
                },
            )
    if before and after:
        emit_event(
            event="cortex.node-group.resized",
            resource={
                "prefect.resource.id": f"cortex.node-group.{after.name}",
                "prefect.resource.name": after.name,
            },
            payload={"before": _bounds(before), "after": _bounds(after)},
        )


def _bounds(group: NodeGroup) -> dict[str, int]:
    return {"min": group.min_size, "max": group.max_size, "desired": group.desired}


def _group_summary(group: NodeGroup | None, capacity: CapacityPlan | None, after: NodeGroup | None) -> Any:
    if group is None or capacity is None or after is None:
        return None
    return {
        "name": group.name,
        "before": _bounds(group),
        "after": _bounds(after),
        "nodes_at_min": capacity.need.nodes_at_min,
        "nodes_at_max": capacity.need.nodes_at_max,
        "cost_per_hour": {"at_min": capacity.at_min.total, "at_max": capacity.at_max.total},
    }


def _report(
    project: ProjectSpec,
    apis: list[RealtimeAPI],
    plans: dict[str, DeployPlan],
    cluster: CortexCluster,
    before: NodeGroup | None,
    capacity: CapacityPlan | None,
    after: NodeGroup | None,
) -> str:
    lines = [
        f"# Autoscaling setup of `{project.file}`",
        "",
        "| API | action | revision | min replicas | max replicas | cpu | mem | gpu |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for api in apis:
        d, c = plans[api.name], api.compute
        lines.append(
            f"| {api.name} | {d.action} | {d.revision} | {api.autoscaling.min_replicas} | "
            f"{api.autoscaling.max_replicas} | {c.cpu} | {c.mem or '-'} | {c.gpu} |"
        )
    if before is None or capacity is None or after is None:
        lines += ["", "No node group is configured (CortexCluster `node_group`): nothing was sized."]
        return "\n".join(lines)
    lines += [
        "",
        f"## Node group `{after.name}` ({cluster.instance_type})",
        "",
        "| | min | max | desired | instances | on-demand base | on-demand % above base | instance types |",
        "|---|---|---|---|---|---|---|---|",
        _group_row("before", before),
        _group_row("after", after),
        "",
        "## Arithmetic",
        "",
        "```",
        *arithmetic(capacity),
        "```",
        "",
        "## Hourly cost estimate (prices from the block; nothing fetched)",
        "",
        "| | nodes | on-demand | spot | on-demand price | spot price | per hour |",
        "|---|---|---|---|---|---|---|",
        _cost_row("at min", capacity.at_min),
        _cost_row("at max", capacity.at_max),
    ]
    return "\n".join(lines)


def _group_row(label: str, g: NodeGroup) -> str:
    base = "-" if g.on_demand_base_capacity is None else str(g.on_demand_base_capacity)
    pct = "-" if g.on_demand_percentage_above_base is None else f"{g.on_demand_percentage_above_base}%"
    types = ", ".join(g.instance_types) or "-"
    return (
        f"| {label} | {g.min_size} | {g.max_size} | {g.desired} | {g.instances} | {base} | {pct} | {types} |"
    )


def _cost_row(label: str, cost: HourlyCost) -> str:
    s, p = cost.split, cost.prices
    od = "-" if p.on_demand is None else f"${p.on_demand:g}"
    sp = "-" if p.spot is None else f"${p.spot:g}"
    return f"| {label} | {s.nodes} | {s.on_demand} | {s.spot} | {od} | {sp} | {format_cost(cost.total)} |"
