"""What one fake backend remembers: latency settings, call counts, the answer counter, the replies
it knows and its model of vLLM's prefix cache, shared by the server's threads."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any

DEFAULT_MODELS = ("test-model",)


def group_replies(groups: Mapping[str, str]) -> dict[str, str]:
    """A replies table from {question: group}: every question of a group gets the same answer, as
    a model that answers paraphrases alike would give."""
    return {question: f"The answer for {group}." for question, group in groups.items()}


class BackendState:
    """Latency settings, per-path call counts and the generation counter, shared across threads."""

    def __init__(self, think_ms: float = 0, tokens_per_s: float = 0, models: Sequence[str] = DEFAULT_MODELS,
                 prefix_ms: float = 0, prefix_slots: int = 0, slots: int = 0,
                 replies: Mapping[str, str] | None = None, groups: Mapping[str, str] | None = None):
        self.think_s = think_ms / 1000
        self.token_s = 1 / tokens_per_s if tokens_per_s > 0 else 0.0
        self.models = tuple(models)
        self._slots = asyncio.Semaphore(slots) if slots else None
        self.replies = {**group_replies(groups or {}), **(replies or {})}  # an explicit reply wins
        self.prefix_s = prefix_ms / 1000
        self.prefix_slots = prefix_slots
        self._prefixes: OrderedDict[str, None] = OrderedDict()  # least recently used first
        self.prefix_hits = self.prefix_misses = 0
        self._lock = threading.Lock()
        self._calls: Counter[str] = Counter()
        self._answers = 0

    def slot(self) -> AbstractAsyncContextManager[Any]:
        """Held while a generation runs: with `slots`, a queue forms behind the busy ones."""
        return self._slots if self._slots is not None else nullcontext()

    def count(self, path: str) -> None:
        with self._lock:
            self._calls[path] += 1

    def next_answer(self) -> int:
        with self._lock:
            self._answers += 1
            return self._answers

    def calls(self, path: str | None = None) -> int:
        with self._lock:
            return self._calls[path] if path is not None else sum(self._calls.values())

    def prefill_s(self, messages: list[dict[str, Any]]) -> float:
        """The prefill wait for this request's system prompt: none if it is among the cached ones."""
        if not self.prefix_slots:
            return 0.0
        prefix = repr([m.get("content") for m in messages if m.get("role") == "system"])
        with self._lock:
            if prefix in self._prefixes:
                self._prefixes.move_to_end(prefix)
                self.prefix_hits += 1
                return 0.0
            self._prefixes[prefix] = None
            if len(self._prefixes) > self.prefix_slots:
                self._prefixes.popitem(last=False)
            self.prefix_misses += 1
            return self.prefix_s

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._calls)

    def reset(self) -> None:
        """Zero the call counts; the answer counter keeps counting so old answers stay recognisable."""
        with self._lock:
            self._calls.clear()
