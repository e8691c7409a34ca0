"""End to end on the local backend: the deploy flow under a Prefect test server, the CLI as users run it."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
)

from cortex_flows.flows.deploy import deploy
from tests.helpers import cli, example_project, serving_pids, wait_for

SETOSA = {"features": [5.1, 3.5, 1.4, 0.2]}
VIRGINICA = {"features": [6.3, 3.3, 6.0, 2.5]}


async def _artifacts(flow_run_id):
    async with get_client() as client:
        return await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )


async def _task_runs(flow_run_id):
    async with get_client() as client:
        return await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


def test_deploy_serve_get_delete(prefect_api, local_cluster, tmp_path):
    project = example_project(tmp_path)
    state = deploy(path=str(project), return_state=True)
    assert state.is_completed(), state.message
    url = state.result()["iris-classifier"]
    assert url == f"{local_cluster['gateway']}/iris-classifier"

    assert httpx.post(url, json=SETOSA).json() == {"prediction": "setosa"}
    assert httpx.post(url, json=VIRGINICA).json() == {"prediction": "virginica"}

    got = cli("get", "iris-classifier", "--output", "json", env=local_cluster["env"])
    assert got.returncode == 0, got.stderr
    status = json.loads(got.stdout)
    assert (status["state"], status["ready"], status["requested"], status["url"]) == ("live", 1, 1, url)
    table = cli("get", env=local_cluster["env"]).stdout
    assert "iris-classifier" in table and url in table  # piped, the table still shows the whole URL

    artifacts = asyncio.run(_artifacts(state.state_details.flow_run_id))
    report = next(a for a in artifacts if a.key == "deploy-report")
    assert report.type == "markdown" and "iris-classifier" in report.data and status["versions"][0]["package_id"][:12] in report.data
    link = next(a for a in artifacts if a.key == "endpoint-iris-classifier")
    assert url in link.data

    logs = cli("logs", "iris-classifier", env=local_cluster["env"])
    assert logs.returncode == 0 and "iris-classifier-r1" in logs.stdout
    info = json.loads(cli("cluster", "info", "-o", "json", env=local_cluster["env"]).stdout)
    assert (info["running"], info["apis"], info["gateway"]) == (True, 1, local_cluster["gateway"])

    replicas = serving_pids(local_cluster["home"].root)
    assert len(replicas) == 1
    deleted = cli("delete", "iris-classifier", env={**local_cluster["env"], "PREFECT_API_URL": prefect_api})
    assert deleted.returncode == 0, deleted.stderr
    assert httpx.post(url, json=SETOSA).status_code == 404
    wait_for(lambda: not serving_pids(local_cluster["home"].root), 10, what="replica processes to exit")


def test_redeploying_an_unchanged_spec_is_a_no_op(prefect_api, local_cluster, tmp_path):
    project = example_project(tmp_path)
    deploy(path=str(project))
    pids = serving_pids(local_cluster["home"].root)
    state = deploy(path=str(project), return_state=True)
    assert state.is_completed()
    assert serving_pids(local_cluster["home"].root) == pids


def test_two_apis_in_one_spec_deploy_concurrently(prefect_api, local_cluster, tmp_path):
    project = example_project(tmp_path)
    spec = (project / "cortex.yaml").read_text()
    second = spec.replace("name: iris-classifier", "name: iris-twin").replace(
        "endpoint: /iris-classifier", "endpoint: /iris-twin"
    )
    (project / "cortex.yaml").write_text(spec + "\n" + second[second.index("- name") :])
    state = deploy(path=str(project), return_state=True)
    assert state.is_completed(), state.message
    for name in ("iris-classifier", "iris-twin"):
        assert httpx.post(f"{local_cluster['gateway']}/{name}", json=SETOSA).json() == {"prediction": "setosa"}
    runs = asyncio.run(_task_runs(state.state_details.flow_run_id))
    rolls = {r.name.removeprefix("roll "): r for r in runs if r.name.startswith("roll ")}
    a, b = rolls["iris-classifier"], rolls["iris-twin"]
    assert a.start_time < b.end_time and b.start_time < a.end_time, "the two APIs' rollouts did not overlap"


def test_agent_killed_comes_back_with_every_api_and_no_orphans(prefect_api, local_cluster, tmp_path):
    project = example_project(tmp_path)
    url = deploy(path=str(project))["iris-classifier"]
    home = local_cluster["home"]
    info = home.read_info()
    old_replicas = serving_pids(home.root)
    os.kill(info.pid, signal.SIGKILL)
    wait_for(lambda: not serving_pids(home.root), 15, what="orphaned replicas to exit after the agent died")

    up = cli("cluster", "up", env=local_cluster["env"], timeout=60)
    assert up.returncode == 0, up.stderr
    wait_for(lambda: httpx.post(url, json=SETOSA).status_code == 200, 30, what="the API to serve again")
    assert httpx.post(url, json=SETOSA).json() == {"prediction": "setosa"}
    new_replicas = serving_pids(home.root)
    assert len(new_replicas) == 1 and not set(new_replicas) & set(old_replicas)


@pytest.mark.parametrize(
    "edit, path, fragment",
    [
        ("name: Iris_Classifier", "Iris_Classifier", "DNS-1035"),
        ("  autoscaling:\n    min_replicas: 5\n    max_replicas: 4", "autoscaling", "max_replicas"),
        ("  replicas: 3", "replicas", "unknown field"),
    ],
)
def test_bad_spec_exits_2_and_deploys_nothing(local_cluster, tmp_path, edit, path, fragment):
    project = example_project(tmp_path)
    spec = project / "cortex.yaml"
    text = spec.read_text()
    if edit.startswith("name:"):
        text = text.replace("name: iris-classifier", edit)
    elif edit.startswith("  autoscaling"):
        text = text.replace("  autoscaling:\n    min_replicas: 1\n    max_replicas: 4", edit)
    else:
        text += edit + "\n"
    spec.write_text(text)
    result = cli("deploy", str(project), env=local_cluster["env"], timeout=60)
    assert result.returncode == 2
    assert "cortex.yaml" in result.stderr and path in result.stderr and fragment in result.stderr
    assert local_cluster["home"].read_info() is None  # no agent was even started
