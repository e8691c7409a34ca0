"""The local backend as flows drive it: a real agent process, real replicas, real sockets (no Prefect)."""

from __future__ import annotations

import asyncio
import io
import tarfile
import threading
import time
from pathlib import Path

import httpx
import pytest

from cortex_flows.backends.base import ApiState, Outcome
from cortex_flows.backends.local.client import LocalBackend, start_agent
from cortex_flows.backends.versions import version_spec
from cortex_flows.packaging.build import build_package
from cortex_flows.packaging.digest import sha256_file
from cortex_flows.packaging.store import LocalStore
from cortex_flows.rollout.plan import Action, DeployPlan
from cortex_flows.serving.config import PackageRef
from cortex_flows.spec import parse_spec
from tests.helpers import serving_pids, wait_for

HANDLER = '''
import time

class Handler:
    def __init__(self, config):
        self.tag = config.get("tag", "v1")

    def handle_post(self, payload):
        if payload.get("raise"):
            raise RuntimeError("boom")
        time.sleep(payload.get("sleep", 0))
        return {"tag": self.tag, "echo": payload.get("x")}
'''


def make_project(root: Path, name: str, tag: str = "v1", extra: str = "") -> tuple:
    root.mkdir(parents=True, exist_ok=True)
    (root / "handler.py").write_text(HANDLER + extra)
    text = (
        f"- name: {name}\n  kind: RealtimeAPI\n  handler: {{type: python, path: handler.py}}\n"
        f"  config: {{tag: {tag}}}\n  pod: {{max_concurrency: 8}}\n"
    )
    return parse_spec(text, root / "cortex.yaml", root).apis[0]


def stored(api_root: Path, store: LocalStore, tmp: Path) -> PackageRef:
    built = build_package(api_root, tmp / "build")
    uri, _ = store.put(built)
    return PackageRef(uri=uri, sha256=built.sha256)


@pytest.fixture
def backend(local_cluster) -> LocalBackend:
    start_agent(local_cluster["home"], local_cluster["port"])
    return LocalBackend(local_cluster["home"], local_cluster["port"])


def run(coro):
    return asyncio.run(coro)


def wait_ready(backend: LocalBackend, api: str, revision: int, timeout: float = 30):
    def check():
        status = run(backend.status(api))
        version = next((v for v in status.versions if v.revision == revision), None) if status else None
        return version if version and version.ready >= version.desired > 0 else None

    return wait_for(check, timeout, what=f"{api} r{revision} ready")


def deploy_version(backend, api, tmp_path, revision=1, replicas=1):
    store = LocalStore(backend.home.packages)
    package = stored(tmp_path / api.name, store, tmp_path)
    run(backend.apply_version(api.name, version_spec(api, package, DeployPlan(Action.CREATE, revision, 1)), replicas))
    return wait_ready(backend, api.name, revision)


def test_apply_route_scale_and_delete(backend, local_cluster, tmp_path):
    api = make_project(tmp_path / "echo", "echo")
    deploy_version(backend, api, tmp_path, replicas=2)
    url = f"{local_cluster['gateway']}/echo"
    assert httpx.post(url, json={"x": 1}).json() == {"tag": "v1", "echo": 1}
    status = run(backend.status("echo"))
    assert (status.state, status.ready, status.requested) == (ApiState.LIVE, 2, 2)

    run(backend.scale_version("echo", 1, 3))
    wait_for(lambda: run(backend.status("echo")).ready == 3, 30, what="3 ready replicas")
    assert len(serving_pids(backend.home.root)) == 3
    run(backend.scale_version("echo", 1, 1))
    wait_for(lambda: len(serving_pids(backend.home.root)) == 1, 30, what="scale-down to finish")

    history = run(backend.history("echo"))
    assert [(r.revision, r.outcome) for r in history] == [(1, Outcome.PENDING)]
    assert "echo-r1" in run(backend.logs("echo"))
    assert run(backend.delete_api("echo")) is True
    assert httpx.post(url, json={"x": 1}).status_code == 404
    wait_for(lambda: not serving_pids(backend.home.root), 15, what="replicas to stop")
    assert run(backend.delete_api("echo")) is False


def test_new_version_takes_traffic_without_dropping_a_request(backend, local_cluster, tmp_path):
    """Version 2 becomes ready beside version 1, traffic moves, version 1 drains: under constant load."""
    v1 = make_project(tmp_path / "live", "live", tag="v1")
    deploy_version(backend, v1, tmp_path, replicas=2)
    url = f"{local_cluster['gateway']}/live"
    results: list[int | str] = []
    stop = threading.Event()

    def load():
        with httpx.Client(timeout=10) as client:
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline and len(results) < 20000:
                try:
                    resp = client.post(url, json={"x": 1, "sleep": 0.01})
                    results.append(resp.json()["tag"] if resp.status_code == 200 else resp.status_code)
                except httpx.HTTPError as exc:
                    results.append(type(exc).__name__)

    workers = [threading.Thread(target=load) for _ in range(4)]
    for w in workers:
        w.start()
    wait_for(lambda: len(results) > 50, 10, what="load to start")
    v2 = make_project(tmp_path / "live", "live", tag="v2")
    package = stored(tmp_path / "live", LocalStore(backend.home.packages), tmp_path)
    run(backend.apply_version("live", version_spec(v2, package, DeployPlan(Action.CREATE, 2, 1)), 2))
    wait_ready(backend, "live", 2)
    run(backend.set_traffic("live", {2: 100}))
    run(backend.remove_version("live", 1, Outcome.SUPERSEDED))
    wait_for(lambda: results[-20:].count("v2") == 20, 10, what="responses from v2")
    stop.set()
    for w in workers:
        w.join()
    failures = [r for r in results if r not in ("v1", "v2")]
    assert results.count("v1") > 0 and results.count("v2") > 0
    assert failures == [], f"{len(failures)} of {len(results)} requests failed: {failures[:5]}"
    assert [v.revision for v in run(backend.status("live")).versions] == [2]


def test_bad_requests_get_4xx_or_5xx_and_every_api_keeps_serving(backend, local_cluster, tmp_path):
    for name in ("alpha", "beta"):
        deploy_version(backend, make_project(tmp_path / name, name), tmp_path)
    alpha, beta = (f"{local_cluster['gateway']}/{n}" for n in ("alpha", "beta"))
    headers = {"content-type": "application/json"}
    assert httpx.post(alpha, content=b'{"x": ', headers=headers).status_code == 400
    big = b'{"x": "' + b"a" * (11 * 1024 * 1024) + b'"}'
    assert httpx.post(alpha, content=big, headers=headers, timeout=30).status_code == 413
    failed = httpx.post(alpha, json={"raise": True})
    assert failed.status_code == 500 and failed.json()["request_id"] == failed.headers["x-request-id"]
    assert "boom" not in failed.text  # the traceback goes to the log, not to the client
    assert httpx.post(alpha, json={"x": 2}).json() == {"tag": "v1", "echo": 2}
    assert httpx.post(beta, json={"x": 3}).json() == {"tag": "v1", "echo": 3}
    assert "RuntimeError: boom" in run(backend.logs("alpha"))


def _crash_reason(backend, api):
    def check():
        status = run(backend.status(api))
        version = status.versions[0] if status else None
        return version.message if version and version.restarts >= 1 else None

    return wait_for(check, 30, what=f"{api} to crash")


def test_tampered_package_is_refused_and_other_apis_keep_serving(backend, local_cluster, tmp_path):
    deploy_version(backend, make_project(tmp_path / "good", "good"), tmp_path)
    bad = make_project(tmp_path / "bad", "bad", extra="# another package\n")
    package = stored(tmp_path / "bad", LocalStore(backend.home.packages), tmp_path)
    archive = Path(package.uri.removeprefix("file://"))
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    run(backend.apply_version("bad", version_spec(bad, package, DeployPlan(Action.CREATE, 1, 1)), 1))
    assert "hash mismatch" in _crash_reason(backend, "bad")
    assert run(backend.status("bad")).state is ApiState.ERROR
    assert httpx.post(f"{local_cluster['gateway']}/good", json={"x": 1}).status_code == 200


def test_package_escaping_its_directory_is_refused(backend, local_cluster, tmp_path):
    evil = make_project(tmp_path / "evil", "evil")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, body in (("handler.py", HANDLER.encode()), ("../escaped.txt", b"owned")):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    packages = backend.home.packages
    packages.mkdir(parents=True, exist_ok=True)
    tmp = packages / "crafted.tar.gz"
    tmp.write_bytes(buf.getvalue())
    sha = sha256_file(tmp)
    archive = tmp.rename(packages / f"{sha}.tar.gz")
    run(backend.apply_version("evil", version_spec(evil, PackageRef(uri=archive.as_uri(), sha256=sha), DeployPlan(Action.CREATE, 1, 1)), 1))
    assert "unsafe package member" in _crash_reason(backend, "evil")
    assert not (backend.home.cache / "escaped.txt").exists() and not (backend.home.root / "escaped.txt").exists()


def test_two_agents_with_their_own_homes_and_ports_coexist(tmp_path, local_cluster):
    from cortex_flows.backends.local.client import stop_agent
    from cortex_flows.backends.local.home import LocalHome
    from tests.conftest import free_port

    other = LocalHome(tmp_path / "other-home")
    other_port = free_port()
    start_agent(local_cluster["home"], local_cluster["port"])
    start_agent(other, other_port)
    try:
        first = LocalBackend(local_cluster["home"], local_cluster["port"])
        second = LocalBackend(other, other_port)
        for backend, tag in ((first, "one"), (second, "two")):
            api = make_project(tmp_path / tag, "same-name", tag=tag)
            package = stored(tmp_path / tag, LocalStore(backend.home.packages), tmp_path / f"b-{tag}")
            run(backend.apply_version("same-name", version_spec(api, package, DeployPlan(Action.CREATE, 1, 1)), 1))
            wait_ready(backend, "same-name", 1)
        assert httpx.post(f"{local_cluster['gateway']}/same-name", json={}).json()["tag"] == "one"
        assert httpx.post(f"http://127.0.0.1:{other_port}/same-name", json={}).json()["tag"] == "two"
    finally:
        stop_agent(other, timeout=20)
    assert httpx.post(f"{local_cluster['gateway']}/same-name", json={}).json()["tag"] == "one"
