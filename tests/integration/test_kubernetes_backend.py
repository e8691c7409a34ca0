"""The flows on the Kubernetes backend, against kmock's API server over real HTTP with the real
`kubernetes_asyncio` client and a status simulator: deploy, rolling update, rollback, delete; re-runs
leave the objects byte-identical; a flaky API server (30% of calls 429/500/409) still deploys; a 422 fails
at once with the server's message; a Deployment past its progress deadline is rolled back."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect_kubernetes.credentials import KubernetesClusterConfig, KubernetesCredentials

from cortex_flows.blocks import CortexCluster
from cortex_flows.flows.delete import delete
from cortex_flows.flows.deploy import deploy
from cortex_flows.flows.rollback import rollback
from tests.helpers import example_project
from tests.kube import KubeServer

NS = "ml"


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


def test_deploy_update_rollback_delete_and_reruns_change_nothing(kube, cluster, project):
    urls = deploy(path=str(project), cluster=cluster)
    assert urls == {"iris-classifier": "http://gateway.test/iris-classifier"}
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
