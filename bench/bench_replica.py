"""Our replica process vs a bare Starlette app serving the same sklearn handler, same load.

Both are real uvicorn subprocesses on loopback (httptools, uvloop, access log off) calling the built-in
iris `SklearnHandler` the same way (sync, in a thread pool), so the ratio is what our admission control,
metrics, request ids and error handling cost. Rounds alternate between the two servers and the median is
reported, which evens out drift on a shared machine. Not a test: it prints a table (goal: ours/bare >= 0.9).

    .venv/bin/python bench/bench_replica.py [--connections 16] [--seconds 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from loadgen import LoadResult, run_load, use_uvloop  # bench/ is on sys.path when run as a script

SETOSA_BODY = json.dumps({"features": [5.1, 3.5, 1.4, 0.2]}).encode()
START_TIMEOUT = 30.0


def serve_bare(model_path: str, port: int) -> None:
    """The baseline: the smallest Starlette app that serves the handler (no admission, metrics or ids)."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    from cortex_flows.serving.handlers import SklearnHandler

    handler = SklearnHandler(Path(model_path))

    async def predict(request: Request) -> JSONResponse:
        return JSONResponse(await run_in_threadpool(handler.handle_post, await request.json()))

    async def readyz(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/readyz", readyz)])
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        http="httptools",
        loop="uvloop",
        access_log=False,
        log_level="warning",
    )


def train_model(path: Path) -> None:
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    iris = load_iris()
    joblib.dump(LogisticRegression(max_iter=1000).fit(iris.data, iris.target_names[iris.target]), path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(command: list[str], port: int) -> Iterator[None]:
    """Run a server subprocess until it answers /readyz; stop it with SIGTERM afterwards."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {' '.join(command)}")
            time.sleep(0.05)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def load(port: int, connections: int, seconds: float) -> LoadResult:
    result = asyncio.run(
        run_load("127.0.0.1", port, "/predict", SETOSA_BODY, connections=connections, duration=seconds)
    )
    if result.errors:
        raise RuntimeError(f"errors under load on port {port}: {result.errors}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=4.0, help="per measured round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--serve-bare", nargs=2, metavar=("MODEL", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(args.serve_bare[0], int(args.serve_bare[1]))
        return
    use_uvloop()
    with tempfile.TemporaryDirectory(prefix="bench-replica-") as tmp:
        model = Path(tmp) / "iris.joblib"
        train_model(model)
        config = {
            "api_name": "iris",
            "handler": {"type": "sklearn"},
            "model_path": str(model),
            "max_concurrency": args.connections,
            "max_queue_length": 100,
        }
        (Path(tmp) / "replica.json").write_text(json.dumps(config))
        ours_port, bare_port = free_port(), free_port()
        ours = [sys.executable, "-m", "cortex_flows.serving", "--config", f"{tmp}/replica.json"]
        ours += ["--port", str(ours_port)]
        bare = [sys.executable, __file__, "--serve-bare", str(model), str(bare_port)]
        results: dict[str, list[LoadResult]] = {"ours": [], "bare": []}
        with running(ours, ours_port), running(bare, bare_port):
            for port in (ours_port, bare_port):
                load(port, args.connections, args.warmup)
            for _ in range(args.rounds):
                results["ours"].append(load(ours_port, args.connections, args.seconds))
                results["bare"].append(load(bare_port, args.connections, args.seconds))
    print_table(results, args)


def print_table(results: dict[str, list[LoadResult]], args: argparse.Namespace) -> None:
    def median(name: str, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in results[name])

    print(
        f"iris sklearn handler, {args.connections} keep-alive connections, "
        f"{args.rounds} x {args.seconds:.0f} s rounds (median)"
    )
    print(f"{'server':<22}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    labels = {"ours": "cortex-flows replica", "bare": "bare Starlette"}
    for name, label in labels.items():
        row = (median(name, "throughput"), median(name, "p50_ms"), median(name, "p99_ms"))
        print(f"{label:<22}{row[0]:>10.0f}{row[1]:>10.2f}{row[2]:>10.2f}")
    ratio = median("ours", "throughput") / median("bare", "throughput")
    rounds = ", ".join(
        f"{o.throughput / b.throughput:.2f}" for o, b in zip(results["ours"], results["bare"], strict=True)
    )
    print(f"throughput ours/bare: {ratio:.2f}x (per round: {rounds}; goal >= 0.9x)")


if __name__ == "__main__":
    main()
