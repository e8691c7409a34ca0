"""The canary flow on the Kubernetes backend: kmock's API server for the objects, and a Prometheus query API
whose series grow as the HTTPRoute's weights send simulated traffic to each version. A candidate
answering 30% errors is rolled back at its first step; a healthy one is promoted through every step."""

from __future__ import annotations

import json
import random
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from prefect_kubernetes.credentials import KubernetesClusterConfig, KubernetesCredentials

from cortex_flows.blocks import CortexCluster
from cortex_flows.flows.canary import canary_rollout
from cortex_flows.flows.deploy import deploy
from tests.helpers import example_project
from tests.kube import KubeServer

NS = "ml"
API = "iris-classifier"
RATE = 400  # simulated requests per second over all versions
BUCKETS = ("0.005", "0.01", "0.025", "0.05", "0.1", "+Inf")


class Traffic:
    """Per revision, the counters its pods' /metrics would show, grown every 0.1 s by its route weight."""

    def __init__(self, kube: KubeServer) -> None:
        self.kube = kube
        self.broken: set[int] = set()  # revisions answering 30% 500s
        self.counts: dict[int, Counter[tuple[str, str]]] = {}
        self.weights_seen: list[dict[int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._lock = threading.Lock()

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            route = self.kube.objects().get(("HTTPRoute", API))
            if route is None:
                continue
            refs = route["spec"]["rules"][0]["backendRefs"]
            weights = {int(r["name"].rsplit("-r", 1)[1]): r["weight"] for r in refs}
            if not self.weights_seen or self.weights_seen[-1] != weights:
                self.weights_seen.append(weights)
            total = sum(weights.values()) or 1
            with self._lock:
                for revision, weight in weights.items():
                    counts = self.counts.setdefault(revision, Counter())
                    for _ in range(round(RATE * 0.1 * weight / total)):
                        failed = revision in self.broken and random.random() < 0.3
                        counts[("status_code", "500" if failed else "200")] += 1
                        for le in BUCKETS[1:]:  # every answer takes 5-10 ms
                            counts[("le", le)] += 1
                        if not failed:
                            counts[("prediction", random.choice(("setosa", "versicolor", "virginica")))] += 1

    def answer(self, query: str) -> list[dict[str, Any]]:
        """The vector a Prometheus would return for one of the backend's queries."""
        revision = int(re.search(r'revision="(\d+)"', query).group(1))
        label = next((name for name in ("status_code", "le", "prediction") if f"by ({name})" in query), None)
        with self._lock:
            counts = dict(self.counts.get(revision, Counter()))
        if label is None:
            return [{"metric": {}, "value": [time.time(), "2" if "in_flight" in query else "0"]}]
        return [{"metric": {label: value}, "value": [time.time(), str(n)]}
                for (name, value), n in counts.items() if name == label]  # fmt: skip


@pytest.fixture
def kube() -> Iterator[KubeServer]:
    with KubeServer() as server:
        yield server


@pytest.fixture
def traffic(kube: KubeServer) -> Iterator[Traffic]:
    with Traffic(kube) as t:
        yield t


@pytest.fixture
def prometheus(traffic: Traffic) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = parse_qs(urlsplit(self.path).query)["query"][0]
            body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": traffic.answer(query)}})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def cluster(prefect_api: str, kube: KubeServer, prometheus: str, tmp_path: Path) -> str:
    name = f"kmock-{uuid.uuid4().hex[:8]}"
    config = KubernetesClusterConfig(config=kube.kubeconfig(NS), context_name="kmock")
    KubernetesCredentials(cluster_config=config).save(name, overwrite=True)
    CortexCluster(backend="kubernetes", namespace=NS, kubernetes_credentials=name, gateway_url="http://gateway.test",
                  package_store=str(tmp_path / "store"), prometheus_url=prometheus).save(name, overwrite=True)  # fmt: skip
    return name


def set_spec(project: Path, **config: Any) -> None:
    spec = yaml.safe_load((project / "cortex.yaml").read_text())
    spec[0].setdefault("config", {}).update(config)
    spec[0]["canary"] = {"steps": [50, 100], "bake": "10s", "analysis_interval": "10s", "min_samples": 100}
    spec[0]["autoscaling"] = {"min_replicas": 2, "max_replicas": 4}
    (project / "cortex.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def test_canary_rolls_a_broken_candidate_back_and_promotes_a_healthy_one(kube, traffic, cluster, tmp_path):
    project = example_project(tmp_path)
    set_spec(project, note="v1")
    deploy(path=str(project), cluster=cluster)

    set_spec(project, note="v2")
    traffic.broken.add(2)
    started = time.monotonic()
    state = canary_rollout(path=str(project), cluster=cluster, return_state=True)
    assert state.is_failed() and "error_rate" in state.message, state.message
    objects = kube.objects()
    assert ("Deployment", f"{API}-r2") not in objects
    assert {1: 50, 2: 50} in traffic.weights_seen and traffic.weights_seen[-1] == {1: 100}
    print(f"\nbroken candidate rolled back in {time.monotonic() - started:.1f}s: {state.message[-60:]}")

    set_spec(project, note="v3")
    result = canary_rollout(path=str(project), cluster=cluster)
    assert result["outcome"] == "promoted" and result["revision"] == 3
    assert [row["step"] for row in result["ledger"]] == ["50%", "100%"]
    seen = traffic.weights_seen[traffic.weights_seen.index({1: 100}):]
    assert {1: 50, 3: 50} in seen and {3: 100} in seen and seen[-1] == {3: 100}
    objects = kube.objects()
    assert ("Deployment", f"{API}-r1") not in objects and objects[("Deployment", f"{API}-r3")]["spec"]["replicas"] == 2
    again = canary_rollout(path=str(project), cluster=cluster)  # a scheduled run with nothing new
    assert again["outcome"] == "up to date" and kube.objects() == objects
