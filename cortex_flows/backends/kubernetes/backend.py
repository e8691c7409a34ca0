"""`KubernetesBackend`: the Backend protocol on the Kubernetes API.

Per API version: a Deployment, Service, PodDisruptionBudget, autoscaler object and replica ConfigMap
(`manifests.version_objects`); per API an HTTPRoute whose backend weights are the traffic split (and whose
RequestMirror filter is the shadow copy); per TrafficSplitter an HTTPRoute over its APIs' versions; per API
a ConfigMap holding the revision history and a Lease that is the API's lock. Everything is applied with
server-side apply, so re-running any flow leaves the objects as they were. The cluster is the source of
truth: status is read back from the Deployments' own status and the route.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import os
import socket
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Self, TypeVar

from kubernetes_asyncio.client import ApiClient, Configuration

from cortex_flows.backends.base import (
    ApiBusy,
    ApiState,
    ApiStatus,
    BackendError,
    NotFound,
    Outcome,
    Revision,
    SplitterSpec,
    VersionMetrics,
    VersionSpec,
    VersionStatus,
    summarize,
)
from cortex_flows.backends.kubernetes.api import KubeApi
from cortex_flows.backends.kubernetes.manifests import (
    API_KEYS_SECRET_KEY,
    KubeTarget,
    api_keys_secret,
    api_keys_secret_name,
    labels,
    route_object,
    splitter_route,
    version_name,
    version_objects,
)
from cortex_flows.backends.pooling import SharedClient
from cortex_flows.serving.auth import API_KEYS_ENV, parse_api_keys

if TYPE_CHECKING:
    from cortex_flows.rollout.shadow import ShadowReport

log = logging.getLogger("cortex_flows.kubernetes")

T = TypeVar("T")
HISTORY_LIMIT = 10
LEASE_SECONDS = 30  # a holder that stops renewing (it died) loses the lock after this
RENEW_SECONDS = 10
WAIT_POLL_SECONDS = 1.0
ANNOTATION = "cortex-flows.dev/"
SPLITTERS = {"app.kubernetes.io/component": "splitter", "app.kubernetes.io/managed-by": "cortex-flows"}
VERSION_KINDS = ("Deployment", "Service", "PodDisruptionBudget", "ConfigMap")  # plus the autoscaler object
MetricsReader = Callable[[str, int, datetime], Awaitable[VersionMetrics]]


class KubernetesBackend:
    """Drives one namespace of a cluster; `configure` returns a fresh client Configuration (credentials
    are loaded by the caller's block inside it, per call, so tokens that expire are renewed)."""

    kind = "kubernetes"

    def __init__(
        self,
        target: KubeTarget,
        configure: Callable[[], Awaitable[Configuration]],
        gateway_url: str,
        metrics: MetricsReader | None = None,
    ) -> None:
        self.target = target
        self.configure = configure
        self.gateway_url = gateway_url.rstrip("/")
        self.metrics = metrics
        self.calls = 0  # API requests made through this backend (retries included)
        self._clients = SharedClient(self._open_client, ApiClient.close)

    async def __aenter__(self) -> Self:
        await self._clients.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._clients.__aexit__(*exc)

    async def _open_client(self) -> ApiClient:
        return ApiClient(await self.configure())

    @asynccontextmanager
    async def _kube(self) -> Any:
        async with self._clients.use() as client:
            client.configuration = await self.configure()  # a renewed token; the cluster and its CA stay
            kube = KubeApi(client, self.target.namespace)
            try:
                yield kube
            finally:
                self.calls += kube.calls

    # --- versions ------------------------------------------------------------------------------------------

    async def prepare_version(
        self, api: str, version: VersionSpec, secret_env: dict[str, str] | None = None
    ) -> str:
        """Nothing to do before the pods: each pod's init container fetches, verifies and prepares."""
        return f"each pod's init container fetches and verifies package {version.package_id[:12]}"

    async def apply_version(
        self, api: str, version: VersionSpec, replicas: int, secret_env: dict[str, str] | None = None
    ) -> None:
        async with self._kube() as kube:
            route, current, history = await asyncio.gather(  # one round trip for the reads, then the checks
                kube.get("HTTPRoute", api),
                kube.get("Deployment", version_name(api, version.revision)),
                self._history(kube, api),
            )
            if route is not None and _annotation(route, "splitter"):
                raise BackendError(f"{api!r} is a TrafficSplitter; give the API another name", status=422)
            if current is not None and _annotation(current, "pod-hash") != version.pod_hash:
                raise BackendError(
                    f"revision {version.revision} of {api!r} exists with other pod settings; use a new revision",
                    status=409,
                )
            target = await self._target_for(kube, api, secret_env)
            if not any(r.revision == version.revision for r in history):
                entry = Revision(revision=version.revision, package_id=version.package_id,
                                 spec_hash=version.spec_hash, created=datetime.now(UTC), outcome=Outcome.PENDING,
                                 version=version)  # fmt: skip
                await self._save_history(kube, api, [entry, *history][:HISTORY_LIMIT])
            await self._apply_version(kube, version, replicas, target, _floor(current))
            if route is None:  # no traffic until the rollout moves it, after readiness and the smoke test
                await kube.apply(route_object(api, version.endpoint, {version.revision: 0}, self.target))

    async def scale_version(self, api: str, revision: int, replicas: int, arm: bool = False) -> None:
        """The Deployment's replicas; for an arm also its autoscaler's floor (raising it keeps replicas)."""
        async with self._kube() as kube:
            version, current = await self._version(kube, api, revision)
            desired = int((current.get("spec") or {}).get("replicas") or 0)
            old_floor = _floor(current)
            if arm and replicas >= (desired if old_floor is None else old_floor):
                count = max(replicas, desired)
            else:
                count = replicas
            target = await self._target_for(kube, api, None)
            await self._apply_version(kube, version, count, target, replicas if arm else None)

    async def _apply_version(
        self, kube: KubeApi, version: VersionSpec, replicas: int, target: KubeTarget, floor: int | None
    ) -> None:
        """The version's objects; a canary arm's floor is noted on its Deployment to be read back."""
        objects = version_objects(version, replicas, target, floor=floor)
        for obj in objects:
            if obj["kind"] == "Deployment" and floor is not None:
                obj["metadata"].setdefault("annotations", {})[ANNOTATION + "floor"] = str(floor)
        await asyncio.gather(*(kube.apply(o) for o in objects))

    async def remove_version(self, api: str, revision: int, outcome: Outcome) -> None:
        """Out of the route first, then delete (pods drain through preStop and their grace period)."""
        async with self._kube() as kube:
            route = await kube.get("HTTPRoute", api)
            if route is not None:
                weights, mirror = _route_weights(route, api)
                if weights.get(revision) and len(weights) == 1:
                    raise BackendError(f"revision {revision} is the only version of {api!r}", status=409)
                weights.pop(revision, None)
                if mirror is not None and mirror[0] == revision:
                    mirror = None
                if weights:
                    await self._apply_route(kube, api, _endpoint(route), weights, mirror)
            name = version_name(api, revision)
            for kind in (*VERSION_KINDS, self._autoscaler_kind()):
                await kube.delete(kind, name)
            await self._set_outcome(kube, api, revision, outcome)

    async def record_outcome(self, api: str, revision: int, outcome: Outcome) -> None:
        async with self._kube() as kube:
            await self._set_outcome(kube, api, revision, outcome)

    # --- traffic -------------------------------------------------------------------------------------------

    async def set_traffic(
        self, api: str, weights: dict[int, int], mirror: int | None = None, mirror_share: float = 0.0
    ) -> None:
        if sum(weights.values()) != 100 or any(w < 0 for w in weights.values()):
            raise BackendError(f"weights must be >= 0 and sum to 100, got {weights}", status=400)
        async with self._kube() as kube:
            route, deployments = await asyncio.gather(kube.get("HTTPRoute", api), self._deployments(kube, api))
            if route is None:
                raise NotFound(f"API {api!r} is not deployed")
            deployed = {int(_annotation(d, "revision")) for d in deployments}
            unknown = (set(weights) | ({mirror} if mirror is not None else set())) - deployed
            if unknown:
                raise BackendError(f"unknown revision(s) {sorted(unknown)} for {api!r}", status=400)
            share = (mirror, mirror_share) if mirror is not None and mirror_share > 0 else None
            await self._apply_route(kube, api, _endpoint(route), weights, share)

    async def _apply_route(
        self,
        kube: KubeApi,
        api: str,
        endpoint: str,
        weights: dict[int, int],
        mirror: tuple[int, float] | None,
    ) -> None:
        """The API's route, then every splitter over it (their weights multiply the API's)."""
        _, splitters = await asyncio.gather(
            kube.apply(route_object(api, endpoint, weights, self.target, mirror)), self._splitters(kube)
        )
        for split in splitters:
            if api in split.targets:
                await self._apply_splitter_route(kube, split)

    async def apply_splitter(self, splitter: SplitterSpec) -> None:
        async with self._kube() as kube:
            if await self._deployments(kube, splitter.name):
                raise BackendError(
                    f"{splitter.name!r} is a RealtimeAPI; give the TrafficSplitter another name", status=422
                )
            missing = [name for name in splitter.targets if not await self._deployments(kube, name)]
            if missing:
                raise BackendError(
                    f"TrafficSplitter {splitter.name!r}: {', '.join(map(repr, missing))} not deployed; a splitter "
                    f"sends traffic only to deployed RealtimeAPIs (deploy them first, or in the same cortex.yaml)",
                    status=422,
                )
            await self._apply_splitter_route(kube, splitter)

    async def _apply_splitter_route(self, kube: KubeApi, split: SplitterSpec) -> None:
        weights = {}
        for name in split.targets:
            route = await kube.get("HTTPRoute", name)
            weights[name] = _route_weights(route, name)[0] if route else {}
        await kube.apply(splitter_route(split, weights, self.target))

    async def _splitters(self, kube: KubeApi) -> list[SplitterSpec]:
        routes = await kube.list("HTTPRoute", SPLITTERS)
        return [SplitterSpec.model_validate_json(_annotation(r, "splitter")) for r in routes]

    # --- reading -------------------------------------------------------------------------------------------

    def endpoint_url(self, endpoint: str) -> str:
        return f"{self.gateway_url}{endpoint}"

    async def status(self, api: str) -> ApiStatus | None:
        async with self._kube() as kube:
            return await self._status(kube, api)

    async def _status(self, kube: KubeApi, api: str) -> ApiStatus | None:
        route, deployments = await asyncio.gather(kube.get("HTTPRoute", api), self._deployments(kube, api))
        if route is not None and _annotation(route, "splitter"):
            split = SplitterSpec.model_validate_json(_annotation(route, "splitter"))
            states = [
                s.state for s in await asyncio.gather(*(self._status(kube, n) for n in split.weights)) if s
            ]
            worst = next(
                (s for s in (ApiState.ERROR, ApiState.UPDATING, ApiState.STOPPED) if s in states),
                ApiState.LIVE,
            )
            return ApiStatus(name=api, endpoint=split.endpoint, state=worst, versions=[], last_update=datetime.now(UTC),
                             kind="TrafficSplitter", splitter=split)  # fmt: skip
        if not deployments:
            return None
        weights, mirror = _route_weights(route, api) if route else ({}, None)
        history = {r.revision: r for r in await self._history(kube, api)}
        versions = [_version_status(d, weights, history) for d in deployments]
        versions.sort(key=lambda v: v.revision)
        endpoint = _endpoint(route) if route else ""
        last = max((r.created for r in history.values()), default=datetime.now(UTC))
        return ApiStatus(
            name=api, endpoint=endpoint, state=summarize(versions), versions=versions, last_update=last,
            mirror=mirror[0] if mirror else None, mirror_share=mirror[1] if mirror else 0.0,
        )  # fmt: skip

    async def list_apis(self) -> list[ApiStatus]:
        async with self._kube() as kube:
            routes = await kube.list("HTTPRoute", {"app.kubernetes.io/managed-by": "cortex-flows"})
            found = await asyncio.gather(*(self._status(kube, r["metadata"]["name"]) for r in routes))
        return sorted((s for s in found if s is not None), key=lambda s: s.name)

    async def history(self, api: str) -> list[Revision]:
        async with self._kube() as kube:
            return await self._history(kube, api)

    async def logs(self, api: str, tail: int = 200) -> str:
        async with self._kube() as kube:
            pods = await kube.list("Pod", labels(api))
            parts = []
            for pod in pods[:8]:
                name = pod["metadata"]["name"]
                text = await kube.text(kube.path("Pod", name, "/log"), [("tailLines", str(tail))])
                parts.append(f"==> {name} <==\n{text}")
            return "\n".join(parts)

    async def version_metrics(self, api: str, revision: int) -> VersionMetrics:
        async with self._kube() as kube:
            await self._version(kube, api, revision)
            history = {r.revision: r for r in await self._history(kube, api)}
        if self.metrics is None:
            raise BackendError("no metrics source is configured (CortexCluster.metrics)")
        started = history[revision].created if revision in history else datetime.now(UTC)
        return await self.metrics(api, revision, started)

    async def shadow_report(self, name: str) -> ShadowReport | None:
        """None: a Gateway API RequestMirror drops the shadow's answers unseen, so nothing compares them
        (a shadow step is judged on the candidate's own metrics alone here)."""
        return None

    async def probe(self, api: str, revision: int, payload: object | None) -> tuple[int, str]:
        """Through the API server's service proxy, straight to the version's Service (no route weights).
        A payload carries one of the API's keys, from its Secret, as `X-Api-Key`: the API server uses the
        Authorization header for itself and does not pass it on."""
        async with self._kube() as kube:
            await self._version(kube, api, revision)
            path = kube.path("Service", f"{version_name(api, revision)}:http", "/proxy/")
            try:
                if payload is None:
                    body = await kube.text(path + "readyz")
                else:
                    key = await self._api_key(kube, api)
                    headers = {"X-Api-Key": key} if key else None
                    body = json.dumps(await kube.request("POST", path, payload, headers=headers))
            except BackendError as exc:
                if exc.status is not None and exc.status < 500:
                    return exc.status, str(exc)
                raise
            return 200, body

    # --- delete ----------------------------------------------------------------------------------------------

    async def delete_api(self, api: str) -> bool:
        async with self._kube() as kube:
            route = await kube.get("HTTPRoute", api)
            if route is not None and _annotation(route, "splitter"):
                return await kube.delete("HTTPRoute", api)
            users = sorted(s.name for s in await self._splitters(kube) if api in s.targets)
            if users:
                raise BackendError(
                    f"cannot delete {api!r}: TrafficSplitter {', '.join(map(repr, users))} sends traffic to it; "
                    f"delete the splitter first, or deploy it without {api!r}",
                    status=422,
                )
            deployments = await self._deployments(kube, api)
            if route is None and not deployments:
                return False
            await kube.delete("HTTPRoute", api)
            for d in deployments:
                for kind in (*VERSION_KINDS, self._autoscaler_kind()):
                    await kube.delete(kind, d["metadata"]["name"])
            for name in (f"{api}-history", f"{api}-aws", api_keys_secret_name(api)):
                await kube.delete("ConfigMap" if name.endswith("history") else "Secret", name)
            return True

    # --- the lock ------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def hold(self, api: str, *, wait: bool, what: str) -> Iterator[None]:
        """A Lease `<api>-lock` held by this process: renewed every RENEW_SECONDS, taken over only once
        it expired (its holder died), deleted on release."""
        me = f"{what} (pid {os.getpid()} on {socket.gethostname()})"
        while not _run(self._acquire(api, me)):
            holder = _run(self._holder(api))
            if not wait:
                raise ApiBusy(f"{api}: {holder} is in progress; try again when it ends", status=409)
            log.info("%s: waiting for %s to finish", api, holder)
            threading.Event().wait(WAIT_POLL_SECONDS)
        stop = threading.Event()
        renewer = threading.Thread(target=self._renew, args=(api, me, stop), daemon=True)
        renewer.start()
        try:
            yield
        finally:
            stop.set()
            renewer.join()
            _run(self._release(api, me))

    async def _acquire(self, api: str, me: str) -> bool:
        now = _micro(datetime.now(UTC))
        lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                 "metadata": {"name": f"{api}-lock", "namespace": self.target.namespace, "labels": labels(api)},
                 "spec": {"holderIdentity": me, "leaseDurationSeconds": LEASE_SECONDS, "acquireTime": now,
                          "renewTime": now}}  # fmt: skip
        async with self._kube() as kube:
            if await kube.create(lease) is not None:
                return True
            current = await kube.get("Lease", f"{api}-lock")
            if current is None or _expired(current):
                await kube.apply(lease)
                return True
            return False

    async def _holder(self, api: str) -> str:
        async with self._kube() as kube:
            lease = await kube.get("Lease", f"{api}-lock")
        return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "another process")

    def _renew(self, api: str, me: str, stop: threading.Event) -> None:
        while not stop.wait(RENEW_SECONDS):
            try:
                _run(self._renew_once(api, me))
            except BackendError as exc:
                log.warning("%s: could not renew the lock: %s", api, exc)

    async def _renew_once(self, api: str, me: str) -> None:
        async with self._kube() as kube:
            await kube.merge(
                "Lease",
                f"{api}-lock",
                {"spec": {"holderIdentity": me, "renewTime": _micro(datetime.now(UTC))}},
            )

    async def _release(self, api: str, me: str) -> None:
        async with self._kube() as kube:
            lease = await kube.get("Lease", f"{api}-lock")
            if lease is not None and (lease.get("spec") or {}).get("holderIdentity") == me:
                await kube.delete("Lease", f"{api}-lock")

    # --- helpers ---------------------------------------------------------------------------------------------

    def _autoscaler_kind(self) -> str:
        return "ScaledObject" if self.target.autoscaler == "keda" else "HorizontalPodAutoscaler"

    async def _deployments(self, kube: KubeApi, api: str) -> list[dict[str, Any]]:
        return await kube.list(
            "Deployment", {"app.kubernetes.io/name": api, "app.kubernetes.io/managed-by": "cortex-flows"}
        )

    async def _version(self, kube: KubeApi, api: str, revision: int) -> tuple[VersionSpec, dict[str, Any]]:
        current = await kube.get("Deployment", version_name(api, revision))
        entry = next((r for r in await self._history(kube, api) if r.revision == revision), None)
        if current is None or entry is None or entry.version is None:
            raise NotFound(f"{api!r} has no revision {revision}")
        return entry.version, current

    async def _target_for(self, kube: KubeApi, api: str, secret_env: dict[str, str] | None) -> KubeTarget:
        """The target with the API's AWS Secret (written from the block's credentials, never inlined); the
        API's keys go to their own Secret, which only the serving container reads (by secretKeyRef)."""
        name = f"{api}-aws"
        aws_env = dict(secret_env or {})
        keys = aws_env.pop(API_KEYS_ENV, None)
        if keys is not None:
            await kube.apply(api_keys_secret(api, keys, self.target))
        if aws_env:
            secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                      "metadata": {"name": name, "namespace": self.target.namespace, "labels": labels(api)},
                      "stringData": aws_env}  # fmt: skip
            await kube.apply(secret)
        elif await kube.get("Secret", name) is None:
            return self.target
        return dataclasses.replace(self.target, aws_secret=name)

    async def _api_key(self, kube: KubeApi, api: str) -> str | None:
        """One of the API's keys (its Secret's first), or None when the API needs none."""
        secret = await kube.get("Secret", api_keys_secret_name(api))
        if secret is None:
            return None
        written = (secret.get("stringData") or {}).get(API_KEYS_SECRET_KEY)
        stored = (secret.get("data") or {}).get(API_KEYS_SECRET_KEY)
        keys = parse_api_keys(written if written is not None else base64.b64decode(stored or "").decode())
        return keys[0] if keys else None

    async def _history(self, kube: KubeApi, api: str) -> list[Revision]:
        found = await kube.get("ConfigMap", f"{api}-history")
        data = ((found or {}).get("data") or {}).get("revisions.json")
        return [Revision.model_validate(r) for r in json.loads(data)] if data else []

    async def _save_history(self, kube: KubeApi, api: str, history: list[Revision]) -> None:
        text = json.dumps([r.model_dump(mode="json") for r in history], sort_keys=True)
        await kube.apply({"apiVersion": "v1", "kind": "ConfigMap",
                          "metadata": {"name": f"{api}-history", "namespace": self.target.namespace, "labels": labels(api)},
                          "data": {"revisions.json": text}})  # fmt: skip

    async def _set_outcome(self, kube: KubeApi, api: str, revision: int, outcome: Outcome) -> None:
        history = await self._history(kube, api)
        for entry in history:
            if entry.revision == revision:
                entry.outcome = outcome
        await self._save_history(kube, api, history)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, on a thread of its own (the caller may be inside an
    event loop, as Prefect's engine is)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _annotation(obj: dict[str, Any] | None, key: str) -> str:
    return str((((obj or {}).get("metadata") or {}).get("annotations") or {}).get(ANNOTATION + key, ""))


def _floor(deployment: dict[str, Any] | None) -> int | None:
    value = _annotation(deployment, "floor")
    return int(value) if value else None


def _endpoint(route: dict[str, Any]) -> str:
    return str(_annotation(route, "endpoint") or "/" + route["metadata"]["name"])


def _route_weights(route: dict[str, Any], api: str) -> tuple[dict[int, int], tuple[int, float] | None]:
    """Revision -> weight from the route's backendRefs, and the mirrored (revision, share) if any."""
    weights: dict[int, int] = {}
    mirror = None
    prefix = f"{api}-r"
    for rule in (route.get("spec") or {}).get("rules") or []:
        for ref in rule.get("backendRefs") or []:
            if ref["name"].startswith(prefix):
                weights[int(ref["name"][len(prefix) :])] = int(ref.get("weight", 1))
        for f in rule.get("filters") or []:
            if f.get("type") == "RequestMirror":
                target = f["requestMirror"]["backendRef"]["name"]
                percent = (f["requestMirror"].get("percent") or 100) / 100
                if target.startswith(prefix):
                    mirror = (int(target[len(prefix) :]), percent)
    return weights, mirror


def _version_status(
    d: dict[str, Any], weights: dict[int, int], history: dict[int, Revision]
) -> VersionStatus:
    """A version's replicas from its Deployment's status; a passed progress deadline shows as failed."""
    spec, status = d.get("spec") or {}, d.get("status") or {}
    revision = int(_annotation(d, "revision"))
    desired, ready = int(spec.get("replicas") or 0), int(status.get("readyReplicas") or 0)
    stuck = next((c for c in status.get("conditions") or []
                  if c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded"), None)  # fmt: skip
    failed = max(0, desired - ready) if stuck else 0
    target = _annotation(d, "target-replicas")
    entry = history.get(revision)
    return VersionStatus(
        revision=revision, package_id=_annotation(d, "package-id"), spec_hash=_annotation(d, "spec-hash"),
        pod_hash=_annotation(d, "pod-hash"), desired=desired, ready=ready,
        starting=max(0, desired - ready - failed), failed=failed, weight=weights.get(revision, 0),
        created=entry.created if entry else datetime.now(UTC), restarts=1 if stuck else 0,
        message=str(stuck.get("message", "")) if stuck else "", restart=_annotation(d, "restart"),
        target=int(target) if target else None, floor=_floor(d),
    )  # fmt: skip


def _micro(when: datetime) -> str:
    """A Kubernetes MicroTime."""
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _expired(lease: dict[str, Any]) -> bool:
    spec = lease.get("spec") or {}
    renewed = spec.get("renewTime") or spec.get("acquireTime")
    if not renewed:
        return True
    at = datetime.strptime(renewed, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return datetime.now(UTC) > at + timedelta(seconds=int(spec.get("leaseDurationSeconds") or LEASE_SECONDS))
