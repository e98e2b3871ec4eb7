"""One line of truth per request: what the reports, metrics and access log are built from."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum


class Outcome(StrEnum):
    """How a request was answered: the `x-catcache` header, the metrics' label, the reports' column."""

    HIT_EXACT = "hit-exact"          # the exact tier: the same request, canonicalised
    HIT_SEMANTIC = "hit-semantic"    # the semantic tier: a verified paraphrase
    IC = "ic"                        # the small backend, with cached neighbours as examples
    MISS = "miss"                    # the large backend, answer stored
    BYPASS = "bypass"                # the large backend, the cache left out (policy, no-store, Redis down)
    ERROR = "error"                  # the backend failed or broke off


HITS = (Outcome.HIT_EXACT, Outcome.HIT_SEMANTIC)
MISSES = (Outcome.MISS, Outcome.IC)  # answered by a backend after a near neighbour may have been refused
# Plain strings: JSON objects are keyed by them, and orjson takes no str subclass as a key.
OUTCOMES = tuple(outcome.value for outcome in Outcome)
# What an app said of an entry (POST /v1/cache/feedback) -> the counter that keeps it. An entry
# served from the cache judges a hit; one never served judges the backend's answer.
FEEDBACK = {"false-hit": "false_hits", "confirmed-hit": "confirmed_hits",
            "wrong-answer": "wrong_answers", "right-answer": "right_answers"}

# What speculative forwarding (proxy/speculation.py) did -> the counter that keeps it: calls sent
# before the lookup ended, those closed because a hit won, and those calls' prompt tokens (estimated).
SPECULATION = {"sent": "speculated", "cancelled": "speculation_cancelled",
               "cancelled_prompt_tokens": "speculation_cancelled_prompt_tokens"}


@dataclass
class RequestRecord:
    outcome: Outcome
    category: str
    model: str = ""
    tenant: str | None = None
    similarity: float | None = None
    verdict: str | None = None          # why a near neighbour was refused, if one was
    latency_ms: float = 0.0             # what the client waited
    backend_latency_ms: float | None = None  # misses: the backend's time; hits: the time it took when stored
    prompt_tokens: int = 0
    completion_tokens: int = 0
    endpoint: str = "chat"
    time: float = field(default_factory=time.time)

    def as_dict(self) -> dict:
        return asdict(self)
