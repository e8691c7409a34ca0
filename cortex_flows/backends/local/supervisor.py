"""Replica processes of the local backend: start, readiness-gate, restart on crash, drain and stop.

Each replica is `python -m cortex_flows.serving` on its own loopback port. A replica joins routing only
after `/readyz` answers 200, and leaves routing before it is drained and stopped, so changing an API
never drops a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import httpx

from cortex_flows.backends.local.gateway import Upstream
from cortex_flows.serving.config import ReplicaConfig

log = logging.getLogger("cortex_flows.agent")

READY_POLL_SECONDS = 0.05
RESTART_BACKOFF = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
DEFAULT_GRACE_SECONDS = 60.0
LOG_TAIL_BYTES = 4096


class Phase(StrEnum):
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"
    TERMINATING = "terminating"


@dataclass(eq=False)
class Replica:
    """One replica process and what the agent knows about it."""

    id: str
    api: str
    revision: int
    config_path: Path
    log_path: Path
    env: dict[str, str]
    port: int = 0
    phase: Phase = Phase.STARTING
    restarts: int = 0
    message: str = ""
    proc: asyncio.subprocess.Process | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def upstream(self) -> Upstream:
        return Upstream("127.0.0.1", self.port)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = 200) -> str:
    """The last lines of a log file, read from its end (logs may be large)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - lines * 200))
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def crash_reason(path: Path) -> str:
    """A one-line reason from a crashed replica's log: its last non-empty line."""
    for line in reversed(log_tail(path, 20).splitlines()):
        if line.strip():
            return line.strip()[:300]
    return "replica exited"


class Supervisor:
    """Owns every replica process; tells the agent when the set of ready replicas changes."""

    def __init__(
        self, run_dir: Path, log_dir: Path, on_change: Callable[[str], None], grace: float = DEFAULT_GRACE_SECONDS
    ) -> None:
        self.grace = grace  # how long a stopping replica may take to finish its requests
        self.run_dir = run_dir
        self.log_dir = log_dir
        self.on_change = on_change
        self.replicas: dict[tuple[str, int], list[Replica]] = {}
        # Called with a drained replica right before it is sent SIGTERM (the agent keeps its final metrics).
        self.before_stop: Callable[[Replica], Awaitable[None]] | None = None
        self._http = httpx.AsyncClient(timeout=2.0)

    def of(self, api: str, revision: int) -> list[Replica]:
        return self.replicas.get((api, revision), [])

    def ready_upstreams(self, api: str, revision: int) -> list[Upstream]:
        return [r.upstream for r in self.of(api, revision) if r.phase is Phase.READY]

    def counts(self, api: str, revision: int) -> tuple[int, int, int, int, str]:
        """(ready, starting, failed, restarts, last failure message) of a version's live replicas."""
        live = [r for r in self.of(api, revision) if r.phase is not Phase.TERMINATING]
        failed = [r for r in live if r.phase is Phase.FAILED]
        return (
            sum(r.phase is Phase.READY for r in live),
            sum(r.phase is Phase.STARTING for r in live),
            len(failed),
            sum(r.restarts for r in live),
            failed[-1].message if failed else "",
        )

    async def scale(
        self,
        api: str,
        revision: int,
        config: ReplicaConfig,
        count: int,
        env: dict[str, str],
        drain: Callable[[Upstream], int],
        grace: float = DEFAULT_GRACE_SECONDS,
    ) -> None:
        """Start or drain replicas until `count` are live; scale-downs remove not-ready ones first."""
        group = self.replicas.setdefault((api, revision), [])
        live = [r for r in group if r.phase is not Phase.TERMINATING]
        for _ in range(count - len(live)):
            group.append(self._start(api, revision, config, env))
        if len(live) > count:
            order = {Phase.FAILED: 0, Phase.STARTING: 1, Phase.READY: 2}
            victims = sorted(live, key=lambda r: (order[r.phase], -r.restarts))[: len(live) - count]
            await asyncio.gather(*(self.stop(r, drain, grace) for r in victims))

    async def stop_all(self, api: str, revision: int, drain: Callable[[Upstream], int], grace: float) -> None:
        await asyncio.gather(*(self.stop(r, drain, grace) for r in list(self.of(api, revision))))
        self.replicas.pop((api, revision), None)

    def _start(self, api: str, revision: int, config: ReplicaConfig, env: dict[str, str]) -> Replica:
        rid = f"{api}-r{revision}-{uuid.uuid4().hex[:6]}"
        cfg_path = self.run_dir / f"{rid}.config.json"
        cfg_path.write_text(config.model_dump_json())
        # The user's variables (the spec's `env`) win over the cluster's, as the spec is more specific.
        replica = Replica(rid, api, revision, cfg_path, self.log_dir / api / f"{rid}.log", {**env, **config.env})
        replica.log_path.parent.mkdir(parents=True, exist_ok=True)
        replica.task = asyncio.create_task(self._lifecycle(replica), name=rid)
        return replica

    async def _lifecycle(self, replica: Replica) -> None:
        """Run the replica, gate it on readiness, and restart it with backoff whenever it crashes."""
        while replica.phase is not Phase.TERMINATING:
            replica.port = free_port()
            replica.phase = Phase.STARTING
            self.on_change(replica.api)
            code = await self._run_once(replica)
            if replica.phase is Phase.TERMINATING:
                break
            replica.message = f"exit code {code}: {crash_reason(replica.log_path)}"
            log.warning("replica %s crashed (%s)", replica.id, replica.message)
            replica.phase = Phase.FAILED
            self.on_change(replica.api)
            delay = RESTART_BACKOFF[min(replica.restarts, len(RESTART_BACKOFF) - 1)]
            replica.restarts += 1
            await asyncio.sleep(delay)

    async def _run_once(self, replica: Replica) -> int:
        logfd = os.open(replica.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            replica.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cortex_flows.serving",
                "--config", str(replica.config_path),
                "--host", "127.0.0.1", "--port", str(replica.port),
                "--parent-pid", str(os.getpid()), "--grace", str(self.grace),
                stdin=asyncio.subprocess.DEVNULL, stdout=logfd, stderr=logfd,
                env={**os.environ, **replica.env},
            )  # fmt: skip
        finally:
            os.close(logfd)
        self._write_pidfile(replica)
        exited = asyncio.create_task(replica.proc.wait())
        try:
            while not exited.done():
                if await self._is_ready(replica):
                    if replica.phase is Phase.STARTING:
                        replica.phase = Phase.READY
                        replica.message = ""
                        self.on_change(replica.api)
                    break
                await asyncio.wait({exited}, timeout=READY_POLL_SECONDS)
            return await exited
        finally:
            self._pidfile(replica).unlink(missing_ok=True)

    async def _is_ready(self, replica: Replica) -> bool:
        try:
            resp = await self._http.get(f"http://127.0.0.1:{replica.port}/readyz")
        except httpx.HTTPError:
            return False
        return resp.status_code == 200

    async def stop(self, replica: Replica, drain: Callable[[Upstream], int], grace: float) -> None:
        """Leave routing, wait for the gateway's in-flight requests to it, then SIGTERM (the replica
        finishes what it holds), and SIGKILL only after the grace period."""
        if replica.phase is Phase.TERMINATING:
            return
        was_ready = replica.phase is Phase.READY
        replica.phase = Phase.TERMINATING
        self.on_change(replica.api)
        deadline = time.monotonic() + grace
        while was_ready and drain(replica.upstream) > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        proc = replica.proc
        if was_ready and self.before_stop is not None and proc is not None and proc.returncode is None:
            try:
                await self.before_stop(replica)
            except Exception:  # a hook must never keep a replica from stopping
                log.exception("before-stop hook failed for replica %s", replica.id)
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), max(1.0, deadline - time.monotonic()))
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if replica.task is not None:
            replica.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await replica.task
        group = self.replicas.get((replica.api, replica.revision), [])
        if replica in group:
            group.remove(replica)
        replica.config_path.unlink(missing_ok=True)

    async def shutdown(self, grace: float) -> None:
        """Stop every replica (the agent is going down; desired state stays on disk)."""
        everyone = [r for group in self.replicas.values() for r in group]
        await asyncio.gather(*(self.stop(r, lambda _u: 0, grace) for r in everyone))
        await self._http.aclose()

    def _pidfile(self, replica: Replica) -> Path:
        return self.run_dir / f"{replica.id}.pid"

    def _write_pidfile(self, replica: Replica) -> None:
        assert replica.proc is not None
        self._pidfile(replica).write_text(json.dumps({"pid": replica.proc.pid, "id": replica.id}))

    def reap_orphans(self) -> int:
        """Stop replica processes a killed agent left behind (their pid files survive it)."""
        reaped = 0
        for pidfile in self.run_dir.glob("*.pid"):
            try:
                pid = int(json.loads(pidfile.read_text())["pid"])
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except (OSError, ValueError, KeyError):
                cmdline = b""
                pid = 0
            if pid and b"cortex_flows.serving" in cmdline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                reaped += 1
            pidfile.unlink(missing_ok=True)
        for stale in self.run_dir.glob("*.config.json"):
            stale.unlink(missing_ok=True)
        return reaped
