"""The Backend protocol: what every place that runs APIs must do, and the state it reports.

Flows drive only this protocol, so the local agent and Kubernetes are interchangeable. The model is
desired state: an API has versions (one per rollout), each with a replica count and a traffic weight;
the backend converges to it and reports what is actually running.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import datetime
from enum import StrEnum
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, Field

from cortex_flows.serving.config import ReplicaConfig


class BackendError(Exception):
    """A backend refused or failed an operation. `transient` says whether retrying may help."""

    def __init__(self, message: str, *, transient: bool = False, status: int | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.status = status


class NotFound(BackendError):
    """The named API or version does not exist on this backend."""


class ApiBusy(BackendError):
    """Another deploy, rollback or refresh of the API is in progress."""


class VersionSpec(BaseModel):
    """One version of an API as a rollout asks for it: the replica recipe plus its identities."""

    revision: int
    endpoint: str
    package_id: str
    spec_hash: str  # changes on any spec change
    pod_hash: str  # changes only when replicas must restart
    replica: ReplicaConfig
    spec: dict = Field(default_factory=dict)  # the API spec as deployed, for history and `get -v`
    restart: str = ""  # set by `refresh`: part of the pod hash, kept by later deploys (Cortex's DeploymentID)
    target_replicas: int | None = None  # replicas its rollout aims for, so an interrupted one can resume


class Outcome(StrEnum):
    """How a version's rollout ended, as kept in the revision history."""

    PENDING = "pending"
    LIVE = "live"
    SUPERSEDED = "superseded"
    FAILED = "failed"
    ROLLED_BACK = "rolled-back"


class Revision(BaseModel):
    """One entry of an API's revision history."""

    revision: int
    package_id: str
    spec_hash: str
    created: datetime
    outcome: Outcome
    version: VersionSpec | None = None  # what ran, so `rollback` can run it again


class VersionStatus(BaseModel):
    """A live version: desired and observed replicas, and its share of traffic."""

    revision: int
    package_id: str
    spec_hash: str
    pod_hash: str
    desired: int
    ready: int
    starting: int
    failed: int
    weight: int
    created: datetime
    restarts: int = 0  # crashes of this version's replicas so far
    message: str = ""  # why the last replica failed
    restart: str = ""  # the version's refresh token (see VersionSpec.restart)
    target: int | None = None  # VersionSpec.target_replicas


class AutoscalingStatus(BaseModel):
    """The autoscaler's last decision for an API (what `get NAME` shows)."""

    current: int
    recommended: int
    requested: int
    min_replicas: int
    max_replicas: int
    in_flight: float  # window-averaged total in-flight requests
    reason: str
    at: datetime


class ApiState(StrEnum):
    """Cortex's status words for an API."""

    LIVE = "live"
    UPDATING = "updating"
    ERROR = "error"
    STOPPED = "stopped"  # scaled to zero


class ApiStatus(BaseModel):
    """What `cortex-flows get` shows for an API."""

    name: str
    endpoint: str
    state: ApiState
    versions: list[VersionStatus]
    last_update: datetime
    mirror: int | None = None  # revision receiving a shadow copy of traffic, if any
    autoscaling: AutoscalingStatus | None = None

    @property
    def requested(self) -> int:
        return sum(v.desired for v in self.versions)

    @property
    def ready(self) -> int:
        return sum(v.ready for v in self.versions)

    @property
    def current(self) -> VersionStatus | None:
        """The newest version: the one a finished rollout leaves serving."""
        return max(self.versions, key=lambda v: v.revision, default=None)

    @property
    def up_to_date(self) -> int:
        cur = self.current
        return cur.ready if cur else 0


@runtime_checkable
class Backend(Protocol):
    """Operations a flow may ask of the place APIs run. Every method is idempotent."""

    async def prepare_version(self, api: str, version: VersionSpec, secret_env: dict[str, str] | None = None) -> str:
        """Make what the version's replicas need (package fetched, dependencies installed) before any
        starts, so a failure costs nothing that serves; returns a line saying what was done. Raises
        BackendError with the installer's own message when the dependencies cannot be installed."""

    async def apply_version(
        self, api: str, version: VersionSpec, replicas: int, secret_env: dict[str, str] | None = None
    ) -> None:
        """Create the version if absent (else update its replica count and in-place settings)."""

    async def set_traffic(self, api: str, weights: dict[int, int], mirror: int | None = None) -> None:
        """Route traffic by revision -> weight (summing to 100); optionally mirror to one revision."""

    async def probe(self, api: str, revision: int, payload: object | None) -> tuple[int, str]:
        """(status, body) of one request to a ready replica of the revision, bypassing traffic weights:
        POST `payload`, or GET `/readyz` when it is None. Lets a rollout test a version before it
        takes traffic."""

    def hold(self, api: str, *, wait: bool, what: str) -> AbstractContextManager[None]:
        """Exclusive right to change the API, across processes, released if the holder dies. Blocks
        while another holder has it (or raises ApiBusy at once when `wait` is false)."""

    async def scale_version(self, api: str, revision: int, replicas: int) -> None:
        """Set a version's desired replicas; scale-downs drain before stopping."""

    async def remove_version(self, api: str, revision: int, outcome: Outcome) -> None:
        """Stop routing to a version, drain its replicas, stop them, and record its outcome."""

    async def record_outcome(self, api: str, revision: int, outcome: Outcome) -> None:
        """Record how a version's rollout ended in the revision history."""

    def endpoint_url(self, endpoint: str) -> str:
        """The URL clients call for an API endpoint."""

    async def status(self, api: str) -> ApiStatus | None:
        """The API's observed state, or None if it is not deployed."""

    async def list_apis(self) -> list[ApiStatus]:
        """Every API on this backend."""

    async def history(self, api: str) -> list[Revision]:
        """The API's last revisions, newest first."""

    async def logs(self, api: str, tail: int = 200) -> str:
        """The last lines of the API's replica logs."""

    async def delete_api(self, api: str) -> bool:
        """Stop and forget the API; False if it did not exist."""


def summarize(versions: list[VersionStatus]) -> ApiState:
    """Cortex's status rule: live when the newest version alone serves with all its replicas ready."""
    if not versions or all(v.desired == 0 for v in versions):
        return ApiState.STOPPED
    newest = max(versions, key=lambda v: v.revision)
    others_gone = all(v.desired == 0 and v.ready == 0 for v in versions if v is not newest)
    if newest.ready >= newest.desired and others_gone:
        return ApiState.LIVE
    if newest.failed and newest.ready < newest.desired:
        return ApiState.ERROR
    return ApiState.UPDATING
