"""Gateway overhead: the same load straight to a replica-like server, then through the gateway in front of it.

The upstream is uvicorn (httptools + uvloop, no access log) serving a tiny ASGI app that answers a small
JSON, the cheapest thing a replica can be, so the gateway's own cost shows as plainly as it can.
`--work-us N` makes it burn N microseconds of CPU per request first, like a model's predict. Upstream and
gateway run as separate processes on free loopback ports; the load generator runs in this process.
The goal is gateway throughput >= 0.9x direct and p50 <= +0.5 ms. Not a pass/fail test: it prints a table.

On a 2-core machine the three processes share two cores, so with a trivial upstream the gateway's own CPU
(~20 us per request, most of it in the kernel's loopback TCP) is taken straight from the upstream's share.

    .venv/bin/python bench/bench_gateway.py [-c 16] [-d 5] [--work-us 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results
from harness import free_port
from loadgen import LoadResult, measure, use_uvloop
from results import Row

ROOT = Path(__file__).resolve().parent.parent
BODY = json.dumps({"features": [5.1, 3.5, 1.4, 0.2]}).encode()
REPLY = json.dumps({"prediction": "setosa"}).encode()


WORK_SECONDS = float(os.environ.get("BENCH_WORK_US", "0")) / 1e6


async def app(scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def]
    """The upstream: read the body, optionally burn CPU, answer a constant small JSON."""
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    if WORK_SECONDS:
        until = time.perf_counter() + WORK_SECONDS
        while time.perf_counter() < until:
            pass
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(REPLY))],
        }
    )
    await send({"type": "http.response.body", "body": REPLY})


def serve_upstream(port: int) -> None:
    import uvicorn

    uvicorn.run(
        app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", access_log=False,
        lifespan="off", log_level="warning",
    )  # fmt: skip


def serve_gateway(port: int, upstream_port: int) -> None:
    from cortex_flows.backends.local.gateway import Gateway, RoutingTable, Upstream

    async def main() -> None:
        table = RoutingTable()
        table.set_route("bench", "/bench", [(100, [Upstream("127.0.0.1", upstream_port)])])
        gateway = Gateway(table, port=port)
        await gateway.start()
        await asyncio.Event().wait()  # until the parent terminates us

    use_uvloop()
    asyncio.run(main())


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {timeout} s")


def spawn(*args: str, work_us: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BENCH_WORK_US": str(work_us)}
    return subprocess.Popen([sys.executable, __file__, *args], env=env)


def main() -> None:
    ap = argparse.ArgumentParser(description="gateway vs direct")
    ap.add_argument("role", nargs="?", choices=["upstream", "gateway"], help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--upstream", type=int, help=argparse.SUPPRESS)
    ap.add_argument("-c", "--connections", type=int, default=16)
    ap.add_argument("-d", "--duration", type=float, default=5.0, help="seconds per measurement")
    ap.add_argument("-r", "--rounds", type=int, default=2, help="direct/gateway pairs, best of each kept")
    ap.add_argument("--work-us", type=float, default=0.0, help="CPU the upstream burns per request")
    results.add_option(ap)
    args = ap.parse_args()
    if args.role == "upstream":
        serve_upstream(args.port)
        return
    if args.role == "gateway":
        serve_gateway(args.port, args.upstream)
        return

    up_port, gw_port = free_port(), free_port()
    procs = [spawn("upstream", "--port", str(up_port), work_us=args.work_us)]
    procs.append(spawn("gateway", "--port", str(gw_port), "--upstream", str(up_port)))
    try:
        wait_listening(up_port, procs[0])
        wait_listening(gw_port, procs[1])
        use_uvloop()
        direct: list[LoadResult] = []
        via: list[LoadResult] = []
        for _ in range(args.rounds):  # interleaved, so drift (thermal, other load) hits both alike
            for port, path, runs in ((up_port, "/", direct), (gw_port, "/bench", via)):
                runs.append(measure("127.0.0.1", port, path, BODY, connections=args.connections,
                                    duration=args.duration, warmup=1.0))  # fmt: skip
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)
    d, g = max(direct, key=lambda r: r.throughput), max(via, key=lambda r: r.throughput)
    report(d, g, args)
    section = f"Gateway overhead: trivial upstream (+{args.work_us:g} us/request), {args.connections} connections"
    results.write(args.rows, [
        Row(section, "throughput through the gateway", g.throughput, "req/s", g.throughput / d.throughput,
            f"direct ({d.throughput:.0f} req/s)", ">= 0.90x"),
        Row(section, "p50 through the gateway", g.p50_ms, "ms", g.p50_ms / d.p50_ms, f"direct ({d.p50_ms:.2f} ms)",
            "<= direct + 0.50 ms", f"{g.p50_ms - d.p50_ms:+.2f} ms"),
        Row(section, "p99 through the gateway", g.p99_ms, "ms", g.p99_ms / d.p99_ms, f"direct ({d.p99_ms:.2f} ms)"),
    ])  # fmt: skip


def report(d: LoadResult, g: LoadResult, args: argparse.Namespace) -> None:
    print(f"\n{args.connections} connections, {args.duration:.0f} s per run, best of {args.rounds}, "
          f"upstream: trivial app + {args.work_us:.0f} us/request, "
          f"{os.cpu_count()} CPUs shared by all three processes")  # fmt: skip
    print(f"{'':10} {'req/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'errors':>8}")
    for name, r in (("direct", d), ("gateway", g)):
        errors = sum(r.errors.values())
        print(f"{name:10} {r.throughput:9.0f} {r.p50_ms:8.2f} {r.p90_ms:8.2f} {r.p99_ms:8.2f} {errors:8d}")
    ratio = g.throughput / d.throughput if d.throughput else 0.0
    delta = g.p50_ms - d.p50_ms
    print(
        f"\nthroughput gateway/direct: {ratio:.2f}x (goal >= 0.90)   p50 delta: {delta:+.2f} ms (goal <= +0.50)"
    )


if __name__ == "__main__":
    main()
