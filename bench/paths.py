"""Where a benchmark finds the labeled workloads (`shared/workloads/README.md` describes the format).

Each benchmark takes `--workloads DIR`; without it, `../shared/workloads` beside the repository,
resolved when the benchmark runs (where the project's machines keep them). A `--workload` is the
name of a folder in it, or a path to a workload folder of your own.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def add_workloads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workloads", type=Path, metavar="DIR",
                        help="the folder of labeled workloads (default: ../shared/workloads beside the repository)")


def workloads_dir(given: Path | None) -> Path:
    return given if given is not None else Path(__file__).resolve().parents[1].parent / "shared" / "workloads"


def workload(given: Path | None, name: str | Path) -> Path:
    """A workload folder: `name` itself if that path exists, else the folder of that name in the workloads."""
    path = Path(name)
    return path if path.exists() else workloads_dir(given) / path


def scratch(name: str) -> Path:
    """A folder in the system's temporary directory, kept between runs (a model download, say)."""
    return Path(tempfile.gettempdir()) / name
