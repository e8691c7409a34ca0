"""`prefect.yaml` against a real `prefect server start` (free loopback port, temporary home, analytics off):
`prefect deploy --all` registers every deployment with its schedule and trigger, and an event
`cortex.model.trained` makes the canary-rollout deployment's automation create a flow run for that path."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowRunFilter
from prefect.events import Event
from prefect.events.clients import PrefectEventsClient
from prefect.settings import PREFECT_API_URL, temporary_settings

from tests.helpers import ROOT, free_port_closed, run_command, wait_for

DEPLOYMENTS = {"deploy-api", "canary-rollout", "train-and-deploy", "deploy-api-kubernetes", "delete-api"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port_closed()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = env["PREFECT_API_URL"]
    try:
        wait_for(lambda: _healthy(url), 90, interval=0.2, what="prefect server start")
        yield {"PREFECT_API_URL": url, "PREFECT_HOME": str(home)}
    finally:
        proc.terminate()
        proc.wait(30)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_deploy_all_registers_every_deployment_and_an_event_starts_a_canary(server):
    env = {**server, "CORTEX_FLOWS_PROJECT_ROOT": str(ROOT), "CORTEX_FLOWS_PROJECTS_REPO": "https://example.com/ml.git"}
    for pool, kind in (("cortex-local", "process"), ("cortex-k8s", "kubernetes")):
        made = run_command([sys.executable, "-m", "prefect", "work-pool", "create", pool, "--type", kind], env)
        assert made.returncode == 0, made.stdout + made.stderr
    done = run_command([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"], env, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with temporary_settings(updates={PREFECT_API_URL: server["PREFECT_API_URL"]}):
        _check(server["PREFECT_API_URL"])


def _check(url: str) -> None:
    deployments = asyncio.run(_deployments())
    assert set(deployments) == DEPLOYMENTS
    canary = deployments["canary-rollout"]
    [schedule] = canary.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone, schedule.active) == ("0 10 * * 1-5", "UTC", False)
    assert deployments["deploy-api-kubernetes"].work_pool_name == "cortex-k8s"

    started = time.monotonic()
    asyncio.run(_emit_trained(url, "/models/iris"))
    run = wait_for(lambda: asyncio.run(_runs_of(canary.id)), 60, interval=0.5, what="a canary-rollout flow run")
    assert run.parameters["path"] == "/models/iris"
    print(f"\ncortex.model.trained -> canary-rollout flow run in {time.monotonic() - started:.1f}s")


async def _deployments() -> dict:
    async with get_client() as client:
        found = await client.read_deployments(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=sorted(DEPLOYMENTS)))
        )
        return {d.name: d for d in found}


async def _emit_trained(url: str, path: str) -> None:
    async with PrefectEventsClient(api_url=url) as events:
        await events.emit(Event(event="cortex.model.trained", resource={"prefect.resource.id": "cortex.model.iris"},
                                payload={"path": path}))  # fmt: skip


async def _runs_of(deployment_id: object) -> object:
    async with get_client() as client:
        runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter())
    return next((r for r in runs if r.deployment_id == deployment_id), None)
