"""The Backend protocol: what every place that runs APIs must do, and the state it reports.

Flows drive only this protocol, so the local agent and Kubernetes are interchangeable. The model is
desired state: an API has versions (one per rollout), each with a replica count and a traffic weight;
the backend converges to it and reports what is actually running.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol, Self, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from cortex_flows.serving.config import ReplicaConfig

if TYPE_CHECKING:
    from cortex_flows.rollout.analysis import ArmMetrics
    from cortex_flows.rollout.shadow import ShadowReport


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


class SplitterSpec(BaseModel):
    """A TrafficSplitter as a backend routes it: an endpoint whose requests go to other APIs by weight."""

    name: str
    endpoint: str
    weights: dict[str, int]  # API name -> percent of requests (summing to 100)
    shadow: str | None = None  # an API receiving a copy of `shadow_percent` of the requests
    shadow_percent: int = 0
    spec_hash: str

    @property
    def targets(self) -> list[str]:
        return [*self.weights, *([self.shadow] if self.shadow else [])]


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
    floor: int | None = None  # a canary arm's least replicas (see Backend.scale_version)
    autoscaling: AutoscalingStatus | None = None  # the autoscaler's last decision for this version


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
    mirror_share: float = 0.0  # the share of requests copied to it
    autoscaling: AutoscalingStatus | None = None
    kind: str = "RealtimeAPI"
    splitter: SplitterSpec | None = None  # a TrafficSplitter's routing (it has no versions)

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


class VersionMetrics(BaseModel):
    """What one version's replicas answered from `started` to `at`, summed over its replicas.

    From `Backend.version_metrics` the counts are cumulative: every replica the version ran since it was
    created (or since the backend started counting it, `started`), including replicas that have since
    stopped or restarted, so each count only grows. `since` turns two such snapshots into the counts of
    the window between them, and `as_arm` into what canary analysis judges. The series are the replicas'
    own (`cortex_flows.serving.metrics`): requests by status code, the latency histogram of admitted
    requests, and predictions (class counts; count and sum of numeric ones).
    """

    model_config = ConfigDict(ser_json_inf_nan="strings")  # the +Inf bucket survives JSON

    requests: int = 0  # every response a replica sent, by any status
    errors: int = 0  # 5xx responses (the client's 4xx are not errors of the version)
    by_status: dict[str, int] = Field(default_factory=dict)  # "200" -> count
    # Cumulative Prometheus buckets of the request duration, (upper bound in seconds, count), +Inf last;
    # the +Inf count is the number of admitted requests (requests shed before admission have no latency).
    latency_buckets: list[tuple[float, int]] = Field(default_factory=list)
    classes: dict[str, int] = Field(default_factory=dict)  # predicted class -> count
    value_count: int = 0  # numeric predictions
    value_sum: float = 0.0  # their sum (signed, as the predictions are)
    replicas_seen: int = 0  # replicas whose /metrics answered for this snapshot
    started: datetime | None = None  # start of the counting: the counts cover [started, at]
    at: datetime

    @property
    def value_mean(self) -> float | None:
        return self.value_sum / self.value_count if self.value_count else None

    def since(self, earlier: VersionMetrics | None) -> VersionMetrics:
        """The counts between `earlier` (a snapshot of the same version) and this one; never negative.

        None means from the start. If the two were counted from different starts (the backend restarted
        its counting in between, losing what it had carried), this whole snapshot is the window's count,
        as Prometheus' `increase()` reads a counter reset. A count lower than before is otherwise taken as
        no change (0), and buckets stay cumulative.
        """
        if earlier is None:
            return self.model_copy(deep=True)
        if earlier.started is not None and self.started is not None and earlier.started != self.started:
            return self.model_copy(deep=True)
        by_status = _minus(self.by_status, earlier.by_status)
        classes = _minus(self.classes, earlier.classes)
        before = dict(earlier.latency_buckets)
        buckets: list[tuple[float, int]] = []
        running = 0
        for le, count in self.latency_buckets:
            running = max(running, count - before.get(le, 0))
            buckets.append((le, running))
        value_count = max(0, self.value_count - earlier.value_count)
        return VersionMetrics(
            requests=sum(by_status.values()) if self.by_status else max(0, self.requests - earlier.requests),
            errors=server_errors(by_status) if self.by_status else max(0, self.errors - earlier.errors),
            by_status=by_status,
            latency_buckets=buckets,
            classes=classes,
            value_count=value_count,
            value_sum=self.value_sum - earlier.value_sum if value_count else 0.0,
            replicas_seen=self.replicas_seen,
            started=earlier.at,
            at=self.at,
        )

    def as_arm(self) -> ArmMetrics:
        """These counts as one arm of `cortex_flows.rollout.analysis` (requests, 5xx, latency buckets,
        classes; numeric predictions are only a count and sum here, so no value samples)."""
        from cortex_flows.rollout.analysis import ArmMetrics  # numpy and scipy: only when analysing

        buckets = self.latency_buckets if len(self.latency_buckets) >= 2 else ()
        if buckets and not math.isinf(buckets[-1][0]):
            raise ValueError("latency buckets must end with +Inf")
        return ArmMetrics(
            requests=self.requests,
            errors=min(self.errors, self.requests),
            latency_buckets=buckets,
            classes=dict(self.classes),
        )


def _minus(now: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {key: max(0, n - before.get(key, 0)) for key, n in now.items()}


def server_errors(by_status: dict[str, int]) -> int:
    """5xx responses among counts by status code."""
    return sum(n for code, n in by_status.items() if code.startswith("5") and len(code) == 3)


@runtime_checkable
class Backend(Protocol):
    """Operations a flow may ask of the place APIs run. Every method is idempotent.

    `async with backend:` keeps one connection to the cluster for the calls inside it; without it every
    call connects on its own."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def prepare_version(self, api: str, version: VersionSpec, secret_env: dict[str, str] | None = None) -> str:
        """Make what the version's replicas need (package fetched, dependencies installed) before any
        starts, so a failure costs nothing that serves; returns a line saying what was done. Raises
        BackendError with the installer's own message when the dependencies cannot be installed."""

    async def apply_version(
        self, api: str, version: VersionSpec, replicas: int, secret_env: dict[str, str] | None = None
    ) -> None:
        """Create the version if absent (else update its replica count and in-place settings). `secret_env`
        is what only the API's replicas may read (AWS credentials; the API's keys in `CORTEX_API_KEYS`), kept
        out of the version's recorded state and given to the replicas through a secret channel."""

    async def set_traffic(
        self, api: str, weights: dict[int, int], mirror: int | None = None, mirror_share: float = 0.0
    ) -> None:
        """Route traffic by revision -> weight (summing to 100); optionally copy `mirror_share` of the
        requests to one revision (shadow: its responses are compared with the served ones, then dropped)."""

    async def shadow_report(self, name: str) -> ShadowReport | None:
        """Cumulative comparison of the mirrored requests of an API or splitter with the responses served
        (agreement, latencies, shadow errors); None when it never mirrored. Two reports' `since` is the
        window between them."""

    async def apply_splitter(self, splitter: SplitterSpec) -> None:
        """Create or update a TrafficSplitter. Raises BackendError (not transient) when a target is not a
        deployed API, or the name or endpoint is taken."""

    async def probe(self, api: str, revision: int, payload: object | None) -> tuple[int, str]:
        """(status, body) of one request to a ready replica of the revision, bypassing traffic weights:
        POST `payload`, or GET `/readyz` when it is None. Lets a rollout test a version before it
        takes traffic."""

    async def version_metrics(self, api: str, revision: int) -> VersionMetrics:
        """Cumulative metrics of a version's replicas since it started (see VersionMetrics): requests by
        status, 5xx errors, latency buckets and predictions, summed over every replica it ran, counting
        the last values of replicas that stopped or restarted, so each count never decreases. Two calls'
        `since` is what the version answered in between, which canary analysis compares across versions.
        Raises NotFound when the API or revision is not deployed."""

    def hold(self, api: str, *, wait: bool, what: str) -> AbstractContextManager[None]:
        """Exclusive right to change the API, across processes, released if the holder dies. Blocks
        while another holder has it (or raises ApiBusy at once when `wait` is false)."""

    async def scale_version(self, api: str, revision: int, replicas: int, arm: bool = False) -> None:
        """Set a version's desired replicas; scale-downs drain before stopping. `arm`: the version is one
        arm of a canary and `replicas` its floor: while the API has more than one version the backend
        autoscales it on its own in-flight load between the floor and `max_replicas` (raising the floor
        never removes replicas). Without `arm` the count is exact and the floor is cleared."""

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
        """Stop and forget the API or TrafficSplitter; False if it did not exist. Refused (BackendError,
        not transient) for an API a splitter sends traffic to."""


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
