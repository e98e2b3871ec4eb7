"""`catcache report`: the counters of a window as a terminal table, an HTML page, or JSON."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path

import orjson
from redis.exceptions import RedisError
from rich.console import Console
from rich.table import Table

from catcache.reports import format as fmt
from catcache.reports.record import Outcome
from catcache.reports.stats import Window, seconds
from catcache.store.connect import connect


def run(since: str = "24h", redis_url: str | None = None, data_dir: str | None = None,
        output_format: str = "table", out: Path | None = None) -> int:
    """`catcache report`: print or write the window's report."""
    if output_format == "html" and importlib.util.find_spec("matplotlib") is None:
        print("catcache report: the HTML page's plots need matplotlib, which the core install leaves out: "
              "pip install 'catcache[report]'", file=sys.stderr)
        return 2
    try:
        seconds(since)
    except ValueError as exc:
        print(f"catcache report: --since: {exc}", file=sys.stderr)
        return 2
    try:
        window = load(redis_url, data_dir, since)
    except (RuntimeError, RedisError, OSError) as exc:
        print(f"catcache report: {exc}", file=sys.stderr)
        return 1
    if output_format == "table" and out:
        with out.open("w") as file:
            Console(file=file, width=140).print(table(window, since))
        return 0
    if output_format == "table":
        console = Console()
        if not console.is_terminal:  # piped: the whole table, not one squeezed to 80 columns
            console = Console(width=140)
        console.print(table(window, since))
        return 0
    text = html_page(window, since) if output_format == "html" else json_text(window, since)
    if out:
        out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def load(redis_url: str | None, data_dir: str | None, since: str) -> Window:
    """Read the window from Redis at `redis_url`, or from a data dir's Redis, started for the read."""
    if redis_url:
        return asyncio.run(_read(redis_url, since))
    from catcache.store.embedded import DataDirInUse, EmbeddedRedis, default_data_dir

    server = EmbeddedRedis(Path(data_dir) if data_dir else default_data_dir())
    try:
        url = server.start()
    except DataDirInUse as exc:
        if server.url_path.is_file():  # a running catcache holds it: read its Redis
            return asyncio.run(_read(server.url_path.read_text().strip(), since))
        raise RuntimeError(f"{exc}; or, while it runs, pass --redis URL or ask it for GET /stats") from None
    try:
        return asyncio.run(_read(url, since))
    finally:
        server.stop()


async def _read(url: str, since: str) -> Window:
    redis = connect(url, socket_timeout=10.0, socket_connect_timeout=5.0)
    try:
        return await Window.load(redis, since)
    finally:
        await redis.aclose()


def json_text(window: Window, since: str) -> str:
    return orjson.dumps({"since": since, **window.summary()}, option=orjson.OPT_INDENT_2).decode() + "\n"


def html_page(window: Window, since: str) -> str:
    from catcache.reports.html import render  # matplotlib loads only for the page

    return render(window, since)


def table(window: Window, since: str) -> Table:
    summary = window.summary()
    grid = Table(title=f"catcache · last {since} · {summary['from']} → {summary['to']}", show_footer=True,
                 title_style="bold", header_style="bold", footer_style="bold")
    total = summary["total"]
    headers = [("Category", "all"), ("Requests", fmt.count(total["requests"])),
               ("Hit rate", fmt.pct(total["hit_rate"])), ("Exact", fmt.pct(total["rates"][Outcome.HIT_EXACT])),
               ("Semantic", fmt.pct(total["rates"][Outcome.HIT_SEMANTIC])), ("IC", fmt.pct(total["rates"][Outcome.IC])),
               ("Near misses", fmt.count(total["near_misses"])),
               ("Reported ✗/✓", fmt.judged(total["feedback"])), ("Tokens saved", fmt.count(total["tokens_saved"])),
               ("Latency saved", fmt.duration(total["latency_saved_ms"])),
               ("Cost saved", fmt.usd(total["cost_saved_usd"]))]
    for i, (name, footer) in enumerate(headers):
        grid.add_column(name, footer, justify="left" if i == 0 else "right", no_wrap=True)
    for name, row in summary["categories"].items():
        grid.add_row(name, fmt.count(row["requests"]), fmt.pct(row["hit_rate"]), fmt.pct(row["rates"][Outcome.HIT_EXACT]),
                     fmt.pct(row["rates"][Outcome.HIT_SEMANTIC]), fmt.pct(row["rates"][Outcome.IC]), fmt.count(row["near_misses"]),
                     fmt.judged(row["feedback"]),
                     fmt.count(row["tokens_saved"]), fmt.duration(row["latency_saved_ms"]),
                     fmt.usd(row["cost_saved_usd"]))
    if not summary["categories"]:
        grid.caption = "no requests in this window"
    return grid
