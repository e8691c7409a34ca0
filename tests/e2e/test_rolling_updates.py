"""Rolling updates under load lose no request: deploy, refresh, rollback, `max_surge: 0`, automatic rollback
of broken versions, in-place changes, resuming after the flow process dies, one change at a time."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prefect.client.orchestration import get_client

from cortex_flows.flows.deploy import deploy
from cortex_flows.flows.rollback import refresh, rollback
from tests.helpers import BackgroundLoad, cli, serving_pids, wait_for

HANDLER = """\
import os
import threading
import time


class Handler:
    def __init__(self, config):
        self.tag = config["tag"]
        if config.get("fail") == "init":
            raise RuntimeError("the weights file is corrupt")
        if config.get("fail") == "later":
            threading.Timer(0.4, os._exit, (3,)).start()
        if config.get("fail") == "slow":
            time.sleep(60)
        while config.get("gate") and not os.path.exists(config["gate"]):
            time.sleep(0.01)  # held until the test opens the gate

    def handle_post(self, payload):
        time.sleep(0.002)
        return {"tag": self.tag}
"""
MIN_REQUESTS = 3000


def write_project(root: Path, tag: str, strategy: dict[str, Any] | None = None, **config: Any) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "handler.py").write_text(HANDLER)
    api = {
        "name": "roll",
        "kind": "RealtimeAPI",
        "handler": {"type": "python", "path": "handler.py"},
        "config": {"tag": tag, **config},
        "pod": {"max_concurrency": 4},
        "autoscaling": {"min_replicas": 3, "max_replicas": 6},
        "update_strategy": strategy or {},
    }
    (root / "cortex.yaml").write_text(yaml.safe_dump([api], sort_keys=False))
    return root


def status(env: dict[str, str]) -> dict[str, Any]:
    return json.loads(cli("get", "roll", "--output", "json", env=env).stdout)


def agent_status(local_cluster: dict[str, Any]) -> dict[str, Any]:
    """The status `get` shows, read straight from the agent: cheap enough to poll every 10 ms."""
    from cortex_flows.backends.local.client import LocalBackend

    found = asyncio.run(LocalBackend(local_cluster["home"], autostart=False).status("roll"))
    return found.model_dump(mode="json") if found else {"versions": []}


def assert_no_loss(outcomes: list[str], allowed: set[str], final: str) -> None:
    failures = [o for o in outcomes if o not in allowed]
    assert failures == [], f"{len(failures)} of {len(outcomes)} requests failed, e.g. {failures[:5]}"
    assert len(outcomes) >= MIN_REQUESTS
    assert outcomes[-50:] == [final] * 50, "the last responses are not all from the new version"


def rolled_under_load(url: str, change: Any) -> tuple[list[str], Any]:
    """Run `change()` while the load runs; keep the load going until it saw MIN_REQUESTS and the new
    version answered 50 times in a row."""
    load = BackgroundLoad(url, {"x": 1})
    load.wait_for(200)
    result = change()
    load.wait_for(MIN_REQUESTS)
    time.sleep(0.3)
    return load.stop(), result


@pytest.fixture
def env(prefect_api, local_cluster) -> dict[str, str]:
    return {**local_cluster["env"], "PREFECT_API_URL": prefect_api}


def test_update_refresh_rollback_and_max_surge_zero_lose_no_request(env, local_cluster, tmp_path):
    project = write_project(tmp_path / "roll", "v1")
    url = deploy(path=str(project))["roll"]

    write_project(project, "v2")
    outcomes, state = rolled_under_load(url, lambda: deploy(path=str(project), return_state=True))
    assert state.is_completed(), state.message
    assert_no_loss(outcomes, {"1", "2"}, "2")
    assert {"1", "2"} <= set(outcomes)
    assert httpx.post(url, json={}).json() == {"tag": "v2"}

    outcomes, state = rolled_under_load(url, lambda: refresh(name="roll", return_state=True))
    assert state.is_completed(), state.message
    assert_no_loss(outcomes, {"2", "3"}, "3")
    assert httpx.post(url, json={}).json() == {"tag": "v2"}  # same code, new processes

    outcomes, state = rolled_under_load(url, lambda: rollback(name="roll", to=1, return_state=True))
    assert state.is_completed(), state.message
    assert_no_loss(outcomes, {"3", "4"}, "4")
    assert httpx.post(url, json={}).json() == {"tag": "v1"}

    # max_surge 0: an old replica drains and stops before each new one starts; never more than 3 run.
    write_project(project, "v5", strategy={"max_surge": 0, "max_unavailable": 1})
    seen: list[int] = []
    load = BackgroundLoad(url, {"x": 1})
    load.wait_for(200)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cortex_flows.cli", "deploy", str(project)], env={**os.environ, **env},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    while proc.poll() is None:
        seen.append(len(serving_pids(local_cluster["home"].root)))
        time.sleep(0.02)
    load.wait_for(MIN_REQUESTS)
    time.sleep(0.3)
    outcomes = load.stop()
    assert proc.returncode == 0, proc.stdout.read()
    assert_no_loss(outcomes, {"4", "5"}, "5")
    assert max(seen) <= 3 and min(seen) >= 2, f"replica processes seen: {sorted(set(seen))}"

    history = asyncio.run(_history(local_cluster))
    assert [(h.revision, h.outcome.value) for h in history] == [(5, "live")] + [(r, "superseded") for r in (4, 3, 2, 1)]


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        ("init", "the weights file is corrupt"),  # never ready: the handler raises in __init__
        ("later", "crashed"),  # ready, then the process dies
        ("slow", "not ready by the progress deadline"),  # never ready in time
    ],
)
def test_a_broken_version_is_rolled_back_without_losing_a_request(
    env, local_cluster, tmp_path, webhook, failure, reason
):
    project = write_project(tmp_path / "roll", "v1")
    url = deploy(path=str(project))["roll"]
    write_project(project, "v2", fail=failure)
    notify = webhook.save()

    outcomes, state = rolled_under_load(
        url, lambda: deploy(path=str(project), timeout=4, notify=notify, return_state=True)
    )

    assert state.is_failed()
    assert reason in state.message and "rolled back" in state.message
    assert_no_loss(outcomes, {"1", "2"}, "1")
    now = status(env)
    assert [(v["revision"], v["ready"], v["weight"]) for v in now["versions"]] == [(1, 3, 100)]
    assert len(serving_pids(local_cluster["home"].root)) == 3
    report = asyncio.run(_artifact(state.state_details.flow_run_id, "deploy-report"))
    assert "FAILED" in report and "aborted" in report and "r1: back to 3 ready" in report
    [told] = webhook.received  # the on-call channel heard once, with the reason and a link to the run
    assert told["authorization"] == f"Bearer {webhook.token}"
    assert told["subject"] == "cortex-flows: deploy of roll failed; what changed was rolled back"
    assert told["text"].startswith("roll: ") and reason in told["text"]
    assert f"/flow-run/{state.state_details.flow_run_id}" in told["text"]  # a link to the run in the Prefect UI
    assert webhook.token not in report + asyncio.run(_logs(state.state_details.flow_run_id))


async def _logs(flow_run_id: Any) -> str:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async with get_client() as client:
        run = await client.read_flow_run(flow_run_id)
        logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return json.dumps(run.parameters) + "\n".join(log.message for log in logs)


async def _artifact(flow_run_id: Any, key: str) -> str:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), key=ArtifactFilterKey(any_=[key])
            )
        )
    return found[0].data


def test_an_autoscaling_only_change_restarts_nothing(env, local_cluster, tmp_path):
    project = write_project(tmp_path / "roll", "v1")
    deploy(path=str(project))
    before = sorted(serving_pids(local_cluster["home"].root))
    spec_before = status(env)["versions"][0]["spec_hash"]

    spec = yaml.safe_load((project / "cortex.yaml").read_text())
    spec[0]["autoscaling"]["max_replicas"] = 9
    (project / "cortex.yaml").write_text(yaml.safe_dump(spec))
    assert deploy(path=str(project), return_state=True).is_completed()

    after = status(env)
    assert sorted(serving_pids(local_cluster["home"].root)) == before
    assert [v["revision"] for v in after["versions"]] == [1]
    assert after["versions"][0]["spec_hash"] != spec_before


# Observable points of a 3-replica rollout (surge 1, unavailable 0): before, in the middle of and at the end
# of the replacement. Every intermediate (new ready, old desired) pair is a case of the planner's unit tests.
KILL_POINTS = [
    ("the new version exists", lambda new, old: new is not None),
    ("old down to 2", lambda new, old: old is not None and old["desired"] <= 2),
    ("3 new ready", lambda new, old: new is not None and new["ready"] >= 3),
]


def test_killing_the_flow_at_each_step_then_redeploying_converges(env, local_cluster, tmp_path):
    project = write_project(tmp_path / "roll", "t0")
    url = deploy(path=str(project))["roll"]
    home = local_cluster["home"].root
    load = BackgroundLoad(url, {"x": 1}, connections=4)  # light: the point here is convergence
    for index, (point, reached) in enumerate(KILL_POINTS, start=1):
        live = agent_status(local_cluster)["versions"][0]["revision"]
        write_project(project, f"t{index}")
        proc = subprocess.Popen(
            [sys.executable, "-m", "cortex_flows.cli", "deploy", str(project)], env={**os.environ, **env},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip

        wait_for(lambda live=live, reached=reached: _at(local_cluster, live, reached), 60, interval=0.01, what=point)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

        state = deploy(path=str(project), return_state=True)
        assert state.is_completed(), f"after a kill at '{point}': {state.message}"
        final = agent_status(local_cluster)
        assert [(v["ready"], v["desired"], v["weight"]) for v in final["versions"]] == [(3, 3, 100)], point
        assert httpx.post(url, json={}).json() == {"tag": f"t{index}"}
        wait_for(lambda: len(serving_pids(home)) == 3, 30, what=f"3 replica processes after '{point}'")
    outcomes = load.stop()
    failures = [o for o in outcomes if not o.isdigit()]
    assert failures == [], f"{len(failures)} of {len(outcomes)} failed: {failures[:5]}"


def _at(local_cluster: dict[str, Any], live: int, reached: Any) -> bool:
    """Whether the rollout away from revision `live` reached a kill point."""
    versions = {v["revision"]: v for v in agent_status(local_cluster)["versions"]}
    new = next((v for rev, v in versions.items() if rev > live), None)
    return reached(new, versions.get(live))


def test_concurrent_changes_of_one_api_are_serialized(env, local_cluster, tmp_path):
    first = write_project(tmp_path / "a", "a1")
    deploy(path=str(first))
    second = write_project(tmp_path / "b", "b1")
    gate = tmp_path / "gate"
    write_project(first, "a2", gate=str(gate))  # its replicas wait for the gate: the rollout stays in progress
    command = [sys.executable, "-m", "cortex_flows.cli", "deploy"]
    a = subprocess.Popen([*command, str(first)], env={**os.environ, **env}, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    wait_for(lambda: len(agent_status(local_cluster)["versions"]) == 2, 60, interval=0.01, what="the first rollout")

    busy = cli("deploy", str(second), "--no-wait", env=env, timeout=60)
    assert busy.returncode == 1
    assert "deploy of roll (pid" in busy.stderr and "in progress" in busy.stderr

    b = subprocess.Popen([*command, str(second)], env={**os.environ, **env}, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    gate.touch()
    assert a.wait(120) == 0, a.stderr.read()
    assert b.wait(120) == 0, b.stderr.read()
    history = asyncio.run(_history(local_cluster))
    assert [(h.revision, h.outcome.value) for h in history] == [(3, "live"), (2, "superseded"), (1, "superseded")]
    assert httpx.post(f"{local_cluster['gateway']}/roll", json={}).json() == {"tag": "b1"}


async def _history(local_cluster: dict[str, Any]) -> list[Any]:
    from cortex_flows.backends.local.client import LocalBackend

    return await LocalBackend(local_cluster["home"], autostart=False).history("roll")
