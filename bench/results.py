"""The figures a benchmark hands to run_all.py, and the one markdown table they all end up in.

Each bench prints its own detailed report and, given `--rows FILE`, also writes its headline figures there
as JSON rows, so run_all.py can gather every bench's figures without knowing how any of them measures.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class Row:
    """One figure: its value, and its ratio to the baseline it is judged against."""

    bench: str  # the section of the table, e.g. "Serving: iris, 16 connections"
    figure: str
    value: float | None  # None: not measured, `note` says why
    unit: str = ""  # "req/s", "ms", "s", "x", "" (a count)
    ratio: float | None = None
    of: str = ""  # what the ratio divides by
    goal: str = ""
    note: str = ""


def add_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=Path, help="also write the headline figures to this file as JSON rows")


def write(path: Path | None, rows: list[Row]) -> None:
    if path is not None:
        path.write_text(json.dumps([asdict(row) for row in rows], indent=1))


def read(path: Path) -> list[Row]:
    return [Row(**row) for row in json.loads(path.read_text())]


def value_text(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    digits = 0 if unit == "req/s" or (unit == "" and value == int(value)) else 2
    return f"{value:.{digits}f} {unit}".strip()


def markdown(rows: list[Row]) -> str:
    """One table; each section's name is written on its first row only."""
    lines = ["| bench | figure | value | ratio | ratio of | goal | note |", "|---|---|---:|---:|---|---|---|"]
    section = None
    for row in rows:
        ratio = "" if row.ratio is None else f"{row.ratio:.2f}x"
        cells = ["" if row.bench == section else f"**{row.bench}**", row.figure, value_text(row.value, row.unit),
                 ratio, row.of, row.goal, row.note]  # fmt: skip
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        section = row.bench
    return "\n".join(lines)
