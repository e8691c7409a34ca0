"""Applying many APIs to a Kubernetes API server concurrently vs one after another, and API calls per deploy.

The server is kmock's emulator over real HTTP (tests/kube.py) with the real `kubernetes_asyncio` client,
so the figures are our client side: requests, serialisation, waits. Each API is created (every version
object, its history and route) and its traffic set, as the deploy flow's apply step does. The floor
is the same work done one API at a time; the goal is concurrent <= 0.2x of sequential. Not a test.

    .venv/bin/python bench/bench_kubernetes.py [--apis 50] [--latency-ms 5 30]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

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


async def run(url: str, all_versions: list, concurrent: bool) -> tuple[float, int]:
    async def configure() -> Configuration:
        return Configuration(host=url)

    backend = KubernetesBackend(KubeTarget(namespace="bench"), configure, "http://gateway")
    started = time.perf_counter()
    if concurrent:
        await asyncio.gather(*(deploy_one(backend, v) for v in all_versions))
    else:
        for v in all_versions:
            await deploy_one(backend, v)
    return time.perf_counter() - started, backend.calls


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
    print("| API latency | mode | seconds | API calls | calls per deploy | concurrent / sequential |")
    print("|---:|---|---:|---:|---:|---:|")
    for latency in args.latency_ms:
        rows = []
        for concurrent in (False, True):
            with KubeServer() as kube:
                kube.latency = latency / 1000
                seconds, calls = asyncio.run(run(kube.url, all_versions, concurrent))
            rows.append((concurrent, seconds, calls))
        ratio = rows[1][1] / rows[0][1]
        out.append(Row(section, f"{args.apis} deploys concurrently, {latency:g} ms API latency", rows[1][1], "s", ratio,
                       f"one after another ({rows[0][1]:.2f} s)", "<= 0.2x",
                       f"{rows[1][2] / args.apis:.1f} API calls per deploy"))  # fmt: skip
        for concurrent, seconds, n in rows:
            mode = "concurrent" if concurrent else "sequential"
            print(f"| {latency:g} ms | {mode} | {seconds:.2f} | {n} | {n / args.apis:.1f} | "
                  f"{f'{ratio:.2f}x' if concurrent else ''} |")  # fmt: skip
    print("goal: concurrent <= 0.2x sequential. kmock serves one request at a time on one Python thread "
          "(~5-7 ms of CPU each), which bounds the concurrent time from below.")
    results.write(args.rows, out)


if __name__ == "__main__":
    main()
