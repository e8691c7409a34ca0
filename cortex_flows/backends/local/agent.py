"""The local agent: one long-running process that owns replicas, the gateway and the control API.

`python -m cortex_flows.backends.local.agent --home DIR --port 8888` (normally started by
`cortex-flows cluster up` or the first deploy). Desired state lives in `DIR/state.json`; on start the
agent reaps replicas a killed predecessor left behind and brings every API back.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import time
from datetime import datetime
from pathlib import Path

import httpx

from cortex_flows.backends.base import (
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
from cortex_flows.backends.local.autoscaler import DEFAULT_TICK_SECONDS, Autoscaler, Unit, WakingTable
from cortex_flows.backends.local.gateway import Gateway, RoutingTable, Upstream
from cortex_flows.backends.local.home import AgentInfo, LocalHome, write_private
from cortex_flows.backends.local.routing import Mirror
from cortex_flows.backends.local.scrape import (
    INTERVAL_ENV,
    SCRAPE_INTERVAL,
    MetricsCollector,
    interval_from_env,
)
from cortex_flows.backends.local.state import (
    ApiRecord,
    SplitterRecord,
    VersionState,
    load_state,
    now,
    save_state,
)
from cortex_flows.backends.local.supervisor import DEFAULT_GRACE_SECONDS, Supervisor, log_tail
from cortex_flows.rollout.shadow import ShadowReport
from cortex_flows.serving.auth import API_KEYS_ENV, parse_api_keys
from cortex_flows.spec import RealtimeAPI

log = logging.getLogger("cortex_flows.agent")

PROBE_TIMEOUT = 60.0
TICK_ENV = "CORTEX_FLOWS_AUTOSCALE_TICK"


class Agent:
    """Desired state plus the machinery that converges to it. Mutations of one API are serialised."""

    def __init__(
        self,
        home: LocalHome,
        gateway: Gateway,
        table: RoutingTable,
        autoscale_tick: float = DEFAULT_TICK_SECONDS,
        metrics_interval: float = SCRAPE_INTERVAL,
    ) -> None:
        self.home = home
        self.gateway = gateway
        self.table = table
        self.started = now()
        self.state = load_state(home.state_file)
        self.supervisor = Supervisor(home.replicas, home.logs, self._publish)
        self.metrics = MetricsCollector(self.supervisor, self._counting_start, metrics_interval)
        self.supervisor.before_stop = self.metrics.before_stop
        self._locks: dict[str, asyncio.Lock] = {}
        self._specs: dict[str, RealtimeAPI] = {}  # by spec hash: parsed once, read every second
        self._waking: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._held: dict[str, int] = table.held if isinstance(table, WakingTable) else {}
        self.autoscaler = Autoscaler(
            units=self._units, in_flight=self._unit_in_flight, scale=self._autoscale, locks=home.locks,
            tick=autoscale_tick,
        )  # fmt: skip
        if isinstance(table, WakingTable):
            table.wake = self.wake

    def _units(self) -> list[Unit]:
        """What the autoscaler may act on: each API's only version, and every canary arm (a version with a
        floor, while its API has more than one version)."""
        units = []
        for name, rec in self.state.apis.items():
            for revision, version in rec.versions.items():
                if len(rec.versions) > 1 and version.floor is None:
                    continue  # a rolling update's version: the rollout alone sizes it
                spec = self._specs.get(version.spec.spec_hash)
                if spec is None:
                    spec = self._specs[version.spec.spec_hash] = RealtimeAPI.model_validate(version.spec.spec)
                starting = self.supervisor.counts(name, revision)[1]
                floor = version.floor if len(rec.versions) > 1 else None
                units.append(Unit(name, revision, version.replicas, spec, starting, floor))
        return units

    def _unit_in_flight(self, unit: Unit) -> int:
        """An API's requests in flight (with those held while it has no replica); an arm's own replicas'."""
        if unit.floor is None:
            return self.gateway.api_in_flight(unit.api) + self._held.get(unit.api, 0)
        return sum(self.gateway.in_flight(u) for u in self.supervisor.ready_upstreams(unit.api, unit.revision))

    def wake(self, api: str) -> None:
        """A request arrived for an API with no ready replica: if it is scaled to zero, start one now."""
        rec = self.state.apis.get(api)
        if rec is None or api in self._waking or len(rec.versions) != 1:
            return
        (revision, version), = rec.versions.items()
        if version.replicas > 0:
            return  # replicas are starting or restarting: the request waits for them
        self._waking.add(api)
        self.autoscaler.woken(api, revision, time.monotonic())
        log.info("%s has no replica and a request waiting: starting one", api)

        async def start() -> None:
            try:
                await self.scale_version(api, revision, 1)
            finally:
                self._waking.discard(api)

        task = asyncio.get_running_loop().create_task(start())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _counting_start(self, api: str, revision: int) -> datetime | None:
        """When this agent began counting a version's metrics; None if the version is not deployed."""
        rec = self.state.apis.get(api)
        version = rec.versions.get(revision) if rec else None
        return None if version is None else max(version.created, self.started)

    def _deployed(self) -> list[tuple[str, int]]:
        return [(api, revision) for api, rec in self.state.apis.items() for revision in rec.versions]

    def _lock(self, api: str) -> asyncio.Lock:
        return self._locks.setdefault(api, asyncio.Lock())

    def _save(self) -> None:
        save_state(self.home.state_file, self.state)

    def _record(self, api: str) -> ApiRecord:
        rec = self.state.apis.get(api)
        if rec is None:
            raise NotFound(f"API {api!r} is not deployed")
        return rec

    def _secret_env(self, api: str) -> dict[str, str]:
        path = self.home.secrets / f"{api}.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def _drain_count(self, upstream: Upstream) -> int:
        return self.gateway.in_flight(upstream)

    def _publish(self, api: str) -> None:
        """Point the gateway at the ready replicas of each weighted version of the API (and of the
        version receiving a copy of the traffic, if any)."""
        rec = self.state.apis.get(api)
        if rec is None:
            self.table.remove_route(api)
            return
        groups = [(w, self.supervisor.ready_upstreams(api, rev)) for rev, w in sorted(rec.weights.items())]
        mirror = None
        if rec.mirror is not None and rec.mirror_share > 0:
            mirror = Mirror(rec.mirror_share, tuple(self.supervisor.ready_upstreams(api, rec.mirror)))
        self.table.set_route(api, rec.endpoint, groups, mirror=mirror)

    def _publish_split(self, name: str) -> None:
        split = self.state.splitters[name].spec
        mirror = Mirror(split.shadow_percent / 100, split.shadow) if split.shadow else None
        self.table.set_split(name, split.endpoint, [(w, api) for api, w in split.weights.items()], mirror=mirror)

    def _endpoint_owner(self, endpoint: str) -> str | None:
        """The API or splitter serving `endpoint`, if any."""
        owners = [*self.state.apis.values(), *(s.spec for s in self.state.splitters.values())]
        return next((o.name for o in owners if o.endpoint == endpoint), None)

    async def _converge(self, api: str, revision: int, grace: float = DEFAULT_GRACE_SECONDS) -> None:
        rec = self._record(api)
        version = rec.versions[revision]
        config = version.spec.replica.model_copy(update={"cache_dir": str(self.home.cache)})
        await self.supervisor.scale(
            api, revision, config, version.replicas, self._secret_env(api), self._drain_count, grace
        )

    async def restore(self) -> None:
        reaped = self.supervisor.reap_orphans()
        if reaped:
            log.info("stopped %d replica(s) left by a previous agent", reaped)
        for api, rec in self.state.apis.items():
            self._publish(api)
            for revision in rec.versions:
                await self._converge(api, revision)
        for name in self.state.splitters:
            self._publish_split(name)

    # -- operations of the Backend protocol -------------------------------------------------------

    async def apply_version(
        self, api: str, spec: VersionSpec, replicas: int, secret_env: dict[str, str] | None
    ) -> None:
        async with self._lock(api):
            rec = self.state.apis.get(api)
            if api in self.state.splitters:
                raise BackendError(f"{api!r} is a TrafficSplitter; give the API another name", status=422)
            owner = self._endpoint_owner(spec.endpoint)
            if owner is not None and owner != api:
                raise BackendError(f"endpoint {spec.endpoint} is already used by {owner!r}", status=409)
            if rec is None:
                rec = self.state.apis[api] = ApiRecord(name=api, endpoint=spec.endpoint)
            current = rec.versions.get(spec.revision)
            if current is not None and current.spec.pod_hash != spec.pod_hash:
                raise BackendError(
                    f"revision {spec.revision} of {api!r} exists with other pod settings; use a new revision",
                    status=409,
                )
            if secret_env is not None:
                write_private(self.home.secrets / f"{api}.json", json.dumps(secret_env))
            if current is None:
                rec.versions[spec.revision] = VersionState(spec=spec, replicas=replicas)
                rec.record(spec)
                if not rec.weights:
                    rec.weights = {spec.revision: 100}
            else:
                current.spec, current.replicas = spec, replicas
            rec.endpoint = spec.endpoint
            rec.last_update = now()
            self._save()
            self._publish(api)
            await self._converge(api, spec.revision)

    async def set_traffic(self, api: str, weights: dict[int, int], mirror: int | None, mirror_share: float) -> None:
        async with self._lock(api):
            rec = self._record(api)
            unknown = set(weights) - set(rec.versions)
            if unknown or (mirror is not None and mirror not in rec.versions):
                raise BackendError(f"unknown revision(s) {sorted(unknown) or [mirror]} for {api!r}", status=400)
            if sum(weights.values()) != 100 or any(w < 0 for w in weights.values()):
                raise BackendError(f"weights must be >= 0 and sum to 100, got {weights}", status=400)
            if not 0 <= mirror_share <= 1:
                raise BackendError(f"mirror_share must be within 0..1, got {mirror_share}", status=400)
            rec.weights, rec.mirror = dict(weights), mirror
            rec.mirror_share = mirror_share if mirror is not None else 0.0
            rec.last_update = now()
            self._save()
            self._publish(api)

    async def scale_version(self, api: str, revision: int, replicas: int, arm: bool = False) -> None:
        """Set a version's replicas. `arm`: `replicas` is also the floor the autoscaler keeps this canary
        arm at or above; raising the floor never removes replicas the autoscaler added."""
        async with self._lock(api):
            version = self._version(api, revision)
            if arm and replicas >= (version.replicas if version.floor is None else version.floor):
                version.replicas = max(replicas, version.replicas)
            else:
                version.replicas = replicas
            version.floor = replicas if arm else None
            self._save()
            await self._converge(api, revision)

    async def _autoscale(self, api: str, revision: int, replicas: int) -> None:
        """The autoscaler's scale: the replica count only, so an arm keeps its floor."""
        async with self._lock(api):
            self._version(api, revision).replicas = replicas
            self._save()
            await self._converge(api, revision)

    def _version(self, api: str, revision: int) -> VersionState:
        version = self._record(api).versions.get(revision)
        if version is None:
            raise NotFound(f"{api!r} has no revision {revision}")
        return version

    async def remove_version(self, api: str, revision: int, outcome: Outcome) -> None:
        async with self._lock(api):
            rec = self._record(api)
            if revision in rec.versions:
                if rec.weights.get(revision) and len(rec.versions) == 1:
                    raise BackendError(f"revision {revision} is the only version of {api!r}", status=409)
                rec.weights.pop(revision, None)
                if rec.mirror == revision:
                    rec.mirror = None
                self._publish(api)
                await self.supervisor.stop_all(api, revision, self._drain_count, DEFAULT_GRACE_SECONDS)
                del rec.versions[revision]
                self.metrics.forget(api, revision)
            rec.set_outcome(revision, outcome)
            rec.last_update = now()
            self._save()

    async def record_outcome(self, api: str, revision: int, outcome: Outcome) -> None:
        async with self._lock(api):
            self._record(api).set_outcome(revision, outcome)
            self._save()

    async def apply_splitter(self, split: SplitterSpec) -> None:
        async with self._lock(split.name):
            kind = "TrafficSplitter"
            if split.name in self.state.apis:
                raise BackendError(f"{split.name!r} is a RealtimeAPI; give the {kind} another name", status=422)
            missing = [name for name in split.targets if name not in self.state.apis]
            if missing:
                raise BackendError(
                    f"{kind} {split.name!r}: {', '.join(map(repr, missing))} not deployed; a splitter sends traffic "
                    f"only to deployed RealtimeAPIs (deploy them first, or in the same cortex.yaml)",
                    status=422,
                )
            owner = self._endpoint_owner(split.endpoint)
            if owner is not None and owner != split.name:
                raise BackendError(f"endpoint {split.endpoint} is already used by {owner!r}", status=422)
            self.state.splitters[split.name] = SplitterRecord(spec=split)
            self._save()
            self._publish_split(split.name)

    def _users(self, api: str) -> list[str]:
        """Splitters that send traffic (or a shadow copy) to `api`."""
        return sorted(name for name, rec in self.state.splitters.items() if api in rec.spec.targets)

    async def delete_api(self, api: str) -> bool:
        if self.state.splitters.pop(api, None) is not None:
            self._save()
            self.table.remove_route(api)
            return True
        if users := self._users(api):
            names = ", ".join(map(repr, users))
            raise BackendError(
                f"cannot delete {api!r}: TrafficSplitter {names} sends traffic to it; delete the splitter first, "
                f"or deploy it without {api!r}",
                status=422,
            )
        async with self._lock(api):
            rec = self.state.apis.pop(api, None)
            if rec is None:
                return False
            self._save()
            self.table.remove_route(api)
            for revision in rec.versions:
                await self.supervisor.stop_all(api, revision, self._drain_count, DEFAULT_GRACE_SECONDS)
            self.metrics.forget(api)
            (self.home.secrets / f"{api}.json").unlink(missing_ok=True)
            return True

    def names(self) -> list[str]:
        """Every API and TrafficSplitter, by name."""
        return sorted([*self.state.apis, *self.state.splitters])

    def status(self, api: str) -> ApiStatus:
        if api in self.state.splitters:
            return self._splitter_status(api)
        rec = self._record(api)
        versions = []
        for revision, v in sorted(rec.versions.items()):
            ready, starting, failed, restarts, message = self.supervisor.counts(api, revision)
            versions.append(
                VersionStatus(
                    revision=revision, package_id=v.spec.package_id, spec_hash=v.spec.spec_hash,
                    pod_hash=v.spec.pod_hash, desired=v.replicas, ready=ready, starting=starting,
                    failed=failed, weight=rec.weights.get(revision, 0), created=v.created, restarts=restarts,
                    message=message, restart=v.spec.restart, target=v.spec.target_replicas, floor=v.floor,
                    autoscaling=self.autoscaler.last(api, revision),
                )
            )  # fmt: skip
        single = versions[0].autoscaling if len(versions) == 1 else None
        return ApiStatus(
            name=api, endpoint=rec.endpoint, state=summarize(versions), versions=versions,
            last_update=rec.last_update, mirror=rec.mirror, mirror_share=rec.mirror_share, autoscaling=single,
        )  # fmt: skip

    def _splitter_status(self, name: str) -> ApiStatus:
        """A splitter is live when every API it sends traffic to is; else it shows the worst of theirs."""
        rec = self.state.splitters[name]
        states = [self.status(api).state for api in rec.spec.weights if api in self.state.apis]
        worst = next((s for s in (ApiState.ERROR, ApiState.UPDATING, ApiState.STOPPED) if s in states), ApiState.LIVE)
        return ApiStatus(
            name=name, endpoint=rec.spec.endpoint, state=worst, versions=[], last_update=rec.last_update,
            kind="TrafficSplitter", splitter=rec.spec,
        )  # fmt: skip

    def shadow_report(self, name: str) -> ShadowReport | None:
        if name not in self.state.apis and name not in self.state.splitters:
            raise NotFound(f"{name!r} is not deployed")
        return self.table.shadow_report(name)

    async def probe(self, api: str, revision: int, payload: object | None) -> tuple[int, str]:
        """A smoke request to the revision; a POST to an API with keys carries the first one, as a client would."""
        self._record(api)
        ready = self.supervisor.ready_upstreams(api, revision)
        if not ready:
            raise BackendError(f"revision {revision} of {api!r} has no ready replica", status=409, transient=True)
        url = f"http://{ready[0].host}:{ready[0].port}"
        keys = self._secret_env(api).get(API_KEYS_ENV)
        headers = {"x-api-key": parse_api_keys(keys)[0]} if keys else {}
        async with httpx.AsyncClient(timeout=PROBE_TIMEOUT) as client:
            try:
                resp = await (
                    client.get(f"{url}/readyz") if payload is None else client.post(url, json=payload, headers=headers)
                )
            except httpx.HTTPError as exc:
                raise BackendError(f"probe of {api!r} r{revision} failed: {exc!r}", status=502) from exc
        return resp.status_code, resp.text

    async def version_metrics(self, api: str, revision: int) -> VersionMetrics:
        """Cumulative metrics of a version from a fresh scrape of its replicas (see `scrape`)."""
        if revision not in self._record(api).versions:
            raise NotFound(f"{api!r} has no revision {revision}")
        metrics = await self.metrics.version_metrics(api, revision)
        if metrics is None:  # removed while its replicas were being scraped
            raise NotFound(f"{api!r} has no revision {revision}")
        return metrics

    def history(self, api: str) -> list[Revision]:
        return self._record(api).history

    def logs(self, api: str, tail: int) -> str:
        self._record(api)
        files = sorted((self.home.logs / api).glob("*.log"), key=lambda p: p.stat().st_mtime)
        return "\n".join(f"==> {p.stem} <==\n{log_tail(p, tail)}" for p in files[-8:])


async def serve(
    home: LocalHome,
    gateway_port: int,
    autoscale_tick: float = DEFAULT_TICK_SECONDS,
    metrics_interval: float = SCRAPE_INTERVAL,
) -> None:
    """Run the agent until SIGTERM/SIGINT or a shutdown request."""
    from cortex_flows.backends.local.control import control_app

    token = home.token(create=True)
    assert token is not None
    table = WakingTable()
    gateway = Gateway(table, host="127.0.0.1", port=gateway_port)
    await gateway.start()
    agent = Agent(home, gateway, table, autoscale_tick, metrics_interval)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    import uvicorn

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(control_app(agent, token, stop), log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    control = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    await agent.restore()
    home.write_info(AgentInfo(os.getpid(), sock.getsockname()[1], gateway.port))
    log.info("agent up: gateway http://127.0.0.1:%d, control port %d", gateway.port, sock.getsockname()[1])
    autoscaling = asyncio.create_task(agent.autoscaler.run())
    scraping = asyncio.create_task(agent.metrics.run(agent._deployed))
    await stop.wait()
    autoscaling.cancel()
    scraping.cancel()
    log.info("agent stopping")
    home.info_file.unlink(missing_ok=True)
    await agent.metrics.aclose()  # replicas stopping now need no final scrape
    await agent.supervisor.shutdown(grace=DEFAULT_GRACE_SECONDS)
    await gateway.stop(grace=5.0)
    server.should_exit = True
    with contextlib.suppress(asyncio.CancelledError):
        await control


def main() -> None:
    parser = argparse.ArgumentParser(prog="cortex-flows-agent")
    parser.add_argument("--home", required=True)
    parser.add_argument("--port", type=int, required=True, help="gateway port")
    parser.add_argument(
        "--autoscale-tick", type=float, default=float(os.environ.get(TICK_ENV, DEFAULT_TICK_SECONDS)),
        help=f"seconds between autoscaling decisions (default: ${TICK_ENV} or {DEFAULT_TICK_SECONDS:g})",
    )  # fmt: skip
    parser.add_argument(
        "--metrics-interval", type=float, default=interval_from_env(),
        help=f"seconds between background scrapes of replica metrics, 0 for none "
        f"(default: ${INTERVAL_ENV} or {SCRAPE_INTERVAL:g})",
    )  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        from uvloop import new_event_loop
    except ImportError:
        new_event_loop = asyncio.new_event_loop
    home = LocalHome(Path(args.home)).ensure()
    with open(home.root / "agent.lock", "w") as lock, asyncio.Runner(loop_factory=new_event_loop) as runner:
        try:  # held for the agent's lifetime: one agent per home
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"another agent is running for {home.root}") from None
        runner.run(serve(home, args.port, args.autoscale_tick, args.metrics_interval))


if __name__ == "__main__":
    main()
