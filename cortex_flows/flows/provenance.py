"""Who started a deploy, rollback or canary and why, for the top of its ledger artifact.

Read from the run's own record in the Prefect API: its name and id, the deployment, what created it (a
person, a schedule, an automation reacting to an event) and the flow run it is a subflow of (e.g. the
training run of `train-and-deploy`), plus the tags a pipeline set (`training-run:...`, `model:...`).
"""

from __future__ import annotations

from prefect import runtime
from prefect.client.orchestration import get_client


def provenance() -> list[str]:
    """Markdown bullets; empty outside a flow run."""
    run_id = runtime.flow_run.id
    if not run_id:
        return []
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
        parent = None
        if run.parent_task_run_id is not None:
            task_run = client.read_task_run(run.parent_task_run_id)
            parent = client.read_flow_run(task_run.flow_run_id) if task_run.flow_run_id else None
    lines = [f"- flow run: `{run.name}` ({run.id})"]
    if runtime.deployment.name:
        lines.append(f"- deployment: `{runtime.deployment.name}`")
    if run.auto_scheduled:
        lines.append("- started by: its deployment's schedule")
    elif run.created_by is not None:
        who = f"{(run.created_by.type or '').lower()} {run.created_by.display_value or ''}".strip()
        lines.append(f"- started by: {who or 'unknown'}")
    if parent is not None:
        lines.append(f"- part of: `{parent.name}` ({parent.id})")
    context = [tag for tag in run.tags if tag.startswith(("training-run:", "model:"))]
    if context:
        lines.append(f"- from: {', '.join(f'`{tag}`' for tag in sorted(context))}")
    return lines
