"""The Redis layout of the report counters: one hash per minute, shared by every proxy.

Keys (prefix `cc:{stats}:`):
- `cc:{stats}:m:<minute>`: hash of `<category>|<outcome>|<metric>` -> number, where minute is
  unix time // 60. Metrics are the scalar counters (`requests`, `prompt_tokens`, ...) and the
  histogram bins `sim:<i>` (similarity) and `lat:<i>` (client latency). Expires after the
  retention.
  Speculative calls are counted under outcome `speculation` (record.SPECULATION).
  Apps' feedback is counted under outcome `feedback`, metrics `false_hits`, `confirmed_hits`,
  `wrong_answers` and `right_answers`, in the minute it was reported.
- `cc:{stats}:minutes`: sorted set of the minutes that have a hash, so a reader fetches only those.
- `cc:{stats}:thresholds`: hash of `<category>|threshold` and `<category>|ic_low` -> the live
  policy's values, so a report can draw them without the policy file.

Counters are increments (HINCRBY/HINCRBYFLOAT), so proxies and restarts add up.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline

from catcache.reports.record import FEEDBACK, SPECULATION

PREFIX = "cc:{stats}:"  # one hash tag: on a Redis Cluster a flush's MULTI/EXEC stays in one slot
MINUTES = PREFIX + "minutes"
THRESHOLDS = PREFIX + "thresholds"

SCALARS = ("requests", "prompt_tokens", "completion_tokens", "latency_ms", "backend_latency_ms", "cost_usd",
           "near_misses", *FEEDBACK.values(), *SPECULATION.values())
FLOATS = frozenset({"latency_ms", "backend_latency_ms", "cost_usd"})  # HINCRBY refuses a float-valued field

# Similarity bins: 50 of width 0.01 over [0.5, 1.0]; thresholds live in this range. Lower
# similarities are not near anything and are left out of the histogram.
SIM_LOW, SIM_BINS = 0.5, 50
# Latency bins: 8 per decade from 0.1 ms to 100 s, on a log scale.
LAT_LOW_MS, LAT_PER_DECADE, LAT_BINS = 0.1, 8, 48

Field = tuple[str, str, str]  # category, outcome, metric


def bucket_key(minute: int) -> str:
    return f"{PREFIX}m:{minute}"


def sim_bin(similarity: float) -> int | None:
    if similarity < SIM_LOW:
        return None
    return min(SIM_BINS - 1, int((similarity - SIM_LOW) * SIM_BINS / (1.0 - SIM_LOW)))


def sim_edges() -> list[float]:
    return [SIM_LOW + i * (1.0 - SIM_LOW) / SIM_BINS for i in range(SIM_BINS + 1)]


def lat_bin(ms: float) -> int:
    if ms <= LAT_LOW_MS:
        return 0
    return min(LAT_BINS - 1, int(LAT_PER_DECADE * math.log10(ms / LAT_LOW_MS)))


def lat_edges() -> list[float]:
    return [LAT_LOW_MS * 10 ** (i / LAT_PER_DECADE) for i in range(LAT_BINS + 1)]


def encode(field: Field) -> str:
    return "|".join(field)


def decode(raw: str | bytes) -> Field | None:
    text = raw.decode() if isinstance(raw, bytes) else raw
    parts = text.rsplit("|", 2)  # a category name may hold '|'; outcomes and metrics never do
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else None


class Tally:
    """Increments not yet written, summed per minute and field: a flush is one pipeline whatever
    the request rate, and its size is bounded by minutes x fields, not by requests."""

    def __init__(self) -> None:
        self.minutes: dict[int, dict[Field, float]] = defaultdict(lambda: defaultdict(float))

    def __bool__(self) -> bool:
        return bool(self.minutes)

    def add(self, minute: int, field: Field, amount: float) -> None:
        self.minutes[minute][field] += amount

    def merge(self, other: Tally) -> None:
        for minute, fields in other.minutes.items():
            for field, amount in fields.items():
                self.minutes[minute][field] += amount

    def drop_oldest(self, keep: int) -> int:
        """Forget all but the newest `keep` minutes; returns how many were dropped."""
        old = sorted(self.minutes)[:-keep] if len(self.minutes) > keep else []
        for minute in old:
            del self.minutes[minute]
        return len(old)

    def write(self, pipe: Pipeline | ClusterPipeline, retention_s: int, thresholds: dict[str, str]) -> None:
        """Queue every increment on `pipe`, a MULTI/EXEC pipeline: all of it lands or none of it does."""
        for minute, fields in self.minutes.items():
            key = bucket_key(minute)
            for field, amount in fields.items():
                if field[2] in FLOATS:
                    pipe.hincrbyfloat(key, encode(field), amount)
                else:
                    pipe.hincrby(key, encode(field), int(amount))
            pipe.expireat(key, minute * 60 + retention_s)
            pipe.zadd(MINUTES, {str(minute): minute})
        newest = max(self.minutes)
        pipe.zremrangebyscore(MINUTES, "-inf", newest - retention_s // 60)
        pipe.expire(MINUTES, retention_s)
        if thresholds:
            pipe.hset(THRESHOLDS, mapping=thresholds)


async def read(redis: Redis, start: float, end: float) -> tuple[list[tuple[int, dict[Field, float]]], dict[str, float]]:
    """The minute buckets from `start` to `end` (unix seconds), oldest first, and the thresholds."""
    minutes = [int(m) for m in await redis.zrangebyscore(MINUTES, int(start // 60), int(end // 60))]
    pipe = redis.pipeline(transaction=False)
    for minute in minutes:
        pipe.hgetall(bucket_key(minute))
    pipe.hgetall(THRESHOLDS)
    *hashes, thresholds = await pipe.execute()
    buckets = [(minute, dict(_parse(raw))) for minute, raw in zip(minutes, hashes) if raw]
    return buckets, {_text(k): float(v) for k, v in thresholds.items()}


def _parse(raw: dict) -> Iterable[tuple[Field, float]]:
    for key, value in raw.items():
        field = decode(key)
        if field is not None:
            yield field, float(value)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
