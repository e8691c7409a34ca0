"""Run every benchmark in turn; each prints its own table of figures and ratios (none is pass/fail)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = (
    ["bench_replica.py"],
    ["bench_gateway.py", "--replica"],  # the real case: our replica serving the iris model
    ["bench_gateway.py"],  # the worst case: an upstream that does no work at all
    ["bench_deploy.py"],
    ["bench_rollout.py"],  # latency and errors during a rolling update, its duration vs its floor
    ["bench_autoscaling.py"],  # reaction to a step load (tick 10 s and 2 s), scale from zero vs cold start
    ["bench_kubernetes.py"],  # 50 APIs applied concurrently vs sequentially, API calls per deploy
)

if __name__ == "__main__":
    for name, *args in BENCHES:
        print(f"\n=== {name} {' '.join(args)} ===", flush=True)
        subprocess.run([sys.executable, str(HERE / name), *args], check=False)
