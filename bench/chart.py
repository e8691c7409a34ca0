"""Draw the serving comparison as one PNG: throughput and p50/p99 latency per server, each against the floor.

Runs in the chart venv (bench/.venv-peers/chart, see peer_envs.py), so matplotlib stays out of the project's
dependencies. A server that was not measured gets an empty bar and the reason.

    bench/.venv-peers/chart/bin/python bench/chart.py chart.json serving.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib.pyplot as plt

COLORS = {"floor": "#888888", "ours": "#1f77b4", "gateway": "#1f77b4"}  # peers: PEER_COLOR
PEER_COLOR = "#ff7f0e"


def main(data_file: Path, out: Path) -> None:
    data = json.loads(data_file.read_text())
    servers = data["servers"]
    labels = [s["label"] for s in servers]
    floor = next(s for s in servers if s["key"] == "floor")
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 0.55 * len(servers) + 1.8), sharey=True)
    rows = range(len(servers))

    throughput = [s["throughput"] or 0 for s in servers]
    left.barh(rows, throughput, color=[COLORS.get(s["key"], PEER_COLOR) for s in servers])
    for y, s in zip(rows, servers, strict=True):
        if s["throughput"] is None:
            left.text(0, y, f"  not measured: {s['error'][:60]}", va="center", fontsize=8, color="#b00")
        elif floor["throughput"]:
            left.text(s["throughput"], y, f" {s['throughput']:.0f} ({s['throughput'] / floor['throughput']:.2f}x)",
                      va="center", fontsize=8)  # fmt: skip
    left.set_xlabel("requests/s (higher is better; x = ratio to the Starlette floor)")
    left.set_xlim(0, max(throughput) * 1.35 or 1)

    height = 0.38
    p50 = [s["p50_ms"] or 0 for s in servers]
    p99 = [s["p99_ms"] or 0 for s in servers]
    right.barh([y - height / 2 for y in rows], p50, height, label="p50", color="#2ca02c")
    right.barh([y + height / 2 for y in rows], p99, height, label="p99", color="#d62728")
    for y, s in zip(rows, servers, strict=True):
        if s["p99_ms"] is not None:
            right.text(s["p99_ms"], y + height / 2, f" {s['p99_ms']:.1f} ms", va="center", fontsize=8)
            right.text(s["p50_ms"], y - height / 2, f" {s['p50_ms']:.1f} ms", va="center", fontsize=8)
    right.set_xlabel("latency, ms (lower is better)")
    right.set_xlim(0, max(p99) * 1.3 or 1)
    right.legend(loc="lower right")

    left.set_yticks(list(rows), labels)
    left.invert_yaxis()
    fig.suptitle(data["title"])
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
