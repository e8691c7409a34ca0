"""The deploy flow: spec -> package -> store -> (per API, concurrently) plan -> prepare -> apply -> ready
-> smoke test -> finish."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger, runtime
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.events import emit_event
from prefect.futures import PrefectFuture, wait

from cortex_flows.rollout.plan import DeployPlan
from cortex_flows.tasks.clusters import load_cluster
from cortex_flows.tasks.deploy import (
    apply,
    build,
    finish,
    load_project,
    plan,
    prepare,
    smoke_test,
    store,
    wait_ready,
)

STEPS = ("plan", "prepare", "apply", "ready", "smoke test", "finish")


def _finished_at(future: PrefectFuture[Any]) -> datetime | None:
    state = future.state
    return state.timestamp if state.is_final() else None


def _durations(start: datetime, futures: list[PrefectFuture[Any]]) -> list[str]:
    """Each step's duration: from when its predecessor finished to when it did (tasks start at once)."""
    cells, prev = [], start
    for fut in futures:
        end = _finished_at(fut)
        if end is None or not fut.state.is_completed():
            cells.append("failed" if end else "-")
            prev = end or prev
            continue
        cells.append(f"{(end - prev).total_seconds():.2f}s")
        prev = end
    return cells


def _rename_run(names: list[str]) -> None:
    run_id = runtime.flow_run.id
    if run_id:
        with get_client(sync_client=True) as client:
            client.update_flow_run(run_id, name=f"deploy {', '.join(names)}")


@flow(name="deploy", flow_run_name="deploy {path}", log_prints=True)
def deploy(
    path: str = ".",
    cluster: str | None = None,
    timeout: float = 600.0,
    smoke_payload: dict[str, Any] | list[Any] | None = None,
) -> dict[str, str]:
    """Deploy every API of a project (`cortex.yaml`) and wait until it serves.

    Args:
        path: Project directory holding `cortex.yaml`, or the spec file itself.
        cluster: Name of a `CortexCluster` block; the local agent when omitted.
        timeout: Seconds a new version may take to become ready before the rollout is abandoned.
        smoke_payload: A request body the smoke test POSTs to each API (default: readiness only).

    Returns:
        API name -> endpoint URL.
    """
    logger = get_run_logger()
    target = load_cluster(cluster)
    project = load_project(path)
    package = store(build(project), target)
    started = datetime.now(UTC)

    chains: dict[str, list[PrefectFuture[Any]]] = {}
    for api in project.apis:
        planned = plan.submit(api, package, target)
        prepared = prepare.submit(api, package, planned, target, project.project_dir)
        applied = apply.submit(api, package, planned, target, wait_for=[prepared])
        ready = wait_ready.submit(api.name, planned, target, timeout, wait_for=[applied])
        smoked = smoke_test.submit(api, planned, target, smoke_payload, wait_for=[ready])
        finished = finish.submit(api.name, planned, target, wait_for=[smoked])
        chains[api.name] = [planned, prepared, applied, ready, smoked, finished]
    wait([f for chain in chains.values() for f in chain])

    plans: dict[str, DeployPlan | None] = {
        name: chain[0].result() if chain[0].state.is_completed() else None for name, chain in chains.items()
    }
    _rename_run([f"{name} r{p.revision}" if p else name for name, p in plans.items()])
    endpoints = {}
    rows = []
    for api in project.apis:
        chain, decided = chains[api.name], plans[api.name]
        ok = all(f.state.is_completed() for f in chain)
        url = chain[STEPS.index("smoke test")].result() if ok else "-"
        endpoints[api.name] = url
        rows.append(
            [api.name, str(decided.revision) if decided else "-", decided.action if decided else "-",
             package.sha256[:12], url, str(decided.replicas) if decided else "-", "ok" if ok else "FAILED",
             *_durations(started, chain)]
        )  # fmt: skip
        if ok:
            create_link_artifact(link=url, link_text=f"{api.name} endpoint", key=f"endpoint-{api.name}")
            emit_event(
                event="cortex.api.deployed",
                resource={"prefect.resource.id": f"cortex.api.{api.name}", "prefect.resource.name": api.name},
                payload={"revision": decided.revision, "package_id": package.sha256, "endpoint": url},
            )
    report = _report(project.file, package.sha256, rows, [f"{n.path}: {n.message}" for n in project.notices])
    create_markdown_artifact(key="deploy-report", markdown=report,
                             description="cortex-flows deploy report")  # fmt: skip

    failures = {name: f.state.message for name, chain in chains.items() for f in chain if f.state.is_failed()}
    if failures:
        for name, message in failures.items():
            logger.error("%s failed: %s", name, message)
        first = next(f for chain in chains.values() for f in chain if f.state.is_failed())
        first.result()  # re-raise the first failure so the run ends Failed with its reason
    return endpoints


def _report(spec_file: Any, package_id: str, rows: list[list[str]], notices: list[str]) -> str:
    head = ["API", "revision", "action", "package", "endpoint", "replicas", "result", *STEPS]
    lines = [
        f"# Deploy of `{spec_file}`",
        "",
        f"Package `{package_id}`",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    if notices:
        lines += ["", "## Spec notices", "", *(f"- `{notice}`" for notice in notices)]
    return "\n".join(lines)
