"""Where each request's record goes: the access log, the Prometheus series, and the Redis counters.

`record` runs on the event loop for every request, so it only adds to memory; a background task
writes the sums to Redis once a second in one pipeline. While Redis is down the sums wait, up to
`MAX_PENDING_MINUTES` minutes of them, then the oldest are dropped: counting never fails a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import orjson
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from redis.exceptions import RedisError

from catcache.policy.schema import Policy
from catcache.reports.buckets import Tally, lat_bin, sim_bin
from catcache.reports.metrics import Metrics
from catcache.reports.record import FEEDBACK, MISSES, SPECULATION, RequestRecord

access_log = logging.getLogger("catcache.access")
log = logging.getLogger("catcache.reports")

FLUSH_EVERY_S = 1.0
FLUSH_TIMEOUT_S = 2.0
MAX_PENDING_MINUTES = 60
NEAR_BAND = 0.05  # a miss this close below its category's threshold is a false-hit candidate


class Recorder:
    def __init__(self, redis: Redis | None = None, policy: Callable[[], Policy] = Policy,
                 flush_every: float = FLUSH_EVERY_S):
        self.metrics = Metrics()
        self._redis = redis
        self._policy = policy
        self._flush_every = flush_every
        self._pending = Tally()
        self._task: asyncio.Task | None = None
        self._failing = False

    @property
    def registry(self) -> CollectorRegistry:
        return self.metrics.registry

    def record(self, record: RequestRecord) -> None:
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(orjson.dumps(record.as_dict()).decode())
        policy = self._policy()
        cost = cost_usd(policy, record)
        near = is_near_miss(policy, record)
        self.metrics.observe(record, cost, near)
        if self._redis is None:
            return
        self._count(record, cost, near)
        self._start_flushing()

    def feedback(self, category: str, verdict: str) -> None:
        """Count an app's report on an entry; `verdict` is a key of FEEDBACK."""
        self.metrics.feedback.labels(category, verdict).inc()
        if self._redis is None:
            return
        self._pending.add(int(time.time() // 60), (category, "feedback", FEEDBACK[verdict]), 1)
        self._start_flushing()

    def speculation(self, category: str, event: str, amount: int = 1) -> None:
        """Count what speculative forwarding did; `event` is a key of SPECULATION."""
        self.metrics.speculation.labels(category, event).inc(amount)
        if self._redis is None:
            return
        self._pending.add(int(time.time() // 60), (category, "speculation", SPECULATION[event]), amount)
        self._start_flushing()

    def _start_flushing(self) -> None:
        if self._task is None:
            with contextlib.suppress(RuntimeError):  # no running loop: flush() is called by hand
                self._task = asyncio.get_running_loop().create_task(self._flush_forever())

    def _count(self, record: RequestRecord, cost: float, near: bool) -> None:
        minute, cell = int(record.time // 60), (record.category, record.outcome)
        add = self._pending.add
        add(minute, (*cell, "requests"), 1)
        add(minute, (*cell, "latency_ms"), record.latency_ms)
        add(minute, (*cell, f"lat:{lat_bin(record.latency_ms)}"), 1)
        if record.prompt_tokens:
            add(minute, (*cell, "prompt_tokens"), record.prompt_tokens)
        if record.completion_tokens:
            add(minute, (*cell, "completion_tokens"), record.completion_tokens)
        if record.backend_latency_ms:
            add(minute, (*cell, "backend_latency_ms"), record.backend_latency_ms)
        if cost:
            add(minute, (*cell, "cost_usd"), cost)
        if near:
            add(minute, (*cell, "near_misses"), 1)
        if record.similarity is not None and (b := sim_bin(record.similarity)) is not None:
            add(minute, (*cell, f"sim:{b}"), 1)

    async def flush(self) -> bool:
        """Write what is pending in one MULTI/EXEC; on failure keep it (bounded) for the next try."""
        if self._redis is None or not self._pending:
            return True
        batch, self._pending = self._pending, Tally()
        policy = self._policy()
        try:
            async with self._redis.pipeline(transaction=True) as pipe:  # a cluster's holds a connection until closed
                batch.write(pipe, policy.reports.retention_days * 86400, thresholds(policy))
                await asyncio.wait_for(pipe.execute(), FLUSH_TIMEOUT_S)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            batch.merge(self._pending)
            self._pending = batch
            self.metrics.flush_failures.inc()
            self.metrics.dropped_minutes.inc(self._pending.drop_oldest(MAX_PENDING_MINUTES))
            if not self._failing:
                log.warning("could not write report counters to redis (%r); keeping them to retry", exc)
            self._failing = True
            return False
        self._failing = False
        return True

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self._flush_every)
            await self.flush()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()


def cost_usd(policy: Policy, record: RequestRecord) -> float:
    """The record's tokens at its model's price: what a hit avoided, what a miss cost."""
    price = policy.prices.get(record.model)
    if price is None:
        return 0.0
    return (record.prompt_tokens * price.input + record.completion_tokens * price.output) / 1e6


def is_near_miss(policy: Policy, record: RequestRecord) -> bool:
    """A miss the verifier refused, or one within NEAR_BAND below the threshold: where false hits
    would come from if the threshold were lowered."""
    if record.outcome not in MISSES or record.similarity is None:
        return False
    threshold = policy.category(record.category).threshold
    return record.verdict is not None or record.similarity >= threshold - NEAR_BAND


def thresholds(policy: Policy) -> dict[str, str]:
    values = {f"{name}|threshold": str(c.threshold) for name, c in policy.categories.items()}
    values.update({f"{name}|ic_low": str(c.ic.low) for name, c in policy.categories.items() if c.ic})
    return values
