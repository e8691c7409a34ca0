"""Node-group sizing arithmetic: replicas per node, nodes, on-demand/spot split, cost, group bounds."""

from __future__ import annotations

import itertools
import math

import pytest

from cortex_flows.autoscaling.capacity import (
    ALL_ON_DEMAND,
    DEFAULT_RESERVE,
    ApiDemand,
    CapacityError,
    GroupSize,
    InstanceShape,
    Prices,
    PurchasePolicy,
    Resources,
    arithmetic,
    fit_api,
    format_cost,
    format_memory,
    group_target,
    hourly_cost,
    node_need,
    pack,
    plan_capacity,
    split_purchase,
)

Mi, Gi = 1024**2, 1024**3
NO_RESERVE = Resources(0, 0, 0)


def node(cpu: int = 2000, mem: int = 8 * Gi, gpu: int = 0, reserve: Resources = NO_RESERVE) -> InstanceShape:
    return InstanceShape("m5.large", Resources(cpu, mem, gpu), reserve)


def api(
    name: str = "a", low: int = 1, high: int = 10, cpu: int = 200, mem: int = 0, gpu: int = 0
) -> ApiDemand:
    return ApiDemand(name, low, high, Resources(cpu, mem, gpu))


# -- replicas per node ---------------------------------------------------------------------------------


def test_cpu_bound():
    fit = fit_api(api(cpu=300, mem=512 * Mi), node(cpu=2000, mem=8 * Gi))
    assert fit.per_node_by == {"cpu": 6, "memory": 16}
    assert (fit.per_node, fit.bound) == (6, "cpu")


def test_memory_bound():
    fit = fit_api(api(cpu=100, mem=3 * Gi), node(cpu=2000, mem=8 * Gi))
    assert fit.per_node_by == {"cpu": 20, "memory": 2}
    assert (fit.per_node, fit.bound) == (2, "memory")


def test_gpu_bound():
    fit = fit_api(api(cpu=500, mem=1 * Gi, gpu=1), node(cpu=8000, mem=32 * Gi, gpu=2))
    assert fit.per_node_by == {"cpu": 16, "memory": 32, "gpu": 2}
    assert (fit.per_node, fit.bound) == (2, "gpu")


def test_tie_names_the_first_resource():
    fit = fit_api(api(cpu=1000, mem=4 * Gi), node(cpu=2000, mem=8 * Gi))
    assert (fit.per_node, fit.bound) == (2, "cpu")


def test_memory_not_requested_does_not_limit():
    fit = fit_api(api(cpu=200, mem=0), node(cpu=2000, mem=1 * Gi))
    assert fit.per_node_by == {"cpu": 10}


def test_gpu_not_requested_on_a_gpu_node():
    assert fit_api(api(cpu=1000), node(cpu=4000, gpu=4)).per_node_by == {"cpu": 4}


def test_exact_fit_and_one_millicore_short():
    assert fit_api(api(cpu=500), node(cpu=2000)).per_node == 4
    assert fit_api(api(cpu=500), node(cpu=1999)).per_node == 3  # floor, never rounded up


def test_reserve_is_subtracted():
    shape = node(cpu=2000, mem=8 * Gi, reserve=Resources(250, 750 * Mi, 0))
    assert shape.allocatable == Resources(1750, 8 * Gi - 750 * Mi, 0)
    assert fit_api(api(cpu=200), shape).per_node == 8  # 1750 // 200, not 2000 // 200 = 10


def test_default_reserve():
    assert (
        InstanceShape("x", Resources(2000, 8 * Gi)).reserve == DEFAULT_RESERVE == Resources(250, 750 * Mi, 0)
    )


def test_replica_larger_than_a_node_is_an_error():
    with pytest.raises(CapacityError) as err:
        fit_api(api(name="big", cpu=4000, mem=1 * Gi), node(cpu=4000, reserve=Resources(250, 0, 0)))
    message = str(err.value)
    assert "big" in message and "does not fit a m5.large node" in message and "too little cpu" in message


def test_replica_too_big_in_memory_only():
    with pytest.raises(CapacityError, match="too little memory"):
        fit_api(api(cpu=100, mem=16 * Gi), node(mem=8 * Gi))


def test_gpu_replica_on_a_node_without_gpus():
    with pytest.raises(CapacityError, match="too little gpu"):
        fit_api(api(cpu=100, gpu=1), node(gpu=0))


def test_too_big_replica_is_an_error_even_at_zero_replicas():
    with pytest.raises(CapacityError):
        fit_api(api(low=0, high=0, cpu=5000), node(cpu=4000))


def test_reserve_larger_than_the_instance():
    with pytest.raises(CapacityError, match="nothing left for pods"):
        fit_api(api(), node(cpu=200, reserve=Resources(250, 0, 0)))


def test_request_of_nothing_is_an_error():
    with pytest.raises(CapacityError, match="requests no CPU"):
        fit_api(api(cpu=0), node())


@pytest.mark.parametrize(("low", "high"), [(-1, 2), (3, 2)])
def test_bad_replica_bounds(low, high):
    with pytest.raises(CapacityError):
        fit_api(api(low=low, high=high), node())


# -- nodes -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("replicas", "per_node", "nodes"),
    [(0, 8, 0), (1, 8, 1), (7, 8, 1), (8, 8, 1), (9, 8, 2), (16, 8, 2), (17, 8, 3), (100, 3, 34), (5, 1, 5)],
)
def test_nodes_are_the_ceiling(replicas, per_node, nodes):
    need = node_need([api(low=0, high=replicas, cpu=1000)], node(cpu=1000 * per_node))
    assert need.fits[0].per_node == per_node
    assert need.nodes_at_max == need.fits[0].nodes_at_max == nodes == math.ceil(replicas / per_node)


def test_min_and_max_replicas():
    need = node_need([api(low=3, high=20, cpu=500)], node(cpu=2000))
    assert (need.replicas_at_min, need.replicas_at_max) == (3, 20)
    assert (need.nodes_at_min, need.nodes_at_max) == (1, 5)


def test_zero_min_replicas_needs_no_nodes_at_min():
    need = node_need([api(low=0, high=4)], node())
    assert need.nodes_at_min == 0 and need.nodes_at_max == 1


def test_no_apis():
    need = node_need([], node())
    assert (need.nodes_at_min, need.nodes_at_max, need.fits) == (0, 0, ())


def test_apis_share_nodes():
    """Two small APIs fit one node together; sized separately they would take two."""
    need = node_need([api("a", 1, 1, cpu=500), api("b", 1, 1, cpu=500)], node(cpu=2000))
    assert [f.nodes_at_max for f in need.fits] == [1, 1]
    assert need.nodes_at_max == 1


def test_packing_mixes_cpu_and_memory_heavy_apis():
    """a: CPU-heavy (3 per node alone), b: memory-heavy (2 per node alone); b's replicas fill a's spare memory."""
    shape = node(cpu=3000, mem=8 * Gi)
    a = api("a", 1, 3, cpu=1000, mem=1 * Gi)
    b = api("b", 1, 2, cpu=100, mem=4 * Gi)
    need = node_need([a, b], shape)
    assert [f.nodes_at_max for f in need.fits] == [1, 1]
    # b takes the larger share of a node, so it goes first: its 2 replicas fill one node's memory, and
    # a's 3 replicas take a second node.
    assert need.nodes_at_max == 2


def test_packing_never_exceeds_separate_counts_nor_beats_the_resource_total():
    shape = node(cpu=4000, mem=16 * Gi, gpu=1)
    shapes = [(250, 1 * Gi, 0), (1000, 6 * Gi, 0), (700, 0, 0), (300, 2 * Gi, 1)]
    for counts in itertools.product([0, 1, 3, 7], repeat=3):
        apis = [api(f"a{i}", 0, n, *shapes[i]) for i, n in enumerate(counts)]
        need = node_need(apis, shape)
        separate = sum(f.nodes_at_max for f in need.fits)
        cpu = sum(a.max_replicas * a.request.cpu_millicores for a in apis)
        mem = sum(a.max_replicas * a.request.mem_bytes for a in apis)
        lower = max(math.ceil(cpu / 4000), math.ceil(mem / (16 * Gi)))
        assert lower <= need.nodes_at_max <= separate, counts


def test_packing_with_gpus_meets_every_resource_bound():
    """At least as many nodes as the tightest resource total demands, at most the separate counts."""
    shape = node(cpu=2000, mem=4 * Gi, gpu=2)
    fits = tuple(
        fit_api(a, shape)
        for a in [
            api("g", 0, 5, cpu=600, mem=1 * Gi, gpu=1),
            api("c", 0, 9, cpu=700),
            api("m", 0, 4, cpu=100, mem=3 * Gi),
        ]
    )
    nodes = pack(fits, shape.allocatable, at_max=True)
    # lower bounds per resource: gpu 5/2 -> 3; cpu (3000 + 6300 + 400)/2000 -> 5; memory (5 + 12)Gi / 4Gi -> 5
    assert nodes >= 5
    assert nodes <= sum(f.nodes_at_max for f in fits)


def test_duplicate_api_names_are_rejected():
    with pytest.raises(CapacityError, match="once"):
        node_need([api("a"), api("a")], node())


# -- on-demand / spot --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nodes", "base", "percent", "on_demand", "spot"),
    [
        (0, 0, 0, 0, 0),
        (0, 2, 50, 0, 0),
        (5, 0, 100, 5, 0),  # all on-demand
        (5, 0, 0, 0, 5),  # all spot
        (5, 2, 0, 2, 3),  # base only
        (5, 2, 100, 5, 0),
        (5, 10, 0, 5, 0),  # base larger than the group
        (5, 1, 50, 3, 2),  # 1 + ceil(4 x 0.5) = 3
        (4, 1, 25, 2, 2),  # 1 + ceil(3 x 0.25) = 1 + ceil(0.75) = 2: rounded up, in favour of on-demand
        (10, 0, 33, 4, 6),  # ceil(3.3) = 4
        (10, 0, 30, 3, 7),  # exactly 3: no rounding
        (3, 0, 1, 1, 2),  # ceil(0.03) = 1
    ],
)
def test_split(nodes, base, percent, on_demand, spot):
    s = split_purchase(nodes, PurchasePolicy(base, percent))
    assert (s.on_demand, s.spot) == (on_demand, spot)
    assert s.base == min(base, nodes) and s.above_base == nodes - s.base
    assert s.on_demand == s.base + s.on_demand_above_base and s.on_demand + s.spot == nodes


def test_split_defaults_to_on_demand():
    assert PurchasePolicy() == ALL_ON_DEMAND
    assert split_purchase(7, ALL_ON_DEMAND).spot == 0


@pytest.mark.parametrize(("base", "percent"), [(-1, 0), (0, -1), (0, 101)])
def test_bad_policy(base, percent):
    with pytest.raises(CapacityError):
        PurchasePolicy(base, percent)


def test_negative_nodes():
    with pytest.raises(CapacityError):
        split_purchase(-1, ALL_ON_DEMAND)


# -- cost --------------------------------------------------------------------------------------------------


def test_cost_mixes_prices():
    cost = hourly_cost(split_purchase(4, PurchasePolicy(1, 25)), Prices(0.096, 0.035))
    assert cost.on_demand_cost == pytest.approx(2 * 0.096)
    assert cost.spot_cost == pytest.approx(2 * 0.035)
    assert cost.total == pytest.approx(0.262)
    assert format_cost(cost.total) == "$0.2620"


def test_cost_unknown_without_a_needed_price():
    assert hourly_cost(split_purchase(3, PurchasePolicy(0, 0)), Prices(0.1, None)).total is None
    assert hourly_cost(split_purchase(3, ALL_ON_DEMAND), Prices(None, 0.03)).total is None
    assert format_cost(None) == "unknown"


def test_a_price_no_instance_needs_may_be_missing():
    assert hourly_cost(split_purchase(3, ALL_ON_DEMAND), Prices(0.1, None)).total == pytest.approx(0.3)
    assert hourly_cost(split_purchase(0, ALL_ON_DEMAND), Prices()).total == 0.0


def test_negative_price():
    with pytest.raises(CapacityError):
        hourly_cost(split_purchase(1, ALL_ON_DEMAND), Prices(-0.1, None))


# -- group bounds ------------------------------------------------------------------------------------------


def _need(low: int, high: int):
    return node_need([api(low=low, high=high, cpu=1000)], node(cpu=1000))  # one replica per node


@pytest.mark.parametrize(
    ("before", "low", "high", "expected_desired", "after"),
    [
        (GroupSize(0, 1, 0), 1, 4, 1, GroupSize(1, 4, 1)),  # desired below the new min: raised
        (GroupSize(1, 5, 3), 1, 4, None, GroupSize(1, 4, 3)),  # within: left to the cluster autoscaler
        (GroupSize(1, 9, 9), 1, 4, 4, GroupSize(1, 4, 4)),  # above the new max: down to it (AWS requires)
        (GroupSize(2, 3, 2), 2, 3, None, GroupSize(2, 3, 2)),  # nothing changes
    ],
)
def test_group_target(before, low, high, expected_desired, after):
    target = group_target(_need(low, high), before, max_nodes=None)
    assert (target.min_size, target.max_size, target.desired) == (low, high, expected_desired)
    assert target.after(before) == after


def test_need_above_max_nodes_is_an_error():
    with pytest.raises(CapacityError) as err:
        group_target(_need(1, 6), GroupSize(1, 2, 1), max_nodes=5)
    message = str(err.value)
    assert "need 6 m5.large node(s)" in message and "at most 5" in message and "max_nodes" in message


def test_need_equal_to_max_nodes_is_fine():
    assert group_target(_need(1, 5), GroupSize(1, 2, 1), max_nodes=5).max_size == 5


def test_plan_keeps_every_number_and_explains_them():
    apis = [api("iris", 1, 10, cpu=200)]
    shape = InstanceShape("m5.large", Resources(1000, 8 * Gi))  # default reserve: 750m allocatable
    plan = plan_capacity(
        apis, shape, GroupSize(0, 1, 0), policy=PurchasePolicy(1, 25), prices=Prices(0.096, 0.035)
    )
    assert plan.need.fits[0].per_node == 3 and plan.need.nodes_at_max == 4 and plan.need.nodes_at_min == 1
    assert (plan.target.min_size, plan.target.max_size, plan.target.desired) == (1, 4, 1)
    assert (plan.at_max.split.on_demand, plan.at_max.split.spot) == (2, 2)
    assert plan.at_min.total == pytest.approx(0.096) and plan.at_max.total == pytest.approx(0.262)
    text = "\n".join(arithmetic(plan))
    for expected in [
        "(1000m CPU, 8Gi, 0 GPU) - (250m CPU, 750Mi, 0 GPU) = (750m CPU, 7442Mi, 0 GPU)",
        "cpu floor(750m / 200m) = 3 -> 3 (bound by cpu)",
        "ceil(10 / 3) = 4 node(s) at max_replicas",
        "desired raised from 0 to the new min 1",
        "above base 3 x 25% -> 1 on-demand (rounded up); 2 on-demand + 2 spot",
        "2 x $0.096 + 2 x $0.035 = $0.2620 per hour",
    ]:
        assert expected in text
    assert plan.notes == ()


def test_plan_notes_missing_prices():
    plan = plan_capacity([api()], node(), GroupSize(0, 1, 0))
    assert plan.at_max.total is None
    assert any("partial" in note for note in plan.notes)


def test_format_memory():
    assert [format_memory(n) for n in (0, 512, 1024, 750 * Mi, 8 * Gi, 1536 * Mi + 1)] == [
        "0", "512B", "1Ki", "750Mi", "8Gi", "1536.0Mi",
    ]  # fmt: skip
