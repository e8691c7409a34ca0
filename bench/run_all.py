"""Run every benchmark and gather their figures into one markdown table and a chart, in bench/results/.

Each bench runs as its own process (they start agents, Prefect servers and replicas and set environment
variables), bounded in time, prints its detailed report and hands its headline figures back as JSON rows
(results.py). A bench that fails or runs out of time gets a row with its error's first line, and the
others still run. The peers' venvs (peer_envs.py) are made first. Nothing here is pass/fail.

    .venv/bin/python bench/run_all.py [--only serving canary]
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import peer_envs
import results
from harness import ROOT, error_line
from results import Row

HERE = Path(__file__).resolve().parent
OUT = HERE / "results"
BENCHES = {  # name: (script and arguments, seconds it may take); arguments keep the whole run near 9 minutes
    "serving": (["bench_serving.py", "--seconds", "2.5", "--chart", str(OUT / "serving.png")], 300),
    "gateway": (["bench_gateway.py"], 90),
    "deploy": (["bench_deploy.py", "--runs", "2"], 240),
    "rollout": (["bench_rollout.py"], 240),
    "canary": (["bench_canary.py"], 180),
    "autoscaling": (["bench_autoscaling.py", "--runs", "2"], 300),
    "kubernetes": (["bench_kubernetes.py", "--apis", "50"], 240),
}


def run(name: str, argv: list[str], limit: float, tmp: Path) -> list[Row]:
    """One bench in its own process group; on overrunning `limit`, SIGINT (its cleanup runs), then SIGKILL."""
    rows_file, log = tmp / f"{name}.json", tmp / f"{name}.stderr"
    print(f"\n=== {name}: {' '.join(argv)} ===", flush=True)
    started = time.monotonic()
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, str(HERE / argv[0]), *argv[1:], "--rows", str(rows_file)],
                                stderr=err, start_new_session=True)  # fmt: skip
        try:
            proc.wait(limit)
            problem = f"exit {proc.returncode}" if proc.returncode else ""
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            problem = f"stopped after {limit} s"
    print(f"=== {name}: {time.monotonic() - started:.0f} s ===", flush=True)
    if problem or not rows_file.exists():
        problem = problem or "wrote no figures"
        stderr = log.read_text(errors="replace")
        print("\n".join(stderr.splitlines()[-15:]), file=sys.stderr)
        return [Row(f"{name} (bench_{name}.py)", "did not finish", None, note=f"{problem}: {error_line(stderr)}")]
    return results.read(rows_file)


def header(seconds: float) -> str:
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=False,
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    summary = (
        f"`make bench`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {commit or '?'}, {os.cpu_count()} CPUs "
        f"(shared), Python {platform.python_version()}, {seconds / 60:.1f} minutes. Every ratio divides by the "
        "baseline named beside it, measured in the same run. Serving: the same iris model, client and "
        "concurrency for every server, medians of rotated rounds (bench_serving.py); ours / peer > 1 is better "
        "for throughput, < 1 for latency. Not pass/fail: the goal column is what we aim for."
    )
    return f"# Benchmarks\n\n{summary}\n\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(BENCHES), help="run these benches only")
    args = parser.parse_args()
    started = time.monotonic()
    OUT.mkdir(exist_ok=True)
    print("=== peer environments (bench/.venv-peers) ===", flush=True)
    for name in peer_envs.PACKAGES:
        env = peer_envs.ensure(name)
        print(f"  {name:8s} {env.version or 'missing: ' + env.error}", flush=True)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="cortex-bench-") as tmp:
        for name in args.only or BENCHES:
            argv, limit = BENCHES[name]
            rows += run(name, argv, limit, Path(tmp))
    table = results.markdown(rows)
    chart = "\n\n![Serving throughput and latency per server](serving.png)\n"
    if not (OUT / "serving.png").exists():
        chart = "\n"
    (OUT / "results.md").write_text(header(time.monotonic() - started) + table + chart)
    print(f"\n{table}\n\nwritten: {OUT / 'results.md'} (and serving.png); {time.monotonic() - started:.0f} s in all")


if __name__ == "__main__":
    main()
