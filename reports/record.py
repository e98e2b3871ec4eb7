"""One line of truth per request: what the reports, metrics and access log are built from."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
import time

OUTCOMES = ("hit-exact", "hit-semantic", "ic", "miss", "bypass", "error")
# What an app said of an entry (POST /v1/cache/feedback) -> the counter that keeps it. An entry
# served from the cache judges a hit; one never served judges the backend's answer.
FEEDBACK = {"false-hit": "false_hits", "confirmed-hit": "confirmed_hits",
            "wrong-answer": "wrong_answers", "right-answer": "right_answers"}


@dataclass
class RequestRecord:
    outcome: str
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
