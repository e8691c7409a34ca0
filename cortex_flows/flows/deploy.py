"""The deploy flow: spec -> package -> store -> (per API, concurrently) a rolling update to the spec, then
the project's TrafficSplitters, routed once the APIs they name serve."""

from __future__ import annotations

from typing import Any

from prefect import flow

from cortex_flows.flows.rollouts import Rollout, run_rollouts
from cortex_flows.tasks.clusters import load_cluster
from cortex_flows.tasks.deploy import build, check_splitters, load_project, route_splitter, store
from cortex_flows.tasks.notify import check_notifier


@flow(name="deploy", flow_run_name="deploy {path}", log_prints=True)
def deploy(
    path: str = ".",
    cluster: str | None = None,
    timeout: float | None = None,
    smoke_payload: dict[str, Any] | list[Any] | None = None,
    wait: bool = True,
    notify: str | None = None,
) -> dict[str, str]:
    """Deploy every API of a project (`cortex.yaml`) and wait until it serves.

    Args:
        path: Project directory holding `cortex.yaml`, or the spec file itself.
        cluster: Name of a `CortexCluster` block; the local agent when omitted.
        timeout: Seconds a rollout may take before it is rolled back (default: each API's
            `update_strategy.progress_deadline`).
        smoke_payload: A request body the smoke test POSTs to each new version before it takes traffic
            (default: readiness only).
        wait: If another deploy, rollback or refresh of one of these APIs is in progress, wait for it
            (else fail at once).
        notify: A Prefect notification block to tell when a rollout fails and is rolled back, as
            '<block-type-slug>/<block-name>' (e.g. 'slack-webhook/ml-oncall').

    Returns:
        API or splitter name -> endpoint URL.
    """
    target = load_cluster(cluster)
    if notify:
        check_notifier.submit(notify).result()
    project = load_project(path)
    if project.splitters:
        check_splitters.submit(project, target).result()
    urls: dict[str, str] = {}
    if project.realtime_apis:
        package = store(build(project), target)
        urls = run_rollouts(
            "deploy", [Rollout(api, package) for api in project.realtime_apis], target,
            project_dir=project.project_dir, timeout=timeout, smoke_payload=smoke_payload, wait_for_others=wait,
            notices=[f"{n.path}: {n.message}" for n in project.notices], source=f"of `{project.file}`",
            notify=notify,
        )  # fmt: skip
    for splitter in project.splitters:
        urls[splitter.name] = route_splitter.submit(splitter, target).result()
    return urls
