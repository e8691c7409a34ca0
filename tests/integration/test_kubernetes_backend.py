"""The flows on the Kubernetes backend, against kmock's API server over real HTTP with the real
`kubernetes_asyncio` client and a status simulator: deploy, rolling update, rollback, delete; re-runs
leave the objects byte-identical; a flaky API server (30% of calls 429/500/409) still deploys; a 422 fails
at once with the server's message; a Deployment past its progress deadline is rolled back; credentials
appear nowhere but the API's Secret; setup-autoscaling changes the autoscaler in place and sizes the
node group (moto's EC2 Auto Scaling)."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect_aws import AwsCredentials
from prefect_kubernetes.credentials import KubernetesClusterConfig, KubernetesCredentials

from cortex_flows.blocks import CortexCluster
from cortex_flows.flows.autoscaling import setup_autoscaling
from cortex_flows.flows.delete import delete
from cortex_flows.flows.deploy import deploy
from cortex_flows.flows.rollback import rollback
from tests.conftest import GROUP, MOTO_KEY, MOTO_REGION, group_of
from tests.helpers import cli, example_project
from tests.kube import KubeServer

NS = "ml"
TOKEN = "kmock-bearer-token-c0ffee-77"


@pytest.fixture
def kube() -> Iterator[KubeServer]:
    with KubeServer() as server:
        yield server


@pytest.fixture
def cluster(prefect_api: str, kube: KubeServer, tmp_path: Path) -> str:
    """A CortexCluster block for the emulated cluster, its kubeconfig in a KubernetesCredentials block."""
    name = f"kmock-{uuid.uuid4().hex[:8]}"
    config = KubernetesClusterConfig(config=kube.kubeconfig(NS), context_name="kmock")
    KubernetesCredentials(cluster_config=config).save(name, overwrite=True)
    CortexCluster(backend="kubernetes", namespace=NS, kubernetes_credentials=name, gateway_url="http://gateway.test",
                  package_store=str(tmp_path / "store")).save(name, overwrite=True)  # fmt: skip
    return name


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return example_project(tmp_path)


def set_config(project: Path, **config: Any) -> None:
    spec = yaml.safe_load((project / "cortex.yaml").read_text())
    spec[0].setdefault("config", {}).update(config)
    (project / "cortex.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def kinds(objects: dict[tuple[str, str], Any]) -> set[tuple[str, str]]:
    return {key for key in objects if key[0] != "Lease"}


def weights(kube: KubeServer, api: str) -> dict[str, int]:
    route = kube.objects()[("HTTPRoute", api)]
    return {ref["name"]: ref["weight"] for ref in route["spec"]["rules"][0]["backendRefs"]}


def test_deploy_update_rollback_delete_and_reruns_change_nothing(kube, cluster, project, prefect_api):
    urls = deploy(path=str(project), cluster=cluster)
    assert urls == {"iris-classifier": "http://gateway.test/iris-classifier"}
    shown = cli("get", "iris-classifier", "--cluster", cluster, env={"PREFECT_API_URL": prefect_api})
    assert shown.returncode == 0, shown.stderr
    assert "live" in shown.stdout and "1/1" in shown.stdout and "http://gateway.test/iris-classifier" in shown.stdout
    first = kube.objects()
    r1 = "iris-classifier-r1"
    assert kinds(first) == {("ConfigMap", r1), ("Deployment", r1), ("Service", r1), ("PodDisruptionBudget", r1),
                            ("ScaledObject", r1), ("HTTPRoute", "iris-classifier"),
                            ("ConfigMap", "iris-classifier-history")}  # fmt: skip
    assert weights(kube, "iris-classifier") == {r1: 100}

    deploy(path=str(project), cluster=cluster)  # nothing changed: up to date
    assert kube.objects() == first  # byte-identical, lock released

    set_config(project, note="v2")
    deploy(path=str(project), cluster=cluster)
    after = kube.objects()
    assert ("Deployment", "iris-classifier-r2") in after and ("Deployment", r1) not in after
    assert weights(kube, "iris-classifier") == {"iris-classifier-r2": 100}

    rollback(name="iris-classifier", cluster=cluster)
    assert weights(kube, "iris-classifier") == {"iris-classifier-r3": 100}
    rolled = kube.objects()
    rollback(name="iris-classifier", to=1, cluster=cluster)  # r3 already runs r1: nothing to do
    assert kube.objects() == rolled
    history = yaml.safe_load(kube.objects()[("ConfigMap", "iris-classifier-history")]["data"]["revisions.json"])
    assert [(r["revision"], r["outcome"]) for r in history] == [(3, "live"), (2, "superseded"), (1, "superseded")]
    assert history[0]["package_id"] == history[2]["package_id"]  # r3 runs what r1 ran

    assert delete(name="iris-classifier", cluster=cluster) is True
    assert kinds(kube.objects()) == set()
    assert delete(name="iris-classifier", cluster=cluster) is False


def test_a_flaky_api_server_still_deploys_and_a_422_fails_at_once(kube, cluster, project):
    kube.failure_rate = 0.3
    deploy(path=str(project), cluster=cluster)
    kube.failure_rate = 0.0
    assert {429, 500, 409} & set(kube.failures), kube.failures
    assert weights(kube, "iris-classifier") == {"iris-classifier-r1": 100}
    print(f"\n30% injected faults: {len(kube.failures)} answered 429/500/409, deploy succeeded")

    set_config(project, note="v2")
    kube.invalid["iris-classifier-r2"] = 'Deployment.apps "iris-classifier-r2" is invalid: spec.replicas: Invalid value'
    started = time.monotonic()
    state = deploy(path=str(project), cluster=cluster, return_state=True)
    elapsed = time.monotonic() - started
    assert state.is_failed()
    assert "422" in state.message and "spec.replicas: Invalid value" in state.message, state.message
    assert weights(kube, "iris-classifier") == {"iris-classifier-r1": 100}
    assert elapsed < 20, f"a 422 must not be retried ({elapsed:.1f}s)"


def test_a_slow_and_flaky_api_server_still_converges(kube, cluster, project):
    kube.latency, kube.failure_rate = 0.15, 0.2  # every call 150 ms, and one in five answered 429/500/409
    started = time.monotonic()
    deploy(path=str(project), cluster=cluster)
    elapsed = time.monotonic() - started
    kube.latency, kube.failure_rate = 0.0, 0.0
    assert weights(kube, "iris-classifier") == {"iris-classifier-r1": 100}
    assert kube.objects()[("Deployment", "iris-classifier-r1")]["spec"]["replicas"] == 1
    print(f"\n150 ms per call and 20% faults ({len(kube.failures)} injected): deployed in {elapsed:.1f}s")


def test_a_deployment_past_its_progress_deadline_is_rolled_back(kube, cluster, project):
    deploy(path=str(project), cluster=cluster)
    set_config(project, note="v2")
    kube.stuck.add("iris-classifier-r2")
    state = deploy(path=str(project), cluster=cluster, return_state=True)
    assert state.is_failed() and "timed out progressing" in state.message, state.message
    objects = kube.objects()
    assert weights(kube, "iris-classifier") == {"iris-classifier-r1": 100}
    assert ("Deployment", "iris-classifier-r2") not in objects
    assert objects[("Deployment", "iris-classifier-r1")]["spec"]["replicas"] == 1


SECRET = "k8s-s3cr3t-never-shown-41d7"


def test_credentials_never_reach_objects_logs_artifacts_or_parameters(
    kube, prefect_api, moto_reset, moto_s3, s3_bucket, project, caplog
):
    """The S3 key (AwsCredentials) goes only into the API's Secret, which pods reference by name; the
    cluster token (KubernetesCredentials) goes nowhere but the Authorization header."""
    name = f"kmock-{uuid.uuid4().hex[:8]}"
    AwsCredentials(aws_access_key_id="AKIDK8S", aws_secret_access_key=SECRET, region_name="us-east-1",
                   aws_client_parameters={"endpoint_url": moto_reset}).save(name, overwrite=True)  # fmt: skip
    config = kube.kubeconfig(NS)
    config["users"][0]["user"]["token"] = TOKEN
    KubernetesCredentials(cluster_config=KubernetesClusterConfig(config=config, context_name="kmock")).save(
        name, overwrite=True
    )
    CortexCluster(backend="kubernetes", namespace=NS, kubernetes_credentials=name, aws_credentials=name,
                  package_store=f"s3://{s3_bucket}/cortex").save(name, overwrite=True)  # fmt: skip
    with caplog.at_level(logging.DEBUG):
        state = deploy(path=str(project), cluster=name, return_state=True)
    assert state.is_completed(), state.message
    objects = kube.objects()
    secret = objects.pop(("Secret", "iris-classifier-aws"))
    assert secret["stringData"]["AWS_SECRET_ACCESS_KEY"] == SECRET  # the one place it is written
    deployment = objects[("Deployment", "iris-classifier-r1")]
    pod = deployment["spec"]["template"]["spec"]
    assert {"secretRef": {"name": "iris-classifier-aws"}} in pod["containers"][0]["envFrom"]
    rendered = cli("render", str(project), "--namespace", NS, "--store", f"s3://{s3_bucket}/cortex")
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        parameters = json.dumps(client.read_flow_run(run_id).parameters)
        artifacts = json.dumps([a.data for a in client.read_artifacts()], default=str)
        logs = json.dumps([entry.message for entry in client.read_logs()])
    places = {"objects": json.dumps(list(objects.values())), "render": rendered.stdout + rendered.stderr, "flow parameters": parameters,
              "artifacts": artifacts, "Prefect logs": logs, "local logs": caplog.text}  # fmt: skip
    leaks = [(where, value) for where, text in places.items() for value in (SECRET, TOKEN) if value in text]
    assert leaks == []
    assert all(len(text) > 10 for text in places.values())  # each place was really read


def test_setup_autoscaling_changes_the_autoscaler_in_place_and_sizes_the_node_group(kube, cluster, project, autoscaling):
    AwsCredentials(aws_access_key_id=MOTO_KEY, aws_secret_access_key=MOTO_KEY, region_name=MOTO_REGION,
                   aws_client_parameters={"endpoint_url": autoscaling.meta.endpoint_url}).save(cluster, overwrite=True)  # fmt: skip
    block = CortexCluster.load(cluster, _sync=True)
    block.model_copy(update={"aws_credentials": cluster, "node_group": GROUP, "instance_type": "m5.large",
                             "instance_cpu": "1", "instance_memory": "4Gi"}).save(cluster, overwrite=True)  # fmt: skip
    deploy(path=str(project), cluster=cluster)
    before = kube.objects()
    spec = yaml.safe_load((project / "cortex.yaml").read_text())
    spec[0]["autoscaling"]["max_replicas"] = 10
    (project / "cortex.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    result = setup_autoscaling(path=str(project), cluster=cluster)
    assert result["apis"]["iris-classifier"]["action"] == "in-place"
    after = kube.objects()
    r1 = "iris-classifier-r1"
    assert after[("ScaledObject", r1)]["spec"]["maxReplicaCount"] == 10
    assert before[("ScaledObject", r1)]["spec"]["maxReplicaCount"] == 4
    assert after[("Deployment", r1)]["spec"]["template"] == before[("Deployment", r1)]["spec"]["template"]  # no restart
    assert group_of(autoscaling)["max"] == 4  # 750m per node after the reserve: 3 replicas of 200m; ceil(10/3)
