"""Applying many APIs to a Kubernetes API server concurrently vs one after another, and API calls per deploy.

The server is kmock's emulator over real HTTP (tests/kube.py) in a process of its own, as an API server
is, with the real `kubernetes_asyncio` client, so the figures are our client side: requests,
serialisation, waits, and the client's CPU per call. Each API is created (every version object, its
history and route) and its traffic set, as the deploy flow's apply step does, inside one `async with
backend` as a task holds it. The floor is the same work done one API at a time; the goal is concurrent
<= 0.2x of sequential. Not a test.

    .venv/bin/python bench/bench_kubernetes.py [--apis 50] [--latency-ms 5 30]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import results
from kubernetes_asyncio.client import Configuration
from results import Row

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cortex_flows.backends.kubernetes.backend import KubernetesBackend
from cortex_flows.backends.kubernetes.manifests import KubeTarget
from cortex_flows.backends.versions import version_spec
from cortex_flows.packaging.build import build_package
from cortex_flows.rollout.plan import Action, DeployPlan
from cortex_flows.serving.config import PackageRef
from cortex_flows.spec import load_spec
from tests.kube import KubeServer

EXAMPLE = ROOT / "deployments" / "iris-classifier"


def versions(count: int) -> list:
    """`count` copies of the iris example as APIs `iris-0`... (the model file need not exist to render)."""
    api = load_spec(EXAMPLE / "cortex.yaml").apis[0]
    built = build_package(EXAMPLE, Path(tempfile.mkdtemp()))
    package = PackageRef(uri=f"s3://bench/{built.sha256}.tar.gz", sha256=built.sha256)
    out = []
    for i in range(count):
        named = api.model_copy(update={"name": f"iris-{i}", "networking": api.networking.model_copy(update={"endpoint": f"/iris-{i}"})})
        out.append(version_spec(named, package, DeployPlan(Action.CREATE, 1, 1)))
    return out


async def deploy_one(backend: KubernetesBackend, version) -> None:
    name = version.replica.api_name
    await backend.apply_version(name, version, 1)
    await backend.set_traffic(name, {1: 100})


async def run(url: str, all_versions: list, concurrent: bool) -> tuple[float, int, float]:
    """Seconds, API calls, and this process's CPU seconds."""
    configuration = Configuration(host=url)

    async def configure() -> Configuration:
        return configuration

    started, cpu = time.perf_counter(), time.process_time()
    async with KubernetesBackend(KubeTarget(namespace="bench"), configure, "http://gateway") as backend:
        if concurrent:
            await asyncio.gather(*(deploy_one(backend, v) for v in all_versions))
        else:
            for v in all_versions:
                await deploy_one(backend, v)
    return time.perf_counter() - started, backend.calls, time.process_time() - cpu


def _serve(latency: float, replies: Any, stop: Any) -> None:
    with KubeServer() as kube:
        kube.latency = latency
        started = time.process_time()
        replies.put(kube.url)
        stop.wait()
        replies.put(time.process_time() - started)


@contextmanager
def kube_process(latency: float) -> Iterator[dict[str, Any]]:
    """{"url"} of the emulator served from another process, so that its CPU is not counted as the
    client's; on exit also {"cpu"}: the CPU seconds it used while serving."""
    context = multiprocessing.get_context("spawn")
    replies, stop = context.Queue(), context.Event()
    process = context.Process(target=_serve, args=(latency, replies, stop), daemon=True)
    process.start()
    server = {"url": replies.get(timeout=60)}
    try:
        yield server
    finally:
        stop.set()
        server["cpu"] = replies.get(timeout=10)
        process.join(10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--apis", type=int, default=50)
    parser.add_argument(
        "--latency-ms", type=float, nargs="+", default=[5.0, 30.0],
        help="API server round trips to model (in-cluster ~5 ms; a remote control plane ~30 ms)",
    )  # fmt: skip
    results.add_option(parser)
    args = parser.parse_args()
    all_versions = versions(args.apis)
    section = f"Concurrent deploys: {args.apis} APIs to a Kubernetes API server (kmock over HTTP)"
    out = []
    print(f"{args.apis} APIs created (every object, history, route) and routed; kmock over HTTP")
    print("| API latency | mode | seconds | API calls | calls per deploy | client CPU per call | emulator CPU | "
          "concurrent / sequential |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for latency in args.latency_ms:
        rows = []
        for concurrent in (False, True):
            with kube_process(latency / 1000) as server:
                measured = asyncio.run(run(server["url"], all_versions, concurrent))
            rows.append((concurrent, *measured, server["cpu"]))
        ratio = rows[1][1] / rows[0][1]
        seconds, calls, cpu, server_cpu = rows[1][1:]
        out.append(Row(section, f"{args.apis} deploys concurrently, {latency:g} ms API latency", seconds, "s", ratio,
                       f"one after another ({rows[0][1]:.2f} s)", "<= 0.2x",
                       f"{calls / args.apis:.1f} API calls per deploy; client CPU {cpu / calls * 1000:.2f} ms per call"))  # fmt: skip
        out.append(Row(section, f"the same, against the emulator's own CPU time ({latency:g} ms)", seconds, "s",
                       seconds / server_cpu, f"emulator CPU ({server_cpu:.2f} s, one thread)", "",
                       "~1x: the client keeps the emulator busy; it is the bound, not the client"))  # fmt: skip
        for concurrent, took, n, used, busy in rows:
            mode = "concurrent" if concurrent else "sequential"
            print(f"| {latency:g} ms | {mode} | {took:.2f} | {n} | {n / args.apis:.1f} | {used / n * 1000:.2f} ms | "
                  f"{busy:.2f} s | {f'{ratio:.2f}x' if concurrent else ''} |")  # fmt: skip
    print("goal: concurrent <= 0.2x sequential. The emulator serves one request at a time on one Python "
          "thread: its CPU time bounds the concurrent time from below; a real API server serves in parallel.")
    results.write(args.rows, out)


if __name__ == "__main__":
    main()
