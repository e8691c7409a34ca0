"""One replica's lifecycle: bind at once, load the handler off the event loop, drain on SIGTERM.

Probes answer from the moment the port is bound (`/healthz` 200, `/readyz` 503) while the package is
fetched and the handler constructed in a thread; `/readyz` turns 200 when the handler is in place and
back to 503 the moment a shutdown starts, then uvicorn stops accepting and lets in-flight requests
finish within the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from cortex_flows.packaging.dependencies import DependencyError, Environment, activate, ensure_environment
from cortex_flows.processes import pid_alive
from cortex_flows.serving.admission import Admission
from cortex_flows.serving.app import ReplicaApp
from cortex_flows.serving.auth import ApiKeys
from cortex_flows.serving.config import ReplicaConfig
from cortex_flows.serving.handlers import HandlerLoadError, load_handler
from cortex_flows.serving.metrics import ReplicaMetrics

log = logging.getLogger("cortex_flows.serving")

EXIT_OK = 0
EXIT_LOAD_FAILED = 1  # package fetch or handler load failed; reason on the last stderr line
EXIT_BAD_CONFIG = 2  # bad arguments or replica config (argparse also exits 2)
EXIT_BIND_FAILED = 3  # the port is taken or not bindable: the supervisor may retry on another port
EXIT_DEPENDENCIES_FAILED = 4  # --prepare-only: pip could not install the requirements (pip's message on stderr)

PARENT_POLL_SECONDS = 1.0
MAX_REASON_CHARS = 230  # with the log prefix, fits the 300 characters the agent shows
DEFAULT_CACHE_DIR = Path(tempfile.gettempdir()) / "cortex-flows-cache"
ENVS_DIR = "envs"  # dependency environments, under the cache directory


def cache_dir_of(config: ReplicaConfig) -> Path:
    return Path(config.cache_dir) if config.cache_dir else DEFAULT_CACHE_DIR


def project_dir_of(config: ReplicaConfig, cache_dir: Path) -> Path:
    """The replica's project: the verified package extracted in the cache, or a directory as it is."""
    if config.package is not None:
        from cortex_flows.packaging.fetch import fetch_package

        return fetch_package(config.package, cache_dir, config.s3)
    return Path(config.project_dir).resolve() if config.project_dir else Path.cwd()


def prepare(config: ReplicaConfig) -> tuple[Path, Environment | None]:
    """What a replica needs before loading its handler (the work of Cortex's init container): the
    package fetched and verified, and its dependencies installed (or found already installed)."""
    cache_dir = cache_dir_of(config)
    project_dir = project_dir_of(config, cache_dir)
    return project_dir, ensure_environment(project_dir, config.requirements, cache_dir / ENVS_DIR)


@dataclass(frozen=True)
class ServeOptions:
    """How the process runs, as opposed to what it serves (that is the ReplicaConfig)."""

    parent_pid: int | None = None
    drain_delay: float = 0.0  # seconds to keep serving, /readyz 503, before closing the listener
    grace: float = 30.0  # seconds in-flight requests get to finish once the listener is closed


def one_line(text: str) -> str:
    """Collapse a (possibly multi-line) message so the supervisor can show it as one line."""
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_REASON_CHARS else flat[: MAX_REASON_CHARS - 3] + "..."


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind and listen before anything slow happens, so the port is claimed (and probes queue) at once."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


class _Server(uvicorn.Server):
    """uvicorn without its signal capture: it re-raises SIGTERM after a graceful stop, which would turn
    a clean drain into death-by-signal; the replica handles signals itself and exits 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Replica:
    """Wires config -> admission, metrics, app and uvicorn, and owns the shutdown sequence."""

    def __init__(self, config: ReplicaConfig, options: ServeOptions, api_keys: ApiKeys | None = None) -> None:
        self.config = config
        self.options = options
        self.admission = Admission(config.max_concurrency, config.max_queue_length)
        self.metrics = ReplicaMetrics(config.api_name, config.revision, lambda: self.admission.in_flight)
        self.app = ReplicaApp(
            revision=config.revision,
            max_body_bytes=config.max_body_bytes,
            admission=self.admission,
            metrics=self.metrics,
            api_keys=api_keys,
        )
        self.executor = ThreadPoolExecutor(config.max_concurrency, thread_name_prefix="handler")
        # Not the loop's default executor: closing the loop joins that one, so a handler stuck in its
        # constructor would hold a stopping replica until the constructor returned.
        self.loader = ThreadPoolExecutor(1, thread_name_prefix="load")
        self.server = _Server(
            uvicorn.Config(
                self.app,
                http="httptools",
                lifespan="off",
                access_log=False,
                log_config=None,
                timeout_graceful_shutdown=max(1, round(options.grace)),
            )
        )
        self.failure: str | None = None

    async def run(self, sock: socket.socket) -> int:
        """Serve on `sock` until a signal, the parent's death or a load failure; return the exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop, sig.name)
        host, port = sock.getsockname()[:2]
        log.info("replica %s r%d listening on %s:%d", self.config.api_name, self.config.revision, host, port)
        background = [asyncio.create_task(self._load())]
        if self.options.parent_pid is not None:
            background.append(asyncio.create_task(self._watch_parent(self.options.parent_pid)))
        await self.server.serve(sockets=[sock])
        for task in background:
            task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.loader.shutdown(wait=False, cancel_futures=True)
        if self.failure is not None:
            log.critical("load failed: %s", self.failure)  # the last line the supervisor reads
            return EXIT_LOAD_FAILED
        log.info("replica stopped")
        return EXIT_OK

    def stop(self, reason: str) -> None:
        """Begin a graceful shutdown (/readyz 503 at once); a second request forces it."""
        if self.app.draining:
            log.warning("%s during shutdown: not waiting for in-flight requests", reason)
            self.server.force_exit = self.server.should_exit = True
            return
        self.app.draining = True
        delay, grace = self.options.drain_delay, self.options.grace
        log.info("%s: not ready; serving %.1fs more, then draining for up to %.0fs", reason, delay, grace)
        asyncio.get_running_loop().call_later(delay, setattr, self.server, "should_exit", True)

    async def _load(self) -> None:
        config = self.config
        step = "preparing the project"
        try:
            loop = asyncio.get_running_loop()
            project_dir, environment = await loop.run_in_executor(self.loader, prepare, config)
            if environment is not None:
                activate(environment)
                log.info("dependencies from %s (environment %s)", config.requirements, environment.key)
            step = "loading the handler"
            invoker = await loop.run_in_executor(
                self.loader, load_handler, config, project_dir, cache_dir_of(config), self.executor
            )
        except Exception as exc:
            if self.app.draining:
                return  # stopping anyway; a load cut short is not a failure
            log.exception("%s failed", step)
            known = isinstance(exc, HandlerLoadError | DependencyError)
            detail = str(exc) if known else f"{type(exc).__name__}: {exc}"
            self.failure = one_line(f"{step}: {detail}")
            self.server.should_exit = True
            return
        if not self.app.draining:
            self.app.invoker = invoker
            log.info("handler loaded from %s: ready", project_dir)

    async def _watch_parent(self, pid: int) -> None:
        """Stop if the supervisor dies, so replicas are never orphaned holding ports."""
        was_our_parent = os.getppid() == pid
        while True:
            await asyncio.sleep(PARENT_POLL_SECONDS)
            if not pid_alive(pid) or (was_our_parent and os.getppid() != pid):
                self.stop(f"parent process {pid} exited")
                return
