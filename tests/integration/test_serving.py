"""The replica process for real: `python -m cortex_flows.serving` on a loopback port.

Handlers wait on files the test creates, so the test decides when loading or a request ends; every wait
is a poll with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from botocore.client import BaseClient
from prometheus_client.parser import text_string_to_metric_families

from cortex_flows.packaging.build import build_package
from tests.fixtures.serving.iris import SETOSA, VIRGINICA, train_iris_model

FIXTURE_HANDLER = Path(__file__).parents[1] / "fixtures" / "serving" / "handler.py"
START_TIMEOUT = 20.0
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], T], what: str, timeout: float = START_TIMEOUT) -> T:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)
    return value


@dataclass
class Replica:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def stderr(self) -> str:
        return self.log.read_text()

    def status(self, path: str) -> int | None:
        """Status of a GET on a fresh connection; None while nothing listens."""
        try:
            return httpx.get(self.url + path, timeout=2).status_code
        except httpx.TransportError:
            return None

    def wait_ready(self) -> None:
        wait_for(lambda: self.status("/readyz") == 200 or self.proc.poll() is not None, "readiness")
        assert self.proc.poll() is None, self.stderr()

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(self.url + "/metrics", timeout=2).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    return sample.value
        return 0.0


def launch(config: dict[str, Any], workdir: Path, *args: str) -> Replica:
    """Start `python -m cortex_flows.serving` on a free port, stderr to `workdir/replica.log`."""
    (workdir / "replica.json").write_text(json.dumps(config))
    port = free_port()
    log = workdir / "replica.log"
    command = [sys.executable, "-m", "cortex_flows.serving", "--config", str(workdir / "replica.json")]
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port), *args],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    return Replica(proc, f"http://127.0.0.1:{port}", log)


def stop(replica: Replica) -> None:
    if replica.proc.poll() is None:
        replica.proc.kill()
        replica.proc.wait(10)


@pytest.fixture
def start_replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Replica]]:
    """Start replicas from a config dict; any still running at teardown are killed."""
    started: list[Replica] = []

    def start(config: dict[str, Any], *args: str) -> Replica:
        started.append(launch(config, tmp_path_factory.mktemp("replica"), *args))
        return started[-1]

    yield start
    for replica in started:
        stop(replica)


def project(tmp_path: Path) -> Path:
    directory = tmp_path / "project"
    directory.mkdir(exist_ok=True)
    shutil.copy(FIXTURE_HANDLER, directory / "handler.py")
    return directory


def python_config(tmp_path: Path, **fields: Any) -> dict[str, Any]:
    return {
        "api_name": "echo",
        "revision": 7,
        "handler": {"type": "python", "path": "handler.py"},
        "project_dir": str(project(tmp_path)),
        "cache_dir": str(tmp_path / "cache"),
        **fields,
    }


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    """One replica shared by the request-level tests: one slot, a queue of two, a 1 KiB body limit."""
    tmp_path = tmp_path_factory.mktemp("shared")
    config = python_config(tmp_path, max_concurrency=1, max_queue_length=2, max_body_bytes=1024)
    shared = launch(config, tmp_path)
    try:
        shared.wait_ready()
        yield shared
    finally:
        stop(shared)


# --- lifecycle -------------------------------------------------------------------------------------------


def test_probes_follow_loading(tmp_path: Path, start_replica: Callable[..., Replica]) -> None:
    gate = tmp_path / "loaded"
    replica = start_replica(python_config(tmp_path, config={"load_gate": str(gate), "greeting": "hi"}))
    wait_for(lambda: replica.status("/healthz") == 200, "healthz while loading")
    assert replica.status("/readyz") == 503
    early = httpx.post(replica.url + "/predict", json={})
    assert (early.status_code, early.headers["retry-after"]) == (503, "1")

    gate.touch()
    replica.wait_ready()
    response = httpx.post(
        replica.url + "/predict?version=2", json={"x": 1}, headers={"x-test": "t", "x-request-id": "abc-123"}
    )
    assert response.status_code == 200
    assert response.json() == {
        "echo": {"x": 1},
        "query": {"version": "2"},
        "x_test": "t",
        "model_dir": str(tmp_path / "project"),
        "greeting": "hi",
    }
    assert response.headers["x-request-id"] == "abc-123"
    assert response.headers["x-cortex-revision"] == "7"


def test_sigterm_drains_the_request_in_flight(tmp_path: Path, start_replica: Callable[..., Replica]) -> None:
    replica = start_replica(python_config(tmp_path), "--drain-delay", "1", "--grace", "10")
    replica.wait_ready()
    gate = tmp_path / "finish"
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(httpx.post, replica.url + "/predict", json={"wait_for": str(gate)}, timeout=20)
        wait_for(lambda: replica.metric("cortex_in_flight_requests") == 1, "the slow request in flight")
        replica.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: replica.status("/readyz") == 503, "readyz 503 after SIGTERM", timeout=5)
        wait_for(lambda: replica.status("/healthz") is None, "the listener to close", timeout=5)
        assert replica.proc.poll() is None, "exited before the in-flight request finished"
        gate.touch()
        assert slow.result(timeout=10).status_code == 200
    assert replica.proc.wait(timeout=10) == 0
    assert "SIGTERM: not ready" in replica.stderr()


def test_sigterm_while_the_handler_is_still_loading_exits_at_once(
    tmp_path: Path, start_replica: Callable[..., Replica]
) -> None:
    never = tmp_path / "never-created"
    replica = start_replica(python_config(tmp_path, config={"load_gate": str(never)}))
    wait_for(lambda: replica.status("/healthz") == 200, "healthz while loading")
    started = time.monotonic()
    replica.proc.send_signal(signal.SIGTERM)
    assert replica.proc.wait(timeout=10) == 0
    assert time.monotonic() - started < 3, "a constructor that never returns held the stopping replica"


def test_load_failure_exits_nonzero_with_the_reason_last(
    tmp_path: Path, start_replica: Callable[..., Replica]
) -> None:
    config = python_config(tmp_path)
    config["handler"]["class_name"] = "BrokenHandler"
    replica = start_replica(config)
    assert replica.proc.wait(timeout=START_TIMEOUT) == 1
    stderr = replica.stderr()
    assert "Traceback" in stderr
    last = stderr.strip().splitlines()[-1]
    assert "load failed: loading the handler: BrokenHandler.__init__ raised" in last
    assert last.endswith("RuntimeError: weights missing")


def test_bad_config_exits_2(tmp_path: Path, start_replica: Callable[..., Replica]) -> None:
    replica = start_replica({"api_name": "x", "handler": {"type": "python"}, "max_concurency": 2})
    assert replica.proc.wait(timeout=START_TIMEOUT) == 2
    assert "bad replica config" in replica.stderr().strip().splitlines()[-1]


def test_replica_stops_when_its_parent_dies(tmp_path: Path, start_replica: Callable[..., Replica]) -> None:
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        replica = start_replica(python_config(tmp_path), "--parent-pid", str(parent.pid))
        replica.wait_ready()
    finally:
        parent.kill()
        parent.wait(10)
    assert replica.proc.wait(timeout=10) == 0
    assert f"parent process {parent.pid} exited" in replica.stderr()


# --- requests on the shared replica -----------------------------------------------------------------------


def test_both_predict_routes_answer_with_ids(replica: Replica) -> None:
    first, second = (httpx.post(replica.url + path, json={"n": 1}) for path in ("/", "/predict"))
    assert first.status_code == second.status_code == 200
    assert first.json()["echo"] == {"n": 1}
    assert len(first.headers["x-request-id"]) == 32
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    assert second.headers["x-cortex-revision"] == "7"


def test_client_errors(replica: Replica) -> None:
    malformed = httpx.post(
        replica.url + "/predict", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert malformed.status_code == 400
    assert malformed.json()["error"].startswith("malformed JSON")
    assert malformed.json()["request_id"] == malformed.headers["x-request-id"]

    declared = httpx.post(replica.url + "/predict", json={"pad": "x" * 2000})
    assert declared.status_code == 413
    chunked = httpx.post(
        replica.url + "/predict", content=iter([b'{"pad": "', b"x" * 800, b"x" * 800, b'"}'])
    )
    assert chunked.status_code == 413
    assert "max_body_bytes (1024)" in chunked.json()["error"]

    assert httpx.get(replica.url + "/predict").status_code == 405
    assert httpx.post(replica.url + "/healthz").status_code == 405
    assert httpx.get(replica.url + "/nope").status_code == 404


def test_handler_exception_is_a_500_and_the_replica_carries_on(replica: Replica) -> None:
    failed = httpx.post(replica.url + "/predict", json={"raise": True}, headers={"x-request-id": "req-500"})
    assert failed.status_code == 500
    assert failed.json() == {"error": "the handler raised an exception", "request_id": "req-500"}
    assert "Traceback" not in failed.text
    assert httpx.post(replica.url + "/predict", json={"ok": True}).status_code == 200
    stderr = replica.stderr()
    assert "request req-500 -> 500: the handler raised" in stderr
    assert "RuntimeError: handler failure" in stderr


def test_a_returned_response_passes_through(replica: Replica) -> None:
    response = httpx.post(replica.url + "/predict", json={"teapot": True}, headers={"x-request-id": "tea"})
    assert (response.status_code, response.content) == (418, b"short and stout")
    assert response.headers["x-teapot"] == "yes"
    assert response.headers["x-request-id"] == "tea"
    assert response.headers["x-cortex-revision"] == "7"


def test_admission_runs_one_queues_two_and_sheds_the_rest(replica: Replica, tmp_path: Path) -> None:
    gate = tmp_path / "open"
    ok_before = replica.metric("cortex_requests_total", status_code="200")
    shed_before = replica.metric("cortex_requests_total", status_code="503")
    durations_before = replica.metric("cortex_request_duration_seconds_count")

    async def scenario() -> tuple[list[httpx.Response], list[httpx.Response], float]:
        limits = httpx.Limits(max_connections=10)
        async with httpx.AsyncClient(base_url=replica.url, limits=limits, timeout=20) as client:
            pending = {
                asyncio.create_task(client.post("/predict", json={"wait_for": str(gate)})) for _ in range(6)
            }
            early: list[httpx.Response] = []
            while len(early) < 3:  # the three beyond one slot + two queue places come back at once
                done, pending = await asyncio.wait(pending, timeout=10, return_when=asyncio.FIRST_COMPLETED)
                assert done, "no early answers"
                early += [task.result() for task in done]
            in_flight = await asyncio.to_thread(replica.metric, "cortex_in_flight_requests")
            gate.touch()
            late = [await task for task in pending]
        return early, late, in_flight

    early, late, in_flight = asyncio.run(scenario())
    assert [r.status_code for r in early] == [503] * 3
    assert all(r.headers["retry-after"] == "1" and "request_id" in r.json() for r in early)
    assert in_flight == 3
    assert [r.status_code for r in late] == [200] * 3
    assert replica.metric("cortex_in_flight_requests") == 0
    assert replica.metric("cortex_requests_total", status_code="200") == ok_before + 3
    assert replica.metric("cortex_requests_total", status_code="503") == shed_before + 3
    assert replica.metric("cortex_request_duration_seconds_count") == durations_before + 3  # shed: not timed
    assert replica.stderr().count("-> 503: too many requests in flight") >= 3


# --- packages and built-in handlers --------------------------------------------------------------------------


def test_sklearn_from_a_package(tmp_path: Path, start_replica: Callable[..., Replica]) -> None:
    source = tmp_path / "iris-project"
    train_iris_model(source / "model.joblib")
    built = build_package(source, tmp_path / "store")
    replica = start_replica(
        {
            "api_name": "iris",
            "handler": {"type": "sklearn"},
            "package": {"uri": built.path.as_uri(), "sha256": built.sha256},
            "cache_dir": str(tmp_path / "cache"),
            "model_path": "model.joblib",
            "max_concurrency": 4,
        }
    )
    replica.wait_ready()
    single = httpx.post(replica.url + "/predict", json={"features": SETOSA})
    assert single.json() == {"prediction": "setosa"}
    batch = httpx.post(replica.url + "/predict", json={"instances": [SETOSA, VIRGINICA]})
    assert batch.json() == {"predictions": ["setosa", "virginica"]}
    bad = httpx.post(replica.url + "/predict", json={"rows": []})
    assert bad.status_code == 400
    assert "features" in bad.json()["error"]
    assert replica.metric("cortex_predictions_total", prediction="setosa", api_name="iris") == 2
    assert replica.metric("cortex_predictions_total", prediction="virginica") == 1
    assert (tmp_path / "cache" / built.sha256 / "model.joblib").is_file()


def test_sklearn_model_from_s3(
    tmp_path: Path,
    start_replica: Callable[..., Replica],
    aws_env: str,
    moto_s3: BaseClient,
    s3_bucket: str,
) -> None:
    model = train_iris_model(tmp_path / "iris.joblib")
    moto_s3.upload_file(str(model), s3_bucket, "models/iris.joblib")
    replica = start_replica(
        {
            "api_name": "iris",
            "handler": {"type": "sklearn"},
            "model_path": f"s3://{s3_bucket}/models/iris.joblib",
            "s3": {"endpoint_url": aws_env, "region": "us-east-1"},
            "cache_dir": str(tmp_path / "cache"),
        }
    )
    replica.wait_ready()
    assert httpx.post(replica.url + "/predict", json={"features": VIRGINICA}).json() == {
        "prediction": "virginica"
    }
    assert [p.name for p in (tmp_path / "cache" / "models").glob("*/*")] == ["iris.joblib"]
