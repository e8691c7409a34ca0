"""Kubernetes canary metrics over real HTTP: Prometheus' query API served on loopback from a fixed table of
series, and CloudWatch served by moto with the series put under the documented dimensions."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import httpx
import pytest
from botocore.client import BaseClient
from botocore.config import Config

from cortex_flows.backends.base import BackendError, VersionMetrics
from cortex_flows.backends.kubernetes.metrics import (
    CLOUDWATCH_NAMESPACE,
    cloudwatch_version_metrics,
    prometheus_version_metrics,
)
from tests.conftest import MOTO_KEY, MOTO_REGION

SELECTOR = '{namespace="models",api_name="iris",revision="2"}'

# What the cluster's Prometheus holds for revision 2 of `iris`: metric -> [(labels, value)].
SERIES: dict[str, list[tuple[dict[str, str], str]]] = {
    "cortex_requests_total": [
        ({"status_code": "200"}, "90"),
        ({"status_code": "404"}, "3"),
        ({"status_code": "500"}, "5"),
        ({"status_code": "503"}, "2"),
    ],
    "cortex_request_duration_seconds_bucket": [
        ({"le": "1"}, "88"),
        ({"le": "0.005"}, "10"),
        ({"le": "+Inf"}, "95"),
        ({"le": "0.1"}, "60"),
    ],
    "cortex_predictions_total": [({"prediction": "setosa"}, "40"), ({"prediction": "virginica"}, "50")],
    "cortex_prediction_value_count": [({}, "12")],
    "cortex_prediction_value_sum": [({}, "-3.5")],
    "cortex_in_flight_requests": [({}, "3")],
}


@dataclass
class FakePrometheus:
    """A loopback HTTP server answering `/api/v1/query` from SERIES (or failing as `mode` says)."""

    url: str
    mode: str = "ok"  # ok | 500 | 400 | hang
    queries: list[dict[str, str]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def prometheus() -> Iterator[FakePrometheus]:
    state = FakePrometheus(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            params = {k: v[0] for k, v in parse_qs(parts.query).items()}
            state.queries.append(params)
            if parts.path != "/api/v1/query":
                return self._answer(404, {"status": "error", "errorType": "not_found", "error": "no route"})
            if state.mode == "hang":
                state.release.wait(timeout=10)
                return self._answer(503, {"status": "error", "errorType": "timeout", "error": "late"})
            if state.mode == "500":
                return self._answer(500, {"status": "error", "errorType": "internal", "error": "tsdb closed"})
            if state.mode == "400":
                error = 'parse error: unexpected "}"'
                return self._answer(400, {"status": "error", "errorType": "bad_data", "error": error})
            metric = re.search(r"cortex_[a-z_]+", params["query"])
            rows = SERIES.get(metric.group(0), []) if metric and SELECTOR in params["query"] else []
            result = [{"metric": labels, "value": [float(params["time"]), value]} for labels, value in rows]
            return self._answer(
                200, {"status": "success", "data": {"resultType": "vector", "result": result}}
            )

        def _answer(self, status: int, payload: dict[str, Any]) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up
                self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def read_prometheus(url: str, started: datetime, timeout: float = 10.0) -> VersionMetrics:
    async def read() -> VersionMetrics:
        async with httpx.AsyncClient(timeout=timeout) as client:
            return await prometheus_version_metrics(
                client, url, "iris", 2, namespace="models", started=started
            )

    return asyncio.run(read())


def test_prometheus_series_become_the_versions_cumulative_metrics(prometheus: FakePrometheus) -> None:
    started = datetime.now(UTC) - timedelta(minutes=10)
    m = read_prometheus(prometheus.url + "/", started)

    assert m.by_status == {"200": 90, "404": 3, "500": 5, "503": 2}
    assert (m.requests, m.errors) == (100, 7)
    assert m.latency_buckets == [(0.005, 10), (0.1, 60), (1.0, 88), (math.inf, 95)]
    assert m.classes == {"setosa": 40, "virginica": 50}
    assert (m.value_count, m.value_sum, m.replicas_seen) == (12, -3.5, 3)
    assert m.started == started and started + timedelta(minutes=10) <= m.at <= datetime.now(UTC)
    assert m.as_arm().latency_buckets[-1] == (math.inf, 95)

    assert len(prometheus.queries) == 6
    assert len({q["time"] for q in prometheus.queries}) == 1  # one evaluation instant
    assert float(prometheus.queries[0]["time"]) == pytest.approx(m.at.timestamp(), abs=0.001)
    window = math.ceil((m.at - started).total_seconds())
    assert all(SELECTOR in q["query"] for q in prometheus.queries)
    assert all(
        f"[{window}s]" in q["query"] for q in prometheus.queries if not q["query"].startswith("count(")
    )


@pytest.mark.parametrize(
    ("mode", "transient", "said"), [("500", True, "tsdb closed"), ("400", False, "parse error")]
)
def test_prometheus_errors_say_whether_to_retry(
    prometheus: FakePrometheus, mode: str, transient: bool, said: str
) -> None:
    prometheus.mode = mode
    with pytest.raises(BackendError) as caught:
        read_prometheus(prometheus.url, datetime.now(UTC) - timedelta(minutes=1))
    assert caught.value.transient is transient
    assert caught.value.status == int(mode)
    assert said in str(caught.value) and SELECTOR in str(caught.value)


def test_a_slow_or_absent_prometheus_is_transient(prometheus: FakePrometheus) -> None:
    prometheus.mode = "hang"
    with pytest.raises(BackendError, match="timed out on query") as caught:
        read_prometheus(prometheus.url, datetime.now(UTC) - timedelta(minutes=1), timeout=0.3)
    assert caught.value.transient

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(BackendError, match="cannot reach Prometheus") as caught:
        read_prometheus(closed, datetime.now(UTC))
    assert caught.value.transient


# -- CloudWatch -----------------------------------------------------------------------------------------

CLUSTER = "models-prod"
BASE = {"ClusterName": CLUSTER, "Namespace": "models", "api_name": "iris", "revision": "2"}


@pytest.fixture
def cloudwatch(moto_reset: str) -> BaseClient:
    return boto3.session.Session().client(
        "cloudwatch",
        endpoint_url=moto_reset,
        region_name=MOTO_REGION,
        aws_access_key_id=MOTO_KEY,
        aws_secret_access_key=MOTO_KEY,
        config=Config(retries={"mode": "standard", "max_attempts": 1}),
    )


def put(client: BaseClient, at: datetime, rows: list[tuple[str, dict[str, str], float]]) -> None:
    """Datapoints as the CloudWatch agent sends them: each a counter's delta since its last scrape."""
    client.put_metric_data(
        Namespace=CLOUDWATCH_NAMESPACE,
        MetricData=[
            {
                "MetricName": name,
                "Dimensions": [{"Name": k, "Value": v} for k, v in dims.items()],
                "Value": value,
                "Timestamp": at,
            }
            for name, dims, value in rows
        ],
    )


def version(**extra: str) -> dict[str, str]:
    return {**BASE, **extra}


def test_cloudwatch_sums_the_versions_deltas_over_the_window(cloudwatch: BaseClient) -> None:
    now = datetime.now(UTC)
    started = now - timedelta(minutes=10)
    first, second, later = now - timedelta(minutes=7), now - timedelta(minutes=5), now - timedelta(minutes=2)
    put(cloudwatch, first, [
        ("cortex_requests_total", version(status_code="200"), 40),
        ("cortex_requests_total", version(status_code="500"), 3),
        ("cortex_request_duration_seconds_bucket", version(le="0.1"), 30),
        ("cortex_request_duration_seconds_bucket", version(le="+Inf"), 43),
        ("cortex_predictions_total", version(prediction="setosa"), 20),
        ("cortex_prediction_value_count", version(), 5),
        ("cortex_prediction_value_sum", version(), -1.5),
    ])  # fmt: skip
    put(cloudwatch, second, [
        ("cortex_requests_total", version(status_code="200"), 50),
        ("cortex_requests_total", version(status_code="404"), 2),
        ("cortex_request_duration_seconds_bucket", version(le="0.1"), 20),
        ("cortex_request_duration_seconds_bucket", version(le="+Inf"), 52),
        ("cortex_predictions_total", version(prediction="virginica"), 60),
        ("cortex_prediction_value_count", version(), 7),
        ("cortex_prediction_value_sum", version(), -2.0),
        # Not this version's window counts: another declaration's per-pod series, another revision,
        # another cluster, and the in-flight gauge.
        ("cortex_requests_total", version(status_code="200", pod_name="iris-2-abc"), 50),
        ("cortex_requests_total", {**BASE, "revision": "1", "status_code": "200"}, 999),
        ("cortex_requests_total", {**BASE, "ClusterName": "staging", "status_code": "200"}, 999),
        ("cortex_in_flight_requests", version(), 4),
    ])  # fmt: skip
    put(cloudwatch, now - timedelta(hours=1), [("cortex_requests_total", version(status_code="200"), 999)])

    snapshot = cloudwatch_version_metrics(
        cloudwatch,
        "iris",
        2,
        namespace="models",
        cluster=CLUSTER,
        started=started,
        now=now - timedelta(minutes=4),
    )
    assert snapshot.by_status == {"200": 90, "404": 2, "500": 3}
    assert (snapshot.requests, snapshot.errors) == (95, 3)
    assert snapshot.latency_buckets == [(0.1, 50), (math.inf, 95)]
    assert snapshot.classes == {"setosa": 20, "virginica": 60}
    assert (snapshot.value_count, snapshot.value_sum) == (12, -3.5)
    assert snapshot.started == started.replace(second=0, microsecond=0)
    assert (snapshot.at, snapshot.replicas_seen) == (now - timedelta(minutes=4), 0)

    put(cloudwatch, later, [
        ("cortex_requests_total", version(status_code="200"), 10),
        ("cortex_requests_total", version(status_code="503"), 4),
    ])  # fmt: skip
    newer = cloudwatch_version_metrics(
        cloudwatch, "iris", 2, namespace="models", cluster=CLUSTER, started=started, now=now
    )
    assert newer.by_status == {"200": 100, "404": 2, "500": 3, "503": 4}
    window = newer.since(snapshot)  # same start: the traffic in between
    assert (window.by_status, window.requests, window.errors) == (
        {"200": 10, "404": 0, "500": 0, "503": 4},
        14,
        4,
    )


def test_cloudwatch_unreachable_is_a_transient_backend_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    client = boto3.session.Session().client(
        "cloudwatch",
        endpoint_url=closed,
        region_name=MOTO_REGION,
        aws_access_key_id=MOTO_KEY,
        aws_secret_access_key=MOTO_KEY,
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}, connect_timeout=2),
    )
    now = datetime.now(UTC)
    with pytest.raises(
        BackendError, match="CloudWatch metrics of API 'iris' revision 2 unavailable"
    ) as caught:
        cloudwatch_version_metrics(
            client,
            "iris",
            2,
            namespace="models",
            cluster=CLUSTER,
            started=now - timedelta(minutes=5),
            now=now,
        )
    assert caught.value.transient
