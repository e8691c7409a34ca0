"""End to end: two deploys leave an auditable history, in `cortex-flows history` and as a table artifact."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from cortex_flows.flows.deploy import deploy
from tests.helpers import cli, example_project

API = "iris-classifier"


def _set_note(spec_file: Path, note: str) -> None:
    apis = yaml.safe_load(spec_file.read_text())
    apis[0]["config"]["note"] = note
    spec_file.write_text(yaml.safe_dump(apis, sort_keys=False))


def _table_artifact(flow_run_id: Any, key: str) -> list[dict[str, str]]:
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    artifact = next(a for a in artifacts if a.key == key)
    assert artifact.type == "table"
    return json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data


def test_history_shows_each_deploy_and_what_it_changed(prefect_api, local_cluster, tmp_path):
    env = local_cluster["env"] | {"PREFECT_API_URL": prefect_api}
    project = example_project(tmp_path)
    _set_note(project / "cortex.yaml", "v1")
    assert deploy(path=str(project), return_state=True).is_completed()

    _set_note(project / "cortex.yaml", "v2")
    state = deploy(path=str(project), return_state=True)
    assert state.is_completed(), state.message

    listed = cli("history", API, "-o", "json", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["revision"], r["outcome"]) for r in rows] == [("2", "live"), ("1", "superseded")]
    assert rows[0]["changes"] == "config.note: 'v1' -> 'v2'"
    assert rows[1]["changes"] == "first revision"

    table = cli("history", API, env=env)
    assert table.returncode == 0, table.stderr
    assert "config.note: 'v1' -> 'v2'" in table.stdout and "first revision" in table.stdout

    artifact = _table_artifact(state.state_details.flow_run_id, f"revisions-{API}")
    assert artifact == rows
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
        reports = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    report = next(a.data for a in reports if a.key == "deploy-report")
    assert "## Who, what, why" in report and f"`{run.name}` ({run.id})" in report  # the ledger says which run
    assert f"- {API} r2 (live): config.note: 'v1' -> 'v2'" in report  # and what it changed

    missing = cli("history", "no-such-api", env=env)
    assert missing.returncode == 1 and "not deployed" in missing.stderr


def test_history_without_an_agent_fails_clearly(tmp_path):
    result = cli("history", API, env={"CORTEX_FLOWS_HOME": str(tmp_path / "empty")})
    assert result.returncode == 1 and "no local agent is running" in result.stderr
