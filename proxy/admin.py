"""Operator routes beyond reload: POST /admin/purge (behind the admin token, see admin_auth.py)."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from catcache.responses import json_response, openai_error
from catcache.store.health import CacheUnavailable
from catcache.store.purge import from_fields, purge

PURGE_TIMEOUT_S = 60.0

router = APIRouter()


@router.post("/admin/purge")
async def purge_route(request: Request) -> Response:
    """Body: {"category"?, "tenant"?, "older_than"?, "key"?, "all"?}; all conditions given must hold."""
    try:
        what = from_fields(orjson.loads(await request.body()))
    except (orjson.JSONDecodeError, ValueError) as exc:
        return openai_error(400, f"purge: {exc}", code="invalid_purge")
    state = request.app.state.proxy
    try:
        removed = await state.guard.run(purge(state.store, what), timeout=PURGE_TIMEOUT_S)
    except CacheUnavailable as exc:
        return openai_error(503, f"the cache lives in redis, which is unavailable: {exc}", code="redis_down")
    for category, ids in removed.items():  # other proxies learn of it from the event stream
        state.index.remove(category, ids)
    return json_response({"purged": sum(map(len, removed.values())),
                          "categories": {category: len(ids) for category, ids in sorted(removed.items())}})
