"""The session's secret scan finds a secret a flow run leaks, wherever Prefect keeps it: a check that
can fail. The block is deleted afterwards, so the leak planted here does not fail the session's scan."""

from __future__ import annotations

import uuid

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client

from tests.secret_scan import leaks, secret_values


@flow
def careless(token: str) -> None:
    get_run_logger().info("connecting with %s", token)
    create_markdown_artifact(key="careless-report", markdown=f"used `{token}`")


def test_the_scan_finds_a_leaked_secret_in_parameters_logs_and_artifacts(prefect_api):
    value = f"planted-{uuid.uuid4().hex}"
    name = f"planted-{uuid.uuid4().hex[:8]}"
    Secret(value=value).save(name)
    try:
        careless(value)
        with get_client(sync_client=True) as client:
            assert value in secret_values(client)
            found = [where for where in leaks(client) if value[:6] in where]
    finally:
        Secret.delete(name)
    assert {where.split(" ")[0] for where in found} == {"parameters", "artifact", "log"}, found
    with get_client(sync_client=True) as client:
        assert value not in secret_values(client)
