"""The setup-autoscaling flow against moto's server (EC2 Auto Scaling over real HTTP, credentials from an
AwsCredentials block) and a running iris API on the local agent: settings applied in place with no restart,
the node group sized, bad inputs refused before anything changes, throttling retried by the task."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import httpx
import pytest
import yaml
from botocore.client import BaseClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect_aws import AwsCredentials

from cortex_flows.backends.local.client import stop_agent
from cortex_flows.backends.local.home import LocalHome
from cortex_flows.blocks import CortexCluster
from cortex_flows.flows.autoscaling import setup_autoscaling
from cortex_flows.flows.deploy import deploy
from cortex_flows.spec import load_spec, spec_hash
from tests.conftest import GROUP, MOTO_KEY, MOTO_REGION, group_of
from tests.helpers import cli, example_project, free_port_closed, serving_pids, wait_for

pytestmark = pytest.mark.timeout(120)


@dataclass
class Deployed:
    home: LocalHome
    port: int
    project: Path
    original: list[dict[str, Any]]  # the spec as deployed first

    def write_spec(self, **changes: Any) -> None:
        """The first API's spec with `changes` (dotted keys, e.g. `autoscaling.max_replicas=10`)."""
        apis = json.loads(json.dumps(self.original))
        for dotted, value in changes.items():
            *parents, key = dotted.split(".")
            node = apis[0]
            for parent in parents:
                node = node.setdefault(parent, {})
            node[key] = value
        (self.project / "cortex.yaml").write_text(yaml.safe_dump(apis, sort_keys=False))

    def running(self) -> dict[str, Any]:
        """The version the agent runs: revision, replica count and the API spec it was given."""
        state = json.loads(self.home.state_file.read_text())
        versions = state["apis"]["iris-classifier"]["versions"]
        assert len(versions) == 1
        revision, version = next(iter(versions.items()))
        return {"revision": int(revision), "replicas": version["replicas"], "spec_hash": version["spec"]["spec_hash"],
                "spec": version["spec"]["spec"], "package": version["spec"]["package_id"]}  # fmt: skip


@pytest.fixture(scope="module")
def deployed(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    """The iris example deployed once for the module on a private agent (each test rewrites its spec)."""
    home = LocalHome(tmp_path_factory.mktemp("cortex-home"))
    port = free_port_closed()
    project = example_project(tmp_path_factory.mktemp("project"))
    CortexCluster(home=str(home.root), gateway_port=port).save("autoscaling-local", overwrite=True)
    state = deploy(path=str(project), cluster="autoscaling-local", return_state=True)
    assert state.is_completed(), state.message
    try:
        yield Deployed(home, port, project, yaml.safe_load((project / "cortex.yaml").read_text()))
    finally:
        stop_agent(home, timeout=20)


@pytest.fixture
def deployed_fresh(deployed: Deployed) -> Deployed:
    """The module's API with its first spec applied again (in place), whatever an earlier test left."""
    deployed.write_spec()
    state = setup_autoscaling(path=str(deployed.project), cluster="autoscaling-local", return_state=True)
    assert state.is_completed(), state.message
    return deployed


def save_cluster(deployed: Deployed, name: str, endpoint_url: str, **fields: Any) -> None:
    AwsCredentials(
        aws_access_key_id=MOTO_KEY, aws_secret_access_key=MOTO_KEY, region_name=MOTO_REGION,
        aws_client_parameters={"endpoint_url": endpoint_url},
    ).save(f"{name}-creds", overwrite=True)  # fmt: skip
    node = {"node_group": GROUP, "instance_type": "m5.large", "instance_cpu": "1", "instance_memory": "4Gi"}
    CortexCluster(
        home=str(deployed.home.root),
        gateway_port=deployed.port,
        aws_credentials=f"{name}-creds",
        **{**node, **fields},
    ).save(name, overwrite=True)


async def _read_run(flow_run_id: Any) -> tuple[list[Any], list[Any]]:
    async with get_client() as client:
        runs = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
        return await client.read_task_runs(flow_run_filter=runs), artifacts


def test_settings_applied_in_place_and_node_group_sized(deployed_fresh: Deployed, autoscaling: BaseClient):
    d = deployed_fresh
    save_cluster(
        d, "asg-spot", autoscaling.meta.endpoint_url, max_nodes=6, spot=True, spot_instance_types=["m5a.large"],
        on_demand_base_capacity=1, on_demand_percentage_above_base=25, on_demand_price=0.096, spot_price=0.035,
    )  # fmt: skip
    before = d.running()
    pids = sorted(serving_pids(d.home.root))
    assert pids and before["spec"]["autoscaling"]["max_replicas"] == 4

    d.write_spec(**{"autoscaling.max_replicas": 10})
    started = time.monotonic()
    state = setup_autoscaling(path=str(d.project), cluster="asg-spot", return_state=True)
    elapsed = time.monotonic() - started
    assert state.is_completed(), state.message
    result = state.result()

    # The API: same revision and package, new settings, no replica restarted.
    after = d.running()
    api = load_spec(d.project).apis[0]
    assert result["apis"]["iris-classifier"]["action"] == "in-place"
    assert (after["revision"], after["package"], after["replicas"]) == (
        before["revision"],
        before["package"],
        1,
    )
    assert after["spec"]["autoscaling"]["max_replicas"] == 10
    assert after["spec_hash"] == spec_hash(api, after["package"]) != before["spec_hash"]
    assert sorted(serving_pids(d.home.root)) == pids
    url = f"http://127.0.0.1:{d.port}/iris-classifier"
    assert httpx.post(url, json={"features": [5.1, 3.5, 1.4, 0.2]}).json() == {"prediction": "setosa"}

    # The group: 1 CPU - 250m reserve = 750m -> 3 replicas of 200m per node; ceil(10/3) = 4 at max,
    # ceil(1/3) = 1 at min; desired 0 was below the new min, so raised to 1.
    group = group_of(autoscaling)
    assert (group["min"], group["max"], group["desired"]) == (1, 4, 1)
    distribution = group["policy"]["InstancesDistribution"]
    assert (distribution["OnDemandBaseCapacity"], distribution["OnDemandPercentageAboveBaseCapacity"]) == (
        1,
        25,
    )
    overrides = group["policy"]["LaunchTemplate"]["Overrides"]
    assert [o["InstanceType"] for o in overrides] == ["m5.large", "m5a.large"]
    summary = result["node_group"]
    assert summary["before"] == {"min": 0, "max": 1, "desired": 0}
    assert summary["after"] == {"min": 1, "max": 4, "desired": 1}
    assert summary["cost_per_hour"] == {"at_min": pytest.approx(0.096), "at_max": pytest.approx(0.262)}

    _, artifacts = asyncio.run(_read_run(state.state_details.flow_run_id))
    report = next(a.data for a in artifacts if a.key == "setup-autoscaling-report")
    for expected in [
        "| before | 0 | 1 | 0 |",
        "| after | 1 | 4 | 1 |",
        "cpu floor(750m / 200m) = 3 -> 3 (bound by cpu)",
        "ceil(10 / 3) = 4 node(s) at max_replicas",
        "above base 3 x 25% -> 1 on-demand (rounded up); 2 on-demand + 2 spot",
        "| at max | 4 | 2 | 2 | $0.096 | $0.035 | $0.2620 |",
        "| at min | 1 | 1 | 0 | $0.096 | $0.035 | $0.0960 |",
    ]:
        assert expected in report, report
    assert MOTO_KEY not in json.dumps(result) and "testing" not in report  # no credentials in outputs

    # Again: nothing to apply, and the group keeps what it has (idempotent).
    again = setup_autoscaling(path=str(d.project), cluster="asg-spot", return_state=True)
    assert again.is_completed(), again.message
    assert again.result()["apis"]["iris-classifier"]["action"] == "up-to-date"
    assert again.result()["node_group"]["after"] == {"min": 1, "max": 4, "desired": 1}
    assert sorted(serving_pids(d.home.root)) == pids
    print(f"setup-autoscaling took {elapsed:.2f}s")


def test_cli_names_an_unknown_group_then_sizes_the_real_one(deployed_fresh: Deployed, autoscaling: BaseClient,
                                                             prefect_api: str):  # fmt: skip
    d = deployed_fresh
    save_cluster(d, "asg-missing", autoscaling.meta.endpoint_url, node_group="no-such-group")
    save_cluster(d, "asg-cli", autoscaling.meta.endpoint_url, on_demand_price=0.05)
    before = d.running()
    d.write_spec(**{"autoscaling.max_replicas": 6})
    env = {"PREFECT_API_URL": prefect_api}

    run = cli("setup-autoscaling", str(d.project), "--cluster", "asg-missing", env=env, timeout=90)
    assert run.returncode == 1, run.stdout + run.stderr
    assert (
        "setup-autoscaling failed: Auto Scaling group 'no-such-group' not found in region us-east-1"
        in run.stderr
    )
    assert d.running() == before  # checked before anything changed
    assert group_of(autoscaling)["max"] == 1

    run = cli("setup-autoscaling", str(d.project), "--cluster", "asg-cli", "--api", "iris-classifier", env=env,
              timeout=90)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "iris-classifier: in-place (revision 1, replicas 1-6)" in run.stdout
    # ceil(6 / 3) = 2 nodes at max, all on-demand: 2 x $0.05
    assert (
        "node group cortex-nodes: min 0 -> 1, max 1 -> 2, desired 0 -> 1; cost per hour $0.0500 at min, $0.1000 at max"
        in run.stdout
    )
    assert d.running()["spec"]["autoscaling"]["max_replicas"] == 6


def test_need_above_max_nodes_is_refused_and_nothing_changes(
    deployed_fresh: Deployed, autoscaling: BaseClient
):
    d = deployed_fresh
    save_cluster(d, "asg-small", autoscaling.meta.endpoint_url, max_nodes=4)
    before, group_before = d.running(), group_of(autoscaling)
    d.write_spec(**{"autoscaling.max_replicas": 20})  # ceil(20 / 3) = 7 nodes

    state = setup_autoscaling(path=str(d.project), cluster="asg-small", return_state=True)
    assert state.is_failed()
    message = state.message or ""
    assert (
        "need 7 m5.large node(s) at max_replicas" in message
        and "at most 4 (block field max_nodes)" in message
    )
    assert d.running() == before
    assert group_of(autoscaling) == group_before


def test_changes_beyond_in_place_need_a_deploy(deployed_fresh: Deployed):
    d = deployed_fresh
    before = d.running()
    for changes, expected in [
        ({"compute.cpu": "300m"}, "needs a rolling update: run `cortex-flows deploy"),
        (
            {"name": "iris-other"},
            "API 'iris-other' is not deployed on this cluster: run `cortex-flows deploy",
        ),
    ]:
        d.write_spec(**changes)
        state = setup_autoscaling(path=str(d.project), cluster="autoscaling-local", return_state=True)
        assert state.is_failed() and expected in (state.message or ""), state.message
    d.write_spec()
    state = setup_autoscaling(
        path=str(d.project), cluster="autoscaling-local", apis=["nope"], return_state=True
    )
    assert state.is_failed() and "no API named 'nope'" in (state.message or "")
    assert d.running() == before


def test_replicas_outside_the_new_bounds_are_scaled_into_them(deployed_fresh: Deployed):
    d = deployed_fresh
    (original,) = serving_pids(d.home.root)
    d.write_spec(**{"autoscaling.min_replicas": 2})
    state = setup_autoscaling(path=str(d.project), cluster="autoscaling-local", return_state=True)
    assert state.is_completed(), state.message
    assert d.running()["replicas"] == 2
    pids = serving_pids(d.home.root)
    assert original in pids and len(pids) == 2  # one replica added, the running one untouched

    d.write_spec(**{"autoscaling.max_replicas": 1})
    state = setup_autoscaling(path=str(d.project), cluster="autoscaling-local", return_state=True)
    assert state.is_completed(), state.message
    assert d.running()["replicas"] == 1
    wait_for(lambda: len(serving_pids(d.home.root)) == 1, timeout=30, what="one replica left")


class ThrottlingProxy:
    """A loopback HTTP server that answers the first `throttle` requests with EC2 Auto Scaling's
    `Throttling` error (HTTP 400, query-protocol XML) and forwards every other request to moto."""

    BODY = (
        b'<ErrorResponse xmlns="https://autoscaling.amazonaws.com/doc/2011-01-01/"><Error><Type>Sender</Type>'
        b"<Code>Throttling</Code><Message>Rate exceeded</Message></Error><RequestId>1</RequestId></ErrorResponse>"
    )

    def __init__(self, upstream: str, throttle: int) -> None:
        self.upstream, self.throttle = upstream, throttle
        self.actions: list[tuple[str, str]] = []  # (action, "throttled" | "forwarded")
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                action = next(
                    (p.split("=", 1)[1] for p in body.decode().split("&") if p.startswith("Action=")), "?"
                )
                if sum(1 for _, what in proxy.actions if what == "throttled") < proxy.throttle:
                    proxy.actions.append((action, "throttled"))
                    self._answer(400, {"Content-Type": "text/xml"}, proxy.BODY)
                    return
                proxy.actions.append((action, "forwarded"))
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")
                }
                resp = httpx.post(proxy.upstream + self.path, content=body, headers=headers, timeout=30)
                self._answer(resp.status_code, {"Content-Type": resp.headers.get("content-type", "text/xml")},
                             resp.content)  # fmt: skip

            def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def test_throttling_is_retried_by_the_task(deployed_fresh: Deployed, autoscaling: BaseClient):
    d = deployed_fresh
    with ThrottlingProxy(autoscaling.meta.endpoint_url, throttle=2) as proxy:
        save_cluster(d, "asg-throttled", proxy.url, max_nodes=6)
        d.write_spec(**{"autoscaling.max_replicas": 5})  # ceil(5 / 3) = 2 nodes
        state = setup_autoscaling(path=str(d.project), cluster="asg-throttled", return_state=True)
    assert state.is_completed(), state.message
    assert proxy.actions[:3] == [
        ("DescribeAutoScalingGroups", "throttled"),
        ("DescribeAutoScalingGroups", "throttled"),
        ("DescribeAutoScalingGroups", "forwarded"),
    ]
    assert ("UpdateAutoScalingGroup", "forwarded") in proxy.actions
    task_runs, _ = asyncio.run(_read_run(state.state_details.flow_run_id))
    describe = next(t for t in task_runs if t.name.startswith("describe node group"))
    assert describe.run_count == 3  # two throttled attempts, then success: the task's retry policy did it
    group = group_of(autoscaling)
    assert (group["min"], group["max"], group["desired"]) == (1, 2, 1)
    assert group["policy"] is None  # no spot asked for: the purchase options are left alone
