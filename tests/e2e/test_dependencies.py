"""A project's requirements.txt: installed once per content into a shared environment, reused by replicas
and later versions; a requirement pip cannot install fails the deploy with pip's message, changing nothing."""

from __future__ import annotations

import time

import httpx

from cortex_flows.flows.deploy import deploy
from tests.helpers import cli, make_wheel

SPEC = """\
- name: deps
  kind: RealtimeAPI
  handler:
    type: python
    path: handler.py
  autoscaling:
    min_replicas: 2
"""

HANDLER = """\
import cfdemo


class Handler:
    def handle_post(self, payload):
        return {{"value": cfdemo.VALUE, "code": "{code}"}}
"""

# Offline and index-free: pip finds the wheel in the project, as Cortex ran pip in the project directory.
REQUIREMENTS = "--no-index\n--find-links wheels\ncfdemo=={version}\n"


def test_requirements_installed_once_reused_and_a_bad_pin_changes_nothing(prefect_api, local_cluster, tmp_path):
    project = tmp_path / "deps"
    make_wheel(project / "wheels", "cfdemo", "1.0", "VALUE = 'from the wheel'\n")
    (project / "cortex.yaml").write_text(SPEC)
    (project / "handler.py").write_text(HANDLER.format(code="v1"))
    (project / "requirements.txt").write_text(REQUIREMENTS.format(version="1.0"))
    envs = local_cluster["home"].cache / "envs"

    first = deploy(path=str(project), return_state=True)
    assert first.is_completed(), first.message
    url = first.result()["deps"]
    assert httpx.post(url, json={}).json() == {"value": "from the wheel", "code": "v1"}
    installs = sorted(envs.glob("*.pip.log"))
    assert len(installs) == 1  # one install for both replicas
    installed_at = installs[0].stat().st_mtime_ns

    # New code, same requirements: a new version that reuses the environment.
    (project / "handler.py").write_text(HANDLER.format(code="v2"))
    second = deploy(path=str(project), return_state=True)
    assert second.is_completed(), second.message
    assert httpx.post(url, json={}).json() == {"value": "from the wheel", "code": "v2"}
    assert sorted(envs.glob("*.pip.log")) == installs
    assert installs[0].stat().st_mtime_ns == installed_at

    # A pin pip cannot satisfy: the deploy fails with pip's own words; v2 keeps serving, untouched.
    (project / "requirements.txt").write_text(REQUIREMENTS.format(version="2.0"))
    (project / "handler.py").write_text(HANDLER.format(code="v3"))
    started = time.monotonic()
    done = cli("deploy", str(project), env={**local_cluster["env"], "PREFECT_API_URL": prefect_api})
    assert done.returncode == 1
    assert "No matching distribution found for cfdemo==2.0" in done.stderr + done.stdout
    assert time.monotonic() - started < 60
    assert httpx.post(url, json={}).json() == {"value": "from the wheel", "code": "v2"}
    status = cli("get", "deps", "--output", "json", env=local_cluster["env"])
    assert '"revision": 3' not in status.stdout and '"ready": 2' in status.stdout


def test_no_requirements_file_means_no_environment(prefect_api, local_cluster, tmp_path):
    project = tmp_path / "plain"
    project.mkdir()
    (project / "cortex.yaml").write_text(SPEC.replace("deps", "plain").replace("min_replicas: 2", "min_replicas: 1"))
    (project / "handler.py").write_text("class Handler:\n    def handle_post(self, payload):\n        return 'ok'\n")
    state = deploy(path=str(project), return_state=True)
    assert state.is_completed(), state.message
    assert httpx.post(state.result()["plain"], json={}).json() == "ok"
    assert not (local_cluster["home"].cache / "envs").exists()
