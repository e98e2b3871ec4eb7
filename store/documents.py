"""Cached responses in Redis: one hash per entry, a score set per category for the quota, and a
stream of additions and evictions that other proxies follow.

Keys (prefix `cc:`):
  doc:{<id>}      hash: response, request, endpoint, model, category, scope, query, created,
                  latency_ms, hits, tenant (hash; empty when shared), embedding (float32 bytes),
                  and the entry's own judged evidence once it has some: agreed (the lowest
                  similarity of a query whose fresh answer agreed with it), disagreed (the
                  highest of one that did not); expires with the category's TTL.
                  <id> is the request's functional key, so the exact tier is one HGETALL. The
                  braces are a Redis Cluster hash tag: whatever else is keyed by an entry's id
                  lands in the same slot, so a script or transaction on one entry stays on one node.
  cat:<category>  sorted set of ids: score = last use (LRU) or use count (LFU).
  events          stream of {op: add|del, id, category, origin}.

No command or script spans an entry and a shared key (its category's set, the stream), since on a
Redis Cluster those live on other nodes: an entry is written first, then listed and announced.
On a cluster a write also waits (WAIT) until a replica has the entry, so a failed-over master
loses none that was acknowledged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import AsyncIterator

import numpy as np
import orjson
from redis.asyncio import Redis, RedisCluster

PREFIX = "cc:"
EVENTS = PREFIX + "events"
EVENTS_MAXLEN = 100_000
REQUIRED = frozenset({b"endpoint", b"model", b"category", b"scope", b"query", b"response"})

WAIT_MS = 100  # how long a write on a cluster waits for a replica's acknowledgement

# Count a hit only while the entry exists: a plain HINCRBY on an expired or evicted entry would
# recreate its hash with just `hits` and no TTL. KEYS: doc. Returns 1 if it was counted.
TOUCH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'hits', 1)
return 1
"""

# Note one judged query on an entry, only while it exists: the lowest similarity that agreed, the
# highest that did not. KEYS: doc; ARGV: field (agreed|disagreed), similarity. Returns 1 if noted.
JUDGED = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
local new = tonumber(ARGV[2])
if old == nil or (ARGV[1] == 'agreed' and new < old) or (ARGV[1] == 'disagreed' and new > old) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
return 1
"""

# Replace an entry at once, so no reader sees it half written. KEYS: doc; ARGV: ttl ms, field, value, ...
WRITE = """
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""


@dataclass
class Document:
    doc_id: str
    endpoint: str
    model: str
    category: str
    scope_key: str
    query: str
    response: dict
    request: bytes = b""
    latency_ms: float = 0.0
    created: float = field(default_factory=time.time)
    hits: int = 0
    embedding: np.ndarray | None = None
    tenant: str = ""  # the tenant hash (never the key), so `catcache purge --tenant` can find its entries
    agreed: float | None = None     # the lowest similarity of a query judged to want this answer
    disagreed: float | None = None  # the highest of one judged to want another

    def to_redis(self) -> dict[str, bytes | str | float]:
        fields: dict[str, bytes | str | float] = {
            "endpoint": self.endpoint, "model": self.model, "category": self.category,
            "scope": self.scope_key, "query": self.query, "response": orjson.dumps(self.response),
            "request": self.request, "latency_ms": self.latency_ms, "created": self.created, "hits": self.hits,
            "tenant": self.tenant,
        }
        if self.embedding is not None:
            fields["embedding"] = self.embedding.astype(np.float32).tobytes()
        return fields

    @classmethod
    def from_redis(cls, doc_id: str, fields: dict[bytes, bytes]) -> "Document | None":
        """None for a missing or incomplete hash, so a damaged entry reads as a miss, not an error."""
        if not REQUIRED <= fields.keys():
            return None
        text = {k.decode(): v for k, v in fields.items()}
        embedding = text.get("embedding")
        return cls(
            doc_id=doc_id, endpoint=text["endpoint"].decode(), model=text["model"].decode(),
            category=text["category"].decode(), scope_key=text["scope"].decode(), query=text["query"].decode(),
            response=orjson.loads(text["response"]), request=text.get("request", b""),
            latency_ms=float(text.get("latency_ms", 0)), created=float(text.get("created", 0)),
            hits=int(text.get("hits", 0)), tenant=text.get("tenant", b"").decode(),
            embedding=np.frombuffer(embedding, dtype=np.float32) if embedding else None,
            agreed=_similarity(text.get("agreed")), disagreed=_similarity(text.get("disagreed")),
        )


def _similarity(value: bytes | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _flat(doc: Document) -> list[bytes | str | float]:
    """The entry's fields and values, alternating, as the WRITE script takes them."""
    return [item for pair in doc.to_redis().items() for item in pair]


def doc_key(doc_id: str) -> str:
    return f"{PREFIX}doc:{{{doc_id}}}"


def category_key(category: str) -> str:
    return f"{PREFIX}cat:{category}"


class DocumentStore:
    def __init__(self, redis: Redis | RedisCluster, origin: str):
        self.redis = redis
        self.origin = origin  # this proxy's id, so it skips its own events when following the stream

    async def get_many(self, doc_ids: list[str]) -> list[Document | None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for doc_id in doc_ids:
                pipe.hgetall(doc_key(doc_id))
            rows = await pipe.execute()
        return [Document.from_redis(i, row) for i, row in zip(doc_ids, rows)]

    async def get(self, doc_id: str) -> Document | None:
        return (await self.get_many([doc_id]))[0]

    async def touch(self, doc: Document, eviction: str) -> None:
        """Count a hit: the entry's use count, and its score for LRU or LFU eviction; nothing if
        the entry has gone since it was read."""
        await self.touch_many([(doc, eviction)])

    async def touch_many(self, hits: list[tuple[Document, str]]) -> None:
        """`touch` for many hits in two round trips: the entries first, then the category sets of
        those still alive (an entry and its category's set may live on different cluster nodes)."""
        if not hits:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for doc, _ in hits:
                pipe.eval(TOUCH, 1, doc_key(doc.doc_id))
            alive = await pipe.execute()
        counted = [hit for hit, ok in zip(hits, alive) if ok]
        if not counted:
            return
        now = time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            for doc, eviction in counted:
                if eviction == "lfu":
                    pipe.zincrby(category_key(doc.category), 1, doc.doc_id)
                else:
                    pipe.zadd(category_key(doc.category), {doc.doc_id: now})
            await pipe.execute()

    async def note_judgement(self, doc_id: str, similarity: float, same: bool) -> bool:
        """Note on the entry that a query at `similarity` was judged to want its answer (`same`) or
        another; False if the entry has gone."""
        field = "agreed" if same else "disagreed"
        return bool(await self.redis.eval(JUDGED, 1, doc_key(doc_id), field, f"{similarity:.6f}"))

    async def put(self, doc: Document, ttl: float, eviction: str, quota: int) -> list[str]:
        """Store `doc` for `ttl` seconds; return the ids evicted to keep the category within `quota`."""
        key, members = doc_key(doc.doc_id), category_key(doc.category)
        score = 1.0 if eviction == "lfu" else time.time()
        one_server = not isinstance(self.redis, RedisCluster)
        if not one_server:
            await self._write(key, doc, ttl)
        async with self.redis.pipeline(transaction=False) as pipe:
            if one_server:
                # One server runs a pipeline in order, so the entry is still written before it is
                # listed and announced, in one round trip instead of two.
                pipe.eval(WRITE, 1, key, max(1, int(ttl * 1000)), *_flat(doc))
            pipe.zadd(members, {doc.doc_id: score})
            pipe.zcard(members)
            pipe.xadd(EVENTS, self._event("add", doc.doc_id, doc.category), maxlen=EVENTS_MAXLEN, approximate=True)
            *_, size, _ = await pipe.execute()
        excess = size - quota
        if excess <= 0:
            return []
        # The excess+1 lowest, less the new entry: under LFU it ties for the lowest score.
        lowest = [member.decode() for member in await self.redis.zrange(members, 0, excess)]
        evicted = [doc_id for doc_id in lowest if doc_id != doc.doc_id][:excess]
        await self.delete(evicted, doc.category)
        return evicted

    async def _write(self, key: str, doc: Document, ttl: float) -> None:
        """The entry in one script; on a cluster, in one pipeline with a WAIT on the entry's node,
        which the pipeline sends on the connection that wrote (WAIT counts that connection's writes)."""
        cluster = isinstance(self.redis, RedisCluster)
        if cluster:
            await self.redis.initialize()  # learns the slot map on first use; then a no-op
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.eval(WRITE, 1, key, max(1, int(ttl * 1000)), *_flat(doc))
            if cluster:
                pipe.execute_command("WAIT", 1, WAIT_MS, target_nodes=self.redis.get_node_from_key(key))
            await pipe.execute()

    async def delete(self, doc_ids: list[str], category: str) -> None:
        if not doc_ids:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for doc_id in doc_ids:
                pipe.delete(doc_key(doc_id))  # one key a command: on a cluster the ids live on several nodes
            pipe.zrem(category_key(category), *doc_ids)
            for doc_id in doc_ids:
                pipe.xadd(EVENTS, self._event("del", doc_id, category), maxlen=EVENTS_MAXLEN, approximate=True)
            await pipe.execute()

    async def alive(self, doc_ids: list[str]) -> list[bool]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for doc_id in doc_ids:
                pipe.exists(doc_key(doc_id))
            return [bool(found) for found in await pipe.execute()]

    async def forget_members(self, category: str, doc_ids: list[str]) -> None:
        """Drop ids of expired entries from the category's score set."""
        if doc_ids:
            await self.redis.zrem(category_key(category), *doc_ids)

    async def categories(self) -> list[str]:
        names = [key.decode().removeprefix(PREFIX + "cat:") async for key in self.redis.scan_iter(PREFIX + "cat:*")]
        return sorted(names)

    async def category_size(self, category: str) -> int:
        return await self.redis.zcard(category_key(category))

    async def scan_category(self, category: str, batch: int = 1000
                            ) -> AsyncIterator[tuple[str, str, np.ndarray | None]]:
        """(id, scope, embedding) of every live entry of `category`, for rebuilding its index."""
        cursor = 0
        while True:
            cursor, members = await self.redis.zscan(category_key(category), cursor, count=batch)
            ids = [member.decode() for member, _ in members]
            if ids:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for doc_id in ids:
                        pipe.hmget(doc_key(doc_id), "scope", "embedding")
                    rows = await pipe.execute()
                dead = []
                for doc_id, (scope, embedding) in zip(ids, rows):
                    if scope is None:
                        dead.append(doc_id)
                        continue
                    yield doc_id, scope.decode(), np.frombuffer(embedding, dtype=np.float32) if embedding else None
                await self.forget_members(category, dead)
            if cursor == 0:
                return

    async def first_event_id(self) -> str:
        """The oldest event the stream still holds ("0-0" when empty): older ones were trimmed."""
        oldest = await self.redis.xrange(EVENTS, count=1)
        return oldest[0][0].decode() if oldest else "0-0"

    async def event_count(self) -> int:
        return await self.redis.xlen(EVENTS)

    async def last_event_id(self) -> str:
        newest = await self.redis.xrevrange(EVENTS, count=1)
        return newest[0][0].decode() if newest else "0-0"

    async def read_events(self, after: str, block_ms: int) -> list[tuple[str, dict[str, str]]]:
        """Events after `after` written by other proxies."""
        answer = await self.redis.xread({EVENTS: after}, block=block_ms, count=1000)
        events = []
        for _, entries in answer or []:
            for event_id, fields in entries:
                decoded = {k.decode(): v.decode() for k, v in fields.items()}
                events.append((event_id.decode(), decoded))
        return events

    def _event(self, op: str, doc_id: str, category: str) -> dict[str, str]:
        return {"op": op, "id": doc_id, "category": category, "origin": self.origin}
