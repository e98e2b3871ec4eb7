"""What the thresholds learned, for the reports: each category's history (threshold, false-hit
estimate and its interval, observations) from Redis, its latest point, the plot over time, and the
Prometheus gauges of the live standing."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from redis.asyncio import Redis, RedisCluster

from catcache.store.learned import LearnedState

History = dict[str, list[dict[str, float]]]  # category -> points, oldest first


async def load_history(redis: Redis | RedisCluster, start: float) -> History:
    """Every category's points from `start` (unix seconds), and the last one before it (the
    threshold that was live when the window opened)."""
    state = LearnedState(redis)
    found = {}
    for category in await state.categories():
        points = await state.history(category)
        before = [p for p in points if p["time"] < start][-1:]
        inside = before + [p for p in points if p["time"] >= start]
        if inside:
            found[category] = inside
    return found


def latest(history: History) -> dict[str, dict[str, float]]:
    """Per category, the newest point: threshold, estimate, low, high, observations, hits."""
    return {category: {k: v for k, v in points[-1].items() if k != "time"} for category, points in history.items()}


def plot(history: History, colors: Mapping[str, str], style: Mapping[str, object]) -> str:
    """Two panels over time: each category's live threshold, and its estimated false-hit rate
    with the interval shaded."""
    from matplotlib import rc_context  # loaded for the page only, as reports/plots.py is
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    from catcache.reports.plots import _svg, time_axis  # one SVG writer and time axis for the page

    with rc_context(dict(style)):
        fig = Figure(figsize=(10, 5.2))
        top, bottom = fig.subplots(2, 1, sharex=True)
        highest = 0.01  # the axis follows the estimates; an interval wider than that is cut off
        for category, points in history.items():
            times = [datetime.fromtimestamp(p["time"]) for p in points]
            color = colors.get(category, "#4b5563")
            top.step(times, [p["threshold"] for p in points], where="post", color=color, linewidth=1.6,
                     label=category)
            rates = [p.get("estimate", math.nan) for p in points]
            bottom.plot(times, rates, color=color, linewidth=1.6)
            bottom.fill_between(times, [p.get("low", 0.0) for p in points], [p.get("high", 0.0) for p in points],
                                color=color, alpha=0.15, linewidth=0)
            highest = max(highest, *(p.get("estimate", 0.0) for p in points))
        top.set_title("Live threshold")
        bottom.set_title("Estimated false-hit rate of the hits served, with its interval")
        bottom.set_ylim(0, min(1.0, highest * 2))
        bottom.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=1))
        time_axis(bottom)
        top.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        return _svg(fig)


class LearningSnapshot:
    """The live standing of each category as Prometheus series, collected at scrape time."""

    def __init__(self, standings: Mapping[str, Mapping[str, float]], explored: Mapping[str, int],
                 judged: Mapping[str, int], shadowed: Mapping[str, int] | None = None,
                 vouched: Mapping[str, int] | None = None):
        self.standings, self.explored, self.judged = standings, explored, judged
        self.shadowed, self.vouched = shadowed or {}, vouched or {}

    def collect(self) -> Iterable[Metric]:
        threshold = GaugeMetricFamily("catcache_learned_threshold", "The live similarity threshold, learned "
                                      "from the traffic (the policy's is the prior)", labels=["category"])
        estimate = GaugeMetricFamily("catcache_false_hit_estimate", "Estimated false-hit rate of the hits "
                                     "served, and the ends of its interval", labels=["category", "bound"])
        observations = GaugeMetricFamily("catcache_learning_observations", "Judged pairs behind the "
                                         "threshold (all proxies)", labels=["category"])
        noise = GaugeMetricFamily("catcache_judge_noise", "Share of exact hits checked again whose two "
                                  "answers the judge called different (subtracted from observed false rates)",
                                  labels=["category"])
        for category, standing in self.standings.items():
            threshold.add_metric([category], standing["threshold"])
            for bound in ("estimate", "low", "high"):
                estimate.add_metric([category, bound], standing[bound])
            observations.add_metric([category], standing["observations"])
            if "judge_noise" in standing:  # a live summary has it; a history point does not
                noise.add_metric([category], standing["judge_noise"]["subtracted"])
        explored = CounterMetricFamily("catcache_explored", "Would-be hits this proxy checked against the "
                                       "backend (shadow checks and checks answered as misses)", labels=["category"])
        shadowed = CounterMetricFamily("catcache_shadow_checks", "Extra backend calls this proxy made beside a "
                                       "hit served, to check it", labels=["category"])
        judged = CounterMetricFamily("catcache_judged", "Fresh answers this proxy judged against cached ones",
                                     labels=["category"])
        vouched = CounterMetricFamily("catcache_vouched_hits", "Hits under the threshold served on their "
                                      "entry's own judged evidence", labels=["category"])
        counted = ((explored, self.explored), (shadowed, self.shadowed), (judged, self.judged), (vouched, self.vouched))
        for family, counts in counted:
            for category, count in counts.items():
                family.add_metric([category], count)
        yield from (threshold, estimate, observations, noise, explored, shadowed, judged, vouched)
