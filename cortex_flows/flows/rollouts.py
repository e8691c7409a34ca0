"""What deploy, rollback and refresh share: per API, concurrently, plan -> prepare -> apply -> roll ->
finish, each API held exclusively for the whole run, then one report, links and events.

Plain functions called inside those flows (not flows themselves), so each run is one flow run in the UI.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import get_run_logger, runtime
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.client.orchestration import get_client
from prefect.events import emit_event
from prefect.futures import PrefectFuture, wait

from cortex_flows.blocks import CortexCluster
from cortex_flows.flows.provenance import provenance
from cortex_flows.rollout.history import revision_rows
from cortex_flows.serving.config import PackageRef
from cortex_flows.spec import RealtimeAPI
from cortex_flows.tasks.deploy import apply, finish, plan, prepare, read_history
from cortex_flows.tasks.notify import send_notice
from cortex_flows.tasks.rollout import roll

STEPS = ("plan", "prepare", "apply", "roll", "finish")


@dataclass(frozen=True)
class Rollout:
    """One API to bring to a version: its spec, its package, and (for refresh) a new restart token."""

    api: RealtimeAPI
    package: PackageRef
    restart: str | None = None


def run_rollouts(
    what: str,
    rollouts: list[Rollout],
    cluster: CortexCluster,
    *,
    project_dir: Path | None,
    timeout: float | None,
    smoke_payload: Any,
    wait_for_others: bool,
    notices: list[str] = (),  # type: ignore[assignment]
    source: str = "",
    notify: str | None = None,
) -> dict[str, str]:
    """Roll every API out concurrently; returns API name -> endpoint URL, or raises the first failure (after
    telling the notification block `notify`, if named)."""
    logger = get_run_logger()
    backend = cluster.get_backend()
    with ExitStack() as held:
        for name in sorted(r.api.name for r in rollouts):  # one order everywhere: no deadlocks
            held.enter_context(backend.hold(name, wait=wait_for_others, what=f"{what} of {name}"))
        started = datetime.now(UTC)
        chains: dict[str, list[PrefectFuture[Any]]] = {}
        for r in rollouts:
            deadline = timeout if timeout is not None else r.api.update_strategy.progress_deadline_seconds
            planned = plan.submit(r.api, r.package, cluster, r.restart)
            prepared = (
                prepare.submit(r.api, r.package, planned, cluster, project_dir) if project_dir else None
            )
            applied = apply.submit(
                r.api, r.package, planned, cluster, wait_for=[prepared] if prepared else []
            )
            rolled = roll.submit(r.api, planned, cluster, deadline, smoke_payload, wait_for=[applied])
            finished = finish.submit(r.api.name, planned, cluster, wait_for=[rolled])
            chains[r.api.name] = [planned, *([prepared] if prepared else []), applied, rolled, finished]
        wait([f for chain in chains.values() for f in chain])

    plans = {name: _result(chain[0]) for name, chain in chains.items()}
    _rename_run(what, [f"{name} r{p.revision}" if p else name for name, p in plans.items()])
    endpoints, rows, timelines = {}, [], {}
    for r in rollouts:
        chain, decided = chains[r.api.name], plans[r.api.name]
        ok = all(f.state.is_completed() for f in chain)
        timelines[r.api.name] = _result(chain[-2]) or _failure_timeline(chain[-2])
        url = backend.endpoint_url(r.api.endpoint) if ok else "-"
        endpoints[r.api.name] = url
        rows.append(
            [r.api.name, str(decided.revision) if decided else "-", decided.action if decided else "-",
             r.package.sha256[:12], url, str(decided.replicas) if decided else "-", "ok" if ok else "FAILED",
             *_durations(started, chain, len(STEPS))]
        )  # fmt: skip
        if ok and decided is not None:
            create_link_artifact(link=url, link_text=f"{r.api.name} endpoint", key=f"endpoint-{r.api.name}")
            emit_event(
                event="cortex.api.deployed",
                resource={
                    "prefect.resource.id": f"cortex.api.{r.api.name}",
                    "prefect.resource.name": r.api.name,
                },
                payload={"revision": decided.revision, "package_id": r.package.sha256, "endpoint": url},
            )
    changes = _revision_tables(what, [r.api.name for r in rollouts], cluster)
    report = _report(what, source, rows, timelines, list(notices), [*provenance(), *changes])
    create_markdown_artifact(key=f"{what}-report", markdown=report, description=f"cortex-flows {what} report")
    failed = [f for chain in chains.values() for f in chain if f.state.is_failed()]
    for future in failed:
        logger.error("%s failed: %s", future.task_run_id, future.state.message)
    if failed:
        names = ", ".join(sorted(chains))
        reasons = [str(f.result(raise_on_failure=False)).splitlines()[0] for f in failed]  # the exceptions
        send_notice(notify, f"cortex-flows: {what} of {names} failed; what changed was rolled back", reasons)
        failed[0].result()  # re-raise the first failure so the run ends Failed with its reason
    return endpoints


def _revision_tables(what: str, names: list[str], cluster: CortexCluster) -> list[str]:
    """A `revisions-NAME` table artifact per API: its history after this run, with what each changed;
    returns a ledger line per API saying what its newest revision changed."""
    histories = {name: read_history.submit(name, cluster) for name in names}
    wait(list(histories.values()))
    changed = []
    for name, future in histories.items():
        revisions = _result(future)
        if not revisions:
            get_run_logger().warning("no revision history of %s to record", name)
            continue
        rows = revision_rows(revisions)
        create_table_artifact(key=f"revisions-{name}", table=rows, description=f"revisions of {name} after this {what}")
        changed.append(f"- {name} r{rows[0]['revision']} ({rows[0]['outcome']}): {rows[0]['changes']}")
    return changed


def _result(future: PrefectFuture[Any]) -> Any:
    return future.result() if future.state.is_completed() else None


def _failure_timeline(future: PrefectFuture[Any]) -> list[str]:
    """A failed roll's message ends with its timeline (see `roll`)."""
    message = future.state.message or ""
    return message.splitlines()[1:] if future.state.is_failed() else []


def _durations(start: datetime, futures: list[PrefectFuture[Any]], steps: int) -> list[str]:
    """Each step's duration: from when its predecessor finished to when it did (tasks start at once)."""
    cells, prev = [], start
    for fut in futures:
        end = fut.state.timestamp if fut.state.is_final() else None
        if end is None or not fut.state.is_completed():
            cells.append("failed" if end else "-")
            prev = end or prev
            continue
        cells.append(f"{(end - prev).total_seconds():.2f}s")
        prev = end
    if len(cells) < steps:  # no prepare step (rollback, refresh)
        cells.insert(1, "-")
    return cells


def _rename_run(what: str, names: list[str]) -> None:
    run_id = runtime.flow_run.id
    if run_id:
        with get_client(sync_client=True) as client:
            client.update_flow_run(run_id, name=f"{what} {', '.join(names)}")


def _report(
    what: str, source: str, rows: list[list[str]], timelines: dict[str, list[str]], notices: list[str],
    why: list[str],
) -> str:  # fmt: skip
    head = ["API", "revision", "action", "package", "endpoint", "replicas", "result", *STEPS]
    lines = [
        f"# {what.capitalize()} {source}".rstrip(),
        "",
        "## Who, what, why",
        "",
        *why,
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    for name, events in timelines.items():
        if events:
            lines += ["", f"## Timeline of {name}", "", "```", *events, "```"]
    if notices:
        lines += ["", "## Spec notices", "", *(f"- `{notice}`" for notice in notices)]
    return "\n".join(lines)
