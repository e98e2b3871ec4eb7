"""The Prometheus series: counted per request by the recorder, and read from the proxy at scrape
time (index sizes, Redis and backend health), which no request updates."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from catcache.reports.record import HITS, RequestRecord

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SIMILARITY_BUCKETS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.88, 0.9, 0.92, 0.94, 0.96, 0.98, 0.99, 1.0)


class Metrics:
    """Series in a registry of their own, so that several recorders in one process never clash."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("catcache_requests", "Requests by category and outcome", ["category", "outcome"],
                                registry=r)
        self.tokens = Counter("catcache_tokens", "Tokens: served from the cache for hits, generated otherwise",
                              ["category", "outcome", "kind"], registry=r)
        self.latency_avoided = Counter("catcache_backend_latency_avoided_seconds",
                                       "Backend time that hits did not spend (as recorded when stored)",
                                       ["category"], registry=r)
        self.cost_avoided = Counter("catcache_cost_avoided_usd", "Estimated cost of the tokens hits served",
                                    ["category"], registry=r)
        self.near_misses = Counter("catcache_near_misses", "Misses just below the threshold or refused by the "
                                   "verifier: false-hit candidates", ["category"], registry=r)
        self.feedback = Counter("catcache_feedback", "Entries apps reported through /v1/cache/feedback, by "
                                "verdict: false-hit and confirmed-hit (served from the cache), wrong-answer "
                                "and right-answer (never served)", ["category", "verdict"], registry=r)
        self.speculation = Counter("catcache_speculation", "Speculative forwarding, by event: sent (a miss "
                                   "sent before its lookup ended), cancelled (closed because a hit won), "
                                   "cancelled_prompt_tokens (their prompts, estimated at 4 bytes a token)",
                                   ["category", "event"], registry=r)
        self.latency = Histogram("catcache_request_duration_seconds", "Time the client waited, by outcome",
                                 ["outcome"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.similarity = Histogram("catcache_similarity", "Nearest neighbour's similarity, by outcome",
                                    ["category", "outcome"], buckets=SIMILARITY_BUCKETS, registry=r)
        self.flush_failures = Counter("catcache_stats_flush_failures", "Counter flushes to Redis that failed",
                                      registry=r)
        self.dropped_minutes = Counter("catcache_stats_dropped_minutes",
                                       "Minutes of counters dropped because Redis stayed down", registry=r)

    def observe(self, record: RequestRecord, cost_usd: float, near: bool) -> None:
        category, outcome = record.category, record.outcome
        self.requests.labels(category, outcome).inc()
        if record.prompt_tokens:
            self.tokens.labels(category, outcome, "prompt").inc(record.prompt_tokens)
        if record.completion_tokens:
            self.tokens.labels(category, outcome, "completion").inc(record.completion_tokens)
        if outcome in HITS:
            if record.backend_latency_ms:
                self.latency_avoided.labels(category).inc(record.backend_latency_ms / 1000)
            if cost_usd:
                self.cost_avoided.labels(category).inc(cost_usd)
        if near:
            self.near_misses.labels(category).inc()
        self.latency.labels(outcome).observe(record.latency_ms / 1000)
        if record.similarity is not None:
            self.similarity.labels(category, outcome).observe(record.similarity)


class Snapshot:
    """Gauges of the proxy's state now, shaped as a collector so `generate_latest` can render it."""

    def __init__(self, index_sizes: Mapping[str, int], redis_up: bool, backends: Iterable[tuple[str, bool, int]]):
        self.index_sizes = index_sizes
        self.redis_up = redis_up
        self.backends = list(backends)

    def collect(self) -> Iterable[Metric]:
        entries = GaugeMetricFamily("catcache_index_entries", "Entries in the semantic index", labels=["category"])
        for category, size in self.index_sizes.items():
            entries.add_metric([category], size)
        yield entries
        yield GaugeMetricFamily("catcache_redis_up", "1 while Redis answers", value=int(self.redis_up))
        up = GaugeMetricFamily("catcache_backend_up", "1 while the backend answers", labels=["backend"])
        in_flight = GaugeMetricFamily("catcache_backend_in_flight", "Requests awaiting the backend now",
                                      labels=["backend"])
        for name, healthy, waiting in self.backends:
            up.add_metric([name], int(healthy))
            in_flight.add_metric([name], waiting)
        yield up
        yield in_flight
