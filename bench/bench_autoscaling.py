"""How fast the local agent's autoscaler reacts to a step load, and scale from zero vs a cold start.

One run, loopback only, private agents (each its own temporary CORTEX_FLOWS_HOME and free gateway port,
stopped at the end). APIs are deployed straight through `LocalBackend.apply_version` (no Prefect), with a
handler that sleeps 50 ms and returns its pid, `pod.max_concurrency: 1`, `target_in_flight: 1`.

1. Step load, min 1 / max 4, `window: 10s`, `upscale_stabilization_period: 0s`: from 1 idle replica (its
   whole window idle), 4 closed-loop connections start at once; time to (a) the first autoscaling event
   (the agent's `autoscaling event:` log line), (b) the first response served by a second replica and
   (c) 4 ready replicas (the algorithm's answer). Twice: the default tick (10 s) and
   CORTEX_FLOWS_AUTOSCALE_TICK=2, on separate agents.
2. Scale from zero, `min_replicas: 0`, downscale stabilization 2 s, tick 1 s: the first request after the
   API idled back to zero, 3 times, vs a cold start (a second API scaled 0 -> 1 by hand, time to ready).

Compared with the floor (the cold start), Cortex's defaults (window 60 s + upscale stabilization 60 s, so
about 2 minutes to the first extra replica, cortex.md 2.4) and Knative's panic mode (6 s panic window,
peers.md). Not a test: it prints figures and ratios.

    .venv/bin/python bench/bench_autoscaling.py
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import results
from harness import free_port
from results import Row

HANDLER = """\
import os
import time


class Handler:
    def handle_post(self, payload):
        time.sleep(0.05)
        return {"pid": os.getpid()}
"""
CONNECTIONS = 4
WINDOW = 10.0
CORTEX_DEFAULT_WINDOW, CORTEX_DEFAULT_UPSCALE_STABILIZATION = 60.0, 60.0  # cortex.md 2.4
KNATIVE_PANIC_WINDOW, KNATIVE_TICK = 6.0, 2.0  # peers.md 2.1 / 3
STEP_AUTOSCALING = {
    "min_replicas": 1, "max_replicas": 4, "target_in_flight": 1, "window": f"{WINDOW:g}s",
    "upscale_stabilization_period": "0s",
}  # fmt: skip
WAKE_AUTOSCALING = {
    "min_replicas": 0, "max_replicas": 2, "init_replicas": 0, "target_in_flight": 1, "window": f"{WINDOW:g}s",
    "downscale_stabilization_period": "2s",
}  # fmt: skip
COLD_AUTOSCALING = {"min_replicas": 0, "max_replicas": 1, "init_replicas": 0, "window": f"{WINDOW:g}s"}
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ cortex_flows\.autoscaler: (.*)$")
DECISION = re.compile(r"^autoscaling (\S+) r\d+: in-flight ([\d.]+) ")
EVENT = re.compile(r"^autoscaling event: (\S+) r\d+ (\d+) -> (\d+)$")


# --- one private agent --------------------------------------------------------------------------------


class Cluster:
    """An agent with its own home, gateway port and autoscaling tick (None: the agent's default)."""

    def __init__(self, root: Path, tick: float | None) -> None:
        from cortex_flows.backends.local.agent import TICK_ENV
        from cortex_flows.backends.local.client import LocalBackend, start_agent
        from cortex_flows.backends.local.home import HOME_ENV, PORT_ENV, LocalHome

        self.root = root
        self.home = LocalHome(root / "home")
        self.port = free_port()
        os.environ.update({HOME_ENV: str(self.home.root), PORT_ENV: str(self.port)})
        if tick is None:
            os.environ.pop(TICK_ENV, None)
        else:
            os.environ[TICK_ENV] = f"{tick:g}"
        start_agent(self.home, self.port)  # the agent reads the tick from its environment when it starts
        os.environ.pop(TICK_ENV, None)
        self.backend = LocalBackend(self.home, self.port)

    def deploy(self, name: str, autoscaling: dict[str, Any], replicas: int) -> str:
        """Build and apply revision 1 of an API running HANDLER; returns its gateway URL."""
        from cortex_flows.backends.versions import version_spec
        from cortex_flows.packaging.build import build_package
        from cortex_flows.packaging.store import LocalStore
        from cortex_flows.rollout.plan import Action, DeployPlan
        from cortex_flows.serving.config import PackageRef
        from cortex_flows.spec import parse_spec

        project = self.root / name
        project.mkdir(parents=True)
        (project / "handler.py").write_text(HANDLER)
        spec = [{
            "name": name, "kind": "RealtimeAPI", "handler": {"type": "python", "path": "handler.py"},
            "pod": {"max_concurrency": 1}, "autoscaling": autoscaling,
        }]  # fmt: skip
        api = parse_spec(yaml.safe_dump(spec), project / "cortex.yaml", project).apis[0]
        built = build_package(project, self.root / f"build-{name}")
        uri, _ = LocalStore(self.backend.home.packages).put(built)
        package = PackageRef(uri=uri, sha256=built.sha256)
        plan = DeployPlan(Action.CREATE, 1, replicas)
        asyncio.run(self.backend.apply_version(name, version_spec(api, package, plan), replicas))
        return self.backend.endpoint_url(f"/{name}")

    def replicas(self, name: str) -> tuple[int, int, int]:
        """(desired, ready, starting) of the API's only version."""
        version = asyncio.run(self.backend.status(name)).versions[0]
        return version.desired, version.ready, version.starting

    def scale(self, name: str, replicas: int) -> None:
        asyncio.run(self.backend.scale_version(name, 1, replicas))

    def autoscaler_log(self, since_wall: float) -> list[tuple[float, str]]:
        """The autoscaler's log lines since a wall-clock time: (seconds after it, message)."""
        out = []
        for line in self.home.agent_log.read_text(errors="replace").splitlines():
            if match := LOG_LINE.match(line):
                at = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp() - since_wall
                if at >= -0.001:  # the log has millisecond stamps
                    out.append((at, match[2]))
        return out

    def stop(self) -> None:
        from cortex_flows.backends.local.client import stop_agent

        stop_agent(self.home)


def wait_until(check: Any, timeout: float, interval: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout:g} s")
        time.sleep(interval)
    return value


class Load:
    """Closed-loop clients in threads (httpx, one connection each), recording (time, status, pid)."""

    def __init__(self, url: str, clients: int, limit: float) -> None:
        self.url = url
        self.limit = limit
        self.results: list[tuple[float, str, int]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    resp = client.post(self.url, json={})
                    pid = resp.json().get("pid", 0) if resp.status_code == 200 else 0
                    self.results.append((time.monotonic(), str(resp.status_code), pid))
                except (httpx.HTTPError, ValueError) as exc:
                    self.results.append((time.monotonic(), type(exc).__name__, 0))

    def stop(self) -> list[tuple[float, str, int]]:
        self._stop.set()
        for thread in self._threads:
            thread.join(40)
        return self.results


# --- 1. reaction to a step load -------------------------------------------------------------------------


@dataclass
class Step:
    label: str
    watched_idle: float = 0.0  # seconds the API was watched, idle, before the step
    first_tick: float | None = None  # first decision after the step
    event: float | None = None  # (a)
    second_serving: float | None = None  # (b)
    ready: dict[int, float] = field(default_factory=dict)  # (c) at 4; each count's first time
    events: list[tuple[float, int, int, float]] = field(default_factory=list)  # at, from, to, in-flight
    requests: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    problem: str = ""


def step_load(cluster: Cluster, label: str, deployed_at: float, timeout: float) -> Step:
    result = Step(label)
    url = cluster.backend.endpoint_url("/step")
    first_pid = httpx.post(url, json={}, timeout=30).json()["pid"]
    time.sleep(max(0.0, deployed_at + WINDOW + 1.0 - time.monotonic()))  # a window of idle samples
    result.watched_idle = time.monotonic() - deployed_at
    step, step_wall = time.monotonic(), time.time()
    load = Load(url, CONNECTIONS, timeout + 10)
    try:
        deadline = step + timeout
        while time.monotonic() < deadline and (len(result.ready) < 3 or result.second_serving is None):
            now = time.monotonic()
            _, ready, _ = cluster.replicas("step")
            for count in range(2, min(ready, 4) + 1):
                result.ready.setdefault(count, now - step)
            if result.second_serving is None:
                other = next((t for t, _, pid in list(load.results) if pid not in (0, first_pid)), None)
                if other is not None:
                    result.second_serving = other - step
            time.sleep(0.1)
        if 4 not in result.ready:
            result.problem = f"4 replicas not ready within {timeout:g} s (ready: {ready})"
    finally:
        responses = load.stop()
    result.requests = len(responses)
    for _, status, _ in responses:
        if status != "200":
            result.failed[status] = result.failed.get(status, 0) + 1
    in_flight = 0.0
    for at, message in cluster.autoscaler_log(step_wall):
        if (decision := DECISION.match(message)) and decision[1] == "step":
            in_flight = float(decision[2])
            if result.first_tick is None:
                result.first_tick = at
        elif (event := EVENT.match(message)) and event[1] == "step":
            result.events.append((at, int(event[2]), int(event[3]), in_flight))
    if result.events:
        result.event = result.events[0][0]
    return result


def algorithm_alone(load: int = CONNECTIONS) -> tuple[int, int]:
    """Samples after the step until 2, then 4 replicas are requested, deciding at every 1 s sample with
    instant scaling: what window 10 s, the tolerances and the upscale factor alone allow."""
    from cortex_flows.autoscaling.recommend import History, Settings, recommend

    settings = Settings(min_replicas=1, max_replicas=4, target_in_flight=1, upscale_stabilization=0.0)
    history, samples = History(started=-100.0), deque([0] * int(WINDOW), maxlen=int(WINDOW))
    current, first = 1, 0
    for n in range(1, 100):
        samples.append(load)
        current = recommend(current, sum(samples) / len(samples), settings, history, float(n)).request
        first = first or (n if current > 1 else 0)
        if current >= 4:
            return first, n
    raise RuntimeError("the simulation never reached 4 replicas")


# --- 2. scale from zero ---------------------------------------------------------------------------------


def at_zero(cluster: Cluster, name: str, pid: int) -> bool:
    from cortex_flows.processes import pid_alive

    return cluster.replicas(name) == (0, 0, 0) and not (pid and pid_alive(pid))


def cold_start(cluster: Cluster) -> float:
    """Scale the idle `cold` API 0 -> 1 by hand; seconds to a ready replica. Then back to 0."""
    assert cluster.replicas("cold") == (0, 0, 0)
    t0 = time.monotonic()
    cluster.scale("cold", 1)
    wait_until(lambda: cluster.replicas("cold")[1] == 1, 30, 0.01, "cold replica ready")
    seconds = time.monotonic() - t0
    cluster.scale("cold", 0)
    return seconds


def scale_from_zero(
    cluster: Cluster, runs: int
) -> tuple[list[float], list[float], list[tuple[float, float | None, float]]]:
    """First request after idle and cold start, `runs` of each, interleaved; and for each idle spell after
    a request: (seconds to zero, the `1 -> 0` event's time, the highest window in-flight the ticks saw)."""
    url = cluster.backend.endpoint_url("/wake")
    woke, cold, idle = [], [], []
    pid = 0
    for i in range(runs):
        assert at_zero(cluster, "wake", pid), cluster.replicas("wake")
        t0, t0_wall = time.monotonic(), time.time()
        resp = httpx.post(url, json={}, timeout=60)
        woke.append(time.monotonic() - t0)
        if resp.status_code != 200:
            raise RuntimeError(f"the request after idle got {resp.status_code}: {resp.text[:200]}")
        pid = resp.json()["pid"]
        cold.append(cold_start(cluster))  # the other API, while this one's replica idles
        if i < runs - 1:
            wait_until(lambda pid=pid: at_zero(cluster, "wake", pid), 60, 0.1, "idle back to zero")
            seconds = time.monotonic() - t0
            highest, event = 0.0, None
            for at, message in cluster.autoscaler_log(t0_wall):
                if (decision := DECISION.match(message)) and decision[1] == "wake":
                    highest = max(highest, float(decision[2]))
                elif (match := EVENT.match(message)) and match[1] == "wake" and event is None:
                    event = at
            idle.append((seconds, event, highest))
    return woke, cold, idle


# --- report ---------------------------------------------------------------------------------------------


def fmt(seconds: float | None) -> str:
    return "   n/a  " if seconds is None else f"{seconds:7.2f} s"


def ratio(a: float | None, b: float) -> str:
    return "   n/a " if a is None else f"{a / b:7.3f}x"


def report(
    steps: list[Step],
    woke: list[float],
    cold: list[float],
    idle: list[tuple[float, float | None, float]],
    wall: float,
) -> None:
    floor = statistics.median(cold)
    first_n, four_n = algorithm_alone()
    cortex = CORTEX_DEFAULT_WINDOW + CORTEX_DEFAULT_UPSCALE_STABILIZATION
    knative = KNATIVE_PANIC_WINDOW
    print(
        f"\n1. Step load: idle -> {CONNECTIONS} closed-loop connections; handler 50 ms, pod.max_concurrency 1, "
        f"target_in_flight 1,\n   window {WINDOW:g}s, upscale_stabilization_period 0s, min 1 / max 4"
    )
    print(f"  {'':44s}" + "".join(f"{s.label:>20s}" for s in steps))
    rows = (
        ("API watched idle before the step", lambda s: s.watched_idle),
        ("first autoscaler tick after the step", lambda s: s.first_tick),
        ("(a) first autoscaling event", lambda s: s.event),
        ("(b) first response from a 2nd replica", lambda s: s.second_serving),
        ("    2 replicas ready", lambda s: s.ready.get(2)),
        ("    3 replicas ready", lambda s: s.ready.get(3)),
        ("(c) 4 replicas ready (the algorithm's answer)", lambda s: s.ready.get(4)),
    )
    for name, get in rows:
        print(f"  {name:44s}" + "".join(f"{fmt(get(s)):>20s}" for s in steps))
    print(f"  {'requests / not 200':44s}" + "".join(
        f"{f'{s.requests} / {sum(s.failed.values())}':>20s}" for s in steps))  # fmt: skip
    for s in steps:
        events = ", ".join(f"+{at:.2f} s {a}->{b} (window in-flight {f:.2f})" for at, a, b, f in s.events)
        print(f"  events, {s.label}: {events or 'none'}")
        if s.failed:
            print(f"  failures, {s.label}: {s.failed}")
        if s.problem:
            print(f"  PROBLEM, {s.label}: {s.problem}")
    print(f"  (the tick's phase against the step is chance: (a) is the first tick at or after sample "
          f"{algorithm_alone()[0]} of the loaded window)")  # fmt: skip

    print("\n  Floors and references")
    print(f"  {f'cold start 0 -> 1 by hand, to ready (median of {len(cold)})':44s}{fmt(floor)}   "
          f"({', '.join(f'{c:.2f}' for c in cold)})")  # fmt: skip
    print(f"  algorithm alone (1 s samples, decided every sample, instant scale): 2nd replica requested "
          f"at sample {first_n}, 4th at sample {four_n}")  # fmt: skip
    print(f"  Cortex defaults: window {CORTEX_DEFAULT_WINDOW:g} s + upscale stabilization "
          f"{CORTEX_DEFAULT_UPSCALE_STABILIZATION:g} s = {cortex:g} s to the first extra replica requested; "
          f"+ cold start = {cortex + floor:.2f} s serving")  # fmt: skip
    print(f"  Knative KPA panic mode: panic window {knative:g} s (tick {KNATIVE_TICK:g} s) to decide; "
          f"+ cold start = {knative + floor:.2f} s serving")  # fmt: skip

    print(f"\n  Ratios{'':38s}" + "".join(f"{s.label:>20s}" for s in steps))
    serving = lambda s: s.second_serving
    ratios = (
        ("(b) 2nd replica serving / cold start", serving, floor),
        ("(c) 4 ready / cold start", lambda s: s.ready.get(4), floor),
        (f"(a) first event / Cortex defaults ({cortex:g} s)", lambda s: s.event, cortex),
        (f"(b) / (Cortex {cortex:g} s + cold start)", serving, cortex + floor),
        (f"(a) first event / Knative panic ({knative:g} s)", lambda s: s.event, knative),
        (f"(b) / (Knative {knative:g} s + cold start)", serving, knative + floor),
    )
    for name, get, base in ratios:
        print(f"  {name:44s}" + "".join(f"{ratio(get(s), base):>20s}" for s in steps))

    median_woke = statistics.median(woke)
    print("\n2. Scale from zero: min_replicas 0, downscale_stabilization_period 2s, window "
          f"{WINDOW:g}s, tick 1 s")  # fmt: skip
    print(f"  {f'first request after idle (median of {len(woke)})':44s}{fmt(median_woke)}   "
          f"({', '.join(f'{w:.2f}' for w in woke)})")  # fmt: skip
    print(f"  {f'cold start, by hand (median of {len(cold)})':44s}{fmt(floor)}")
    print(f"  {'first request - cold start':44s}{median_woke - floor:7.2f} s   (goal <= 0.5 s)")
    print(f"  {'first request / cold start':44s}{median_woke / floor:7.2f}x")
    for n, (seconds, event, highest) in enumerate(idle, 1):
        when = "no 1 -> 0 event logged" if event is None else f"1 -> 0 event at +{event:.2f} s"
        print(f"  run {n}: back to zero {seconds:5.2f} s after the request was sent ({when}; "
              f"highest window in-flight the ticks saw {highest:.2f})")  # fmt: skip
    print(f"\n(bench wall time {wall:.0f} s)")


def rows(steps: list[Step], woke: list[float], cold: list[float]) -> list[Row]:
    floor = statistics.median(cold)
    knative = f"Knative panic window {KNATIVE_PANIC_WINDOW:g} s"
    section = (f"Autoscaling: idle -> {CONNECTIONS} connections, 50 ms handler, window {WINDOW:g}s, "
               f"upscale stabilization 0s")  # fmt: skip
    out = []
    for s in steps:
        note = s.problem or (f"{sum(s.failed.values())} of {s.requests} requests failed" if s.failed else "")
        out += [
            Row(section, f"{s.label}: first scaling decision", s.event, "s",
                None if s.event is None else s.event / KNATIVE_PANIC_WINDOW, knative, note=note),
            Row(section, f"{s.label}: first response from a 2nd replica", s.second_serving, "s",
                None if s.second_serving is None else s.second_serving / (KNATIVE_PANIC_WINDOW + floor),
                f"{knative} + cold start {floor:.2f} s"),
            Row(section, f"{s.label}: 4 replicas ready", s.ready.get(4), "s",
                None if 4 not in s.ready else s.ready[4] / floor, f"cold start {floor:.2f} s"),
        ]  # fmt: skip
    median_woke = statistics.median(woke)
    out.append(Row(section, "first request after scaling to zero (tick 1 s)", median_woke, "s", median_woke / floor,
                   f"cold start {floor:.2f} s", "<= cold start + 0.5 s"))  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="scale-from-zero repetitions")
    results.add_option(parser)
    args = parser.parse_args()
    begin = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="cortex-bench-autoscaling-"))
    clusters: list[Cluster] = []
    try:
        # All agents start first and idle together, so the step APIs' windows fill at the same time.
        default = Cluster(tmp / "tick-default", None)
        clusters.append(default)
        fast = Cluster(tmp / "tick-2", 2.0)
        clusters.append(fast)
        wake = Cluster(tmp / "tick-1", 1.0)
        clusters.append(wake)
        wake.deploy("wake", WAKE_AUTOSCALING, 0)
        wake.deploy("cold", COLD_AUTOSCALING, 0)
        deployed = {}
        for cluster in (default, fast):
            cluster.deploy("step", STEP_AUTOSCALING, 1)
            deployed[cluster.root.name] = time.monotonic()
        for cluster in (default, fast):
            wait_until(lambda c=cluster: c.replicas("step")[:2] == (1, 1), 30, 0.05, "1 ready replica")
        steps = [
            step_load(default, "tick 10 s (default)", deployed["tick-default"], 60.0),
            step_load(fast, "tick 2 s", deployed["tick-2"], 30.0),
        ]
        default.stop()
        fast.stop()
        woke, cold, idle = scale_from_zero(wake, args.runs)
    finally:
        for cluster in clusters:
            cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    report(steps, woke, cold, idle, time.monotonic() - begin)
    results.write(args.rows, rows(steps, woke, cold))


if __name__ == "__main__":
    main()
