"""A Redis Cluster master killed under load: its replica takes over, clients see no error (the
proxy passes requests through while the slots move), and no entry a replica acknowledged is lost."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from openai import AsyncOpenAI

from catcache.store.documents import doc_key
from catcache.testing.proxy import DEFAULT_POLICIES
from catcache.testing.redis import RedisClusterServers, sync_client

LOAD_S = 12.0
KILL_AT_S = 3.0


async def traffic(base_url: str, stored: list[tuple[float, str]], outcomes: list[str], errors: list[str],
                  stop: asyncio.Event, worker: int) -> None:
    """New questions and repeats of earlier ones until `stop`; each stored key with its time."""
    client = AsyncOpenAI(base_url=base_url, api_key="sk-failover", max_retries=0, timeout=30)
    n = 0
    while not stop.is_set():
        n += 1
        question = f"Worker {worker}, question {n // 2 if n % 2 else n}: how far is city {n} from the sea?"
        try:
            raw = await client.chat.completions.with_raw_response.create(
                model="test-model", messages=[{"role": "user", "content": question}])
        except Exception as exc:  # noqa: BLE001 - every kind of failure is what this test counts
            errors.append(repr(exc))
            continue
        outcome = raw.headers["x-catcache"]
        outcomes.append(outcome)
        if outcome == "miss" and raw.headers.get("x-catcache-key"):
            stored.append((time.monotonic(), raw.headers["x-catcache-key"]))
    await client.close()


def test_a_killed_master_costs_no_client_error_and_no_acknowledged_entry(proxy_factory, tmp_path: Path):
    with RedisClusterServers(tmp_path / "cluster") as cluster:
        proxy = proxy_factory(policies=DEFAULT_POLICIES, redis_url=cluster.url)
        stored: list[tuple[float, str]] = []
        outcomes: list[str] = []
        errors: list[str] = []

        async def scenario() -> float:
            stop = asyncio.Event()
            workers = [asyncio.create_task(traffic(proxy.base_url, stored, outcomes, errors, stop, w))
                       for w in range(4)]
            await asyncio.sleep(KILL_AT_S)
            assert stored, "nothing was stored before the kill"
            victim = cluster.master_of(doc_key(stored[-1][1]))
            killed_at = time.monotonic()
            await asyncio.to_thread(cluster.kill, victim)
            await asyncio.sleep(LOAD_S - KILL_AT_S)
            stop.set()
            await asyncio.gather(*workers)
            return killed_at

        killed_at = asyncio.run(scenario())
        assert errors == []
        cluster.wait_ready()  # the replica was promoted: every slot is served again
        before_kill = [key for at, key in stored if at < killed_at]
        client = sync_client(cluster.url)
        try:
            assert all(client.exists(doc_key(key)) for key in before_kill)  # WAIT made each one durable
        finally:
            client.close()
        assert outcomes[-20:].count("bypass") < 20, "caching never resumed after the failover"
