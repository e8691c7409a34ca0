"""Shared helpers for tests that run real processes: polling with deadlines and process inspection."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "deployments" / "iris-classifier"


def wait_for(check: Callable[[], T], timeout: float = 30.0, interval: float = 0.05, what: str = "condition") -> T:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def serving_pids(home: Path) -> list[int]:
    """Replica processes belonging to one agent home (their config files live under it)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"cortex_flows.serving" in cmd and any(str(home).encode() in part for part in cmd):
            pids.append(int(proc.name))
    return pids


def example_project(tmp: Path) -> Path:
    """A trained copy of the iris example."""
    project = tmp / "iris-classifier"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("model.joblib", "__pycache__"))
    subprocess.run([sys.executable, str(project / "train.py")], check=True, capture_output=True)
    return project


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cortex_flows.cli", *args],
        env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def free_port_closed() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_command(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout, check=False,
        cwd=ROOT,
    )  # fmt: skip


def make_wheel(directory: Path, name: str, version: str, module_source: str) -> Path:
    """Write a pure-Python wheel holding one module `name`, so pip installs it with no index or network."""
    import base64
    import hashlib
    import zipfile

    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": module_source,
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{dist_info}/RECORD"] = "\n".join([*record, f"{dist_info}/RECORD,,"]) + "\n"
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


class BackgroundLoad:
    """Bounded closed-loop load from `connections` keep-alive clients in threads, each POSTing `payload`
    until stopped (or `limit` requests, or `max_seconds`). Each outcome is the answering revision
    (`X-Cortex-Revision`) for a 200, else "HTTP <status>" or the exception's name."""

    def __init__(self, url: str, payload: object, connections: int = 16, limit: int = 60000,
                 max_seconds: float = 180.0) -> None:  # fmt: skip
        import threading

        self.url, self.payload, self.limit = url, payload, limit
        self.deadline = time.monotonic() + max_seconds
        self.outcomes: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(connections)]
        for thread in self._threads:
            thread.start()

    def _client(self) -> None:
        import httpx

        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set() and len(self.outcomes) < self.limit and time.monotonic() < self.deadline:
                try:
                    resp = client.post(self.url, json=self.payload)
                    ok = resp.status_code == 200
                    self.outcomes.append(resp.headers["x-cortex-revision"] if ok else f"HTTP {resp.status_code}")
                except httpx.HTTPError as exc:
                    self.outcomes.append(type(exc).__name__)

    def wait_for(self, count: int, timeout: float = 60.0) -> None:
        wait_for(lambda: len(self.outcomes) >= count, timeout, what=f"{count} responses")

    def stop(self) -> list[str]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=40)
        return list(self.outcomes)


class LoopServer:
    """A raw asyncio server on a free loopback port, running its own event loop in a thread: the base of
    the tests' misbehaving upstreams. Subclasses set their state, then call this, and build protocols in
    `_protocol`."""

    def __init__(self) -> None:
        import asyncio
        import threading

        from cortex_flows.backends.local.routing import Upstream

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            self.loop.create_server(self._protocol, "127.0.0.1", 0), self.loop
        ).result(5)
        self.upstream = Upstream("127.0.0.1", self.server.sockets[0].getsockname()[1])

    def _protocol(self) -> object:
        raise NotImplementedError

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
