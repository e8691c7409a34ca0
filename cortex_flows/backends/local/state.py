"""The agent's desired state: APIs, their versions, replica counts, traffic weights and history.

It is persisted on every change so a restarted agent brings every API back as it was.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

from pydantic import BaseModel, Field

from cortex_flows.backends.base import Outcome, Revision, SplitterSpec, VersionSpec

HISTORY_LIMIT = 10


def now() -> datetime:
    return datetime.now(UTC)


class VersionState(BaseModel):
    """One version the agent keeps running."""

    spec: VersionSpec
    replicas: int
    floor: int | None = None  # a canary arm: autoscaled on its own load, never below this
    created: datetime = Field(default_factory=now)


class ApiRecord(BaseModel):
    """Desired state of one API."""

    name: str
    endpoint: str
    versions: dict[int, VersionState] = Field(default_factory=dict)
    weights: dict[int, int] = Field(default_factory=dict)
    mirror: int | None = None
    mirror_share: float = 0.0
    history: list[Revision] = Field(default_factory=list)  # newest first
    last_update: datetime = Field(default_factory=now)

    def record(self, spec: VersionSpec) -> None:
        """Add a revision to the history (once), keeping the newest HISTORY_LIMIT."""
        if any(r.revision == spec.revision for r in self.history):
            return
        entry = Revision(
            revision=spec.revision,
            package_id=spec.package_id,
            spec_hash=spec.spec_hash,
            created=now(),
            outcome=Outcome.PENDING,
            version=spec,
        )
        self.history = [entry, *self.history][:HISTORY_LIMIT]

    def set_outcome(self, revision: int, outcome: Outcome) -> None:
        for entry in self.history:
            if entry.revision == revision:
                entry.outcome = outcome


class SplitterRecord(BaseModel):
    """A TrafficSplitter the gateway routes."""

    spec: SplitterSpec
    last_update: datetime = Field(default_factory=now)


class AgentState(BaseModel):
    """Everything the agent must bring back after a restart."""

    apis: dict[str, ApiRecord] = Field(default_factory=dict)
    splitters: dict[str, SplitterRecord] = Field(default_factory=dict)


def load_state(path: os.PathLike[str]) -> AgentState:
    try:
        with open(path) as fh:
            return AgentState.model_validate_json(fh.read())
    except FileNotFoundError:
        return AgentState()


def save_state(path: os.PathLike[str], state: AgentState) -> None:
    """Write atomically: a crash mid-write must never leave a half state file."""
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w") as fh:
        fh.write(state.model_dump_json(indent=1))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
