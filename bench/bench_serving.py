"""Serving throughput and latency of one replica: ours, a bare Starlette floor and the peers, same model, same load.

Every server is one worker/replica on a free loopback port, serving the iris example's model (trained here
from scikit-learn's bundled data) and answering the same body, `{"instances": [[5.1, 3.5, 1.4, 0.2]]}`:

- the Starlette floor (servers/starlette_floor.py) and our replica (`python -m cortex_flows.serving`,
  sklearn handler) run from the project's venv; our gateway runs in front of that same replica;
- BentoML, KServe's ModelServer and Ray Serve (servers/) run from their own venvs (peer_envs.py). Ray
  Serve always answers through its proxy actor, so it compares with ours through the gateway.

Per-request logging is off everywhere. The load is loadgen.measure, the same client for all: `-c`
keep-alive connections, each run bounded by `--seconds` and `--requests`. Each round loads every server
once, in an order rotated per round, so drift on a shared machine hits all of them alike; medians of the
rounds are reported, as ratios to the floor measured in the same run. A server that cannot install or
start gets a row saying why, and the rest still run. Not a test: it prints a table.

    .venv/bin/python bench/bench_serving.py [-c 16] [--seconds 3] [--rounds 3] [--chart serving.png]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import peer_envs
import results
from harness import (
    ServerFailed,
    free_port,
    replica_command,
    start_server,
    stop_groups,
    train_iris,
    tree_cpu_seconds,
    wait_serving,
)
from loadgen import LoadResult, measure, use_uvloop
from results import Row

HERE = Path(__file__).resolve().parent
SERVERS = HERE / "servers"
BODY = json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]]}).encode()
START_TIMEOUT = 120.0
PEERS = (("bentoml", "BentoML", "/predict"), ("kserve", "KServe ModelServer", "/v1/models/iris:predict"),
         ("ray", "Ray Serve", "/predict"))  # fmt: skip
METRICS = (("throughput", "throughput", "req/s"), ("p50_ms", "p50", "ms"), ("p99_ms", "p99", "ms"),
           ("cpu_ms", "server CPU per request", "ms"))  # fmt: skip
RAY_ENV = {  # Ray's single-node mode (its node address on loopback), no token file in $HOME, no usage stats
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
}  # fmt: skip


@dataclass
class Server:
    key: str
    label: str
    path: str
    port: int
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    error: str = ""  # why it was not measured
    pids: list[int] = field(default_factory=list)  # process trees whose CPU it uses (the gateway's: two)
    runs: list[LoadResult] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)  # server CPU per request, one per run

    def median(self, attr: str) -> float:
        if attr == "cpu_ms":
            return statistics.median(self.cpu_ms)
        return statistics.median(getattr(run, attr) for run in self.runs)


def our_servers(tmp: Path, model: Path, connections: int) -> list[Server]:
    """The floor, our replica (as many in-flight requests as connections) and our gateway in front of it."""
    floor, ours, gateway = free_port(), free_port(), free_port()
    return [
        Server("floor", "Starlette floor", "/predict", floor,
               [sys.executable, str(SERVERS / "starlette_floor.py"), "--model", str(model), "--port", str(floor)]),
        Server("ours", "cortex-flows replica", "/predict", ours, replica_command(tmp, model, ours, connections)),
        Server("gateway", "cortex-flows via gateway", "/bench", gateway,
               [sys.executable, str(HERE / "bench_gateway.py"), "gateway", "--port", str(gateway), "--upstream",
                str(ours)]),
    ]  # fmt: skip


def peer_servers(tmp: Path, model: Path, connections: int) -> list[Server]:
    """BentoML, KServe and Ray Serve from their venvs; one whose venv is missing carries the install error.

    Each admits as many concurrent requests as there are connections, as our replica does (BentoML and KServe
    do by default; Ray Serve's replica takes 5 unless told)."""
    out = []
    for key, label, path in PEERS:
        env, port = peer_envs.ensure(key), free_port()
        if env.python is None:
            out.append(Server(key, label, path, port, [], error=f"not installed: {env.error}"))
            continue
        python, extra = str(env.python), {}
        match key:
            case "bentoml":
                command = [env.bin("bentoml"), "serve", "bentoml_service:Iris", "--working-dir", str(SERVERS)]
                command += ["--host", "127.0.0.1"]
                extra = {"BENCH_MODEL": str(model), "BENTOML_HOME": str(tmp / "bentoml"), "BENTOML_DO_NOT_TRACK": "1"}
            case "kserve":
                command = [python, str(SERVERS / "kserve_server.py"), "--model", str(model)]
            case "ray":
                command = [python, str(SERVERS / "ray_serve.py"), "--model", str(model)]
                command += ["--max-ongoing", str(connections), "--temp-dir", str(tmp / "ray")]
                extra = RAY_ENV
        out.append(Server(key, f"{label} {env.version}", path, port, [*command, "--port", str(port)], extra))
    return out


def start_all(servers: list[Server], logs: Path) -> list[subprocess.Popen]:
    """Start every server at once (their startups overlap), then wait for each; failures are recorded."""
    t0 = time.monotonic()
    procs = {s.key: start_server(s.command, logs / f"{s.key}.log", s.env) for s in servers if not s.error}
    for server in servers:
        if server.key in procs:
            url = f"http://127.0.0.1:{server.port}{server.path}"
            try:
                wait_serving(procs[server.key], url, BODY, logs / f"{server.key}.log", START_TIMEOUT)
                print(f"{server.label}: serving {time.monotonic() - t0:.1f} s after all were started", flush=True)
            except ServerFailed as exc:
                server.error = f"did not start: {exc}"
            server.pids = [procs[server.key].pid]
    for server in servers:
        if server.key == "gateway":
            server.pids.append(procs["ours"].pid)
    return list(procs.values())


def run_rounds(servers: list[Server], args: argparse.Namespace) -> None:
    """Each round loads every live server once, starting one further along the list each round."""
    live = [s for s in servers if not s.error]
    for n in range(args.rounds):
        for server in live[n % len(live) :] + live[: n % len(live)]:
            if server.error:
                continue
            load = {"connections": args.connections, "requests": args.requests}
            if n == 0:  # warm-up, its own run so that the CPU sampled below is the measured run's alone
                measure("127.0.0.1", server.port, server.path, BODY, duration=args.warmup, **load)
            cpu = tree_cpu_seconds(server.pids)
            run = measure("127.0.0.1", server.port, server.path, BODY, duration=args.seconds, **load)
            if run.ok == 0:
                server.error = f"failed under load: {run.summary()}"
                continue
            server.runs.append(run)
            server.cpu_ms.append((tree_cpu_seconds(server.pids) - cpu) * 1000 / max(run.requests, 1))


def ratio(value: float, baseline: float) -> float | None:
    return value / baseline if baseline else None


def rows(servers: list[Server], connections: int) -> list[Row]:
    section = f"Serving: iris model, 1 replica, {connections} connections"
    by_key = {s.key: s for s in servers}
    floor = by_key["floor"]
    if floor.error or not floor.runs:
        return [Row(section, s.label, None, note=s.error or "the floor was not measured") for s in servers]
    out = []
    goals = {"ours": ">= 0.90x floor", "gateway": ">= 0.90x floor"}
    for s in servers:
        if s.error or not s.runs:
            out.append(Row(section, s.label, None, note=s.error))
            continue
        errors = sum(sum(r.errors.values()) for r in s.runs)
        note = f"{errors} errors: {s.runs[-1].errors}" if errors else ""
        for attr, name, unit in METRICS:
            goal = goals.get(s.key, "") if attr == "throughput" else ""
            value = s.median(attr)
            out.append(Row(section, f"{s.label}: {name}", value, unit, ratio(value, floor.median(attr)),
                           "Starlette floor", goal, note))  # fmt: skip
    pairs = [("ours", peer) for peer in ("bentoml", "kserve", "ray")] + [("gateway", "ray")]
    for ours_key, peer_key in pairs:
        ours, peer = by_key[ours_key], by_key[peer_key]
        if ours.error or peer.error or not ours.runs or not peer.runs:
            continue
        for attr, name, unit, goal in (("throughput", "throughput", "req/s", ">= 1"), ("p99_ms", "p99", "ms", "<= 1"),
                                       ("cpu_ms", "server CPU per request", "ms", "<= 1")):
            out.append(Row(section, f"{ours.label} vs {peer.label}: {name}", ours.median(attr), unit,
                           ratio(ours.median(attr), peer.median(attr)),
                           f"{peer.label} ({results.value_text(peer.median(attr), unit)})", goal))  # fmt: skip
    return out


def print_table(servers: list[Server], args: argparse.Namespace) -> None:
    print(f"\niris model, {args.connections} keep-alive connections, {args.rounds} rounds x {args.seconds:g} s "
          f"(at most {args.requests} requests each), medians")  # fmt: skip
    print(f"{'server':34s}{'req/s':>9s}{'p50 ms':>9s}{'p90 ms':>9s}{'p99 ms':>9s}{'CPU ms/req':>11s}{'vs floor':>10s}"
          "  req/s per round")  # fmt: skip
    floor = next(s for s in servers if s.key == "floor")
    for s in servers:
        if s.error or not s.runs:
            print(f"{s.label:34s}  not measured: {s.error}")
            continue
        vs = f"{s.median('throughput') / floor.median('throughput'):.2f}x" if floor.runs else "n/a"
        per_round = ", ".join(f"{r.throughput:.0f}" for r in s.runs)
        print(f"{s.label:34s}{s.median('throughput'):9.0f}{s.median('p50_ms'):9.2f}{s.median('p90_ms'):9.2f}"
              f"{s.median('p99_ms'):9.2f}{s.median('cpu_ms'):11.2f}{vs:>10s}  {per_round}")  # fmt: skip


def draw(servers: list[Server], args: argparse.Namespace, tmp: Path) -> None:
    """The chart, drawn by chart.py in the chart venv (matplotlib stays out of the project's deps)."""
    env = peer_envs.ensure("chart")
    if env.python is None:
        print(f"no chart: {env.error}")
        return
    measured = [{"key": s.key, "label": s.label, "error": s.error,
                 **{attr: s.median(attr) if s.runs else None for attr in ("throughput", "p50_ms", "p99_ms")}}
                for s in servers]  # fmt: skip
    title = f"iris model, 1 replica, {args.connections} connections, same machine and client"
    data = {"title": title, "servers": measured}
    (tmp / "chart.json").write_text(json.dumps(data))
    drawn = subprocess.run([str(env.python), str(HERE / "chart.py"), str(tmp / "chart.json"), str(args.chart)],
                           check=False, capture_output=True, text=True)  # fmt: skip
    print(f"chart: {args.chart}" if drawn.returncode == 0 else f"no chart: {drawn.stderr.strip()[-300:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0, help="per measured run")
    parser.add_argument("--requests", type=int, default=20_000, help="bound on each measured run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each server's first run")
    parser.add_argument("--chart", type=Path, help="draw throughput and latency per server to this PNG")
    results.add_option(parser)
    args = parser.parse_args()
    use_uvloop()
    # A short prefix: Ray's socket paths under tmp/ray must stay within 107 bytes.
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp_name:
        tmp = Path(tmp_name)
        model = train_iris(tmp / "iris.joblib")
        servers = our_servers(tmp, model, args.connections) + peer_servers(tmp, model, args.connections)
        procs = start_all(servers, tmp)
        try:
            run_rounds(servers, args)
        finally:
            stop_groups(procs)
        print_table(servers, args)
        if args.chart:
            draw(servers, args, tmp)
    results.write(args.rows, rows(servers, args.connections))


if __name__ == "__main__":
    main()
