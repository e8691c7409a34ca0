"""Node-group sizing: how many instances a set of APIs needs, how a mixed-instances policy splits them into
on-demand and spot, what that costs per hour, and the Auto Scaling group bounds that follow. Pure.

The arithmetic, step by step (every intermediate number is kept, so a report can show it):

1. **Allocatable per node** = the instance type's CPU / memory / GPU minus a per-node reserve. The default
   reserve (250m CPU, 750Mi memory, no GPU) approximates what an EKS node keeps from pods: the kubelet's
   kube-reserved (about 70-80m CPU on 2-4 cores; 255Mi + 11Mi per pod slot, ~575Mi on an m5.large), the
   100Mi hard-eviction threshold, and the per-node daemons aws-node and kube-proxy (~125m CPU), rounded up.
   Override it when your AMI or daemons differ.
2. **Replicas per node**, per API: for each resource the replica requests, `floor(allocatable / request)`;
   the smallest of these wins (the *bound*: the tightest resource). A resource not requested (no `mem`,
   `gpu: 0`) does not limit. A replica that does not fit one node at all is an error.
3. **Nodes**: an API alone needs `ceil(replicas / per node)`. Several APIs are packed together, first-fit
   over nodes, the APIs with the largest share of a node first; for one API this is exactly the ceiling
   above, and it is never more than the APIs' separate counts summed. This runs for every API's
   `min_replicas` (the group's floor) and `max_replicas` (its ceiling).
4. **Purchase split**, as EC2 Auto Scaling applies a mixed-instances policy: the first
   `on_demand_base_capacity` instances are on-demand; of the rest, `on_demand_percentage_above_base` percent
   are on-demand, rounded **up** in favour of on-demand (as AWS rounds); the remainder is spot.
5. **Hourly cost** = on-demand instances x on-demand price + spot instances x spot price, from prices the
   caller gives (nothing is fetched). A missing price makes the estimate unknown, unless no instance needs it.
6. **Group bounds**: min = nodes at min_replicas, max = nodes at max_replicas (an error above the allowed
   `max_nodes`); desired is raised to min when below it, lowered only to the new max when above it (EC2
   Auto Scaling requires min <= desired <= max), and otherwise left to the cluster autoscaler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

DEFAULT_RESERVED_CPU_MILLICORES = 250
DEFAULT_RESERVED_MEM_BYTES = 750 * 1024**2
RESOURCES = ("cpu", "memory", "gpu")


class CapacityError(ValueError):
    """The APIs cannot be placed on the node group as configured (the message says what is needed)."""


@dataclass(frozen=True)
class Resources:
    """An amount of each schedulable resource: CPU in millicores, memory in bytes, whole GPUs."""

    cpu_millicores: int = 0
    mem_bytes: int = 0
    gpu: int = 0

    def get(self, resource: str) -> int:
        return {"cpu": self.cpu_millicores, "memory": self.mem_bytes, "gpu": self.gpu}[resource]

    def __sub__(self, other: Resources) -> Resources:
        return Resources(
            self.cpu_millicores - other.cpu_millicores, self.mem_bytes - other.mem_bytes, self.gpu - other.gpu
        )

    def describe(self) -> str:
        parts = [format_cpu(self.cpu_millicores), format_memory(self.mem_bytes) + " memory"]
        if self.gpu:
            parts.append(f"{self.gpu} GPU")
        return ", ".join(parts)


DEFAULT_RESERVE = Resources(DEFAULT_RESERVED_CPU_MILLICORES, DEFAULT_RESERVED_MEM_BYTES, 0)


@dataclass(frozen=True)
class ApiDemand:
    """One API's replica bounds and what each replica requests (`compute`; memory 0 when not set)."""

    name: str
    min_replicas: int
    max_replicas: int
    request: Resources


@dataclass(frozen=True)
class InstanceShape:
    """An instance type's capacity and the part of it each node keeps from pods."""

    instance_type: str
    capacity: Resources
    reserve: Resources = DEFAULT_RESERVE

    @property
    def allocatable(self) -> Resources:
        return self.capacity - self.reserve


@dataclass(frozen=True)
class ApiFit:
    """How one API's replicas fit a node: per resource, the bound, and the nodes it would need alone."""

    api: ApiDemand
    per_node_by: dict[str, int]  # requested resource -> replicas per node by that resource alone
    per_node: int
    bound: str  # the tightest resource ("cpu", "memory" or "gpu")
    nodes_at_min: int  # ceil(min_replicas / per_node)
    nodes_at_max: int  # ceil(max_replicas / per_node)
    share: float  # the largest fraction of a node one replica takes (packing order)


@dataclass(frozen=True)
class NodeNeed:
    """Nodes the APIs need at their min and max replicas, and how that was worked out."""

    instance: InstanceShape
    allocatable: Resources
    fits: tuple[ApiFit, ...]
    replicas_at_min: int
    replicas_at_max: int
    nodes_at_min: int
    nodes_at_max: int


@dataclass(frozen=True)
class PurchasePolicy:
    """The group's mixed-instances distribution (EC2 Auto Scaling's InstancesDistribution)."""

    on_demand_base_capacity: int = 0
    on_demand_percentage_above_base: int = 100  # 100: all on-demand (no spot)

    def __post_init__(self) -> None:
        if self.on_demand_base_capacity < 0:
            raise CapacityError(f"on_demand_base_capacity must be >= 0, got {self.on_demand_base_capacity}")
        if not 0 <= self.on_demand_percentage_above_base <= 100:
            raise CapacityError(
                f"on_demand_percentage_above_base must be between 0 and 100, got {self.on_demand_percentage_above_base}"
            )


ALL_ON_DEMAND = PurchasePolicy(0, 100)


@dataclass(frozen=True)
class PurchaseSplit:
    """How `nodes` instances divide into on-demand and spot under a policy."""

    nodes: int
    policy: PurchasePolicy
    base: int  # on-demand instances of the base: min(base capacity, nodes)
    above_base: int  # nodes - base
    on_demand_above_base: int  # ceil(above_base x percentage / 100)
    on_demand: int  # base + on_demand_above_base
    spot: int  # nodes - on_demand


@dataclass(frozen=True)
class Prices:
    """Hourly prices of one instance of the node type, as the caller knows them (None: unknown)."""

    on_demand: float | None = None
    spot: float | None = None


@dataclass(frozen=True)
class HourlyCost:
    """The estimate for one split: each part's cost and the total (None when a needed price is unknown)."""

    split: PurchaseSplit
    prices: Prices
    on_demand_cost: float | None
    spot_cost: float | None
    total: float | None


@dataclass(frozen=True)
class GroupSize:
    """An Auto Scaling group's min, max and desired capacity."""

    min_size: int
    max_size: int
    desired: int


@dataclass(frozen=True)
class GroupTarget:
    """The bounds to set, and whether desired must change (None: leave it to the cluster autoscaler)."""

    min_size: int
    max_size: int
    desired: int | None
    reason: str  # why desired changes or stays

    def after(self, before: GroupSize) -> GroupSize:
        return GroupSize(
            self.min_size, self.max_size, before.desired if self.desired is None else self.desired
        )


@dataclass(frozen=True)
class CapacityPlan:
    """Everything the report shows: the need, the bounds, the purchase split and the cost at min and max."""

    need: NodeNeed
    max_nodes: int | None
    before: GroupSize
    target: GroupTarget
    at_min: HourlyCost
    at_max: HourlyCost
    notes: tuple[str, ...] = field(default=())


# -- the steps ------------------------------------------------------------------------------------------


def fit_api(api: ApiDemand, instance: InstanceShape) -> ApiFit:
    """Replicas of `api` per node of `instance` (step 2); raises CapacityError if not even one fits."""
    if api.min_replicas < 0 or api.max_replicas < api.min_replicas:
        raise CapacityError(
            f"{api.name}: need 0 <= min_replicas <= max_replicas, got {api.min_replicas}, {api.max_replicas}"
        )
    allocatable = _check_allocatable(instance)
    per_node_by = {}
    shares = []
    for resource in RESOURCES:
        want = api.request.get(resource)
        if want < 0:
            raise CapacityError(f"{api.name}: a replica cannot request a negative amount of {resource}")
        if want == 0:
            continue
        have = allocatable.get(resource)
        per_node_by[resource] = have // want if have > 0 else 0
        shares.append(want / have if have > 0 else math.inf)
    if not per_node_by:
        raise CapacityError(f"{api.name}: a replica requests no CPU, memory or GPU; cannot size nodes for it")
    bound = min(per_node_by, key=lambda r: (per_node_by[r], RESOURCES.index(r)))
    per_node = per_node_by[bound]
    if per_node < 1:
        short = [r for r, n in per_node_by.items() if n < 1]
        raise CapacityError(
            f"{api.name}: one replica ({api.request.describe()}) does not fit a {instance.instance_type} node, "
            f"which has {allocatable.describe()} allocatable after the per-node reserve "
            f"({instance.reserve.describe()}); too little {' and '.join(short)}: choose a larger instance type "
            "or lower the API's compute requests"
        )
    return ApiFit(
        api=api,
        per_node_by=per_node_by,
        per_node=per_node,
        bound=bound,
        nodes_at_min=_ceil_div(api.min_replicas, per_node),
        nodes_at_max=_ceil_div(api.max_replicas, per_node),
        share=max(shares),
    )


def node_need(apis: list[ApiDemand], instance: InstanceShape) -> NodeNeed:
    """Nodes needed at every API's min and at every API's max replicas (steps 1-3)."""
    allocatable = _check_allocatable(instance)
    names = [a.name for a in apis]
    if len(set(names)) != len(names):
        raise CapacityError(f"each API may be sized once, got {names}")
    fits = tuple(fit_api(api, instance) for api in apis)
    return NodeNeed(
        instance=instance,
        allocatable=allocatable,
        fits=fits,
        replicas_at_min=sum(a.min_replicas for a in apis),
        replicas_at_max=sum(a.max_replicas for a in apis),
        nodes_at_min=pack(fits, allocatable, at_max=False),
        nodes_at_max=pack(fits, allocatable, at_max=True),
    )


def pack(fits: tuple[ApiFit, ...], allocatable: Resources, *, at_max: bool) -> int:
    """Nodes for all replicas together: first fit over nodes, APIs taking the largest share first.

    Replicas of one API are identical, so each node takes as many as fit at once; for a single API the
    result is `ceil(replicas / per_node)`."""
    free: list[list[int]] = []  # per open node: remaining cpu, memory, gpu
    for fit in sorted(fits, key=lambda f: (-f.share, f.api.name)):
        left = fit.api.max_replicas if at_max else fit.api.min_replicas
        want = [fit.api.request.get(r) for r in RESOURCES]
        for node in free:
            if left == 0:
                break
            room = min((node[i] // w for i, w in enumerate(want) if w > 0), default=0)
            placed = min(room, left)
            for i, w in enumerate(want):
                node[i] -= placed * w
            left -= placed
        while left > 0:
            placed = min(fit.per_node, left)
            free.append([allocatable.get(r) - placed * w for r, w in zip(RESOURCES, want, strict=True)])
            left -= placed
    return len(free)


def split_purchase(nodes: int, policy: PurchasePolicy) -> PurchaseSplit:
    """On-demand and spot instances among `nodes` under a mixed-instances policy (step 4)."""
    if nodes < 0:
        raise CapacityError(f"nodes must be >= 0, got {nodes}")
    base = min(policy.on_demand_base_capacity, nodes)
    above = nodes - base
    on_demand_above = _ceil_div(above * policy.on_demand_percentage_above_base, 100)
    on_demand = base + on_demand_above
    return PurchaseSplit(nodes, policy, base, above, on_demand_above, on_demand, nodes - on_demand)


def hourly_cost(split: PurchaseSplit, prices: Prices) -> HourlyCost:
    """The hourly estimate for a split (step 5)."""
    for price in (prices.on_demand, prices.spot):
        if price is not None and price < 0:
            raise CapacityError(f"prices must be >= 0, got {price}")
    on_demand = _cost(split.on_demand, prices.on_demand)
    spot = _cost(split.spot, prices.spot)
    total = None if on_demand is None or spot is None else on_demand + spot
    return HourlyCost(split, prices, on_demand, spot, total)


def group_target(need: NodeNeed, before: GroupSize, max_nodes: int | None) -> GroupTarget:
    """The group's new min/max/desired (step 6); CapacityError when the need exceeds `max_nodes`."""
    if max_nodes is not None and need.nodes_at_max > max_nodes:
        raise CapacityError(
            f"the APIs need {need.nodes_at_max} {need.instance.instance_type} node(s) at max_replicas "
            f"({need.replicas_at_max} replica(s): {_per_api(need)}), but the cluster allows at most {max_nodes} "
            "(block field max_nodes): lower max_replicas or the compute requests, choose a larger instance "
            "type, or raise max_nodes"
        )
    low, high = need.nodes_at_min, need.nodes_at_max
    if before.desired < low:
        return GroupTarget(low, high, low, f"raised from {before.desired} to the new min {low}")
    if before.desired > high:
        return GroupTarget(low, high, high, f"lowered from {before.desired} to the new max {high}")
    return GroupTarget(
        low, high, None, f"{before.desired} is within [{low}, {high}]: left to the cluster autoscaler"
    )


def plan_capacity(
    apis: list[ApiDemand],
    instance: InstanceShape,
    before: GroupSize,
    *,
    policy: PurchasePolicy = ALL_ON_DEMAND,
    prices: Prices = Prices(),
    max_nodes: int | None = None,
) -> CapacityPlan:
    """All steps: the need, the group's new bounds, and the split and cost at its min and max."""
    need = node_need(apis, instance)
    target = group_target(need, before, max_nodes)
    notes = []
    if prices.on_demand is None or (prices.spot is None and policy.on_demand_percentage_above_base < 100):
        notes.append("some instance prices are not set: the cost estimate is partial")
    return CapacityPlan(
        need=need,
        max_nodes=max_nodes,
        before=before,
        target=target,
        at_min=hourly_cost(split_purchase(target.min_size, policy), prices),
        at_max=hourly_cost(split_purchase(target.max_size, policy), prices),
        notes=tuple(notes),
    )


# -- explaining it ---------------------------------------------------------------------------------------


def arithmetic(plan: CapacityPlan) -> list[str]:
    """The plan's arithmetic as plain lines, in the order the steps ran."""
    need, inst = plan.need, plan.need.instance
    lines = [
        (
            f"allocatable per {inst.instance_type} node = capacity - reserve = "
            f"{_triple(inst.capacity)} - {_triple(inst.reserve)} = {_triple(need.allocatable)}"
        ),
    ]
    for fit in need.fits:
        a = fit.api
        terms = ", ".join(
            f"{r} floor({_amount(r, need.allocatable.get(r))} / {_amount(r, a.request.get(r))}) = {n}"
            for r, n in fit.per_node_by.items()
        )
        lines.append(
            f"{a.name}: per replica {_triple(a.request)}; per node by {terms} -> {fit.per_node} "
            f"(bound by {fit.bound})"
        )
        lines.append(
            f"{a.name}: alone, ceil({a.max_replicas} / {fit.per_node}) = {fit.nodes_at_max} node(s) at "
            f"max_replicas, ceil({a.min_replicas} / {fit.per_node}) = {fit.nodes_at_min} at min_replicas"
        )
    if len(need.fits) > 1:
        lines.append(
            f"packed together (first fit, largest share first): {need.nodes_at_max} node(s) for "
            f"{need.replicas_at_max} replicas at max, {need.nodes_at_min} for {need.replicas_at_min} at min"
        )
    allowed = "any: max_nodes not set" if plan.max_nodes is None else f"at most max_nodes = {plan.max_nodes}"
    lines.append(
        f"group: min {plan.target.min_size}, max {plan.target.max_size} (allowed: {allowed}); desired "
        f"{plan.target.reason}"
    )
    for label, cost in (("at min", plan.at_min), ("at max", plan.at_max)):
        s = cost.split
        lines.append(
            f"{label} ({s.nodes} node(s)): on-demand base min({s.policy.on_demand_base_capacity}, {s.nodes}) = "
            f"{s.base}; above base {s.above_base} x {s.policy.on_demand_percentage_above_base}% -> "
            f"{s.on_demand_above_base} on-demand (rounded up); {s.on_demand} on-demand + {s.spot} spot"
        )
        lines.append(
            f"{label}: {s.on_demand} x {_price(cost.prices.on_demand)} + {s.spot} x {_price(cost.prices.spot)} "
            f"= {format_cost(cost.total)} per hour"
        )
    return lines + list(plan.notes)


def format_cpu(millicores: int) -> str:
    return f"{millicores // 1000} CPU" if millicores % 1000 == 0 else f"{millicores}m CPU"


def format_memory(num_bytes: int) -> str:
    if num_bytes == 0:
        return "0"
    for suffix, size in (("Gi", 1024**3), ("Mi", 1024**2), ("Ki", 1024)):
        if num_bytes >= size and num_bytes % size == 0:
            return f"{num_bytes // size}{suffix}"
    if num_bytes >= 1024**2:
        return f"{num_bytes / 1024**2:.1f}Mi"
    return f"{num_bytes}B"


def format_cost(value: float | None) -> str:
    return "unknown" if value is None else f"${value:.4f}"


def _price(value: float | None) -> str:
    return "?" if value is None else f"${value:g}"


def _amount(resource: str, value: int) -> str:
    if resource == "cpu":
        return f"{value}m"
    if resource == "memory":
        return format_memory(value)
    return str(value)


def _triple(r: Resources) -> str:
    return f"({r.cpu_millicores}m CPU, {format_memory(r.mem_bytes)}, {r.gpu} GPU)"


def _per_api(need: NodeNeed) -> str:
    return ", ".join(f"{f.api.name} {f.api.max_replicas} x {f.per_node}/node" for f in need.fits)


def _check_allocatable(instance: InstanceShape) -> Resources:
    allocatable = instance.allocatable
    short = [r for r in ("cpu", "memory") if allocatable.get(r) <= 0] + (
        ["gpu"] if allocatable.gpu < 0 else []
    )
    if short:
        raise CapacityError(
            f"a {instance.instance_type} node ({instance.capacity.describe()}) has nothing left for pods after "
            f"the per-node reserve ({instance.reserve.describe()}): too little {' and '.join(short)}"
        )
    return allocatable


def _cost(count: int, price: float | None) -> float | None:
    if count == 0:
        return 0.0
    return None if price is None else count * price


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)
