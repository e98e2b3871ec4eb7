"""The HTML report: one self-contained file (inline CSS and SVG), readable offline and in mail."""

from __future__ import annotations

from datetime import datetime
from html import escape

from catcache.reports import format as fmt
from catcache.reports import plots
from catcache.reports.record import Outcome
from catcache.reports.stats import Window

CSS = """
:root { --ink: #111827; --muted: #6b7280; --line: #e5e7eb; --bg: #f6f7f9; --card: #fff; --accent: #047857; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
       font: 15px/1.5 Inter, "Helvetica Neue", Arial, "DejaVu Sans", sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 36px 32px 48px; }
header { display: flex; justify-content: space-between; align-items: baseline; flex-wrap: wrap; gap: 8px;
         margin-bottom: 24px; }
h1 { font-size: 26px; margin: 0; letter-spacing: -0.02em; }
h1 span { color: var(--accent); }
h2 { font-size: 16px; margin: 0 0 4px; }
.window { color: var(--muted); font-size: 14px; }
.cards { display: grid; grid-template-columns: repeat(6, 1fr); gap: 14px; margin-bottom: 18px; }
.card, .panel { background: var(--card); border: 1px solid var(--line); border-radius: 12px; }
.card { padding: 16px 18px; }
.card .label { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: 0.06em; }
.card .value { font-size: 28px; font-weight: 700; letter-spacing: -0.02em; margin-top: 2px;
               font-variant-numeric: tabular-nums; }
.card .note { color: var(--muted); font-size: 12.5px; }
.card.lead .value { color: var(--accent); }
.panel { padding: 20px 22px; margin-bottom: 18px; }
.panel p { color: var(--muted); margin: 0 0 12px; font-size: 13.5px; }
.row { display: grid; grid-template-columns: 1fr 1fr; gap: 18px; }
.row .panel { margin-bottom: 18px; }
svg { width: 100%; height: auto; display: block; }
table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; font-size: 14px; }
th, td { padding: 9px 10px; text-align: right; border-bottom: 1px solid var(--line); white-space: nowrap; }
th { color: var(--muted); font-weight: 600; font-size: 12px; text-transform: uppercase; letter-spacing: 0.05em; }
th:first-child, td:first-child { text-align: left; }
tfoot td { font-weight: 700; border-bottom: none; }
.dot { display: inline-block; width: 9px; height: 9px; border-radius: 50%; margin-right: 8px; }
.empty { text-align: center; color: var(--muted); padding: 60px 0; }
footer { color: var(--muted); font-size: 12.5px; text-align: center; margin-top: 8px; }
"""


def render(window: Window, since: str) -> str:
    summary = window.summary()
    total = summary["total"]
    colors = plots.category_colors(window.categories)
    body = [_header(summary, since), _cards(total)]
    if total["requests"]:
        body += [
            _panel("Hit rate over time", "Exact and semantic hits over all requests, per category.",
                   plots.hit_rate_over_time(window, colors)),
            '<div class="row">',
            _panel("Outcome mix", "Where each category's requests were answered.", plots.outcome_mix(window)),
            _panel("Latency: hits against misses", "Share of each kind of request by the time the client waited.",
                   plots.latency(window)),
            "</div>",
        ]
        sims = plots.similarity(window, colors)
        if sims:
            body.append(_panel("Similarity against the threshold",
                               "Nearest cached neighbour of semantic hits and of misses. Misses piled up just "
                               "left of the threshold are near misses: lowering it would serve them, "
                               "rightly or as false hits.", sims))
        body.append(_panel("Per category", "Reported ✗/✓: hits that apps reported false / confirmed "
                           "through POST /v1/cache/feedback; a false one is evicted at once.", _table(summary)))
    else:
        body.append('<div class="panel empty">No requests in this window.</div>')
    body.append(f"<footer>catcache report · generated {datetime.now().strftime('%Y-%m-%d %H:%M')}</footer>")
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>catcache report · last {escape(since)}</title><style>{CSS}</style></head>"
            f"<body><main>{''.join(body)}</main></body></html>\n")


def _header(summary: dict, since: str) -> str:
    start, end = (datetime.fromisoformat(summary[k]).astimezone() for k in ("from", "to"))
    span = f"{start:%Y-%m-%d %H:%M} → {end:%Y-%m-%d %H:%M}"
    return (f'<header><h1><span>catcache</span> report</h1>'
            f'<div class="window">last {escape(since)} · {span}</div></header>')


def _cards(total: dict) -> str:
    rates = total["rates"]
    cards = [
        ("Requests", fmt.count(total["requests"]), "all categories", ""),
        ("Hit rate", fmt.pct(total["hit_rate"]),
         f"exact {fmt.pct(rates[Outcome.HIT_EXACT])} · semantic {fmt.pct(rates[Outcome.HIT_SEMANTIC])}", " lead"),
        ("In-context", fmt.pct(rates[Outcome.IC]), "answered by the small model", ""),
        ("Tokens saved", fmt.count(total["tokens_saved"]), "served from the cache", ""),
        ("Latency saved", fmt.duration(total["latency_saved_ms"]), "backend time avoided", ""),
        ("Cost saved", fmt.usd(total["cost_saved_usd"]), f"{fmt.count(total['near_misses'])} near misses", ""),
    ]
    return '<section class="cards">' + "".join(
        f'<div class="card{extra}"><div class="label">{label}</div><div class="value">{value}</div>'
        f'<div class="note">{note}</div></div>' for label, value, note, extra in cards) + "</section>"


def _panel(title: str, note: str, content: str) -> str:
    caption = f"<p>{note}</p>" if note else ""
    return f'<section class="panel"><h2>{title}</h2>{caption}{content}</section>'


def _table(summary: dict) -> str:
    colors = plots.category_colors(list(summary["categories"]))
    head = ("Category", "Requests", "Hit rate", "Exact", "Semantic", "IC", "Near misses", "Reported ✗/✓",
            "Tokens saved", "Latency saved", "Cost saved")

    def cells(row: dict) -> list[str]:
        rates = row["rates"]
        return [fmt.count(row["requests"]), fmt.pct(row["hit_rate"]), fmt.pct(rates[Outcome.HIT_EXACT]),
                fmt.pct(rates[Outcome.HIT_SEMANTIC]), fmt.pct(rates[Outcome.IC]), fmt.count(row["near_misses"]),
                fmt.judged(row["feedback"]),
                fmt.count(row["tokens_saved"]), fmt.duration(row["latency_saved_ms"]), fmt.usd(row["cost_saved_usd"])]

    rows = "".join(
        f'<tr><td><span class="dot" style="background:{colors[name]}"></span>{escape(name)}</td>'
        + "".join(f"<td>{c}</td>" for c in cells(row)) + "</tr>"
        for name, row in summary["categories"].items())
    foot = "<tr><td>all</td>" + "".join(f"<td>{c}</td>" for c in cells(summary["total"])) + "</tr>"
    return (f"<table><thead><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr></thead>"
            f"<tbody>{rows}</tbody><tfoot>{foot}</tfoot></table>")
