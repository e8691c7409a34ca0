"""The local agent's autoscaler loop and scale-from-zero.

Every second it samples each API's in-flight requests as the gateway sees them (forwarded and not yet
answered, which is a replica's active plus queued, plus requests held while the API has no ready replica);
every tick it averages the samples over the API's `window` and applies Cortex's recommendation
(`cortex_flows.autoscaling.recommend`) through the agent's readiness-gated scale-up and draining
scale-down. An API in the middle of a deploy, rollback or refresh (its lock file is held, or it has more
than one version) is left alone, except the *arms* of a canary: versions given a floor by the rollout,
each autoscaled on its own replicas' in-flight requests between that floor and `max_replicas`, so a
canary step never overloads either version and the rollout's own scaling is never undone.
`WakingTable` holds requests for an API scaled to zero and asks for its first replica at once, as
Cortex's activator did.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from cortex_flows.autoscaling.recommend import Decision, History, Settings, recommend
from cortex_flows.backends.base import AutoscalingStatus
from cortex_flows.backends.local.routing import Mirror, RoutingTable, Upstream
from cortex_flows.spec import RealtimeAPI

log = logging.getLogger("cortex_flows.autoscaler")

SAMPLE_SECONDS = 1.0
DEFAULT_TICK_SECONDS = 10.0
MAX_HELD_PER_API = 1000  # requests held for an API at zero; beyond this they get 503 at once


def settings_of(api: RealtimeAPI) -> Settings:
    a = api.autoscaling
    return Settings(
        min_replicas=a.min_replicas, max_replicas=a.max_replicas, target_in_flight=api.target_in_flight,
        downscale_stabilization=a.downscale_stabilization_seconds, upscale_stabilization=a.upscale_stabilization_seconds,
        max_downscale_factor=a.max_downscale_factor, max_upscale_factor=a.max_upscale_factor,
        downscale_tolerance=a.downscale_tolerance, upscale_tolerance=a.upscale_tolerance,
    )  # fmt: skip


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("autoscaling could not scale: %s", task.exception())


class WakingTable(RoutingTable):
    """A routing table that holds a request for an API without ready replicas while one starts."""

    def __init__(self) -> None:
        super().__init__()
        self.held: dict[str, int] = {}
        self.wake: Callable[[str], None] = lambda api: None  # set by the agent
        self._ready: dict[str, asyncio.Event] = {}

    def set_route(
        self, api: str, endpoint: str, groups: Iterable[tuple[int, Sequence[Upstream]]], *, mirror: Mirror | None = None
    ) -> None:
        super().set_route(api, endpoint, groups, mirror=mirror)
        event = self._ready.get(api)
        route = self.route(api)
        if event is not None and route is not None and route.pick(self.upstream_in_flight) is not None:
            event.set()

    async def wait_for_upstream(self, api: str, timeout: float) -> Upstream | None:
        if self.held.get(api, 0) >= MAX_HELD_PER_API:
            return None
        self.held[api] = self.held.get(api, 0) + 1
        event = self._ready.setdefault(api, asyncio.Event())
        try:
            self.wake(api)
            deadline = time.monotonic() + timeout
            while (remaining := deadline - time.monotonic()) > 0:
                route = self.route(api)
                upstream = route.pick(self.upstream_in_flight) if route is not None else None
                if upstream is not None:
                    return upstream
                event.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), remaining)
            return None
        finally:
            self.held[api] -= 1


class Unit(NamedTuple):
    """What the autoscaler scales: an API's only version, or one arm of a canary (`floor` set)."""

    api: str
    revision: int
    replicas: int
    spec: RealtimeAPI
    starting: int  # replicas still starting
    floor: int | None = None  # an arm: the fewest replicas the rollout allows; autoscaled on its own load

    @property
    def key(self) -> tuple[str, int]:
        return self.api, self.revision

    def settings(self) -> Settings:
        settings = settings_of(self.spec)
        if self.floor is None:
            return settings
        return dataclasses.replace(
            settings, min_replicas=self.floor, max_replicas=max(self.floor, settings.max_replicas)
        )


@dataclass
class _Watch:
    """What the autoscaler keeps per unit between ticks."""

    settings: Settings
    window: float
    history: History
    samples: deque[tuple[float, int]]
    last: AutoscalingStatus | None = None


class Autoscaler:
    """Samples and ticks for every API of one agent."""

    def __init__(
        self,
        *,
        units: Callable[[], list[Unit]],
        in_flight: Callable[[Unit], int],
        scale: Callable[[str, int, int], Awaitable[None]],
        locks: Path,
        tick: float = DEFAULT_TICK_SECONDS,
    ) -> None:
        """`units()` lists what may be autoscaled now; `scale(api, revision, replicas)` must keep an arm's
        floor (it changes the replica count only)."""
        self._units = units
        self._in_flight = in_flight
        self._scale = scale
        self._locks = locks
        self.tick = tick
        self.watches: dict[tuple[str, int], _Watch] = {}
        self._scaling: dict[tuple[str, int], asyncio.Task[None]] = {}  # the last scale each unit was given

    async def run(self) -> None:
        """Sample every second; decide every `tick` seconds, counted in samples so a sleep that ends a
        hair early never skips a tick."""
        every = max(1, round(self.tick / SAMPLE_SECONDS))
        for count in itertools.count(1):
            await asyncio.sleep(SAMPLE_SECONDS)
            now = time.monotonic()
            self.sample(now)
            if count % every == 0:
                for key in list(self.watches):
                    try:
                        await self.decide(key, now)
                    except Exception:  # one API's trouble must not stop the others' autoscaling
                        log.exception("autoscaling %s r%d failed", *key)

    def last(self, api: str, revision: int) -> AutoscalingStatus | None:
        """The last decision taken for a version (its API's, when it is the only version)."""
        watch = self.watches.get((api, revision))
        return watch.last if watch else None

    def woken(self, api: str, revision: int, now: float) -> None:
        """An API at zero was woken for a request: record a recommendation of one replica, as Cortex's
        activator did, so the downscale stabilization keeps it even if no sample saw the request."""
        watch = self.watches.get((api, revision))
        if watch is not None:
            watch.history.entries.append((now, 1))

    def sample(self, now: float) -> None:
        current = {unit.key: unit for unit in self._units()}
        for key in set(self.watches) - set(current):
            del self.watches[key]
        for key, unit in current.items():
            watch = self.watches.get(key)
            window, settings = unit.spec.autoscaling.window_seconds, unit.settings()
            if watch is None:
                watch = self.watches[key] = _Watch(settings, window, History(started=now), deque(maxlen=int(window) + 5))
            elif watch.window != window or watch.settings != settings:  # changed in place, or a new floor
                watch.settings, watch.window = settings, window
                watch.samples = deque(watch.samples, maxlen=int(window) + 5)
            watch.samples.append((now, self._in_flight(unit)))

    async def decide(self, key: tuple[str, int], now: float) -> Decision | None:
        """One tick for one unit; None when it was left alone."""
        watch = self.watches.get(key)
        current = next((unit for unit in self._units() if unit.key == key), None)
        scaling = self._scaling.get(key)
        if watch is None or current is None or (scaling is not None and not scaling.done()):
            return None
        if current.floor is None and self._busy(current.api):
            return None
        api, revision, replicas, starting = current.api, current.revision, current.replicas, current.starting
        window = [n for t, n in watch.samples if t >= now - watch.window]
        if not window:
            return None  # no metrics yet: skip the tick, as Cortex does
        decision = recommend(replicas, sum(window) / len(window), watch.settings, watch.history, now)
        request = decision.request
        if request < replicas and starting:
            request = replicas  # a replica still starting is never reaped
        watch.last = AutoscalingStatus(
            current=replicas, recommended=decision.recommended, requested=request,
            min_replicas=watch.settings.min_replicas, max_replicas=watch.settings.max_replicas,
            in_flight=round(decision.in_flight, 3), reason=decision.reason, at=datetime.now(UTC),
        )  # fmt: skip
        log.info(
            "autoscaling %s r%d%s: in-flight %.2f / target %g = %.2f -> recommended %d, requested %d (%s)",
            api, revision, "" if current.floor is None else " (canary arm)", decision.in_flight,
            watch.settings.target_in_flight, decision.raw,
            decision.recommended, request, decision.reason,
        )  # fmt: skip
        if request != replicas:
            log.info("autoscaling event: %s r%d %d -> %d", api, revision, replicas, request)
            # In the background: a scale-down drains, which must not hold up the other APIs' decisions.
            task = self._scaling[key] = asyncio.create_task(self._scale(api, revision, request))
            task.add_done_callback(_log_failure)
        return decision

    async def settle(self) -> None:
        """Wait for the scale operations under way."""
        await asyncio.gather(*(t for t in self._scaling.values() if not t.done()), return_exceptions=True)

    def _busy(self, api: str) -> bool:
        """Whether a deploy, rollback or refresh holds the API's lock file right now."""
        path = self._locks / f"{api}.lock"
        if not path.exists():
            return False
        with open(path, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(lock, fcntl.LOCK_UN)
        return False
