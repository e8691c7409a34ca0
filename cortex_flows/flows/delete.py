"""The delete flow: remove an API (its replicas drain first), with the run kept in Prefect's history."""

from __future__ import annotations

from prefect import flow
from prefect.events import emit_event

from cortex_flows.tasks.clusters import load_cluster
from cortex_flows.tasks.delete import delete_api


@flow(name="delete", flow_run_name="delete {name}")
def delete(name: str, cluster: str | None = None) -> bool:
    """Delete the API `name`. Returns False when it was not deployed."""
    deleted = delete_api(name, load_cluster(cluster))
    if deleted:
        emit_event(event="cortex.api.deleted", resource={"prefect.resource.id": f"cortex.api.{name}"})
    return deleted
