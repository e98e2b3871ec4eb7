"""The HTML report's plots, drawn with matplotlib into SVG text that the page inlines (no CDN,
no files beside it). Figures are built without pyplot, so nothing global is touched."""

from __future__ import annotations

import io
import math
from datetime import datetime

import numpy as np
from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, PercentFormatter

from catcache.reports import buckets
from catcache.reports.record import HITS, MISSES, OUTCOMES, Outcome
from catcache.reports.stats import TOTAL, Window

INK, MUTED, GRID = "#1f2937", "#6b7280", "#e5e7eb"
OUTCOME_COLORS = {Outcome.HIT_EXACT: "#047857", Outcome.HIT_SEMANTIC: "#34d399", Outcome.IC: "#f59e0b",
                  Outcome.MISS: "#94a3b8", Outcome.BYPASS: "#cbd5e1", Outcome.ERROR: "#ef4444"}
CATEGORY_COLORS = ["#2563eb", "#db2777", "#16a34a", "#ea580c", "#7c3aed", "#0891b2", "#ca8a04", "#dc2626",
                   "#4b5563", "#65a30d"]
SMOOTH_STEPS, MIN_REQUESTS = 3, 10  # hit rate over time: steps averaged, requests needed for a point
STYLE = {
    "svg.fonttype": "none",  # text stays text: the page's fonts, crisp at any zoom
    "font.family": "sans-serif",
    "font.sans-serif": ["Inter", "Helvetica Neue", "Arial", "DejaVu Sans"],
    "font.size": 10,
    "axes.edgecolor": GRID, "axes.labelcolor": MUTED, "axes.titlesize": 11, "axes.titleweight": "bold",
    "axes.titlecolor": INK, "axes.titlelocation": "left", "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "grid.color": GRID, "grid.linewidth": 0.8,
    "xtick.color": MUTED, "ytick.color": MUTED, "xtick.major.size": 0, "ytick.major.size": 0,
    "legend.frameon": False, "legend.fontsize": 9,
}


def category_colors(names: list[str]) -> dict[str, str]:
    return {name: CATEGORY_COLORS[i % len(CATEGORY_COLORS)] for i, name in enumerate(names)}


def hit_rate_over_time(window: Window, colors: dict[str, str]) -> str:
    steps, series = window.series()
    times = [datetime.fromtimestamp(t) for t in steps]
    with rc_context(STYLE):
        fig = Figure(figsize=(10, 3.4))
        ax = fig.add_subplot()
        lines = {name: _rates(series[name]) for name in window.categories}
        lines = {name: rates for name, rates in lines.items() if not all(map(math.isnan, rates))}
        for name, rates in lines.items():
            ax.plot(times, rates, color=colors[name], linewidth=1.4, label=name, **_sparse(rates))
        total = _rates(series.get(TOTAL, []))
        ax.plot(times, total, color=INK, linewidth=2.6, label="all", **_sparse(total))
        highest = np.nanmax([*total, *(r for rates in lines.values() for r in rates), 0.05])
        ax.set_ylim(0, min(1.0, math.ceil(highest * 11) / 10))
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        time_axis(ax)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        return _svg(fig)


def time_axis(ax: Axes) -> None:
    """Dates along `ax`'s x axis, labelled no more than the span needs."""
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))


def outcome_mix(window: Window) -> str:
    names = window.categories + [TOTAL]
    totals = window.totals
    with rc_context(STYLE):
        fig = Figure(figsize=(6, 0.42 * len(names) + 1.1))
        ax = fig.add_subplot()
        left = np.zeros(len(names))
        for outcome in OUTCOMES:
            counts = np.array([totals[n][outcome]["requests"] if outcome in totals[n] else 0.0 for n in names])
            whole = np.array([sum(o["requests"] for o in totals[n].values()) or 1.0 for n in names])
            share = counts / whole
            ax.barh(range(len(names)), share, left=left, color=OUTCOME_COLORS[outcome], label=outcome, height=0.7)
            left += share
        ax.set_yticks(range(len(names)), [("all" if n == TOTAL else n) for n in names])
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.grid(axis="y", visible=False)
        ax.legend(ncol=3, loc="lower left", bbox_to_anchor=(0.0, 1.02), fontsize=10)
        return _svg(fig)


def latency(window: Window) -> str:
    edges = np.array(buckets.lat_edges())
    groups = [("hits", HITS, OUTCOME_COLORS[Outcome.HIT_EXACT]), ("IC", (Outcome.IC,), OUTCOME_COLORS[Outcome.IC]),
              ("misses", (Outcome.MISS,), "#64748b")]
    with rc_context(STYLE):
        fig = Figure(figsize=(6, 3.2))
        ax = fig.add_subplot()
        top = 0.0
        for label, outcomes, color in groups:
            counts = np.array(window.histogram("lat", outcomes))
            if counts.sum() == 0:
                continue
            share = counts / counts.sum()
            top = max(top, share.max())
            ax.stairs(share, edges, fill=True, alpha=0.35, color=color)
            ax.stairs(share, edges, color=color, linewidth=1.4,
                      label=f"{label}  {_ms(_median(counts, edges))}")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _ms(v)))
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.set_xlabel("time the client waited")
        ax.set_ylim(0, min(1.0, top * 1.1) or 1.0)
        ax.legend(ncol=3, loc="lower left", bbox_to_anchor=(0.0, 1.02), fontsize=10, title="median",
                  title_fontsize=9, alignment="left")
        return _svg(fig)


def similarity(window: Window, colors: dict[str, str]) -> str:
    """Per category: similarities of semantic hits and of misses/IC, against the threshold."""
    names = [n for n in window.categories if sum(window.histogram("sim", (Outcome.HIT_SEMANTIC,) + MISSES, n))]
    if not names:
        return ""
    edges = np.array(buckets.sim_edges())
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    with rc_context(STYLE):
        fig = Figure(figsize=(10, 2.5 * rows + 0.4))
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax, name in zip(axes.flat, names):
            _similarity_panel(ax, window, name, edges, colors[name])
        for ax in list(axes.flat)[len(names):]:
            ax.set_visible(False)
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="upper left", ncol=4, bbox_to_anchor=(0.0, 1.0))
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (2.5 * rows + 0.4)))
        return _svg(fig, tight=False)


def _similarity_panel(ax: Axes, window: Window, name: str, edges: np.ndarray, color: str) -> None:
    hits = np.array(window.histogram("sim", (Outcome.HIT_SEMANTIC,), name))
    misses = np.array(window.histogram("sim", MISSES, name))
    ax.stairs(misses, edges, fill=True, color="#cbd5e1", label="misses and IC")
    ax.stairs(hits, edges, fill=True, color=OUTCOME_COLORS[Outcome.HIT_SEMANTIC], alpha=0.85, label="semantic hits")
    threshold = window.thresholds.get(f"{name}|threshold")
    if threshold is not None:
        ax.axvline(threshold, color=INK, linestyle="--", linewidth=1.2, label="threshold")
    low = window.thresholds.get(f"{name}|ic_low")
    if low is not None:
        ax.axvline(low, color=OUTCOME_COLORS[Outcome.IC], linestyle=":", linewidth=1.4, label="IC band starts")
    ax.set_title(name, color=color)
    ax.set_xlim(edges[0], edges[-1])
    ax.grid(axis="x", visible=False)


def _rates(cells: list[tuple[float, float]]) -> list[float]:
    """Hit rate over a trailing SMOOTH_STEPS window; a gap where too few requests make it noise."""
    rates = []
    for i in range(len(cells)):
        n, hits = (sum(c[k] for c in cells[max(0, i - SMOOTH_STEPS + 1): i + 1]) for k in (0, 1))
        rates.append(hits / n if n >= MIN_REQUESTS else math.nan)
    return rates


def _sparse(rates: list[float]) -> dict:
    """Markers where points are few, so that isolated ones between gaps still show."""
    return {"marker": "o", "markersize": 3.5} if sum(not math.isnan(r) for r in rates) < 20 else {}


def _median(counts: np.ndarray, edges: np.ndarray) -> float:
    """The geometric middle of the bin holding the median: latency bins are log-spaced."""
    i = int(np.searchsorted(np.cumsum(counts), counts.sum() / 2))
    return math.sqrt(edges[i] * edges[i + 1])


def _ms(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:.3g} s"
    return f"{value:.3g} ms"


def _svg(fig: Figure, tight: bool = True) -> str:
    out = io.StringIO()
    fig.savefig(out, format="svg", bbox_inches="tight" if tight else None, transparent=True,
                metadata={"Date": None, "Creator": None})
    text = out.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and DOCTYPE: the page inlines it
