"""Keep the proxy serving when Redis is down or slow.

Every cache call goes through `RedisGuard.run`: a failure or a call slower than the timeout marks
Redis down, and while it is down cache calls are skipped at once (the proxy passes requests
through) until a background ping sees it answer again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("catcache.redis")
T = TypeVar("T")


class CacheUnavailable(Exception):
    """The cache cannot be used for this request; serve it as a pass-through."""


class RedisGuard:
    def __init__(self, redis: Redis, timeout: float = 0.5, probe_every: float = 1.0):
        self.redis = redis
        self.timeout = timeout
        self.probe_every = probe_every
        self.healthy = True
        self._probe: asyncio.Task | None = None

    async def run(self, call: Awaitable[T], timeout: float | None = None) -> T:
        if not self.healthy:
            if asyncio.iscoroutine(call):
                call.close()
            raise CacheUnavailable("redis is down")
        try:
            async with asyncio.timeout(timeout or self.timeout):  # unlike wait_for, no task per call
                return await call
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self.mark_down(exc)
            raise CacheUnavailable(str(exc) or type(exc).__name__) from exc

    def mark_down(self, reason: BaseException) -> None:
        if self.healthy:
            log.warning("redis unavailable (%s): serving as a pass-through until it answers again", reason)
        self.healthy = False
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._wait_for_redis())

    async def _wait_for_redis(self) -> None:
        while not self.healthy:
            await asyncio.sleep(self.probe_every)
            try:
                await asyncio.wait_for(self.redis.ping(), self.timeout)
            except (RedisError, OSError, asyncio.TimeoutError):
                continue
            self.healthy = True
            log.warning("redis is back: caching resumed")

    def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
