"""The agent's autoscaler between sampling and scaling: windows, in-place setting changes, APIs it must
leave alone (a rollout holds the lock, a replica is still starting), and canary arms autoscaled on their
own load above the rollout's floor while the rollout holds the lock."""

from __future__ import annotations

import asyncio
import fcntl
from pathlib import Path
from typing import Any

import yaml

from cortex_flows.backends.local.autoscaler import Autoscaler, Unit
from cortex_flows.spec import RealtimeAPI, parse_spec


def spec(tmp_path: Path, **autoscaling: Any) -> RealtimeAPI:
    (tmp_path / "handler.py").write_text("class Handler: ...\n")
    item = {"name": "a", "kind": "RealtimeAPI", "handler": {"type": "python", "path": "handler.py"},
            "autoscaling": {"window": "10s", "upscale_stabilization_period": "0s",
                            "downscale_stabilization_period": "0s", **autoscaling}}  # fmt: skip
    return parse_spec(yaml.safe_dump([item]), tmp_path / "cortex.yaml", tmp_path).apis[0]


class World:
    """One API as the agent would report it, and the scale calls the autoscaler makes."""

    def __init__(
        self, api: RealtimeAPI, replicas: int = 1, starting: int = 0, in_flight: int = 0, floor: int | None = None
    ) -> None:
        self.api, self.replicas, self.starting, self.in_flight = api, replicas, starting, in_flight
        self.floor = floor
        self.calls: list[int] = []

    def units(self) -> list[Unit]:
        return [Unit("a", 1, self.replicas, self.api, self.starting, self.floor)]

    async def scale(self, api: str, revision: int, replicas: int) -> None:
        self.calls.append(replicas)
        self.replicas = replicas


def autoscaler(world: World, tmp_path: Path) -> Autoscaler:
    return Autoscaler(units=world.units, in_flight=lambda unit: world.in_flight, scale=world.scale, locks=tmp_path)


def run_ticks(scaler: Autoscaler, seconds: range) -> None:
    async def ticks() -> None:
        for t in seconds:
            scaler.sample(float(t))
            await scaler.decide(("a", 1), float(t))
            await scaler.settle()

    asyncio.run(ticks())


def test_window_average_drives_the_decision(tmp_path):
    world = World(spec(tmp_path, max_replicas=10), in_flight=3)
    run_ticks(autoscaler(world, tmp_path), range(6))
    assert world.calls[:2] == [2, 3] and world.replicas == 3


def test_settings_changed_in_place_apply_at_the_next_tick(tmp_path):
    world = World(spec(tmp_path, max_replicas=10), in_flight=8)
    scaler = autoscaler(world, tmp_path)
    run_ticks(scaler, range(12))
    assert world.replicas == 8
    world.api = spec(tmp_path, max_replicas=5)
    run_ticks(scaler, range(12, 14))
    assert world.replicas == 5 and scaler.watches[("a", 1)].settings.max_replicas == 5


def test_a_held_lock_or_a_starting_replica_holds_the_count(tmp_path):
    world = World(spec(tmp_path, max_replicas=10), replicas=4, starting=1, in_flight=0)
    scaler = autoscaler(world, tmp_path)
    run_ticks(scaler, range(5))
    assert world.calls == [] and scaler.watches[("a", 1)].last.requested == 4  # never reap a starting replica
    world.starting = 0
    with open(tmp_path / "a.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a deploy of `a` is in progress
        run_ticks(scaler, range(5, 8))
        assert world.calls == []
    run_ticks(scaler, range(8, 9))
    assert world.calls == [3]  # max_downscale_factor 0.75 of 4


def test_no_samples_no_decision(tmp_path):
    world = World(spec(tmp_path))
    scaler = autoscaler(world, tmp_path)
    assert asyncio.run(scaler.decide(("a", 1), 0.0)) is None


def test_a_woken_api_keeps_its_replica_through_the_downscale_stabilization(tmp_path):
    world = World(spec(tmp_path, min_replicas=0, downscale_stabilization_period="5s"), replicas=0)
    scaler = autoscaler(world, tmp_path)
    run_ticks(scaler, range(10))  # idle at zero, watched long enough to act
    scaler.woken("a", 1, 10.0)  # a request arrived; the agent started a replica
    world.replicas = 1
    run_ticks(scaler, range(11, 15))
    assert world.calls == []  # the request was never sampled, yet the replica stays 5 s
    run_ticks(scaler, range(15, 17))
    assert world.calls == [0]


def test_a_canary_arm_autoscales_above_its_floor_while_the_rollout_holds_the_lock(tmp_path):
    world = World(spec(tmp_path, max_replicas=6), replicas=2, in_flight=5, floor=2)
    scaler = autoscaler(world, tmp_path)
    with open(tmp_path / "a.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the canary holds the API for its whole run
        run_ticks(scaler, range(6))
        assert world.replicas == 5 and scaler.watches[("a", 1)].settings.min_replicas == 2
        world.in_flight = 0
        run_ticks(scaler, range(6, 30))
    assert world.replicas == 2  # down to the floor the rollout set, never below
    assert scaler.last("a", 1).min_replicas == 2
