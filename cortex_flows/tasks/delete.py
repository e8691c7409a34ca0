"""Task of the delete flow."""

from __future__ import annotations

from prefect import task

from cortex_flows.blocks import CortexCluster
from cortex_flows.tasks.retry import INFRA_RETRIES


@task(task_run_name="delete {name}", **INFRA_RETRIES)
async def delete_api(name: str, cluster: CortexCluster) -> bool:
    """Drain and stop every replica of the API and forget it; False if it was not deployed."""
    return await cluster.get_backend().delete_api(name)
