"""What every benchmark reports the same way: percentiles, the machine, a rich table, a JSON file."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).parent / "results"


def percentiles(values: Sequence[float], points: Sequence[int] = (50, 95, 99)) -> dict[str, float | None]:
    """{"p50": ..., ...} in the unit of `values`; None when there are none."""
    if not len(values):
        return {f"p{p}": None for p in points}
    found = np.percentile(np.asarray(values, dtype=float), points)
    return {f"p{p}": round(float(v), 3) for p, v in zip(points, found)}


def machine() -> dict[str, object]:
    """The CPU model and core count, since every latency here depends on them."""
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
        model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name")), "")
    except (OSError, subprocess.CalledProcessError):
        model = platform.processor()
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version()}


def fmt(value: object, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def console() -> Console:
    """Wide enough for the tables when the output is a file or a pipe."""
    return Console(width=None if sys.stdout.isatty() else 200)


def show(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column == columns[0] else "right")
    for row in rows:
        table.add_row(*(fmt(cell) for cell in row))
    console().print(table)


def save(name: str, result: dict, out: Path | None = None) -> Path:
    """Write `result` (with the machine and time) to bench/results/<name>.json, or to `out`."""
    path = out or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"benchmark": name, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(), **result}
    path.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    console().print(f"[dim]wrote {path}[/dim]")
    return path
