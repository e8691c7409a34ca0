"""How fast a canary that fails is rolled back: a candidate answering 30% of its requests with 500.

One run on a private agent (temporary CORTEX_FLOWS_HOME, free gateway port, a temporary `prefect server
start`): the iris example with 2 replicas and a handler whose `config.error_rate` makes it fail, 4
connections of load through the gateway (in a child process, so it does not share a GIL with the flow),
then the canary-rollout flow with a changed error rate, steps 30% and 100%, analysed every 10 s. The floor
is one analysis interval: no verdict can come sooner. Goal: all traffic back on stable within the interval
+ 2 s of the step beginning, and client failures only within the candidate's share. Not a test.

    .venv/bin/python bench/bench_canary.py
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import results
import yaml
from bench_rollout import BODY, Load
from harness import EXAMPLE, local_stack, wait_http
from results import Row

NAME = "iris-canary"
INTERVAL = 10  # seconds: the shortest analysis interval the spec allows
WEIGHT = 30  # % of the traffic on the candidate at the first step
ERROR_RATE = 0.3
CONNECTIONS = 4
BACK = re.compile(r"all traffic on stable ([\d.]+)s after the step began")
HANDLER = '''\
import random
from pathlib import Path

import joblib


class Handler:
    def __init__(self, config: dict, model_dir: str) -> None:
        self.model = joblib.load(Path(model_dir) / "model.joblib")
        self.error_rate = float(config.get("error_rate", 0))

    def handle_post(self, payload: dict) -> dict:
        if random.random() < self.error_rate:
            raise RuntimeError("candidate bug")
        return {"prediction": str(self.model.predict([payload["features"]])[0])}
'''


def write_project(project: Path, error_rate: float) -> None:
    spec_file = project / "cortex.yaml"
    spec = yaml.safe_load((EXAMPLE / "cortex.yaml").read_text())
    api = spec[0]
    api.update(name=NAME, config={"error_rate": error_rate}, networking={"endpoint": f"/{NAME}"})
    api["autoscaling"].update(min_replicas=2, max_replicas=4)
    api["canary"] = {"steps": [WEIGHT, 100], "bake": f"{INTERVAL}s", "analysis_interval": f"{INTERVAL}s",
                     "min_samples": 50}  # fmt: skip
    (project / "handler.py").write_text(HANDLER)
    spec_file.write_text(yaml.safe_dump(spec, sort_keys=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-seconds", type=float, default=120.0, help="bound on the load during the canary")
    results.add_option(parser)
    args = parser.parse_args()
    with local_stack(NAME, lambda project: write_project(project, 0.0)) as stack:
        from cortex_flows.flows.canary import canary_rollout
        from cortex_flows.flows.deploy import deploy

        url = deploy(path=str(stack.project))[NAME]
        wait_http("POST", url, content=BODY, headers={"content-type": "application/json"}, timeout=30.0)
        write_project(stack.project, ERROR_RATE)
        load = Load(stack.gateway_port, f"/{NAME}", CONNECTIONS, args.max_seconds)
        t0 = time.monotonic()
        state = canary_rollout(path=str(stack.project), return_state=True)
        wall = time.monotonic() - t0
        seen = load.stop()

    message = state.message or ""
    back = float(match[1]) if (match := BACK.search(message)) else None
    failed = sum(seen.errors.values())
    share = failed / seen.requests if seen.requests else 0.0
    print(f"\nCanary of {NAME}: candidate failing {ERROR_RATE:.0%}, steps {WEIGHT}/100, analysis every {INTERVAL} s, "
          f"{CONNECTIONS} connections through the gateway")  # fmt: skip
    print(f"  flow ended {state.type.value}: {message}")
    print(f"  all traffic back on stable after the step began  {back if back is not None else 'n/a'} s "
          f"(goal <= {INTERVAL + 2} s; floor one interval, {INTERVAL} s)")  # fmt: skip
    print(f"  canary flow wall time                            {wall:.2f} s")
    print(f"  load                                             {seen.summary()}")
    section = f"Canary rollback: candidate failing {ERROR_RATE:.0%} of requests, analysis every {INTERVAL} s"
    note = "" if back is not None else f"not rolled back: the flow ended {state.type.value}: {message[:120]}"
    results.write(args.rows, [
        Row(section, "all traffic back on stable, after the step began", back, "s",
            None if back is None else back / INTERVAL, f"one analysis interval ({INTERVAL} s)",
            f"<= {INTERVAL + 2} s", note),
        Row(section, "canary flow wall time (build to rolled back)", wall, "s"),
        Row(section, "requests failed during the canary", failed, goal=f"< {WEIGHT}% (the candidate's share)",
            note=f"{share:.1%} of {seen.requests} requests"),
    ])  # fmt: skip


if __name__ == "__main__":
    main()
