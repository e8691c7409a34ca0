"""What a deploy must do to an API, decided from what runs now: nothing, an in-place update, or a new
version whose replicas replace the old ones (Cortex's SpecID vs PodID rule, reference §1.5)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple


class Action(StrEnum):
    CREATE = "create"  # the API is new
    ROLL = "roll"  # pod settings changed: a new version replaces the old one
    IN_PLACE = "in-place"  # only autoscaling/networking/strategy changed: no restart
    UP_TO_DATE = "up-to-date"  # nothing changed


class LiveVersion(NamedTuple):
    revision: int
    spec_hash: str
    pod_hash: str
    desired: int
    target: int | None = None  # replicas its rollout aims for (known while one is unfinished)


@dataclass(frozen=True)
class DeployPlan:
    action: Action
    revision: int  # the revision that serves when the deploy is done
    replicas: int
    previous: tuple[int, ...] = ()  # revisions to drain once the new one serves
    restart: str = ""  # the refresh token the version carries (see VersionSpec.restart)


def clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def plan_deploy(
    *,
    spec_hash: str,
    pod_hash: str,
    live: list[LiveVersion],
    last_revision: int,
    init_replicas: int,
    min_replicas: int,
    max_replicas: int,
    restart: str = "",
) -> DeployPlan:
    """Decide the deploy. Replica count follows Cortex: keep what runs (if > 0), else `init_replicas`,
    clamped to the new [min, max]. A newest version matching the spec with older ones still live is an
    interrupted rollout: IN_PLACE with those as `previous`, which finishes it."""
    if not live:
        return DeployPlan(Action.CREATE, last_revision + 1, init_replicas, restart=restart)
    current = max(live, key=lambda v: v.revision)
    others = tuple(v.revision for v in live if v.revision != current.revision)
    # An unfinished rollout (older versions still live) aims for its target, not its partial count.
    running = current.target if others and current.target is not None else current.desired
    keep = running if running > 0 else init_replicas
    replicas = clamp(keep, min_replicas, max_replicas)
    if current.pod_hash == pod_hash:
        if current.spec_hash == spec_hash and not others:
            return DeployPlan(Action.UP_TO_DATE, current.revision, current.desired, restart=restart)
        return DeployPlan(Action.IN_PLACE, current.revision, replicas, others, restart)
    revision = max(last_revision, *(v.revision for v in live)) + 1
    return DeployPlan(Action.ROLL, revision, replicas, (*others, current.revision), restart)
