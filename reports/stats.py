"""The counters of a time window, summed from the minute buckets: what /stats and the reports show."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property
from datetime import datetime, timezone

from redis.asyncio import Redis

from catcache.policy.schema import parse_duration
from catcache.reports import buckets
from catcache.reports.buckets import FLOATS, SCALARS, Field
from catcache.reports.record import FEEDBACK, HITS, OUTCOMES, SPECULATION, Outcome

TOTAL = "*"


def seconds(since: str | float) -> float:
    """'90m', '24h', '7d' or seconds; ValueError for anything else."""
    value = parse_duration(since)
    if not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"'{since}' is not a positive duration")
    return float(value)


@dataclass
class Window:
    start: float
    end: float
    buckets: list[tuple[int, dict[Field, float]]]
    thresholds: dict[str, float]

    @classmethod
    async def load(cls, redis: Redis, since: str | float, now: float | None = None) -> Window:
        end = time.time() if now is None else now
        start = max(0.0, end - seconds(since))  # "since=99999999d" means all there is, not year -273788674
        found, thresholds = await buckets.read(redis, start, end)
        return cls(start, end, found, thresholds)

    @cached_property
    def totals(self) -> dict[str, dict[str, dict[str, float]]]:
        """category -> outcome -> scalar metric -> sum; category TOTAL sums every category."""
        sums: dict[str, dict[str, dict[str, float]]] = defaultdict(
            lambda: defaultdict(lambda: dict.fromkeys(SCALARS, 0.0)))
        for _, fields in self.buckets:
            for (category, outcome, metric), value in fields.items():
                if metric in SCALARS:
                    sums[category][outcome][metric] += value
                    sums[TOTAL][outcome][metric] += value
        return sums

    @cached_property
    def categories(self) -> list[str]:
        """Categories with traffic, busiest first."""
        totals = self.totals
        names = [c for c in totals if c != TOTAL]
        return sorted(names, key=lambda c: -sum(o["requests"] for o in totals[c].values()))

    def summary(self) -> dict:
        totals = self.totals
        return {
            "from": _iso(self.start), "to": _iso(self.end),
            "total": summarize(totals.get(TOTAL, {})),
            "categories": {name: summarize(totals[name]) for name in self.categories},
            "thresholds": self.thresholds,
        }

    def histogram(self, kind: str, outcomes: tuple[str, ...], category: str | None = None) -> list[float]:
        """Counts per bin of `kind` ('sim' or 'lat') for these outcomes, in one category or all."""
        size = buckets.SIM_BINS if kind == "sim" else buckets.LAT_BINS
        counts = [0.0] * size
        for _, fields in self.buckets:
            for (cat, outcome, metric), value in fields.items():
                if outcome in outcomes and metric.startswith(kind + ":") and category in (None, cat):
                    counts[int(metric[len(kind) + 1:])] += value
        return counts

    def series(self, points: int = 60) -> tuple[list[float], dict[str, list[tuple[float, float]]]]:
        """Step start times and, per category (and TOTAL), (requests, hits) per step."""
        step = max(1, -(-int(self.end - self.start) // (60 * points))) * 60
        first = int(self.start // step) * step
        count = int((self.end - first) // step) + 1
        steps = [float(first + i * step) for i in range(count)]
        per: dict[str, list[list[float]]] = defaultdict(lambda: [[0.0, 0.0] for _ in range(count)])
        for minute, fields in self.buckets:
            i = min(count - 1, max(0, (minute * 60 - first) // step))
            for (category, outcome, metric), value in fields.items():
                if metric == "requests":
                    for name in (category, TOTAL):
                        per[name][i][0] += value
                        if outcome in HITS:
                            per[name][i][1] += value
        return steps, {name: [(n, h) for n, h in cells] for name, cells in per.items()}


def summarize(outcomes: dict[str, dict[str, float]]) -> dict:
    """Derived numbers for one category (or all): rates over every request, savings from hits."""
    def total(metric: str, among: tuple[str, ...] = OUTCOMES) -> float:
        return sum(outcomes[o][metric] for o in among if o in outcomes)

    requests = total("requests")
    rate = (lambda n: n / requests) if requests else (lambda n: 0.0)
    return {
        "requests": int(requests),
        "hit_rate": rate(total("requests", HITS)),
        "rates": {o: rate(outcomes[o]["requests"]) if o in outcomes else 0.0 for o in OUTCOMES},
        "near_misses": int(total("near_misses")),
        "feedback": {metric: int(total(metric, ("feedback",))) for metric in FEEDBACK.values()},
        # Calls sent before the lookup ended, and the ones a hit made wasted work of (proxy/speculation.py).
        "speculation": {key: int(total(metric, ("speculation",))) for key, metric in SPECULATION.items()},
        "tokens_saved": int(total("prompt_tokens", HITS) + total("completion_tokens", HITS)),
        "latency_saved_ms": total("backend_latency_ms", HITS),
        "cost_saved_usd": total("cost_usd", HITS),
        # IC answers spare the large backend a call each and cost the small model's tokens, examples included.
        "ic_answers": int(total("requests", (Outcome.IC,))),
        "ic_tokens": int(total("prompt_tokens", (Outcome.IC,)) + total("completion_tokens", (Outcome.IC,))),
        "ic_cost_usd": total("cost_usd", (Outcome.IC,)),
        "mean_latency_ms": {o: outcomes[o]["latency_ms"] / outcomes[o]["requests"]
                            for o in OUTCOMES if o in outcomes and outcomes[o]["requests"]},
        "outcomes": {o: {m: v if m in FLOATS else int(v) for m, v in outcomes[o].items()}
                     for o in OUTCOMES if o in outcomes},
    }


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")
