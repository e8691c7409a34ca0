"""`cortex-flows`: deploy, inspect and delete model APIs.

Verbs that change APIs run Prefect flows (so every change is in the run history); read-only verbs talk
to the backend directly and never import Prefect, so they answer at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cortex_flows.backends.base import ApiStatus, Backend, BackendError, SplitterSpec
from cortex_flows.backends.local.client import LocalBackend, running_agent, start_agent, stop_agent
from cortex_flows.backends.local.home import LocalHome

EXIT_FAILED = 1
EXIT_USAGE = 2

# Piped output gets 200 columns, so tables keep whole URLs (rich would otherwise assume 80 and cut them).
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True)


def _print_table(table: Table) -> None:
    out.print(table)


def _quiet_temporary_server() -> None:
    """Without PREFECT_API_URL each run starts Prefect's temporary server; its telemetry heartbeat races
    the run for the SQLite file and prints tracebacks, so turn it off unless the user chose otherwise."""
    if "PREFECT_API_URL" not in os.environ:
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _since(when: datetime) -> str:
    seconds = int((datetime.now(UTC) - when).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _backend(autostart: bool = False) -> LocalBackend:
    return LocalBackend(LocalHome.default(), autostart=autostart)


def _status_json(status: ApiStatus, backend: Backend) -> dict[str, Any]:
    data = status.model_dump(mode="json")
    data.update(requested=status.requested, ready=status.ready, up_to_date=status.up_to_date)
    data["url"] = backend.endpoint_url(status.endpoint)
    return data


def _invalid_spec(exc: Exception) -> int:
    """Print every spec problem as written (no rich markup) and exit as usage errors do."""
    err.print(str(exc), markup=False, highlight=False, soft_wrap=True)
    return EXIT_USAGE


def cmd_deploy(args: argparse.Namespace) -> int:
    from cortex_flows.spec import SpecError, load_spec

    try:
        project = load_spec(args.path)
    except SpecError as exc:
        return _invalid_spec(exc)
    err.print(f"deploying {', '.join(a.name for a in project.apis)} from {project.file} ...", highlight=False)
    _quiet_temporary_server()
    from cortex_flows.flows.deploy import deploy

    payload = json.loads(args.smoke_payload) if args.smoke_payload else None
    return _run_flow("deploy", deploy, path=str(project.file), smoke_payload=payload, **_rollout_args(args))


def cmd_rollback(args: argparse.Namespace) -> int:
    _quiet_temporary_server()
    from cortex_flows.flows.rollback import rollback

    return _run_flow("rollback", rollback, name=args.name, to=args.to, **_rollout_args(args))


def cmd_refresh(args: argparse.Namespace) -> int:
    _quiet_temporary_server()
    from cortex_flows.flows.rollback import refresh

    return _run_flow("refresh", refresh, name=args.name, **_rollout_args(args))


def cmd_canary(args: argparse.Namespace) -> int:
    from cortex_flows.spec import SpecError, load_spec

    try:
        load_spec(args.path)
    except SpecError as exc:
        return _invalid_spec(exc)
    _quiet_temporary_server()
    from cortex_flows.flows.canary import canary_rollout

    overrides = _canary_overrides(args)
    payload = json.loads(args.smoke_payload) if args.smoke_payload else None
    return _run_flow(
        "canary", canary_rollout, lambda r: out.print(f"{r['outcome']}: revision {r['revision']}", highlight=False),
        path=args.path, api=args.api, cluster=args.cluster, smoke_payload=payload, wait=args.wait,
        bake_time=overrides.pop("bake"), **overrides,
    )  # fmt: skip


def cmd_plan(args: argparse.Namespace) -> int:
    """Read-only: the spec, the overrides and what runs now give the plan; nothing changes."""
    from cortex_flows.rollout.canary import apply_overrides, plan_canary, render_plan
    from cortex_flows.spec import SpecError, load_spec

    try:
        project = load_spec(args.path)
        api = project.select(args.api)
        policy = apply_overrides(api.canary, _canary_overrides(args))
    except SpecError as exc:
        return _invalid_spec(exc)
    except ValueError as exc:
        err.print(str(exc), highlight=False, markup=False)
        return EXIT_USAGE
    backend = _backend()
    status = asyncio.run(backend.status(api.name)) if running_agent(backend.home) else None
    current = status.current.desired if status and status.current else api.init_replicas
    target = min(max(current, api.autoscaling.min_replicas), api.autoscaling.max_replicas)
    plan = plan_canary(policy, stable_replicas=current, candidate_target=target,
                       min_replicas=api.autoscaling.min_replicas, max_replicas=api.autoscaling.max_replicas)  # fmt: skip
    out.print(render_plan(plan), highlight=False, markup=False)
    return 0


def _rollout_args(args: argparse.Namespace) -> dict[str, Any]:
    return {"cluster": args.cluster, "timeout": args.timeout, "wait": args.wait}


def _run_flow(what: str, flow: Any, render: Callable[[Any], None] | None = None, **params: Any) -> int:
    """Run a flow; render its result (by default: each API's endpoint), or print why it failed (exit 1)."""
    try:
        result = flow(**params)
    except Exception as exc:  # noqa: BLE001 - a failed flow run re-raises whatever its task raised
        err.print(f"{what} failed: {exc}", highlight=False, markup=False)  # reasons may hold [brackets]
        return EXIT_FAILED
    (render or _print_endpoints)(result)
    return 0


def _print_endpoints(endpoints: dict[str, str]) -> None:
    for name, url in endpoints.items():
        out.print(f"{name}: {url}", highlight=False)


def cmd_setup_autoscaling(args: argparse.Namespace) -> int:
    from cortex_flows.spec import SpecError, load_spec

    try:
        project = load_spec(args.path)
    except SpecError as exc:
        return _invalid_spec(exc)
    _quiet_temporary_server()
    from cortex_flows.flows.autoscaling import setup_autoscaling

    return _run_flow("setup-autoscaling", setup_autoscaling, _print_autoscaling, path=str(project.file),
                     cluster=args.cluster, apis=args.api or None)  # fmt: skip


def _print_autoscaling(result: dict[str, Any]) -> None:
    from cortex_flows.autoscaling.capacity import format_cost

    for name, info in result["apis"].items():
        out.print(f"{name}: {info['action']} (revision {info['revision']}, replicas {info['min_replicas']}"
                  f"-{info['max_replicas']})", highlight=False)  # fmt: skip
    group = result["node_group"]
    if group:
        before, after, cost = group["before"], group["after"], group["cost_per_hour"]
        changes = ", ".join(f"{key} {before[key]} -> {after[key]}" for key in ("min", "max", "desired"))
        out.print(f"node group {group['name']}: {changes}; cost per hour {format_cost(cost['at_min'])} at min, "
                  f"{format_cost(cost['at_max'])} at max", highlight=False)  # fmt: skip


def cmd_migrate(args: argparse.Namespace) -> int:
    from cortex_flows.spec import SpecError, migrate_spec

    try:
        text = migrate_spec(args.path)
    except SpecError as exc:
        return _invalid_spec(exc)
    sys.stdout.write(text)
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    """Print the Kubernetes objects a first deploy of the project would apply (multi-document YAML);
    offline: no agent, no Prefect, no cluster. The package is built in a temporary directory only for
    its digest (the one a deploy uploads) and named `<store>/packages/<sha256>.tar.gz`, where a deploy's
    S3 store keeps it."""
    import tempfile
    from pathlib import Path

    from cortex_flows.backends.kubernetes.manifests import KubeTarget, dump_yaml, render_project
    from cortex_flows.packaging.build import build_package
    from cortex_flows.packaging.errors import PackageError
    from cortex_flows.serving.config import PackageRef
    from cortex_flows.spec import SpecError, load_spec

    if not args.store.startswith("s3://"):
        err.print(f"--store must be an S3 location (s3://bucket/prefix), got {args.store!r}", markup=False)
        return EXIT_USAGE
    try:
        project = load_spec(args.path)
    except SpecError as exc:
        return _invalid_spec(exc)
    spec_file = project.file.resolve().relative_to(project.project_dir.resolve()).as_posix()
    try:
        with tempfile.TemporaryDirectory(prefix="cortex-flows-render-") as out_dir:
            built = build_package(project.project_dir, Path(out_dir), exclude=[f"/{spec_file}"])
    except PackageError as exc:
        err.print(f"render failed: {exc}", highlight=False, markup=False)
        return EXIT_FAILED
    package = PackageRef(uri=f"{args.store.rstrip('/')}/packages/{built.sha256}.tar.gz", sha256=built.sha256)
    target = KubeTarget(namespace=args.namespace, image=args.image, autoscaler=args.autoscaler)
    sys.stdout.write(dump_yaml(render_project(project, package, target)))
    return 0


def _cluster_backend(name: str | None) -> Backend | None:
    """The backend of a named CortexCluster block; None for the local agent (the default)."""
    if name is None:
        return None
    from cortex_flows.blocks import CortexCluster

    return CortexCluster.load(name, _sync=True).get_backend()


def cmd_get(args: argparse.Namespace) -> int:
    backend: Backend = _cluster_backend(args.cluster) or _backend()
    if isinstance(backend, LocalBackend) and running_agent(backend.home) is None:
        if args.output == "json":
            print("null" if args.name else "[]")
            return EXIT_FAILED if args.name else 0
        err.print(f"no APIs: no local agent is running for {backend.home.root} (`cortex-flows cluster up`)")
        return EXIT_FAILED if args.name else 0
    if args.name:
        status = asyncio.run(backend.status(args.name))
        if status is None:
            err.print(f"API {args.name!r} is not deployed")
            return EXIT_FAILED
        statuses = [status]
    else:
        statuses = asyncio.run(backend.list_apis())
    if args.output == "json":
        items = [_status_json(s, backend) for s in statuses]
        print(json.dumps(items[0] if args.name else items, indent=2))
        return 0
    table = Table(box=None, header_style="bold")
    for col in ("api", "status", "live", "up-to-date", "last update", "endpoint"):
        table.add_column(col)
    for s in statuses:
        live, current = ("-", "-") if s.splitter else (f"{s.ready}/{s.requested}", str(s.up_to_date))
        table.add_row(s.name, s.state.value, live, current, _since(s.last_update), backend.endpoint_url(s.endpoint))
    _print_table(table)
    if args.name and statuses[0].splitter:
        _print_splitter(statuses[0].splitter)
    elif args.name:
        _print_versions(statuses[0], asyncio.run(backend.history(args.name)))
    return 0


def _print_splitter(split: SplitterSpec) -> None:
    targets = Table(title="traffic splitter", box=None, header_style="bold", title_justify="left")
    for col in ("api", "weight", "shadow"):
        targets.add_column(col)
    for api, weight in split.weights.items():
        targets.add_row(api, f"{weight}%", "")
    if split.shadow:
        targets.add_row(split.shadow, f"{split.shadow_percent}% mirrored", "yes")
    _print_table(targets)


def _print_versions(status: ApiStatus, history: list[Any]) -> None:
    versions = Table(title="versions", box=None, header_style="bold", title_justify="left")
    for col in ("revision", "weight", "ready", "desired", "starting", "failed", "package", "message"):
        versions.add_column(col)
    for v in status.versions:
        versions.add_row(str(v.revision), f"{v.weight}%", str(v.ready), str(v.desired), str(v.starting),
                         str(v.failed), v.package_id[:12], v.message)  # fmt: skip
    _print_table(versions)
    if status.autoscaling is not None:
        a = status.autoscaling
        out.print(
            f"autoscaling: current {a.current}, recommended {a.recommended}, requested {a.requested} "
            f"(min {a.min_replicas}, max {a.max_replicas}); in-flight {a.in_flight:g} over the window; "
            f"{a.reason}; {_since(a.at)} ago",
            highlight=False,
        )
    past = Table(title="history", box=None, header_style="bold", title_justify="left")
    for col in ("revision", "outcome", "package", "spec", "deployed"):
        past.add_column(col)
    for r in history:
        past.add_row(str(r.revision), r.outcome.value, r.package_id[:12], r.spec_hash[:12], f"{_since(r.created)} ago")
    _print_table(past)


def cmd_history(args: argparse.Namespace) -> int:
    from cortex_flows.rollout.history import COLUMNS, revision_rows

    backend: Backend = _cluster_backend(args.cluster) or _backend()
    if isinstance(backend, LocalBackend) and running_agent(backend.home) is None:
        err.print(f"no APIs: no local agent is running for {backend.home.root} (`cortex-flows cluster up`)")
        return EXIT_FAILED
    if asyncio.run(backend.status(args.name)) is None:
        err.print(f"API {args.name!r} is not deployed")
        return EXIT_FAILED
    rows = revision_rows(asyncio.run(backend.history(args.name)))
    if args.output == "json":
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title=f"revisions of {args.name}", box=None, header_style="bold", title_justify="left")
    for col in COLUMNS:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*(row[col] for col in COLUMNS))
    _print_table(table)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    try:
        print(asyncio.run((_cluster_backend(args.cluster) or _backend()).logs(args.name, args.tail)))
    except BackendError as exc:
        err.print(str(exc), highlight=False)
        return EXIT_FAILED
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    _quiet_temporary_server()
    from cortex_flows.flows.delete import delete

    try:
        deleted = delete(name=args.name, cluster=args.cluster)
    except Exception as exc:  # noqa: BLE001 - a failed flow run re-raises whatever its task raised
        err.print(f"[red]delete failed:[/red] {exc}", highlight=False)
        return EXIT_FAILED
    if not deleted:
        err.print(f"API {args.name!r} is not deployed")
        return EXIT_FAILED
    out.print(f"deleted {args.name}")
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    home = LocalHome.default()
    if args.action == "up":
        info = start_agent(home, args.port)
        out.print(f"local agent running (pid {info.pid}); gateway {info.gateway_url}; home {home.root}")
        return 0
    if args.action == "down":
        stopped = stop_agent(home)
        out.print("local agent stopped" if stopped else "no local agent was running")
        return 0
    info = running_agent(home)
    data = {"backend": "local", "home": str(home.root), "running": info is not None}
    if info is not None:
        data.update(pid=info.pid, gateway=info.gateway_url, apis=len(asyncio.run(_backend().list_apis())))
    if args.output == "json":
        print(json.dumps(data, indent=2))
    else:
        for key, value in data.items():
            out.print(f"{key}: {value}", highlight=False)
    return 0


def cmd_blocks(args: argparse.Namespace) -> int:
    """`save FILE...` saves block documents; `register` also registers the block type (and those of
    prefect-aws and prefect-kubernetes it names), then saves every document in `blocks/`."""
    import yaml

    _quiet_temporary_server()
    from cortex_flows.blocks import CortexCluster

    files = args.files
    if args.action == "register":
        from prefect_aws import AwsCredentials
        from prefect_kubernetes.credentials import KubernetesClusterConfig, KubernetesCredentials

        for block in (CortexCluster, AwsCredentials, KubernetesClusterConfig, KubernetesCredentials):
            block.register_type_and_schema()
            out.print(f"registered block type {block.get_block_type_slug()}")
        files = files or sorted(str(p) for p in Path("blocks").glob("*.yaml"))
    for path in files:
        with open(path) as fh:
            doc = yaml.safe_load(fh)
        if not isinstance(doc, dict) or doc.get("block_type") != "cortex-cluster" or "name" not in doc:
            err.print(f"{path}: expected a mapping with block_type: cortex-cluster, name and data")
            return EXIT_USAGE
        CortexCluster(**(doc.get("data") or {})).save(doc["name"], overwrite=True)
        out.print(f"saved block cortex-cluster/{doc['name']}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cortex-flows", description="Deploy ML models as HTTP APIs with Prefect.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("deploy", help="create or update the APIs of a project (runs the deploy flow)")
    d.add_argument("path", nargs="?", default=".", help="project directory or cortex.yaml (default: .)")
    _rollout_options(d)
    d.add_argument("--smoke-payload", help="JSON body the smoke test POSTs to each new version")
    d.set_defaults(fn=cmd_deploy)

    cn = sub.add_parser("canary", help="canary a new version of an API (runs the canary-rollout flow)")
    cn.add_argument("path", nargs="?", default=".", help="project directory or cortex.yaml (default: .)")
    _canary_options(cn)
    cn.add_argument("--smoke-payload", help="JSON body the smoke test POSTs to the candidate")
    _rollout_options(cn)
    cn.set_defaults(fn=cmd_canary)

    pl = sub.add_parser("plan", help="preview a canary rollout's steps, durations and replicas (changes nothing)")
    pl.add_argument("path", nargs="?", default=".", help="project directory or cortex.yaml (default: .)")
    _canary_options(pl)
    pl.set_defaults(fn=cmd_plan)

    rb = sub.add_parser("rollback", help="roll an API back to an earlier revision (runs the rollback flow)")
    rb.add_argument("name")
    rb.add_argument("--to", type=int, help="revision to return to (default: the one before the current)")
    _rollout_options(rb)
    rb.set_defaults(fn=cmd_rollback)

    rf = sub.add_parser("refresh", help="restart every replica of an API by rolling (runs the refresh flow)")
    rf.add_argument("name")
    _rollout_options(rf)
    rf.set_defaults(fn=cmd_refresh)

    sa = sub.add_parser(
        "setup-autoscaling",
        help="apply a project's autoscaling settings in place and size the AWS node group (runs a flow)",
    )
    sa.add_argument("path", nargs="?", default=".", help="project directory or cortex.yaml (default: .)")
    sa.add_argument("--cluster", help="name of a CortexCluster block (default: the local agent)")
    sa.add_argument("--api", action="append", help="an API to apply and size for (repeatable; default: all)")
    sa.set_defaults(fn=cmd_setup_autoscaling)

    m = sub.add_parser("migrate", help="print the native cortex.yaml equivalent to a Cortex project's spec")
    m.add_argument("path", nargs="?", default=".", help="project directory or spec file (default: .)")
    m.set_defaults(fn=cmd_migrate)

    rn = sub.add_parser(
        "render", help="print the Kubernetes objects a deploy of a project creates (YAML; offline)"
    )
    rn.add_argument("path", nargs="?", default=".", help="project directory or cortex.yaml (default: .)")
    rn.add_argument("--namespace", default="default", help="namespace of the objects (default: default)")
    rn.add_argument("--image", default="cortex-flows-serving:latest", help="serving runtime image")
    rn.add_argument("--autoscaler", choices=("keda", "hpa"), default="keda", help="KEDA ScaledObject or HPA")
    rn.add_argument(
        "--store", default="s3://PACKAGE-STORE",
        help="S3 package store the package URI names (default: the placeholder s3://PACKAGE-STORE)",
    )  # fmt: skip
    rn.set_defaults(fn=cmd_render)

    g = sub.add_parser("get", help="status of all APIs, or one API with its versions and history")
    g.add_argument("name", nargs="?")
    g.add_argument("-o", "--output", choices=("table", "json"), default="table")
    g.add_argument("--cluster", help="name of a CortexCluster block (default: the local agent)")
    g.set_defaults(fn=cmd_get)

    hs = sub.add_parser("history", help="an API's revisions: outcome, package, spec and what each changed")
    hs.add_argument("name")
    hs.add_argument("-o", "--output", choices=("table", "json"), default="table")
    hs.add_argument("--cluster", help="name of a CortexCluster block (default: the local agent)")
    hs.set_defaults(fn=cmd_history)

    lg = sub.add_parser("logs", help="the last lines of an API's replica logs")
    lg.add_argument("name")
    lg.add_argument("--tail", type=int, default=100)
    lg.add_argument("--cluster", help="name of a CortexCluster block (default: the local agent)")
    lg.set_defaults(fn=cmd_logs)

    rm = sub.add_parser("delete", help="delete an API (runs the delete flow)")
    rm.add_argument("name")
    rm.add_argument("--cluster", help="name of a CortexCluster block (default: the local agent)")
    rm.set_defaults(fn=cmd_delete)

    c = sub.add_parser("cluster", help="start, stop or inspect the local agent")
    c.add_argument("action", choices=("up", "down", "info"))
    c.add_argument("--port", type=int, help="gateway port (default: $CORTEX_FLOWS_GATEWAY_PORT or 8888)")
    c.add_argument("-o", "--output", choices=("table", "json"), default="table")
    c.set_defaults(fn=cmd_cluster)

    b = sub.add_parser(
        "blocks", help="register the block types and save the CortexCluster documents of blocks/ (or FILES)"
    )
    b.add_argument("action", choices=("register", "save"))
    b.add_argument("files", nargs="*", help="block documents (YAML); register: default blocks/*.yaml")
    b.set_defaults(fn=cmd_blocks)
    return p


def _canary_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--api", help="the API to canary (default: the project's only API)")
    p.add_argument("--steps", type=lambda v: [int(x) for x in v.split(",")], help="traffic weights, e.g. 5,25,100")
    p.add_argument("--bake", help="time at each step, e.g. 2m")
    p.add_argument("--analysis-interval", help="how often the versions are compared, e.g. 30s")
    p.add_argument("--min-samples", type=int, help="requests per version before a verdict counts")
    p.add_argument("--inconclusive", choices=("extend", "hold", "rollback"), help="policy when data is thin")


def _canary_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {"steps": args.steps, "bake": args.bake, "analysis_interval": args.analysis_interval,
            "min_samples": args.min_samples, "inconclusive": args.inconclusive}  # fmt: skip


def _rollout_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", help="name of a CortexCluster block (default: the local agent)")
    p.add_argument(
        "--timeout", type=float, help="seconds a rollout may take before it is rolled back "
        "(default: each API's update_strategy.progress_deadline)",
    )  # fmt: skip
    p.add_argument(
        "--no-wait", dest="wait", action="store_false",
        help="fail at once if another deploy, rollback or refresh of the API is in progress",
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except BackendError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        return EXIT_FAILED


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
