"""The local agent (gateway, supervisor and state in one process) SIGKILLed in the middle of a rolling
update: its replicas exit with it, the deploy's reads and tasks retry while a new agent restores the state from disk,
and the deploy completes with exactly the replicas the spec asks for."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import httpx

from cortex_flows.flows.deploy import deploy
from tests.e2e.test_rolling_updates import agent_status, write_project
from tests.helpers import serving_pids, wait_for


def test_the_agent_killed_mid_rollout_comes_back_and_the_deploy_converges(prefect_api, local_cluster, tmp_path):
    project = write_project(tmp_path / "roll", "v1")
    url = deploy(path=str(project))["roll"]
    home = local_cluster["home"]
    write_project(project, "v2")
    states: list[Any] = []
    rollout = threading.Thread(target=lambda: states.append(deploy(path=str(project), return_state=True)))
    rollout.start()

    def one_new_ready() -> bool:
        versions = agent_status(local_cluster)["versions"]
        return len(versions) == 2 and versions[-1]["ready"] >= 1

    wait_for(one_new_ready, 60, interval=0.01, what="the first new replica")
    killed_at = time.monotonic()
    os.kill(home.read_info().pid, signal.SIGKILL)
    rollout.join(180)
    assert not rollout.is_alive()
    [first] = states
    assert first.is_completed(), first.message  # its reads and steps were retried while a new agent took over
    print(f"\nthe deploy the kill interrupted completed {time.monotonic() - killed_at:.1f}s after the kill")

    again = deploy(path=str(project), return_state=True)  # and a re-run finds nothing to do
    assert again.is_completed(), again.message
    final = agent_status(local_cluster)["versions"]
    assert [(v["ready"], v["desired"], v["weight"]) for v in final] == [(3, 3, 100)]
    assert httpx.post(url, json={}).json() == {"tag": "v2"}
    wait_for(lambda: len(serving_pids(home.root)) == 3, 30, what="exactly 3 replica processes (no orphans)")
