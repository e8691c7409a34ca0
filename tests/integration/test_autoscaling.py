"""The local agent's autoscaler with real replicas and load: step up, scale down after stabilization with
no failed request, scale from zero holding the first request, and a SIGKILLed replica replaced."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from cortex_flows.backends.base import VersionSpec
from cortex_flows.backends.local.agent import TICK_ENV
from cortex_flows.backends.local.client import LocalBackend, start_agent
from cortex_flows.backends.versions import version_spec
from cortex_flows.packaging.build import build_package
from cortex_flows.packaging.store import LocalStore
from cortex_flows.rollout.plan import Action, DeployPlan
from cortex_flows.serving.config import PackageRef
from cortex_flows.spec import parse_spec
from tests.helpers import serving_pids, wait_for

HANDLER = """\
import os
import time


class Handler:
    def handle_post(self, payload):
        time.sleep(0.05)
        return {"pid": os.getpid()}
"""


def deploy(backend: LocalBackend, root: Path, autoscaling: dict[str, Any], replicas: int) -> str:
    version = build_version(backend, root, autoscaling, DeployPlan(Action.CREATE, 1, replicas))
    asyncio.run(backend.apply_version("scaled", version, replicas))
    return f"{backend.endpoint_url('/scaled')}"


def build_version(backend: LocalBackend, root: Path, autoscaling: dict[str, Any], plan: DeployPlan) -> VersionSpec:
    root.mkdir(parents=True, exist_ok=True)
    (root / "handler.py").write_text(HANDLER)
    spec = [{
        "name": "scaled", "kind": "RealtimeAPI", "handler": {"type": "python", "path": "handler.py"},
        "pod": {"max_concurrency": 1}, "autoscaling": {"window": "10s", **autoscaling},
    }]  # fmt: skip
    api = parse_spec(yaml.safe_dump(spec), root / "cortex.yaml", root).apis[0]
    built = build_package(root, root.parent / "build")
    uri, _ = LocalStore(backend.home.packages).put(built)
    return version_spec(api, PackageRef(uri=uri, sha256=built.sha256), plan)


def replicas(backend: LocalBackend, index: int = 0) -> tuple[int, int]:
    """(desired, ready) of the API's version (the oldest, or the `index`th)."""
    version = asyncio.run(backend.status("scaled")).versions[index]
    return version.desired, version.ready


def _settled(backend: LocalBackend, count: int) -> Any:
    """The autoscaler's last decision, once it was taken at `count` replicas."""
    decision = asyncio.run(backend.status("scaled")).autoscaling
    return decision if decision is not None and decision.current == count else None


class Load:
    """`clients` closed-loop clients in threads, each recording (time, status or error, pid)."""

    def __init__(self, url: str, clients: int) -> None:
        self.url = url
        self.results: list[tuple[float, str, int]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + 120
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    resp = client.post(self.url, json={})
                    pid = resp.json().get("pid", 0) if resp.status_code == 200 else 0
                    self.results.append((time.monotonic(), str(resp.status_code), pid))
                except httpx.HTTPError as exc:
                    self.results.append((time.monotonic(), type(exc).__name__, 0))

    def stop(self) -> list[tuple[float, str, int]]:
        self._stop.set()
        for thread in self._threads:
            thread.join(40)
        return self.results


@pytest.fixture
def backend(local_cluster, monkeypatch) -> LocalBackend:
    monkeypatch.setenv(TICK_ENV, "1")
    start_agent(local_cluster["home"], local_cluster["port"])
    return LocalBackend(local_cluster["home"], local_cluster["port"])


def test_step_load_scales_up_then_down_after_stabilization_without_failures(backend, tmp_path):
    url = deploy(backend, tmp_path / "api", {"min_replicas": 1, "max_replicas": 4, "upscale_stabilization_period": "0s",
                                              "downscale_stabilization_period": "6s"}, replicas=1)  # fmt: skip
    wait_for(lambda: replicas(backend) == (1, 1), 30, what="1 ready replica")
    first_pid = httpx.post(url, json={}).json()["pid"]

    step = time.monotonic()
    load = Load(url, clients=4)  # 4 requests in flight all the time; target_in_flight 1 -> 4 replicas
    wait_for(lambda: any(pid not in (0, first_pid) for _, _, pid in load.results), 30, what="a second replica serving")
    added = next(t for t, _, pid in load.results if pid not in (0, first_pid)) - step
    wait_for(lambda: replicas(backend) == (4, 4), 40, what="4 ready replicas (the algorithm's answer)")
    status = wait_for(lambda: _settled(backend, 4), 10, what="a decision at 4 replicas")
    assert (status.min_replicas, status.max_replicas, status.recommended) == (1, 4, 4)
    assert 3.0 < status.in_flight <= 4.0  # 4 clients; a sample may catch one between requests
    up = load.stop()

    light = Load(url, clients=1)  # keep requests flowing through the drains
    removed = time.monotonic()
    wait_for(lambda: replicas(backend)[0] < 4, 40, what="the first scale-down")
    first_down = time.monotonic() - removed
    wait_for(lambda: replicas(backend) == (1, 1), 60, what="back to min_replicas")
    down = light.stop()

    failures = [r for r in up + down if r[1] != "200"]
    assert failures == [], failures[:5]
    assert first_down >= 5.0, f"scaled down {first_down:.1f}s after the load went, inside the 6s stabilization"
    print(f"\nstep load -> second replica serving: {added:.2f}s; first scale-down after {first_down:.1f}s; "
          f"{len(up) + len(down)} requests, 0 failed")  # fmt: skip
    assert added <= 12.0


def test_scale_from_zero_holds_the_first_request_and_idles_back_to_zero(backend, local_cluster, tmp_path):
    url = deploy(backend, tmp_path / "api", {"min_replicas": 0, "max_replicas": 2, "init_replicas": 0,
                                              "downscale_stabilization_period": "2s"}, replicas=0)  # fmt: skip
    assert replicas(backend) == (0, 0)
    home = local_cluster["home"].root
    assert serving_pids(home) == []

    started = time.monotonic()
    first = httpx.post(url, json={}, timeout=60)
    woke = time.monotonic() - started
    assert first.status_code == 200
    wait_for(lambda: replicas(backend) == (0, 0), 40, what="idle back to zero")
    wait_for(lambda: serving_pids(home) == [], 20, what="no replica process left")

    # The cold start alone, for comparison: scale to one by hand and time readiness, holding the API's
    # lock as any change does, so the autoscaler (idle API, minimum 0) does not take the replica back.
    with backend.hold("scaled", wait=True, what="cold start"):
        cold = time.monotonic()
        asyncio.run(backend.scale_version("scaled", 1, 1))
        wait_for(lambda: replicas(backend) == (1, 1), 30, interval=0.01, what="a cold replica")
        cold_start = time.monotonic() - cold
    print(f"\nscale from zero: first request {woke:.2f}s vs cold start {cold_start:.2f}s")
    assert woke <= cold_start + 1.0


def test_a_killed_replica_is_replaced_and_its_requests_fail_over(backend, local_cluster, tmp_path):
    url = deploy(backend, tmp_path / "api", {"min_replicas": 3, "max_replicas": 3}, replicas=3)
    wait_for(lambda: replicas(backend) == (3, 3), 30, what="3 ready replicas")
    home = local_cluster["home"].root
    load = Load(url, clients=8)
    wait_for(lambda: len(load.results) > 100, 30, what="load")
    victim = serving_pids(home)[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(serving_pids(home)) == 3 and victim not in serving_pids(home), 30, what="a replacement")
    wait_for(lambda: replicas(backend) == (3, 3), 30, what="3 ready again")
    results = load.stop()
    failures = [r for r in results if r[1] != "200"]
    print(f"\nSIGKILL under load: {len(failures)} of {len(results)} requests failed")
    assert len(failures) <= 1  # at most the one request the replica was running (max_concurrency 1)


def test_canary_arms_autoscale_on_their_own_load_while_the_rollout_holds_the_api(backend, tmp_path):
    settings = {"min_replicas": 1, "max_replicas": 4, "upscale_stabilization_period": "0s",
                "downscale_stabilization_period": "0s"}  # fmt: skip
    url = deploy(backend, tmp_path / "api", settings, replicas=1)
    candidate = build_version(backend, tmp_path / "api", settings, DeployPlan(Action.ROLL, 2, 1, previous=(1,)))
    with backend.hold("scaled", wait=False, what="canary of scaled"):  # as the canary flow does, throughout
        asyncio.run(backend.apply_version("scaled", candidate, 1))
        wait_for(lambda: replicas(backend, 1) == (1, 1), 30, what="the candidate's replica")
        asyncio.run(backend.scale_version("scaled", 2, 1, arm=True))
        asyncio.run(backend.scale_version("scaled", 1, 1, arm=True))
        asyncio.run(backend.set_traffic("scaled", {1: 50, 2: 50}))
        load = Load(url, clients=6)  # ~3 in flight per arm, target 1 each: both arms grow on their own
        wait_for(lambda: replicas(backend, 0)[1] >= 2 and replicas(backend, 1)[1] >= 2, 40, what="both arms scaled up")
        asyncio.run(backend.scale_version("scaled", 2, 2, arm=True))  # the next step raises the floor...
        assert replicas(backend, 1)[0] >= 2  # ...which never removes what the autoscaler added
        results = load.stop()
        status = asyncio.run(backend.status("scaled"))
        assert [(v.revision, v.floor) for v in status.versions] == [(1, 1), (2, 2)]
        arm = status.versions[1].autoscaling
        assert arm is not None and arm.min_replicas in (1, 2) and status.autoscaling is None
        wait_for(lambda: replicas(backend, 0) == (1, 1), 40, what="the idle stable arm back to its floor")
        assert replicas(backend, 1)[0] >= 2  # the candidate arm stays at or above its new floor
    failures = [r for r in results if r[1] != "200"]
    assert failures == [], failures[:5]
