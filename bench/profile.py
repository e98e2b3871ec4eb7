"""Where the running proxy spends its CPU on hits: py-spy on `catcache serve`, grouped.

    python -m bench.profile [--tier semantic|exact] [--requests 1500] [--concurrency 1]

A fresh stack (the uvicorn test backend, `catcache serve` with the shipped policy), 30 questions
cached and their lower-case forms asked once; then py-spy samples the proxy (all threads) while
a client sends `--requests` hits of one tier through the OpenAI SDK, and the samples are grouped
by where they land (the table of bench/README, section 3). Needs `py-spy` (the bench extra) and
the right to trace the proxy (root, or ptrace allowed).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import tempfile
import time
from pathlib import Path

from openai import AsyncOpenAI

from bench import output, replay, stack
from bench.overhead import probes

# (label, test on the sample's frames joined by ";", test on its innermost frame); first match wins.
GROUPS: list[tuple[str, str, str]] = [
    ("onnxruntime forward pass (embedder thread)", "Session.run", ""),
    ("embedder thread waiting for work or for the GIL", "Thread._bootstrap", ""),
    ("Redis: socket writes (the send system calls)", "", "StreamWriter.writelines"),
    ("Redis: client code and reply parsing", "redis/", ""),
    ("canonicalise", "canonicalise", ""),
    ("record: access log, Prometheus, report counters", "_record", ""),
    ("classify, verifier, the rest of the pipeline", "CachePipeline", ""),
    ("the event loop itself (uvloop's C: polling, callbacks, socket reads)", "", "Runner.run"),
    ("uvicorn, Starlette/FastAPI and middleware outside the pipeline", "", ""),
]


def group(frames: list[str]) -> str:
    joined, leaf = ";".join(frames), frames[-1]
    for label, anywhere, innermost in GROUPS:
        if anywhere in joined and leaf.startswith(innermost):  # "" matches anything
            return label
    return GROUPS[-1][0]


def shares(raw: Path) -> dict[str, float]:
    """Percent of samples per group, from py-spy's `--format raw` (collapsed stacks and counts)."""
    counts: dict[str, int] = {}
    for line in raw.read_text().splitlines():
        stack_, _, n = line.rpartition(" ")
        label = group(stack_.split(";"))
        counts[label] = counts.get(label, 0) + int(n)
    total = sum(counts.values()) or 1
    return {label: round(100 * n / total, 1) for label, n in sorted(counts.items(), key=lambda kv: -kv[1])}


async def drive(url: str, pid: int, tier: str, requests: int, concurrency: int, raw: Path) -> dict:
    texts = probes(30)
    async with AsyncOpenAI(base_url=url, api_key="bench", max_retries=0) as client:
        for text in texts:
            await replay.ask(client, text)
            await replay.ask(client, text.lower())
        work = [t.lower() for t in texts] if tier == "semantic" else texts
        spy = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--rate", "500", "--format", "raw",
                                "--output", str(raw), "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # py-spy attaches
        queue = iter(range(requests))
        outcomes: list[str] = []

        async def worker() -> None:
            for i in queue:
                outcomes.append((await replay.ask(client, work[i % len(work)])).outcome)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        spy.send_signal(2)  # SIGINT: py-spy writes what it has
        spy.wait(30)
    return {o: outcomes.count(o) for o in set(outcomes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tier", choices=("semantic", "exact"), default="semantic")
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--name", default="profile")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, stack.backend(0, 0) as backend_url, \
            stack.proxy(backend_url) as proxy:
        raw = Path(tmp) / "samples.txt"
        outcomes = asyncio.run(drive(proxy.base_url, proxy.process.pid, args.tier, args.requests,
                                     args.concurrency, raw))
        groups = shares(raw)
    output.show(f"where the proxy's samples land: {args.tier} hits at concurrency {args.concurrency}",
                ["share of samples", "where"], [[f"{share}%", label] for label, share in groups.items()])
    output.save(args.name, {"tier": args.tier, "requests": args.requests, "concurrency": args.concurrency,
                            "outcomes": outcomes, "shares_percent": groups})


if __name__ == "__main__":
    main()
