"""What the threshold learner has seen, in Redis: shared by every proxy, kept across restarts.

Keys (prefix `cc:`):
  learn:{<category>}         hash of `verify.learning.Evidence` fields (seen:<bin>, false:<bin>,
                             served:<bin>, demand:<bin>, exact, explored, judged, ...), counted
                             with HINCRBY so proxies add up instead of overwriting each other.
  learn:{<category>}:<cell>  the same for one cell of the category (the kind of answer asked for).
  learnlog:{<category>}      stream of points over time: threshold, estimate, its bounds,
                             observations; what `catcache report` plots.
The braces put a category's keys in one Redis Cluster slot. `catcache purge --category` deletes
them all: the category learns again from its prior.
"""

from __future__ import annotations

from collections.abc import Mapping

from redis.asyncio import Redis, RedisCluster

from catcache.verify.learning import Evidence

PREFIX = "cc:learn:"
LOG_MAXLEN = 20_000


def evidence_key(category: str, cell: str = "") -> str:
    return f"{PREFIX}{{{category}}}" + (f":{cell}" if cell else "")


def split_key(key: str) -> tuple[str, str]:
    """(category, cell) of an evidence key; cell "" for the category's own."""
    inside, _, rest = key.partition("{")[2].partition("}")
    return inside, rest.removeprefix(":")


def log_key(category: str) -> str:
    return f"cc:learnlog:{{{category}}}"


class LearnedState:
    def __init__(self, redis: Redis | RedisCluster):
        self.redis = redis

    async def add(self, counts: Mapping[str, Mapping[str, int]]) -> None:
        """Add {key: {field: increment}} (keys from `evidence_key`) in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, fields in counts.items():
                for name, increment in fields.items():
                    pipe.hincrby(key, name, increment)
            await pipe.execute()

    async def load(self, keys: list[str]) -> dict[str, Evidence]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(key)
            found = await pipe.execute()
        return {key: Evidence.from_fields(fields) for key, fields in zip(keys, found)}

    async def keys(self) -> list[str]:
        """Every evidence key in Redis (categories and their cells)."""
        return sorted({key.decode() async for key in self.redis.scan_iter(match=PREFIX + "*", count=1000)})

    async def categories(self) -> list[str]:
        """Categories that have learned something or logged a point."""
        logs = {key.decode() async for key in self.redis.scan_iter(match="cc:learnlog:*", count=1000)}
        return sorted({split_key(key)[0] for key in set(await self.keys()) | logs})

    async def log(self, category: str, point: Mapping[str, float | int]) -> None:
        await self.redis.xadd(log_key(category), dict(point), maxlen=LOG_MAXLEN, approximate=True)

    async def history(self, category: str, since: float = 0.0) -> list[dict[str, float]]:
        """The logged points of `category` from `since` (unix seconds), oldest first."""
        start = f"{int(since * 1000)}-0" if since else "-"
        rows = await self.redis.xrange(log_key(category), min=start, max="+")
        return [{"time": int(entry.split(b"-")[0]) / 1000,
                 **{k.decode(): float(v) for k, v in fields.items()}} for entry, fields in rows]

    async def reset(self, category: str) -> int:
        """Forget what `category` learned; returns the keys deleted."""
        doomed = [key async for key in self.redis.scan_iter(match=f"{PREFIX}{{{category}}}*", count=1000)]
        doomed.append(log_key(category).encode())
        deleted = 0
        for key in doomed:  # one by one: on a cluster a multi-key DEL must stay in one slot
            deleted += await self.redis.delete(key)
        return deleted

    async def reset_all(self) -> int:
        return sum([await self.reset(category) for category in await self.categories()])
