"""The local agent's autoscaler loop and scale-from-zero.

Every second it samples each API's in-flight requests as the gateway sees them (forwarded and not yet
answered, which is a replica's active plus queued, plus requests held while the API has no ready replica);
every tick it averages the samples over the API's `window` and applies Cortex's recommendation
(`cortex_flows.autoscaling.recommend`) through the agent's readiness-gated scale-up and draining
scale-down. An API in the middle of a deploy, rollback or refresh (its lock file is held, or it has more
than one version) is left alone. `WakingTable` holds requests for an API scaled to zero and asks for
its first replica at once, as Cortex's activator did.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cortex_flows.autoscaling.recommend import Decision, History, Settings, recommend
from cortex_flows.backends.base import AutoscalingStatus
from cortex_flows.backends.local.routing import RoutingTable, Upstream
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

    def set_route(self, api: str, endpoint: str, groups: Iterable[tuple[int, Sequence[Upstream]]]) -> None:
        super().set_route(api, endpoint, groups)
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


@dataclass
class _Watch:
    """What the autoscaler keeps per API between ticks."""

    revision: int
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
        apis: Callable[[], dict[str, tuple[int, int, RealtimeAPI, int]]],
        in_flight: Callable[[str], int],
        scale: Callable[[str, int, int], Awaitable[None]],
        locks: Path,
        tick: float = DEFAULT_TICK_SECONDS,
    ) -> None:
        """`apis()` maps each API with exactly one version to (revision, replicas, spec, starting)."""
        self._apis = apis
        self._in_flight = in_flight
        self._scale = scale
        self._locks = locks
        self.tick = tick
        self.watches: dict[str, _Watch] = {}
        self._scaling: dict[str, asyncio.Task[None]] = {}  # the last scale each API was given

    async def run(self) -> None:
        """Sample every second; decide every `tick` seconds, counted in samples so a sleep that ends a
        hair early never skips a tick."""
        every = max(1, round(self.tick / SAMPLE_SECONDS))
        for count in itertools.count(1):
            await asyncio.sleep(SAMPLE_SECONDS)
            now = time.monotonic()
            self.sample(now)
            if count % every == 0:
                for api in list(self.watches):
                    try:
                        await self.decide(api, now)
                    except Exception:  # one API's trouble must not stop the others' autoscaling
                        log.exception("autoscaling %s failed", api)

    def woken(self, api: str, now: float) -> None:
        """An API at zero was woken for a request: record a recommendation of one replica, as Cortex's
        activator did, so the downscale stabilization keeps it even if no sample saw the request."""
        watch = self.watches.get(api)
        if watch is not None:
            watch.history.entries.append((now, 1))

    def sample(self, now: float) -> None:
        current = self._apis()
        for api in set(self.watches) - set(current):
            del self.watches[api]
        for api, (revision, _, spec, _) in current.items():
            watch = self.watches.get(api)
            window = spec.autoscaling.window_seconds
            if watch is None or watch.revision != revision:
                watch = self.watches[api] = _Watch(
                    revision, settings_of(spec), window, History(started=now), deque(maxlen=int(window) + 5)
                )
            elif watch.window != window or watch.settings != settings_of(spec):  # changed in place
                watch.settings, watch.window = settings_of(spec), window
                watch.samples = deque(watch.samples, maxlen=int(window) + 5)
            watch.samples.append((now, self._in_flight(api)))

    async def decide(self, api: str, now: float) -> Decision | None:
        """One tick for one API; None when it was left alone."""
        watch, current = self.watches.get(api), self._apis().get(api)
        scaling = self._scaling.get(api)
        if watch is None or current is None or (scaling is not None and not scaling.done()) or self._busy(api):
            return None
        revision, replicas, _, starting = current
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
            "autoscaling %s r%d: in-flight %.2f / target %g = %.2f -> recommended %d, requested %d (%s)",
            api, revision, decision.in_flight, watch.settings.target_in_flight, decision.raw,
            decision.recommended, request, decision.reason,
        )  # fmt: skip
        if request != replicas:
            log.info("autoscaling event: %s %d -> %d", api, replicas, request)
            # In the background: a scale-down drains, which must not hold up the other APIs' decisions.
            task = self._scaling[api] = asyncio.create_task(self._scale(api, revision, request))
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
