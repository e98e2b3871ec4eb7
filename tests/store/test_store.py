"""The document store against a real Redis: hits on gone entries, damaged hashes, quota eviction."""

from __future__ import annotations

import time

import pytest
from redis.asyncio import Redis

from catcache.store.documents import Document, DocumentStore, category_key, doc_key
from catcache.store.health import RedisGuard
from catcache.store.hits import HitCounter
from catcache.testing.redis import run_with_store

ON_CLUSTER_TOO = True  # conftest: every Redis test here runs on one server and on a cluster


def document(category: str, doc_id: str) -> Document:
    return Document(doc_id, "chat", "m", category, "scope", f"q {doc_id}", {"choices": []})


async def members(redis: Redis, category: str) -> set[str]:
    return {member.decode() for member in await redis.zrange(category_key(category), 0, -1)}


@pytest.mark.parametrize("eviction", ["lru", "lfu"])
def test_touch_on_a_gone_entry_leaves_nothing_behind(redis_url: str, eviction: str) -> None:
    async def scenario(store: DocumentStore, redis: Redis, category: str) -> None:
        never = document(category, f"{category}-never")
        await store.touch(never, eviction)
        evicted = document(category, f"{category}-evicted")
        await store.put(evicted, ttl=60, eviction=eviction, quota=10)
        await store.delete([evicted.doc_id], category)
        await store.touch(evicted, eviction)
        for doc in (never, evicted):
            assert await redis.exists(doc_key(doc.doc_id)) == 0
            assert await redis.zscore(category_key(category), doc.doc_id) is None

    run_with_store(redis_url, scenario)


@pytest.mark.parametrize("eviction", ["lru", "lfu"])
def test_touch_counts_a_hit_and_keeps_the_ttl(redis_url: str, eviction: str) -> None:
    async def scenario(store: DocumentStore, redis: Redis, category: str) -> None:
        doc = document(category, f"{category}-live")
        await store.put(doc, ttl=60, eviction=eviction, quota=10)
        if eviction == "lru":
            await redis.zadd(category_key(category), {doc.doc_id: 1000.0})  # an old last use
        before = time.time()
        await store.touch(doc, eviction)
        stored = await store.get(doc.doc_id)
        assert stored is not None and stored.hits == 1
        assert await redis.pttl(doc_key(doc.doc_id)) > 0
        score = await redis.zscore(category_key(category), doc.doc_id)
        if eviction == "lfu":
            assert score == 2.0
        else:
            assert score is not None and score >= before

    run_with_store(redis_url, scenario)


def test_hit_counter_writes_queued_hits_in_batches(redis_url: str) -> None:
    """Hits queued while a write is in flight are all counted, a gone entry's not at all."""
    async def scenario(store: DocumentStore, redis: Redis, category: str) -> None:
        live, gone = document(category, f"{category}-a"), document(category, f"{category}-gone")
        await store.put(live, ttl=60, eviction="lfu", quota=10)
        counter = HitCounter(store, RedisGuard(redis))
        for _ in range(5):
            counter.add(live, "lfu")
            counter.add(gone, "lfu")
        await counter.close()
        stored = await store.get(live.doc_id)
        assert stored is not None and stored.hits == 5
        assert await redis.zscore(category_key(category), live.doc_id) == 6.0
        assert await redis.exists(doc_key(gone.doc_id)) == 0

    run_with_store(redis_url, scenario)


def test_an_incomplete_hash_reads_as_a_miss(redis_url: str) -> None:
    async def scenario(store: DocumentStore, redis: Redis, category: str) -> None:
        good = document(category, f"{category}-good")
        await store.put(good, ttl=60, eviction="lru", quota=10)
        hits_only, no_response = f"{category}-hits", f"{category}-noresponse"
        await redis.hset(doc_key(hits_only), "hits", 1)
        fields = good.to_redis()
        del fields["response"]
        await redis.hset(doc_key(no_response), mapping=fields)
        docs = await store.get_many([hits_only, no_response, f"{category}-missing", good.doc_id])
        assert docs[:3] == [None, None, None]
        assert docs[3] is not None and docs[3].doc_id == good.doc_id

    run_with_store(redis_url, scenario)


def test_lfu_quota_evicts_the_least_used_and_keeps_the_new_entry(redis_url: str) -> None:
    async def scenario(store: DocumentStore, redis: Redis, category: str) -> None:
        # New ids sort before old ones, so a tie on the lowest score breaks towards the new entry.
        old = [document(category, f"{category}-o{i}") for i in range(3)]
        for doc in old:
            assert await store.put(doc, ttl=60, eviction="lfu", quota=3) == []
        for doc in old[1:]:
            await store.touch(doc, "lfu")
            await store.touch(doc, "lfu")
        expected = [old[0].doc_id, f"{category}-n0"]  # then the first new entry, used least
        for i, want in enumerate(expected):
            new = document(category, f"{category}-n{i}")
            evicted = await store.put(new, ttl=60, eviction="lfu", quota=3)
            assert evicted == [want]
            assert await redis.exists(doc_key(want)) == 0
            assert await redis.exists(doc_key(new.doc_id)) == 1
            assert await members(redis, category) == {old[1].doc_id, old[2].doc_id, new.doc_id}

    run_with_store(redis_url, scenario)


def test_a_lowered_quota_evicts_every_excess_entry_but_the_new_one(redis_url: str) -> None:
    async def scenario(store: DocumentStore, redis: Redis, category: str) -> None:
        old = [document(category, f"{category}-o{i}") for i in range(4)]
        for doc in old:
            await store.put(doc, ttl=60, eviction="lfu", quota=10)
        await store.touch(old[3], "lfu")
        new = document(category, f"{category}-n")
        evicted = await store.put(new, ttl=60, eviction="lfu", quota=2)
        assert evicted == [doc.doc_id for doc in old[:3]]
        assert await members(redis, category) == {old[3].doc_id, new.doc_id}
        assert await redis.exists(*(doc_key(i) for i in evicted)) == 0

    run_with_store(redis_url, scenario)


def test_lru_quota_evicts_the_least_recently_used(redis_url: str) -> None:
    async def scenario(store: DocumentStore, redis: Redis, category: str) -> None:
        old = [document(category, f"{category}-o{i}") for i in range(3)]
        for doc in old:
            await store.put(doc, ttl=60, eviction="lru", quota=3)
        await redis.zadd(category_key(category), {doc.doc_id: 1000.0 + i for i, doc in enumerate(old)})
        await store.touch(old[0], "lru")
        new = document(category, f"{category}-n")
        assert await store.put(new, ttl=60, eviction="lru", quota=3) == [old[1].doc_id]
        assert await redis.exists(doc_key(old[1].doc_id)) == 0
        assert await members(redis, category) == {old[0].doc_id, old[2].doc_id, new.doc_id}

    run_with_store(redis_url, scenario)


def test_lru_quota_keeps_the_new_entry_when_others_were_used_later(redis_url: str) -> None:
    async def scenario(store: DocumentStore, redis: Redis, category: str) -> None:
        # Another proxy's clock ahead of ours puts every other entry after the new one.
        old = [document(category, f"{category}-o{i}") for i in range(2)]
        for doc in old:
            await store.put(doc, ttl=60, eviction="lru", quota=2)
        ahead = time.time() + 3600
        await redis.zadd(category_key(category), {doc.doc_id: ahead + i for i, doc in enumerate(old)})
        new = document(category, f"{category}-n")
        assert await store.put(new, ttl=60, eviction="lru", quota=2) == [old[0].doc_id]
        assert await redis.exists(doc_key(new.doc_id)) == 1
        assert await members(redis, category) == {old[1].doc_id, new.doc_id}

    run_with_store(redis_url, scenario)


def test_an_entry_keeps_the_lowest_agreeing_and_highest_disagreeing_judgement(redis_url: str) -> None:
    async def scenario(store: DocumentStore, redis: Redis, category: str) -> None:
        doc = document(category, f"{category}-judged")
        await store.put(doc, ttl=60, eviction="lru", quota=10)
        for similarity, same in [(0.93, True), (0.95, True), (0.91, True), (0.89, False), (0.86, False)]:
            assert await store.note_judgement(doc.doc_id, similarity, same)
        judged = await store.get(doc.doc_id)
        assert (judged.agreed, judged.disagreed) == (0.91, 0.89)
        assert await redis.ttl(doc_key(doc.doc_id)) > 0
        gone = document(category, f"{category}-gone")
        assert not await store.note_judgement(gone.doc_id, 0.9, True)
        assert await redis.exists(doc_key(gone.doc_id)) == 0

    run_with_store(redis_url, scenario)
