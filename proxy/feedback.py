"""POST /v1/cache/feedback: an app says whether an answer served from the cache was right.

Thresholds are tuned offline; feedback is what real traffic says about them. A wrong answer is
evicted at once, from Redis and (through the event stream's `del`) from every proxy's index, so
no one is served it again; right and wrong are counted per category for /metrics and the reports.

The caller must be the entry's tenant, by the same rules as a lookup: an entry is reported by
those it could be served to, so one tenant can neither evict nor probe another's entries.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from catcache.policy.schema import Policy
from catcache.proxy.canonical import functional_key
from catcache.proxy.state import ProxyState
from catcache.proxy.tenancy import scoped, tenant_of
from catcache.responses import json_response, openai_error
from catcache.store.documents import Document
from catcache.store.health import CacheUnavailable

log = logging.getLogger("catcache.feedback")
KEY = re.compile(r"[0-9a-f]{64}")
FIELDS = ("key", "correct", "reason")
MAX_REASON = 1000

router = APIRouter()


@dataclass(frozen=True)
class Feedback:
    key: str
    correct: bool
    reason: str | None = None


class BadFeedback(ValueError):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@router.post("/v1/cache/feedback")
async def feedback(request: Request) -> Response:
    state: ProxyState = request.app.state.proxy
    try:
        report = parse(await request.body())
    except BadFeedback as exc:
        return openai_error(400, str(exc), param=exc.param)
    tenant = tenant_of(request, state.policy)
    try:
        doc = await state.guard.run(state.store.get(report.key))
        if doc is None or not reportable(doc, report.key, tenant, state.policy):
            return openai_error(404, "No cached entry has this key for you: it expired, was evicted, or was "
                                     "served to another tenant.", param="key", code="entry_not_found")
        if not report.correct:
            await state.guard.run(state.store.delete([doc.doc_id], doc.category))
            state.index.remove(doc.category, [doc.doc_id])
    except CacheUnavailable as exc:
        return openai_error(503, f"the cache lives in redis, which is unavailable: {exc}", type="server_error",
                            code="redis_down")
    kind = verdict(report.correct, served=doc.hits > 0)
    state.recorder.feedback(doc.category, kind)
    log.info("%s", orjson.dumps({"key": doc.doc_id, "category": doc.category, "verdict": kind, "tenant": tenant,
                                 "reason": report.reason}).decode())
    return json_response({"key": doc.doc_id, "category": doc.category, "correct": report.correct,
                          "verdict": kind, "evicted": not report.correct})


def parse(body: bytes) -> Feedback:
    """The one shape accepted: {"key": <64 hex>, "correct": <bool>, "reason"?: <string or null>}.
    Unknown fields are refused, as OpenAI does, so a misspelt "correct" cannot pass as a report."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadFeedback(f"We could not parse the JSON body of your request: {exc}") from None
    if not isinstance(value, dict):
        raise BadFeedback("The request body must be a JSON object.")
    unknown = sorted(set(value) - set(FIELDS))
    if unknown:
        raise BadFeedback(f"Unrecognized request argument supplied: {unknown[0]}", unknown[0])
    key, correct, reason = value.get("key"), value.get("correct"), value.get("reason")
    if not isinstance(key, str) or not KEY.fullmatch(key):
        raise BadFeedback("'key' must be the x-catcache-key header of the response (64 hex digits).", "key")
    if not isinstance(correct, bool):
        raise BadFeedback("'correct' must be true or false.", "correct")
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON):
        raise BadFeedback(f"'reason' must be a string of at most {MAX_REASON} characters.", "reason")
    return Feedback(key, correct, reason)


def reportable(doc: Document, key: str, tenant: str | None, policy: Policy) -> bool:
    """Whether a lookup by `tenant` could be served this entry: its own entry (the key scoped to
    it), or an unscoped one where that is what the tenant reads (no tenant, or a shared category)."""
    own = functional_key(doc.endpoint, doc.request)
    if tenant is not None and key == scoped(own, tenant):
        return True
    rules = policy.categories.get(doc.category)
    return key == own and (tenant is None or (rules is not None and rules.shared))


def verdict(correct: bool, *, served: bool) -> str:
    """A report on an entry that was served from the cache judges a hit; one on an entry never
    served judges the backend's answer, which is no false hit of the cache."""
    if served:
        return "confirmed-hit" if correct else "false-hit"
    return "right-answer" if correct else "wrong-answer"
