"""Prefect-facing behaviour: task retries on real failures, block registration, run naming."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from uuid import UUID

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect_aws import AwsCredentials

from cortex_flows.blocks import CortexCluster
from cortex_flows.packaging.build import build_package
from cortex_flows.tasks.deploy import store
from tests.helpers import ROOT, cli, example_project, free_port_closed, run_command


async def _task_run(task_run_id):
    async with get_client() as client:
        return await client.read_task_run(task_run_id)


def _store_attempts(cluster: CortexCluster, tmp_path) -> tuple[str, int]:
    built = build_package(example_project(tmp_path), tmp_path / "out")

    @flow
    def store_only() -> tuple[str, UUID]:
        fast = store.with_options(retry_delay_seconds=0, retry_jitter_factor=None)
        state = fast(built, cluster, return_state=True)
        return state.type.value, state.state_details.task_run_id

    outcome, task_run_id = store_only()
    return outcome, asyncio.run(_task_run(task_run_id)).run_count


def test_unreachable_store_is_retried_then_fails(prefect_api, tmp_path):
    AwsCredentials(
        aws_access_key_id="a", aws_secret_access_key="b", region_name="us-east-1",
        aws_client_parameters={"endpoint_url": f"http://127.0.0.1:{free_port_closed()}",
                               "config": {"retries": {"max_attempts": 1}, "connect_timeout": 1}},
    ).save("closed-port", overwrite=True)  # fmt: skip
    cluster = CortexCluster(package_store="s3://bucket/p", aws_credentials="closed-port")
    assert _store_attempts(cluster, tmp_path) == ("FAILED", 5)  # 1 try + 4 retries


def test_missing_bucket_fails_at_once(prefect_api, moto_reset, tmp_path):
    AwsCredentials(
        aws_access_key_id="a", aws_secret_access_key="b", region_name="us-east-1",
        aws_client_parameters={"endpoint_url": moto_reset},
    ).save("moto-no-bucket", overwrite=True)  # fmt: skip
    cluster = CortexCluster(package_store="s3://no-such-bucket/p", aws_credentials="moto-no-bucket")
    assert _store_attempts(cluster, tmp_path) == ("FAILED", 1)


def test_block_registration_and_block_documents(prefect_api, local_cluster):
    env = {"PREFECT_API_URL": prefect_api}
    registered = run_command([sys.executable, "-m", "prefect", "block", "register", "-m", "cortex_flows"], env)
    assert registered.returncode == 0, registered.stderr
    assert "cortex-cluster" in registered.stdout.replace("\n", "") or "Cortex Cluster" in registered.stdout
    saved = cli("blocks", "save", "blocks/local-default.yaml", env=env)
    assert saved.returncode == 0, saved.stderr
    assert CortexCluster.load("local-default").backend == "local"
    done = subprocess.run([sys.executable, "-m", "cortex_flows.cli", "blocks", "register"], cwd=ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "registered block type kubernetes-credentials" in done.stdout and "cortex-cluster/eks-prod" in done.stdout
    eks = CortexCluster.load("eks-prod")
    assert (eks.backend, eks.eks_cluster, eks.aws_credentials) == ("kubernetes", "ml-prod", "aws-prod")


def test_deploy_run_is_named_for_its_apis_and_revisions(prefect_api, local_cluster, tmp_path):
    from cortex_flows.flows.deploy import deploy

    state = deploy(path=str(example_project(tmp_path)), return_state=True)

    async def name():
        async with get_client() as client:
            return (await client.read_flow_run(state.state_details.flow_run_id)).name

    assert asyncio.run(name()) == "deploy iris-classifier r1"


def test_a_notify_block_that_cannot_notify_fails_the_deploy_before_anything_changes(prefect_api, local_cluster, tmp_path):
    from prefect.blocks.system import Secret

    from cortex_flows.backends.local.client import LocalBackend
    from cortex_flows.flows.deploy import deploy

    Secret(value="not a notifier").save("a-secret", overwrite=True)
    project = str(example_project(tmp_path))
    for reference, says in [("slack-oncall", "expected '<block-type-slug>/<block-name>'"),
                            ("custom-webhook/nobody", "nobody"), ("secret/a-secret", "cannot send notifications")]:  # fmt: skip
        state = deploy(path=project, notify=reference, return_state=True)
        assert state.is_failed() and says in state.message, state.message
    assert asyncio.run(LocalBackend().status("iris-classifier")) is None


@pytest.mark.parametrize("is_async", [False, True])
def test_sync_and_async_tasks_retry_transient_failures_only(prefect_api, is_async):
    from prefect import flow, task

    from cortex_flows.backends.base import BackendError
    from cortex_flows.tasks.retry import INFRA_RETRIES

    attempts: list[str] = []
    retries = {**INFRA_RETRIES, "retry_delay_seconds": 0}

    def body(transient: bool) -> str:
        attempts.append("x")
        if len(attempts) < 3 or not transient:
            raise BackendError("agent hiccup", transient=transient)
        return "done"

    if is_async:

        @task(**retries)
        async def step(transient: bool) -> str:
            return body(transient)
    else:

        @task(**retries)
        def step(transient: bool) -> str:
            return body(transient)

    @flow
    def run(transient: bool) -> str:
        return step.submit(transient).result()

    assert run(True) == "done" and len(attempts) == 3
    attempts.clear()
    assert run(False, return_state=True).is_failed() and len(attempts) == 1
