"""cortex-flows as a team runs it: a real `prefect server start` (free loopback port, temporary home, analytics
off), `prefect deploy --all` and a process worker. Every deployment registers with its schedule; the
train-and-deploy deployment runs three times (a first model ships, a worse one is refused, an equal one
goes out as a canary) and the flow runs, states, task runs, artifacts and events are read back through the
Prefect client; an event `cortex.model.trained` starts a canary-rollout run that the worker executes; and
headless Chromium shows the canary's ledger in the Prefect UI."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    DeploymentFilter,
    DeploymentFilterName,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
)
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.events import Event
from prefect.events.clients import PrefectEventsClient
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter
from prefect.settings import PREFECT_API_URL, temporary_settings

from tests.conftest import running_local_cluster
from tests.helpers import ROOT, BackgroundLoad, example_project, free_port_closed, run_command, wait_for

DEPLOYMENTS = {"deploy-api", "canary-rollout", "train-and-deploy", "deploy-api-kubernetes", "delete-api"}
CHROMIUM = shutil.which("chromium")


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
        with temporary_settings(updates={PREFECT_API_URL: url}):  # this process's client talks to it too
            yield {"PREFECT_API_URL": url, "PREFECT_HOME": str(home)}
    finally:
        proc.terminate()
        proc.wait(30)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with pytest.MonkeyPatch.context() as patch, running_local_cluster(tmp_path_factory.mktemp("home"), patch) as c:
        yield c


@pytest.fixture(scope="module")
def worker(
    server: dict[str, str], cluster: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """Work pools made and `prefect deploy --all` run as the README says; then a process worker polling
    the local pool every second, its flow runs using the module's local agent."""
    env = {**server, **cluster["env"], "CORTEX_FLOWS_PROJECT_ROOT": str(ROOT),
           "CORTEX_FLOWS_PROJECTS_REPO": "https://example.com/ml.git", "PREFECT_WORKER_QUERY_SECONDS": "1"}  # fmt: skip
    for pool, kind in (("cortex-local", "process"), ("cortex-k8s", "kubernetes")):
        made = run_command([sys.executable, "-m", "prefect", "work-pool", "create", pool, "--type", kind], env)
        assert made.returncode == 0, made.stdout + made.stderr
    done = run_command([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"], env, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", "cortex-local"],
            env={**os.environ, **env}, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            yield {**env, "worker_log": str(log)}
        finally:
            proc.terminate()
            proc.wait(30)


def test_deploy_all_registers_every_deployment_with_its_schedule(worker):
    deployments = _deployments()
    assert set(deployments) == DEPLOYMENTS
    [schedule] = deployments["canary-rollout"].schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone, schedule.active) == ("0 10 * * 1-5", "UTC", False)
    assert deployments["deploy-api-kubernetes"].work_pool_name == "cortex-k8s"
    assert {d.work_pool_name for name, d in deployments.items() if name != "deploy-api-kubernetes"} == {"cortex-local"}


def _deployments() -> dict[str, Any]:
    with get_client(sync_client=True) as client:
        found = client.read_deployments(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=sorted(DEPLOYMENTS)))
        )
    return {d.name: d for d in found}


# -- train-and-deploy, run by the worker ------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline(worker: dict[str, str], cluster: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Three runs of the train-and-deploy deployment on a trained copy of the example: the first model, one
    trained on half-wrong labels, and one as good as the first (2% of labels flipped) under light load."""
    root = example_project(tmp_path_factory.mktemp("iris"))
    name = f"iris-{uuid.uuid4().hex[:6]}"
    spec = yaml.safe_load((root / "cortex.yaml").read_text())
    spec[0].update(name=name, networking={"endpoint": f"/{name}"},
                   canary={"steps": [100], "bake": "10s", "analysis_interval": "10s", "min_samples": 1,
                           "max_latency_ratio": 3})  # fmt: skip  (latency noise on 2 shared cores)
    (root / "cortex.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    started, runs, seconds = datetime.now(UTC), {}, {}
    for label, degrade in (("first", 0.0), ("worse", 0.5), ("equal", 0.02)):
        if label == "equal":  # clients call the API while the canary runs
            load = BackgroundLoad(f"{cluster['gateway']}/{name}", {"features": [5.1, 3.5, 1.4, 0.2]}, connections=1)
        began = time.monotonic()
        runs[label] = run_deployment(
            "train-and-deploy/train-and-deploy", parameters={"path": str(root), "degrade": degrade},
            timeout=300, poll_interval=1,
        )  # fmt: skip
        seconds[label] = time.monotonic() - began
    print("\ntrain-and-deploy via the worker: " + ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items()))
    return {"api": name, "runs": runs, "since": started, "outcomes": load.stop()}


def test_a_good_model_ships_a_worse_one_is_refused_an_equal_one_goes_out_as_a_canary(pipeline):
    api, runs = pipeline["api"], pipeline["runs"]
    assert {label: run.state_name for label, run in runs.items()} == dict.fromkeys(runs, "Completed")
    first, worse, equal = (str(runs[label].id) for label in ("first", "worse", "equal"))

    with get_client(sync_client=True) as client:
        # Each run went Scheduled -> Pending -> Running -> Completed on the worker.
        states = [s.type.value for s in sorted(client.read_flow_run_states(first), key=lambda s: s.timestamp)]
        assert states[0] == "SCHEDULED" and states[-2:] == ["RUNNING", "COMPLETED"], states
        # The refused run trained, evaluated, read production's quality and gated; it installed nothing.
        tasks = {t.name.rsplit("-", 1)[0]: t.state_name for t in client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[runs["worse"].id])))}  # fmt: skip
        assert tasks == dict.fromkeys(["train", "evaluate", "production_accuracy", "gate"], "Completed"), tasks
        # The shipping runs called deploy, then canary-rollout, as subflows tagged with the training run.
        children = {}
        for sub in client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id for run in runs.values()]))):  # fmt: skip
            parent = str(client.read_task_run(sub.parent_task_run_id).flow_run_id)
            children[parent] = (client.read_flow(sub.flow_id).name, sub.state_name, sub.tags)
        gate = _artifact(client, worse, "gate-decision")
        canary = _artifact(client, _child(client, equal), "canary-report")
        quality = _quality(client, api)

    assert set(children) == {first, equal}, children  # the refused run started no subflow
    assert children[first][:2] == ("deploy", "Completed") and children[equal][:2] == ("canary-rollout", "Completed")
    assert f"training-run:{equal}" in children[equal][2]
    assert "Gate refused" in gate and "worse than production" in gate and worse in gate
    assert "# Canary of" in canary and "promoted" in canary and f"({equal})" in canary
    assert "## Who, what, why" in canary and f"`training-run:{equal}`" in canary
    assert quality["training_run"] == equal and quality["revision"] == 2
    assert set(pipeline["outcomes"]) <= {"1", "2"}  # clients never saw an error across the canary

    expected = {"cortex.model.approved", "cortex.model.refused", "cortex.api.deployed", "cortex.canary.promoted"}
    events = wait_for(  # the server writes events asynchronously
        lambda: (found := _events(pipeline["since"], ["cortex.model.", "cortex.api.deployed", "cortex.canary."]))
        and expected <= {e.event for e in found} and found, 30, interval=0.5, what=f"the events {sorted(expected)}",
    )  # fmt: skip
    names = [e.event for e in events]
    assert names.count("cortex.model.approved") == 2 and names.count("cortex.model.refused") == 1, names
    assert names.index("cortex.canary.step") < names.index("cortex.canary.promoted"), names
    refused = next(e for e in events if e.event == "cortex.model.refused")
    assert "worse than production" in refused.payload["reason"] and refused.payload["api"] == api
    assert f"prefect.flow-run.{worse}" in {r.id for r in refused.related}  # the event names its training run

    def lifecycle() -> list[str]:
        found = _events(pipeline["since"], ["prefect.flow-run."], resource=f"prefect.flow-run.{first}")
        names = [e.event.removeprefix("prefect.flow-run.") for e in found if not e.event.endswith("heartbeat")]
        return names if "Completed" in names else []

    names = wait_for(lifecycle, 30, interval=0.5, what="the first run's events")
    assert "pull-step.executed" in names  # the worker ran prefect.yaml's pull step
    lifecycle_states = ["Scheduled", "Pending", "Running", "Completed"]  # with Submitting, maybe Late, between
    assert [n for n in names if n in lifecycle_states] == lifecycle_states, names


def _child(client: Any, parent: str) -> str:
    [child] = client.read_flow_runs(flow_run_filter=FlowRunFilter(
        parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent])))  # fmt: skip
    return str(child.id)


def _artifact(client: Any, flow_run_id: str, key: str) -> str:
    found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return str(next(a.data for a in found if a.key == key))


def _quality(client: Any, api: str) -> dict[str, Any]:
    from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey

    [latest] = client.read_latest_artifacts(artifact_filter=ArtifactCollectionFilter(
        key=ArtifactCollectionFilterKey(any_=[f"model-quality-{api}"])))  # fmt: skip
    return json.loads(latest.data)[0]


def _events(since: datetime, prefixes: list[str], resource: str | None = None) -> list[Any]:
    """Events whose name starts with one of `prefixes`, oldest first (they are written asynchronously)."""
    flt = EventFilter(occurred=EventOccurredFilter(since=since - timedelta(seconds=5)),
                      event=EventNameFilter(prefix=prefixes),
                      resource=EventResourceFilter(id=[resource]) if resource else None)  # fmt: skip
    with get_client(sync_client=True) as client:
        page = client.read_events(filter=flt, limit=50)  # the most the API returns per page
    return sorted(page.events, key=lambda e: e.occurred)


# -- automation: an event starts a canary ---------------------------------------------------------------


def test_a_trained_event_starts_a_canary_rollout_run_the_worker_executes(worker, pipeline):
    canary = _deployments()["canary-rollout"]
    path = str(Path(pipeline["runs"]["equal"].parameters["path"]))
    started = time.monotonic()
    _emit_trained(worker["PREFECT_API_URL"], path)
    run = wait_for(lambda: _final_run_of(canary.id), 120, interval=0.5, what="a finished canary-rollout run")
    assert run.parameters["path"] == path
    assert run.state_name == "Completed"  # the model that event names already serves: nothing to roll
    print(f"\ncortex.model.trained -> canary-rollout run finished by the worker in {time.monotonic() - started:.1f}s")


def _emit_trained(url: str, path: str) -> None:
    import asyncio

    async def emit() -> None:
        async with PrefectEventsClient(api_url=url) as events:
            await events.emit(Event(event="cortex.model.trained", resource={"prefect.resource.id": "cortex.model.iris"},
                                    payload={"path": path}))  # fmt: skip

    asyncio.run(emit())


def _final_run_of(deployment_id: Any) -> FlowRun | None:
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter())
    return next((r for r in runs if r.deployment_id == deployment_id and r.state and r.state.is_final()), None)


# -- the Prefect UI, in headless Chromium ----------------------------------------------------------------


class _Text(HTMLParser):
    """The visible text of a dumped DOM (scripts and styles left out)."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[Any]) -> None:
        self._skip += tag in ("script", "style")

    def handle_endtag(self, tag: str) -> None:
        self._skip -= tag in ("script", "style") and self._skip > 0

    def handle_data(self, data: str) -> None:
        if not self._skip and data.strip():
            self.parts.append(data.strip())


def _chromium(url: str, out: Path, profile: Path) -> str:
    """Screenshot `url` to `out` once the single-page app rendered; returns the page's visible text."""
    assert CHROMIUM, "chromium is not installed (`make test` installs it: apt-get install chromium)"
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
            "--virtual-time-budget=10000", "--window-size=1400,1000"]  # fmt: skip
    shot = subprocess.run([*base, f"--screenshot={out}", url], capture_output=True, timeout=60, check=False)
    assert shot.returncode == 0 and out.stat().st_size > 20_000, shot.stderr[-2000:]
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=60, check=False)
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = _Text()
    text.feed(dom.stdout)
    return re.sub(r"\s+", " ", " ".join(text.parts))


def test_the_ui_shows_the_canary_run_and_its_ledger(worker, pipeline, tmp_path):
    ui = worker["PREFECT_API_URL"].removesuffix("/api")
    equal = str(pipeline["runs"]["equal"].id)
    with get_client(sync_client=True) as client:
        canary_run = _child(client, equal)
        run = client.read_flow_run(canary_run)
        [ledger] = [a for a in client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[canary_run]))) if a.key == "canary-report"]  # fmt: skip

    page = _chromium(f"{ui}/runs/flow-run/{canary_run}", tmp_path / "flow-run.png", tmp_path / "profile")
    # The timeline (a canvas: in the screenshot, not the text) marks the canary-report artifact.
    assert run.name in page and "Completed" in page and f"training-run:{equal}" in page, page[:2000]
    assert "Flow canary-rollout" in page and "Artifacts" in page, page[:2000]
    shown = _chromium(f"{ui}/artifacts/artifact/{ledger.id}", tmp_path / "ledger.png", tmp_path / "profile")
    assert "Canary of" in shown and "Who, what, why" in shown and "promote" in shown, shown[:2000]
    assert f"training-run:{equal}" in shown
    print(f"\nscreenshots: {tmp_path / 'flow-run.png'}, {tmp_path / 'ledger.png'}")
