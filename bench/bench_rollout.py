"""Latency and errors during a rolling update vs steady state, and the rollout's duration vs its floor.

One run: the iris example with 3 replicas on a private agent (temporary CORTEX_FLOWS_HOME, free gateway
port, a temporary `prefect server start`), then (1) steady-state load through the gateway, (2) the same
load while the deploy flow rolls out a changed `config` (a new pod, so every replica is replaced), and
(3) the rollout's duration against its floor: a new replica's start-to-ready (a bare
`python -m cortex_flows.serving` with a live replica's config, spawn to first 200 on /readyz, measured
here) times the number of batches the rolling plan waits for new replicas. Goals: p99 during / steady
<= 2x, 0 errors. The load runs in a child process so it does not share a GIL with the flow.
Not a test: it prints a table.

    .venv/bin/python bench/bench_rollout.py [-c 16] [--steady 8] [--max-rollout 120]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from datetime import datetime, timedelta
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results
from harness import free_port, local_stack, wait_http
from loadgen import LoadResult
from results import Row

NAME = "iris-classifier"
REPLICAS = 3
BODY = json.dumps({"features": [5.1, 3.5, 1.4, 0.2]}).encode()
TIMELINE = re.compile(r"^(\d\d:\d\d:\d\d\.\d{3}) (.*)$")
BATCH_WAIT = re.compile(r"^r\d+: (\d+) ready \((\d+) ms\)$")


# --- the load, in a child process -------------------------------------------------------------------


def serve_load(port: int, path: str, connections: int, seconds: float) -> None:
    """Child mode: run `run_load` for at most `seconds`, stop early on SIGTERM, print the result as JSON."""
    import loadgen

    stopped = False

    class StoppableRun(loadgen._Run):  # run_load's deadline is fixed at its start; add a stop switch
        def may_send(self) -> bool:
            return not stopped and super().may_send()

    loadgen._Run = StoppableRun  # type: ignore[misc]

    def stop() -> None:
        nonlocal stopped
        stopped = True

    async def main() -> LoadResult:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop)
        print("started", flush=True)
        return await loadgen.run_load(
            "127.0.0.1", port, path, BODY, connections=connections, duration=seconds
        )

    loadgen.use_uvloop()
    print(json.dumps(asdict(asyncio.run(main()))), flush=True)


class Load:
    """The load child: started, then either left to its duration or stopped; `result()` waits for it."""

    def __init__(self, port: int, path: str, connections: int, seconds: float) -> None:
        self.seconds = seconds
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve-load", str(port), path, str(connections), str(seconds)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "started":
            self.proc.kill()
            raise RuntimeError(f"the load process failed to start (exit {self.proc.wait()})")

    def stop(self) -> LoadResult:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.result()

    def result(self) -> LoadResult:
        try:
            out, _ = self.proc.communicate(timeout=self.seconds + 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        return LoadResult(**json.loads(out.strip().splitlines()[-1]))


# --- setup and measurements -------------------------------------------------------------------------


def write_spec(project: Path, **config: str) -> None:
    spec_file = project / "cortex.yaml"
    spec = yaml.safe_load(spec_file.read_text())
    api = spec[0]
    api["autoscaling"].update(min_replicas=REPLICAS, max_replicas=2 * REPLICAS)
    api["pod"]["max_concurrency"] = 4
    api["config"].update(config)
    spec_file.write_text(yaml.safe_dump(spec, sort_keys=False))


def replica_start_to_ready(home: Path, runs: int) -> list[float]:
    """Spawn `python -m cortex_flows.serving` with a live replica's config; seconds to first 200 on /readyz."""
    config = home / "bench-replica.json"
    if not config.exists():
        configs = sorted(home.rglob("*.config.json"))
        if not configs:
            raise RuntimeError(f"no replica config under {home}")
        shutil.copyfile(configs[0], config)
    times = []
    for _ in range(runs):
        port = free_port()
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "cortex_flows.serving", "--config", str(config), "--host", "127.0.0.1",
             "--port", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            times.append(wait_http("GET", f"http://127.0.0.1:{port}/readyz", timeout=60.0) - t0)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return times


async def _report(flow_run_id: object) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
                key=ArtifactFilterKey(any_=["deploy-report"]),
            )
        )
    return found[0].data if found else ""


def parse_timeline(report: str) -> tuple[list[str], float, list[int]]:
    """The roll task's timeline lines, its span in seconds (first to last event), each batch's wait in ms."""
    lines, stamps, waits = [], [], []
    for line in report.splitlines():
        match = TIMELINE.match(line.strip())
        if not match:
            continue
        lines.append(line.strip())
        stamps.append(datetime.strptime(match[1], "%H:%M:%S.%f"))
        if wait := BATCH_WAIT.match(match[2]):
            waits.append(int(wait[2]))
    span = 0.0
    if len(stamps) > 1:
        delta = stamps[-1] - stamps[0]
        span = (delta + timedelta(days=1) if delta < timedelta(0) else delta).total_seconds()
    return lines, span, waits


def floor_batches() -> tuple[int, int, int]:
    from cortex_flows.rollout.rolling import batches, rolling_steps
    from cortex_flows.spec import UpdateStrategy

    surge, unavailable = UpdateStrategy().resolve(REPLICAS)
    steps = rolling_steps(desired=REPLICAS, old=REPLICAS, surge=surge, unavailable=unavailable)
    return batches(steps), surge, unavailable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--connections", type=int, default=16)
    parser.add_argument("--steady", type=float, default=8.0, help="seconds of steady-state load")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument(
        "--max-rollout", type=float, default=120.0, help="bound on the rollout (and its load)"
    )
    parser.add_argument("--runs", type=int, default=3, help="replica start-to-ready measurements")
    parser.add_argument("--serve-load", nargs=4, help=argparse.SUPPRESS)
    results.add_option(parser)
    args = parser.parse_args()
    if args.serve_load:
        port, path, connections, seconds = args.serve_load
        serve_load(int(port), path, int(connections), float(seconds))
        return

    with local_stack(NAME, write_spec) as stack:
        from cortex_flows.flows.deploy import deploy

        url = deploy(path=str(stack.project))[NAME]
        path = "/" + url.split("/", 3)[3]
        wait_http("POST", url, content=BODY, headers={"content-type": "application/json"}, timeout=30.0)
        Load(stack.gateway_port, path, args.connections, args.warmup).result()
        steady = Load(stack.gateway_port, path, args.connections, args.steady).result()
        ready_times = replica_start_to_ready(stack.home.root, args.runs)
        busy = Load(stack.gateway_port, path, args.connections, 60.0)  # the same, while the load runs
        time.sleep(1.0)
        busy_ready = replica_start_to_ready(stack.home.root, 1)[0]
        busy.stop()

        write_spec(stack.project, bench_tag="v2")  # a config change: a new pod hash, every replica replaced
        load = Load(stack.gateway_port, path, args.connections, args.max_rollout + 10)
        t0 = time.monotonic()
        state = deploy(path=str(stack.project), timeout=args.max_rollout, return_state=True)
        flow_wall = time.monotonic() - t0
        during = load.stop()
        report = asyncio.run(_report(state.state_details.flow_run_id))

    timeline, roll_span, waits = parse_timeline(report)
    n_batches, surge, unavailable = floor_batches()
    start_to_ready = statistics.median(ready_times)
    floor = start_to_ready * n_batches

    print(
        f"\nRolling update of {NAME}, {REPLICAS} replicas, {args.connections} connections through the gateway"
    )
    if not state.is_completed():
        print(f"  THE DEPLOY FLOW ENDED {state.type.value}: {state.message}")
    print(f"  steady state ({args.steady:.0f} s)   {steady.summary()}")
    print(f"  during the rollout     {during.summary()}")
    print(f"  p50 during / steady         {during.p50_ms / steady.p50_ms:7.2f} x")
    print(f"  p99 during / steady         {during.p99_ms / steady.p99_ms:7.2f} x   (goal <= 2)")
    print(f"  throughput during / steady  {during.throughput / steady.throughput:7.2f} x")
    print(
        f"  errors during the rollout   {sum(during.errors.values()):7d}     (goal 0)  {during.errors or ''}"
    )
    print("\nRollout duration vs its floor")
    print(f"  deploy flow wall time                        {flow_wall:7.2f} s")
    print(f"  roll task (first to last timeline event)     {roll_span:7.2f} s")
    print(f"  replica start-to-ready, bare, idle (median)  {start_to_ready:7.2f} s   "
          f"({', '.join(f'{t:.2f}' for t in ready_times)})")  # fmt: skip
    print(f"  batches (surge {surge}, unavailable {unavailable})             {n_batches:7d}")
    print(f"  floor = start-to-ready x batches             {floor:7.2f} s")
    print(f"  ratio roll task / floor                      {roll_span / floor:7.2f} x")
    print(f"  ratio deploy flow / floor                    {flow_wall / floor:7.2f} x")
    if waits:
        print(
            f"  the roll's waits for each batch (timeline)   {', '.join(f'{w / 1000:.2f}' for w in waits)} s"
        )
    print(
        f"  (for reference) start-to-ready under load    {busy_ready:7.2f} s   -> floor x {n_batches} = "
        f"{busy_ready * n_batches:.2f} s, roll task / that {roll_span / (busy_ready * n_batches):.2f} x"
    )
    print("\nTimeline of the roll task (UTC)")
    for line in timeline:
        print(f"  {line}")
    section = f"Rolling update: iris, {REPLICAS} replicas, {args.connections} connections through the gateway"
    note = "" if state.is_completed() else f"the deploy flow ended {state.type.value}: {state.message}"
    floor_of = f"floor: start-to-ready {start_to_ready:.2f} s x {n_batches} batches"
    results.write(args.rows, [
        Row(section, "p99 during the rollout", during.p99_ms, "ms", during.p99_ms / steady.p99_ms,
            f"steady state ({steady.p99_ms:.2f} ms)", "<= 2x", note),
        Row(section, "p50 during the rollout", during.p50_ms, "ms", during.p50_ms / steady.p50_ms,
            f"steady state ({steady.p50_ms:.2f} ms)"),
        Row(section, "throughput during the rollout", during.throughput, "req/s", during.throughput / steady.throughput,
            f"steady state ({steady.throughput:.0f} req/s)"),
        Row(section, "failed requests during the rollout", sum(during.errors.values()), goal="0",
            note=str(during.errors or "")),
        Row(section, "roll task duration", roll_span, "s", roll_span / floor, floor_of),
        Row(section, "deploy flow wall time", flow_wall, "s", flow_wall / floor, floor_of),
    ])  # fmt: skip


if __name__ == "__main__":
    main()
