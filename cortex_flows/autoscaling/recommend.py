"""Cortex's replica recommendation (reference §2.3), one tick at a time, as a pure function.

Inputs are the current replica count, the window-averaged total in-flight requests of the API and its
settings; the caller keeps the recommendation history between ticks (`History`). Step by step as Cortex's
`autoscaleFn`: ratio to target, tolerances, the up/down factor limits ("always allow +-1"), the
[min, max] clamp, then the stabilization periods over recent recommendations. Scale-from-zero is not
decided here: the gateway wakes an API at zero when a request arrives.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Settings:
    """The spec's `autoscaling` block, in numbers (seconds for durations)."""

    min_replicas: int
    max_replicas: int
    target_in_flight: float
    downscale_stabilization: float = 300.0
    upscale_stabilization: float = 60.0
    max_downscale_factor: float = 0.75
    max_upscale_factor: float = 1.5
    downscale_tolerance: float = 0.05
    upscale_tolerance: float = 0.05


@dataclass
class History:
    """Recommendations with their times, and since when this autoscaler has watched the API."""

    started: float
    entries: deque[tuple[float, int]] = field(default_factory=deque)


@dataclass(frozen=True)
class Decision:
    """Every intermediate value, for the decision log and `get`."""

    current: int
    in_flight: float
    raw: float
    recommended: int  # after tolerance, factors and clamp (what is recorded in the history)
    request: int  # after stabilization: what to scale to
    reason: str

    @property
    def changes(self) -> bool:
        return self.request != self.current


def recommend(current: int, in_flight: float, settings: Settings, history: History, now: float) -> Decision:
    """Decide one tick and record its recommendation in `history` (the only state it changes)."""
    s = settings
    raw = in_flight / s.target_in_flight
    rec = math.ceil(raw)
    reason = "in-flight / target"
    if current * (1 - s.downscale_tolerance) < raw < current or current < raw < current * (1 + s.upscale_tolerance):
        rec, reason = current, "within tolerance"
    floor = min(current - 1, math.ceil(current * s.max_downscale_factor))
    if rec < floor:
        rec, reason = floor, f"max_downscale_factor (not below {floor})"
    ceiling = max(current + 1, math.ceil(current * s.max_upscale_factor))
    if rec > ceiling:
        rec, reason = ceiling, f"max_upscale_factor (not above {ceiling})"
    if rec < s.min_replicas:
        rec, reason = s.min_replicas, "min_replicas"
    if rec > s.max_replicas:
        rec, reason = s.max_replicas, "max_replicas"

    keep = max(s.downscale_stabilization, s.upscale_stabilization)
    entries = history.entries
    while entries and entries[0][0] < now - keep:
        entries.popleft()
    entries.append((now, rec))

    request = rec
    if rec < current:
        if now - history.started < s.downscale_stabilization:
            request, reason = current, "downscale stabilization (autoscaler just started)"
        else:
            dfloor = min(max(r for t, r in entries if t >= now - s.downscale_stabilization), current)
            if rec < dfloor:
                request, reason = dfloor, f"downscale stabilization (recent recommendations up to {dfloor})"
    elif rec > current:
        if now - history.started < s.upscale_stabilization:
            request, reason = current, "upscale stabilization (autoscaler just started)"
        else:
            uceil = max(min(r for t, r in entries if t >= now - s.upscale_stabilization), current)
            if rec > uceil:
                request, reason = uceil, f"upscale stabilization (recent recommendations down to {uceil})"
    return Decision(current, in_flight, raw, rec, request, reason)
