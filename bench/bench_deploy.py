"""Deploy time to first 200 vs the sum of its floors, and the CLI with Prefect's temporary server vs a
running `prefect server start`.

Floors, measured in the same run: (a) a trivial Prefect flow run against the running server, and (b) a
bare Starlette process serving the same iris model, from spawn to its first 200. A deploy can be no faster
than a flow run plus starting one serving process, so deploy / (a + b) is what our orchestration costs
(goal <= 1.3x). Not a test: it prints a table.

    .venv/bin/python bench/bench_deploy.py [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import results
from harness import EXAMPLE, ROOT, free_port, start_prefect_server, train_iris, wait_http
from results import Row

SETOSA = {"features": [5.1, 3.5, 1.4, 0.2]}


def floor_flow_run() -> float:
    from prefect import flow

    @flow
    def trivial() -> int:
        return 1

    trivial()  # warm: the first call in a process also imports and registers
    t0 = time.monotonic()
    trivial()
    return time.monotonic() - t0


def floor_bare_process(model: Path) -> float:
    port = free_port()
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "servers" / "starlette_floor.py"), "--model", str(model), "--port",
         str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        ready = wait_http("POST", f"http://127.0.0.1:{port}/predict", json=SETOSA)
    finally:
        proc.terminate()
        proc.wait()
    return ready - t0


def project_copy(tmp: Path, name: str) -> Path:
    project = tmp / name
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__"))
    spec = project / "cortex.yaml"
    spec.write_text(spec.read_text().replace("iris-classifier", name))
    return project


def delete(name: str) -> None:
    from cortex_flows.backends.local.client import LocalBackend

    asyncio.run(LocalBackend().delete_api(name))


def deploy_to_first_200(project: Path, gateway: str) -> float:
    from cortex_flows.flows.deploy import deploy

    t0 = time.monotonic()
    deploy(path=str(project))
    ready = wait_http("POST", f"{gateway}/{project.name}", json=SETOSA)
    return ready - t0


def cli_deploy(project: Path, env: dict[str, str]) -> float:
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "cortex_flows.cli", "deploy", str(project)], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    return time.monotonic() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    results.add_option(parser)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cortex-bench-"))
    gateway_port = free_port()
    os.environ.update(CORTEX_FLOWS_HOME=str(tmp / "home"), CORTEX_FLOWS_GATEWAY_PORT=str(gateway_port))
    gateway = f"http://127.0.0.1:{gateway_port}"
    train_iris(tmp / "model.joblib")
    server, api_url, server_start = start_prefect_server(tmp / "prefect-home")
    os.environ["PREFECT_API_URL"] = api_url
    from cortex_flows.backends.local.client import start_agent, stop_agent
    from cortex_flows.backends.local.home import LocalHome

    start_agent(LocalHome.default())
    try:
        flow_floor = statistics.median(floor_flow_run() for _ in range(args.runs))
        bare_floor = statistics.median(floor_bare_process(tmp / "model.joblib") for _ in range(args.runs))
        deploys = []
        for i in range(args.runs):
            project = project_copy(tmp, f"iris-{i}")
            subprocess.run([sys.executable, str(project / "train.py")], check=True, stdout=subprocess.DEVNULL)
            deploys.append(deploy_to_first_200(project, gateway))
            delete(project.name)
        deploy_time = statistics.median(deploys)

        cli_env = {**os.environ}
        ephemeral_env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        ephemeral_env["PREFECT_HOME"] = str(tmp / "ephemeral-home")
        timings = {}
        for label, env in (("ephemeral, fresh PREFECT_HOME", ephemeral_env), ("ephemeral, existing home", ephemeral_env),
                           ("running server", cli_env)):  # fmt: skip
            project = project_copy(tmp, f"cli-{len(timings)}")
            subprocess.run([sys.executable, str(project / "train.py")], check=True, stdout=subprocess.DEVNULL)
            timings[label] = cli_deploy(project, env)
            delete(project.name)
    finally:
        stop_agent(LocalHome.default())
        server.terminate()
        server.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    floors = flow_floor + bare_floor
    print("\nDeploy to first 200 (in-process flow, agent running, server running), median of", args.runs)
    print(f"  floor (a) trivial Prefect flow run      {flow_floor:7.2f} s")
    print(f"  floor (b) bare process to first 200     {bare_floor:7.2f} s")
    print(
        f"  deploy flow to first 200                {deploy_time:7.2f} s   ({', '.join(f'{d:.2f}' for d in deploys)})"
    )
    print(f"  ratio deploy / (a + b)                  {deploy_time / floors:7.2f} x   (goal <= 1.3)")
    print(f"\nCLI `cortex-flows deploy` wall time (prefect server start took {server_start:.1f} s once)")
    for label, seconds in timings.items():
        print(f"  {label:38s}  {seconds:7.2f} s")
    print(
        f"  ratio ephemeral (existing home) / running server  {timings['ephemeral, existing home'] / timings['running server']:.2f} x"
    )
    section = f"Deploy: iris example to first 200, median of {args.runs}"
    running = timings["running server"]
    results.write(args.rows, [
        Row(section, "deploy flow to first 200 (agent and Prefect server running)", deploy_time, "s",
            deploy_time / floors, f"floors: flow run {flow_floor:.2f} s + bare process to first 200 {bare_floor:.2f} s",
            "<= 1.3x"),
        Row(section, "CLI deploy, running Prefect server", running, "s"),
        *(Row(section, f"CLI deploy, {label}", seconds, "s", seconds / running, "CLI deploy, running Prefect server")
          for label, seconds in timings.items() if label != "running server"),
    ])  # fmt: skip


if __name__ == "__main__":
    main()
