"""`LocalBackend`: the Backend protocol spoken to a local agent, and starting/stopping that agent."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Self

import httpx

from cortex_flows.backends.base import (
    ApiBusy,
    ApiStatus,
    BackendError,
    NotFound,
    Outcome,
    Revision,
    SplitterSpec,
    VersionMetrics,
    VersionSpec,
)
from cortex_flows.backends.local.home import AgentInfo, LocalHome, default_gateway_port
from cortex_flows.backends.local.supervisor import DEFAULT_GRACE_SECONDS
from cortex_flows.backends.pooling import SharedClient
from cortex_flows.packaging.dependencies import PIP_TIMEOUT_SECONDS
from cortex_flows.processes import pid_alive

if TYPE_CHECKING:
    from cortex_flows.rollout.shadow import ShadowReport

PREPARE_LOGGER = "cortex_flows.serving"
log = logging.getLogger("cortex_flows.local")

AGENT_START_TIMEOUT = 30.0
# Removing a version drains its replicas, bounded by their grace period, so allow for that.
MUTATION_TIMEOUT = DEFAULT_GRACE_SECONDS * 2 + 30
PREPARE_TIMEOUT = PIP_TIMEOUT_SECONDS + 300  # pip's own limit, plus fetching the package


def running_agent(home: LocalHome) -> AgentInfo | None:
    """The agent serving this home, if one is up and answering."""
    info = home.read_info()
    token = home.token()
    if info is None or token is None or not pid_alive(info.pid):
        return None
    try:
        resp = httpx.get(f"{info.control_url}/v1/info", headers=_auth(token), timeout=2.0)
    except httpx.HTTPError:
        return None
    return info if resp.status_code == 200 else None


def start_agent(home: LocalHome, gateway_port: int | None = None) -> AgentInfo:
    """Start an agent for `home` unless one runs; returns once its control API and gateway answer.

    Concurrent callers (tasks of one flow, several CLIs) serialise on a lock file, so one agent starts.
    """
    info = running_agent(home)
    if info is not None:
        return info
    home.ensure()
    with open(home.root / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return running_agent(home) or _spawn_agent(home, gateway_port)


def _spawn_agent(home: LocalHome, gateway_port: int | None) -> AgentInfo:
    home.info_file.unlink(missing_ok=True)
    port = gateway_port or default_gateway_port()
    with open(home.agent_log, "ab") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cortex_flows.backends.local.agent", "--home", str(home.root), "--port", str(port)],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + AGENT_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = home.agent_log.read_text(errors="replace").strip().splitlines()[-1:]
            raise BackendError(f"local agent failed to start: {' '.join(tail) or 'exit ' + str(proc.returncode)}")
        info = running_agent(home)
        if info is not None:
            return info
        time.sleep(0.05)
    proc.kill()
    raise BackendError(f"local agent did not answer within {AGENT_START_TIMEOUT:.0f}s (log: {home.agent_log})")


def stop_agent(home: LocalHome, timeout: float = DEFAULT_GRACE_SECONDS + 10) -> bool:
    """Stop the agent gracefully (replicas drain); False if none was running."""
    info = home.read_info()
    if info is None or not pid_alive(info.pid):
        return False
    os.kill(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(info.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(info.pid):
        os.kill(info.pid, signal.SIGKILL)
    return True


async def _open_client() -> httpx.AsyncClient:
    return httpx.AsyncClient()


def _auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


class LocalBackend:
    """Drives the agent of one home over its loopback control API; starts the agent when needed."""

    kind = "local"

    def __init__(self, home: LocalHome | None = None, gateway_port: int | None = None, autostart: bool = True):
        self.home = home or LocalHome.default()
        self.gateway_port = gateway_port
        self.autostart = autostart
        self._info: AgentInfo | None = None
        self._clients = SharedClient(_open_client, httpx.AsyncClient.aclose)

    async def __aenter__(self) -> Self:
        await self._clients.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._clients.__aexit__(*exc)

    def _agent(self) -> tuple[AgentInfo, str]:
        if self._info is None:
            self._info = start_agent(self.home, self.gateway_port) if self.autostart else running_agent(self.home)
        token = self.home.token()
        if self._info is None or token is None:
            raise BackendError(f"no local agent is running for {self.home.root} (run `cortex-flows cluster up`)")
        return self._info, token

    def endpoint_url(self, endpoint: str) -> str:
        info, _ = self._agent()
        return f"{info.gateway_url}{endpoint}"

    async def _call(self, method: str, path: str, *, json: Any = None, params: Any = None) -> httpx.Response:
        info, token = self._agent()
        timeout = MUTATION_TIMEOUT if method != "GET" else 10.0
        try:
            async with self._clients.use() as client:
                resp = await client.request(
                    method, f"{info.control_url}{path}", headers=_auth(token), json=json, params=params,
                    timeout=timeout,
                )  # fmt: skip
        except httpx.TimeoutException as exc:
            raise BackendError(f"local agent timed out on {method} {path}", transient=True) from exc
        except httpx.TransportError as exc:
            self._info = None  # the agent may have restarted on another control port
            raise BackendError(f"local agent unreachable on {method} {path}: {exc}", transient=True) from exc
        if resp.status_code == 404:
            raise NotFound(resp.json().get("error", path))
        if resp.status_code >= 400:
            body = resp.json() if resp.headers.get("content-type", "").startswith("application/json") else {}
            transient = resp.status_code in (409, 429) or resp.status_code >= 500 or body.get("transient", False)
            raise BackendError(body.get("error", resp.text), transient=transient, status=resp.status_code)
        return resp

    async def prepare_version(self, api: str, version: VersionSpec, secret_env: dict[str, str] | None = None) -> str:
        """Run the replica runtime's `--prepare-only` here, against the cache the agent's replicas share."""
        from cortex_flows.serving.server import EXIT_DEPENDENCIES_FAILED  # the runtime is heavy for the CLI

        config = version.replica.model_copy(update={"cache_dir": str(self.home.cache)})
        self.home.ensure()
        with tempfile.NamedTemporaryFile("w", dir=self.home.replicas, prefix=f"{api}-r{version.revision}-",
                                         suffix=".prepare.json") as file:  # fmt: skip
            file.write(config.model_dump_json())
            file.flush()
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cortex_flows.serving", "--config", file.name, "--prepare-only",
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
                env={**os.environ, **(secret_env or {}), **config.env},
            )  # fmt: skip
            try:
                _, stderr = await asyncio.wait_for(proc.communicate(), PREPARE_TIMEOUT)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise BackendError(
                    f"{api}: preparing revision {version.revision} took over {PREPARE_TIMEOUT:.0f}s"
                ) from None
        lines = stderr.decode(errors="replace").strip().splitlines()
        if proc.returncode == EXIT_DEPENDENCIES_FAILED:
            raise BackendError(f"{api}: cannot install {config.requirements}:\n" + "\n".join(lines))
        last = lines[-1] if lines else f"exit code {proc.returncode}"
        if proc.returncode != 0:
            raise BackendError(f"{api}: preparing revision {version.revision} failed: {last}")
        return last.partition(f"{PREPARE_LOGGER}: ")[2] or last

    async def apply_version(
        self, api: str, version: VersionSpec, replicas: int, secret_env: dict[str, str] | None = None
    ) -> None:
        body = {"version": version.model_dump(mode="json"), "replicas": replicas, "secret_env": secret_env}
        await self._call("PUT", f"/v1/apis/{api}/versions/{version.revision}", json=body)

    async def set_traffic(
        self, api: str, weights: dict[int, int], mirror: int | None = None, mirror_share: float = 0.0
    ) -> None:
        body = {"weights": weights, "mirror": mirror, "mirror_share": mirror_share}
        await self._call("PUT", f"/v1/apis/{api}/traffic", json=body)

    async def shadow_report(self, name: str) -> ShadowReport | None:
        from cortex_flows.rollout.shadow import ShadowReport

        resp = await self._call("GET", f"/v1/apis/{name}/shadow")
        return None if resp.content == b"null" else ShadowReport.model_validate_json(resp.content)

    async def apply_splitter(self, splitter: SplitterSpec) -> None:
        await self._call("PUT", f"/v1/splitters/{splitter.name}", json=splitter.model_dump(mode="json"))

    async def probe(self, api: str, revision: int, payload: object | None) -> tuple[int, str]:
        body = None if payload is None else {"payload": payload}
        data = (await self._call("POST", f"/v1/apis/{api}/versions/{revision}/probe", json=body)).json()
        return data["status"], data["body"]

    async def version_metrics(self, api: str, revision: int) -> VersionMetrics:
        """The agent scrapes the version's replicas now and answers with its cumulative counts."""
        resp = await self._call("GET", f"/v1/apis/{api}/versions/{revision}/metrics")
        return VersionMetrics.model_validate_json(resp.content)

    @contextlib.contextmanager
    def hold(self, api: str, *, wait: bool, what: str) -> Iterator[None]:
        """An exclusive flock on `locks/<api>.lock` in the agent's home: any process on this machine that
        changes the API takes it, and the kernel releases it if the holder dies."""
        self.home.ensure()
        path = self.home.locks / f"{api}.lock"
        with open(path, "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.seek(0)
                holder = lock.read().strip() or "another process"
                if not wait:
                    raise ApiBusy(f"{api}: {holder} is in progress; try again when it ends", status=409) from None
                log.info("%s: waiting for %s to finish", api, holder)
                fcntl.flock(lock, fcntl.LOCK_EX)
            try:  # unbuffered, so a failed write leaves nothing to flush on close
                os.ftruncate(lock.fileno(), 0)
                os.write(lock.fileno(), f"{what} (pid {os.getpid()})".encode())
            except OSError as exc:  # e.g. a full disk: say where, change nothing
                fcntl.flock(lock, fcntl.LOCK_UN)
                raise BackendError(f"cannot write {path}: {exc.strerror}; the agent's home needs free space") from exc
            try:
                yield
            finally:
                lock.truncate(0)
                fcntl.flock(lock, fcntl.LOCK_UN)

    async def scale_version(self, api: str, revision: int, replicas: int, arm: bool = False) -> None:
        body = {"replicas": replicas, "arm": arm}
        await self._call("PUT", f"/v1/apis/{api}/versions/{revision}/replicas", json=body)

    async def remove_version(self, api: str, revision: int, outcome: Outcome) -> None:
        await self._call("DELETE", f"/v1/apis/{api}/versions/{revision}", params={"outcome": outcome.value})

    async def record_outcome(self, api: str, revision: int, outcome: Outcome) -> None:
        await self._call("PUT", f"/v1/apis/{api}/versions/{revision}/outcome", json={"outcome": outcome.value})

    async def status(self, api: str) -> ApiStatus | None:
        try:
            resp = await self._call("GET", f"/v1/apis/{api}")
        except NotFound:
            return None
        return ApiStatus.model_validate(resp.json())

    async def list_apis(self) -> list[ApiStatus]:
        resp = await self._call("GET", "/v1/apis")
        return [ApiStatus.model_validate(item) for item in resp.json()]

    async def history(self, api: str) -> list[Revision]:
        resp = await self._call("GET", f"/v1/apis/{api}/history")
        return [Revision.model_validate(item) for item in resp.json()]

    async def logs(self, api: str, tail: int = 200) -> str:
        return (await self._call("GET", f"/v1/apis/{api}/logs", params={"tail": tail})).text

    async def delete_api(self, api: str) -> bool:
        return bool((await self._call("DELETE", f"/v1/apis/{api}")).json()["deleted"])
