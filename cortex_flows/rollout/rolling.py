"""The steps of a rolling update: how many replicas of the new and old versions run after each step.

Kubernetes' rule (its deployment controller): never more than `desired + max_surge` replicas in all, never
fewer than `desired - max_unavailable` ready. New replicas count only once ready, so each step that adds
new replicas waits for them before the next step removes old ones. Two rules of ours on top, because an
update must never cost a request: while anything serves, at least one replica stays ready; and if the
limits leave no move at all (`max_surge: 0` with nothing allowed unavailable, e.g. one replica), one
replica of surge is used rather than taking the API down.
"""

from __future__ import annotations

from typing import NamedTuple


class Step(NamedTuple):
    new: int  # ready replicas of the new version after this step
    old: int  # replicas of the old version(s) still running after this step


def rolling_steps(*, desired: int, old: int, surge: int, unavailable: int, new: int = 0) -> list[Step]:
    """Steps from `new` ready new replicas and `old` old ones to `(desired, 0)`.

    `new` > 0 resumes an interrupted update. Every step changes exactly one of the two counts, so the
    executor scales one version per step: up (then waits for readiness) or down (draining first).
    """
    if min(desired, old, surge, unavailable, new) < 0:
        raise ValueError("replica counts, surge and unavailable must be >= 0")
    steps: list[Step] = []
    if new > desired:
        new = desired
        steps.append(Step(new, old))
    floor = desired - unavailable
    if old + new > 0 and desired > 0:
        floor = max(floor, 1)
    while new < desired or old > 0:
        room = desired + surge - (new + old)
        up = min(desired - new, room)
        if up > 0:
            new += up
            steps.append(Step(new, old))
        down = min(old, new + old - floor)
        if down > 0:
            old -= down
            steps.append(Step(new, old))
        if up <= 0 and down <= 0:
            surge += 1  # no legal move: one replica of surge beats an outage
    return steps


def batches(steps: list[Step], new: int = 0) -> int:
    """How many times the update waits for new replicas to start (the floor of its duration)."""
    count = 0
    for step in steps:
        count += step.new > new
        new = step.new
    return count


def traffic_weights(ready: dict[int, int]) -> dict[int, int]:
    """Weights (summing to 100) in proportion to each version's ready replicas, so every replica gets the
    same share; versions with none ready get none. Largest remainder rounding, ties to the newer version."""
    total = sum(ready.values())
    if total <= 0:
        raise ValueError("no version has a ready replica")
    exact = {rev: 100 * count / total for rev, count in ready.items() if count > 0}
    weights = {rev: int(share) for rev, share in exact.items()}
    by_remainder = sorted(exact, key=lambda rev: (exact[rev] - weights[rev], rev), reverse=True)
    for rev in by_remainder[: 100 - sum(weights.values())]:
        weights[rev] += 1
    return weights


def shrink_oldest(replicas: dict[int, int], total: int) -> dict[int, int]:
    """New replica counts for the old versions so they sum to `total`, taking from the oldest first."""
    if not 0 <= total <= sum(replicas.values()):
        raise ValueError(f"cannot shrink {replicas} to {total} replicas")
    targets = dict(replicas)
    excess = sum(replicas.values()) - total
    for rev in sorted(targets):
        cut = min(excess, targets[rev])
        targets[rev] -= cut
        excess -= cut
    return targets
