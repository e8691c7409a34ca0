"""What every benchmark needs around the thing it measures: free ports, the iris model, server processes.

Servers run as subprocesses leading their own process group, so stopping one also stops what it spawned
(BentoML's worker, Ray's raylet, whose end takes Ray's workers along); a server that dies or never answers
raises `ServerFailed` with its error's first line. CPU is read per process tree, from /proc.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "deployments" / "iris-classifier"
if TYPE_CHECKING:
    from cortex_flows.backends.local.home import LocalHome

_ERROR = re.compile(r"^(\w+\.)*\w*(Error|Exception|Exit)\b|^ERROR\b|^error\b")


class ServerFailed(RuntimeError):
    """A server exited or did not answer in time; the message is the first line of its error."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(method: str, url: str, timeout: float = 120.0, **kw) -> float:
    """Poll until the URL answers 200; returns the monotonic time it did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.request(method, url, timeout=2.0, **kw).status_code == 200:
                return time.monotonic()
        except httpx.HTTPError:
            pass
        time.sleep(0.01)
    raise TimeoutError(url)


def start_prefect_server(home: Path) -> tuple[subprocess.Popen, str, float]:
    """A private `prefect server start` on a free port: (process, API URL, seconds to healthy)."""
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/api"
    ready = wait_http("GET", f"{url}/health")
    return proc, url, ready - t0


def flush_prefect() -> None:
    """Send Prefect's queued logs and events while the server is still up (else the exit hangs on retries)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)


def train_iris(out: Path) -> Path:
    """The iris example's model (scikit-learn's bundled data set), trained by the example's own script."""
    subprocess.run([sys.executable, str(EXAMPLE / "train.py"), "--out", str(out)], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    return out


def replica_command(workdir: Path, model: Path, port: int, max_concurrency: int) -> list[str]:
    """`python -m cortex_flows.serving` serving `model` with the built-in sklearn handler on loopback."""
    config = {"api_name": "bench", "handler": {"type": "sklearn"}, "model_path": str(model),
              "max_concurrency": max_concurrency, "max_queue_length": 100}  # fmt: skip
    path = workdir / f"replica-{port}.json"
    path.write_text(json.dumps(config))
    return [sys.executable, "-m", "cortex_flows.serving", "--config", str(path), "--host", "127.0.0.1",
            "--port", str(port)]  # fmt: skip


def error_line(text: str) -> str:
    """The first line of the last error in a log (a traceback's final line, pip's `ERROR:`), else its last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if _ERROR.match(line)]
    return (errors or lines or ["no output"])[-1][:200]


def start_server(command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a server in its own session (so `stop_groups` reaches what it spawns), output to `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})})  # fmt: skip


def wait_serving(proc: subprocess.Popen, url: str, body: bytes, log: Path, timeout: float = 90.0) -> None:
    """Wait until a POST of `body` to `url` answers 200; `ServerFailed` if the server exits or times out."""
    deadline = time.monotonic() + timeout
    headers = {"content-type": "application/json"}
    while True:
        try:
            if httpx.post(url, content=body, headers=headers, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise ServerFailed(f"exited with {proc.returncode}: {error_line(log.read_text(errors='replace'))}")
        if time.monotonic() > deadline:
            raise ServerFailed(f"no 200 within {timeout:g} s: {error_line(log.read_text(errors='replace'))}")
        time.sleep(0.1)


def tree_cpu_seconds(roots: list[int]) -> float:
    """CPU time (user + system) used so far by these processes and their live descendants, from /proc."""
    parent, ticks = {}, {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            # after the command: state, ppid (1), pgrp, ..., utime (11), stime (12)
            parent[int(entry.name)], ticks[int(entry.name)] = int(fields[1]), int(fields[11]) + int(fields[12])
    total, wanted = 0, set(roots)
    for pid, used in ticks.items():
        ancestor = pid
        while ancestor > 1 and ancestor not in wanted:
            ancestor = parent.get(ancestor, 0)
        if ancestor in wanted:
            total += used
    return total / os.sysconf("SC_CLK_TCK")


def stop_groups(procs: list[subprocess.Popen], grace: float = 15.0) -> None:
    """SIGTERM the process groups the servers lead, all at once; SIGKILL what is left after `grace` seconds."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    alive = list(procs)
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [proc for proc in alive if _group_alive(proc)]
    for proc in alive:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _group_alive(proc: subprocess.Popen) -> bool:
    proc.poll()  # reap the leader, else its zombie keeps the group alive
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class Stack:
    project: Path  # the example, copied, written and trained
    gateway_port: int
    home: LocalHome


@contextlib.contextmanager
def local_stack(name: str, write_project: Callable[[Path], None]) -> Iterator[Stack]:
    """The example copied as project `name` (written by `write_project`, then trained), a private agent home
    and gateway port, a Prefect server and the agent running; all stopped and removed after. Import the
    flows inside the block: it points PREFECT_API_URL at its server, which Prefect reads at import."""
    tmp = Path(tempfile.mkdtemp(prefix=f"cortex-bench-{name}-"))
    gateway_port = free_port()
    os.environ.update(CORTEX_FLOWS_HOME=str(tmp / "home"), CORTEX_FLOWS_GATEWAY_PORT=str(gateway_port))
    project = tmp / name
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", "model.joblib"))
    write_project(project)
    subprocess.run([sys.executable, str(project / "train.py")], check=True, stdout=subprocess.DEVNULL)
    server, api_url, _ = start_prefect_server(tmp / "prefect-home")
    os.environ["PREFECT_API_URL"] = api_url
    from cortex_flows.backends.local.client import start_agent, stop_agent
    from cortex_flows.backends.local.home import LocalHome

    home = LocalHome.default()
    start_agent(home)
    try:
        yield Stack(project, gateway_port, home)
    finally:
        stop_agent(home)
        flush_prefect()
        server.terminate()
        server.wait()
        shutil.rmtree(tmp, ignore_errors=True)
