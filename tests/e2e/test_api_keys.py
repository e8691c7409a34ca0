"""API keys end to end: the iris example deployed on the local backend with `networking.api_keys` naming a
Prefect Secret block; requests without one of its keys get 401, rotating the block's value and deploying
again swaps the keys with no failed request for a client that uses the new key once the deploy returns,
and the keys appear nowhere Prefect or the agent keep things but the agent's private secrets file. Also:
a missing or unusable block fails the deploy before anything changes, the replica takes the keys out of
its handler's environment, the Kubernetes backend keeps them in their own Secret, and the agent's control
API refuses requests without its token."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import yaml
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect_kubernetes.credentials import KubernetesClusterConfig, KubernetesCredentials

from cortex_flows.backends.local.client import running_agent, start_agent
from cortex_flows.blocks import CortexCluster
from cortex_flows.flows.delete import delete
from cortex_flows.flows.deploy import deploy
from cortex_flows.serving.auth import parse_api_keys
from tests.helpers import cli, example_project, free_port_closed, wait_for
from tests.kube import KubeServer

SETOSA = {"features": [5.1, 3.5, 1.4, 0.2]}
API = "iris-classifier"


def new_key(label: str) -> str:
    return f"k-{label}-{uuid.uuid4().hex}"


def use_keys(project: Path, block: str) -> None:
    spec = yaml.safe_load((project / "cortex.yaml").read_text())
    spec[0]["networking"]["api_keys"] = block
    (project / "cortex.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


async def _kept_by_prefect(flow_run_id: Any) -> dict[str, str]:
    """What Prefect keeps of a flow run, as text: the run (parameters included), its logs, task runs and
    artifacts."""
    async with get_client() as client:
        run = await client.read_flow_run(flow_run_id)
        logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {
        "flow run and parameters": run.model_dump_json(),
        "logs": "\n".join(log.message for log in logs),
        "task runs": json.dumps([t.model_dump(mode="json") for t in tasks]),
        "artifacts": json.dumps([a.model_dump(mode="json") for a in artifacts]),
    }


def leaks(places: dict[str, str], secrets: list[str]) -> list[tuple[str, str]]:
    """(place, key) for every key found in a place (a key's prefix names it, never the key)."""
    return [(where, secret[:8]) for where, text in places.items() for secret in secrets if secret in text]


def really_read(places: dict[str, str]) -> None:
    """Each place held something, so finding no key there means something."""
    empty = [where for where, text in places.items() if len(text) <= 20]
    assert empty == []


class KeyedClient:
    """One client POSTing with `X-Api-Key` in a loop (bounded), recording when each request was sent and
    how it ended: the status code, or the exception's name."""

    def __init__(self, url: str, key: str, limit: int = 5000, max_seconds: float = 240.0) -> None:
        self.url, self.key, self.limit = url, key, limit
        self.deadline = time.monotonic() + max_seconds
        self.outcomes: list[tuple[float, int | str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=30, headers={"X-Api-Key": self.key}) as client:
            while not self._stop.is_set() and len(self.outcomes) < self.limit and time.monotonic() < self.deadline:
                sent = time.monotonic()
                try:
                    outcome: int | str = client.post(self.url, json=SETOSA).status_code
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                self.outcomes.append((sent, outcome))
                time.sleep(0.005)

    def stop(self) -> list[tuple[float, int | str]]:
        self._stop.set()
        self._thread.join(timeout=40)
        return list(self.outcomes)


def status_of(url: str, **headers: str) -> int:
    return httpx.post(url, json=SETOSA, headers=headers, timeout=30).status_code


def revision_of(env: dict[str, str]) -> int:
    got = cli("get", API, "--output", "json", env=env)
    assert got.returncode == 0, got.stderr
    (version,) = json.loads(got.stdout)["versions"]
    return version["revision"]


def test_keys_gate_requests_rotate_on_redeploy_and_stay_secret(prefect_api, local_cluster, tmp_path):
    block = f"iris-keys-{uuid.uuid4().hex[:8]}"
    first_key, second_key, rotated_key = new_key("first"), new_key("second"), new_key("rotated")
    Secret(value=[first_key, second_key]).save(block, overwrite=True)
    project = example_project(tmp_path)
    use_keys(project, block)
    env = local_cluster["env"]

    first = deploy(path=str(project), smoke_payload=SETOSA, return_state=True)  # the smoke POST carries a key
    assert first.is_completed(), first.message
    url = first.result()[API]
    denied = httpx.post(url, json=SETOSA)
    assert denied.status_code == 401 and denied.headers["www-authenticate"] == "Bearer"
    assert denied.json()["error"].startswith("missing or invalid API key")
    assert status_of(url, authorization="Bearer wrong-key") == status_of(url, **{"x-api-key": "wrong-key"}) == 401
    assert status_of(url, authorization=f"Basic {first_key}") == 401
    ok = httpx.post(url, json=SETOSA, headers={"Authorization": f"Bearer {first_key}"})
    assert (ok.status_code, ok.json()) == (200, {"prediction": "setosa"})
    assert status_of(url, **{"x-api-key": second_key}) == 200

    same = deploy(path=str(project), return_state=True)  # same keys: the identity is stable, nothing rolls
    assert same.is_completed(), same.message
    assert revision_of(env) == 1

    Secret(value=rotated_key).save(block, overwrite=True)  # one string: one key
    client = KeyedClient(url, rotated_key)
    client_started = time.monotonic()
    rotated = deploy(path=str(project), return_state=True)
    returned = time.monotonic()
    assert rotated.is_completed(), rotated.message
    wait_for(lambda: sum(sent >= returned for sent, _ in client.outcomes) >= 50, 60, what="requests after the deploy")
    outcomes = client.stop()
    after = [outcome for sent, outcome in outcomes if sent >= returned]
    assert after and all(outcome == 200 for outcome in after), sorted({str(o) for o in after})
    during = [outcome for sent, outcome in outcomes if client_started <= sent < returned]
    assert set(during) <= {200, 401}, sorted({str(o) for o in during})  # old replicas refuse it; nothing fails
    print(f"\nrotation: {len(during)} requests during the deploy ({during.count(401)} refused by old replicas), "
          f"{len(after)} after it, all 200")  # fmt: skip
    assert revision_of(env) == 2
    history = cli("history", API, env=env)
    assert history.returncode == 0 and "API keys changed" in history.stdout, history.stdout + history.stderr
    assert status_of(url, authorization=f"Bearer {first_key}") == status_of(url, **{"x-api-key": second_key}) == 401
    assert status_of(url, authorization=f"Bearer {rotated_key}") == 200

    home = local_cluster["home"]
    secrets_file = home.secrets / f"{API}.json"
    assert json.loads(secrets_file.read_text()) == {"CORTEX_API_KEYS": json.dumps([rotated_key])}
    assert (secrets_file.stat().st_mode & 0o077) == 0 and (home.secrets.stat().st_mode & 0o077) == 0
    places: dict[str, str] = {}
    for label, state in (("first", first), ("same", same), ("rotated", rotated)):
        kept = asyncio.run(_kept_by_prefect(state.state_details.flow_run_id))
        places |= {f"{label} deploy: {where}": text for where, text in kept.items()}
    files = [p for p in home.root.rglob("*") if p.is_file() and p != secrets_file]
    assert home.state_file in files and home.agent_log in files
    assert any(p.suffix == ".log" for p in home.logs.rglob("*"))
    places |= {f"agent home: {p.relative_to(home.root)}": p.read_bytes().decode("latin-1") for p in files}
    for args in (["get"], ["get", API], ["get", API, "-o", "json"], ["history", API], ["history", API, "-o", "json"],
                 ["logs", API]):  # fmt: skip
        shown = cli(*args, env=env)
        assert shown.returncode == 0, shown.stderr
        places[f"cortex-flows {' '.join(args)}"] = shown.stdout + shown.stderr
    really_read({where: text for where, text in places.items() if not where.startswith("agent home")})
    assert leaks(places, [first_key, second_key, rotated_key]) == []


def test_a_missing_or_unusable_block_fails_the_deploy_before_anything_changes(prefect_api, local_cluster, tmp_path):
    project = example_project(tmp_path)
    missing = f"no-such-keys-{uuid.uuid4().hex[:8]}"
    use_keys(project, missing)
    state = deploy(path=str(project), return_state=True)
    assert state.is_failed()
    field = f"{project / 'cortex.yaml'}: {API}.networking.api_keys:"
    assert f"{field} no Secret block named {missing!r}" in state.message, state.message

    block = f"bad-keys-{uuid.uuid4().hex[:8]}"
    unusable = f"k-with a-space-{uuid.uuid4().hex}"
    Secret(value=[new_key("fine"), unusable]).save(block, overwrite=True)
    use_keys(project, block)
    state = deploy(path=str(project), return_state=True)
    assert state.is_failed()
    reason = "key 2 of 2 has characters other than printable ASCII without spaces"
    assert f"{field} the Secret block {block!r} cannot be used: {reason}" in state.message, state.message
    kept = asyncio.run(_kept_by_prefect(state.state_details.flow_run_id))
    assert not any(unusable in text for text in [state.message, *kept.values()])
    assert running_agent(local_cluster["home"]) is None and not local_cluster["home"].state_file.exists()


def test_the_replica_takes_the_keys_out_of_its_environment_and_refuses_bad_ones(tmp_path):
    """What a handler and the processes it starts see of `CORTEX_API_KEYS`: nothing. Keys that cannot be
    used stop the replica (exit 2) instead of serving the API open, and the reason shows no key."""
    (tmp_path / "handler.py").write_text(
        "import os, subprocess, sys\n\n"
        "class Handler:\n"
        "    def handle_post(self, payload):\n"
        "        code = \"import os; print(os.environ.get('CORTEX_API_KEYS'))\"\n"
        "        child = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True).stdout.strip()\n"
        "        return {'own': os.environ.get('CORTEX_API_KEYS'), 'child': child}\n"
    )  # fmt: skip
    config = tmp_path / "replica.json"
    config.write_text(json.dumps({"api_name": "env", "handler": {"type": "python", "path": "handler.py"},
                                  "project_dir": str(tmp_path)}))  # fmt: skip
    key = new_key("replica")
    port = free_port_closed()
    log = tmp_path / "replica.log"
    command = [sys.executable, "-m", "cortex_flows.serving", "--config", str(config), "--port", str(port)]
    with log.open("wb") as err:
        proc = subprocess.Popen(command, env={**os.environ, "CORTEX_API_KEYS": json.dumps([key])}, stderr=err)
    try:
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/readyz").status_code == 200  # no key: the platform's probe
            except httpx.TransportError:
                return proc.poll() is not None

        wait_for(ready, 30, what="the replica's readiness")
        assert proc.poll() is None, log.read_text()
        assert httpx.post(url, json={}).status_code == 401
        answer = httpx.post(url, json={}, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert answer.json() == {"own": None, "child": "None"}
    finally:
        proc.terminate()
        proc.wait(30)
    assert "need one of 1 API key(s)" in log.read_text() and key not in log.read_text()

    bad = f"k-bad value-{uuid.uuid4().hex}"
    env = {**os.environ, "CORTEX_API_KEYS": json.dumps([key, bad])}
    refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 2
    assert "bad API keys in $CORTEX_API_KEYS: key 2 of 2 has characters other than" in refused.stderr
    assert bad not in refused.stderr and key not in refused.stderr


def test_on_kubernetes_the_keys_are_only_in_their_secret(prefect_api, tmp_path, caplog):
    """The flows against kmock's API server: the keys Secret is the one object holding them, the serving
    container names it by secretKeyRef, new keys roll a new version, the smoke test's payload carries a
    key the version accepts, and delete removes the Secret."""
    key, rotated_key = new_key("kube"), new_key("kube-rotated")
    name = f"kmock-keys-{uuid.uuid4().hex[:8]}"
    Secret(value=[key]).save(name, overwrite=True)
    project = example_project(tmp_path)
    use_keys(project, name)
    with KubeServer() as kube:
        config = KubernetesClusterConfig(config=kube.kubeconfig("ml"), context_name="kmock")
        KubernetesCredentials(cluster_config=config).save(name, overwrite=True)
        cluster = CortexCluster(backend="kubernetes", namespace="ml", kubernetes_credentials=name,
                                gateway_url="http://gateway.test", package_store=str(tmp_path / "store"))  # fmt: skip
        cluster.save(name, overwrite=True)
        with caplog.at_level(logging.DEBUG):
            first = deploy(path=str(project), cluster=name, smoke_payload=SETOSA, return_state=True)
            assert first.is_completed(), first.message
            Secret(value=[rotated_key]).save(name, overwrite=True)
            rotated = deploy(path=str(project), cluster=name, smoke_payload=SETOSA, return_state=True)
            assert rotated.is_completed(), rotated.message
        # each smoke test's payload reached its version with a key it accepts (without one: 401, rolled back)
        assert [(s, k) for m, s, k in kube.proxied if m == "POST"] == [(f"{API}-r1", key), (f"{API}-r2", rotated_key)]
        objects = kube.objects()
        secret = objects.pop(("Secret", f"{API}-api-keys"))
        assert parse_api_keys(secret["stringData"]["api-keys"]) == (rotated_key,)
        assert ("Secret", f"{API}-aws") not in objects  # no AWS credentials: no AWS Secret
        assert ("Deployment", f"{API}-r2") in objects and ("Deployment", f"{API}-r1") not in objects
        pod = objects[("Deployment", f"{API}-r2")]["spec"]["template"]["spec"]
        (serve,) = pod["containers"]
        ref = {"secretKeyRef": {"name": f"{API}-api-keys", "key": "api-keys"}}
        assert {"name": "CORTEX_API_KEYS", "valueFrom": ref} in serve["env"]
        places = {"objects": json.dumps(list(objects.values())), "local logs": caplog.text}
        for label, state in (("first", first), ("rotated", rotated)):
            kept = asyncio.run(_kept_by_prefect(state.state_details.flow_run_id))
            places |= {f"{label} deploy: {where}": text for where, text in kept.items()}
        really_read(places)
        assert leaks(places, [key, rotated_key]) == []
        assert delete(name=API, cluster=name) is True
        assert ("Secret", f"{API}-api-keys") not in kube.objects()


def test_the_agent_control_api_refuses_requests_without_its_token(local_cluster):
    home = local_cluster["home"]
    info = start_agent(home, local_cluster["port"])
    token = home.token()
    assert token and (home.token_file.stat().st_mode & 0o077) == 0
    version = {"version": {"revision": 1}, "replicas": 1, "secret_env": {"INJECTED": "x"}}
    calls = [("GET", "/v1/info", None), ("GET", "/v1/apis", None), ("GET", f"/v1/apis/{API}/logs", None),
             ("PUT", f"/v1/apis/{API}/versions/1", version), ("DELETE", f"/v1/apis/{API}", None),
             ("POST", "/v1/shutdown", None)]  # fmt: skip
    refusals = [{}, {"Authorization": "Bearer wrong-token"}, {"Authorization": f"Bearer {token[:-1]}"},
                {"Authorization": f"Basic {token}"}, {"X-Api-Key": token}]  # fmt: skip
    with httpx.Client(base_url=info.control_url, timeout=10) as client:
        for headers in refusals:
            for method, path, body in calls:
                answer = client.request(method, path, json=body, headers=headers)
                assert answer.status_code in (401, 403), (method, path, headers, answer.status_code)
                assert token not in answer.text
        assert running_agent(home) is not None  # the shutdown without the token did nothing
        assert not (home.secrets / f"{API}.json").exists()  # nor did the apply
        allowed = client.get("/v1/apis", headers={"Authorization": f"Bearer {token}"})
        assert (allowed.status_code, allowed.json()) == (200, [])
