"""Would one query's cached answer have done for another? Judged from the two answers themselves.

The learner (verify/learning.py) needs a label for each observed pair, and no one labels live
traffic. But a near miss, or an explored would-be hit, goes to the backend anyway: its fresh
answer can be compared with the neighbour's cached one. Answers that agree mean the neighbour's
answer would have been right.

- `AgreementJudge` (the default, any backend): the same normalised text, or the shorter answer
  inside the longer one ("Paris" in "The capital of France is Paris."), or answer embeddings at
  least `min_similarity` alike (the embedder is loaded anyway).
- `LlmJudge`: asks a model through a backend whether the two answers say the same thing, when
  their texts alone cannot settle it; one extra backend call per judgement it asks, counted against
  the checking budget. (Asking about two equal texts cost a call and, with a small model, got "no":
  docs/verification.md, "The judge".)
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

MIN_INSIDE = 3  # characters the shorter answer needs before "inside the longer one" counts
_PUNCT = re.compile(r"[^\w\s]")


def normalised(text: str) -> str:
    """Case, punctuation, Unicode form and white space folded away."""
    return " ".join(_PUNCT.sub(" ", unicodedata.normalize("NFKC", text).lower()).split())


@dataclass(frozen=True)
class Judgement:
    same: bool
    how: str  # "text", "inside", "embedding 0.93", "llm: yes"


class Judge(Protocol):
    name: str

    async def judge(self, fresh: str, cached: str) -> Judgement:
        ...


def by_text(fresh: str, cached: str) -> Judgement | None:
    """The verdict the texts alone give, or None when only a model or the embeddings can tell."""
    a, b = normalised(fresh), normalised(cached)
    if a == b:
        return Judgement(True, "text")
    shorter, longer = sorted((a, b), key=len)
    if len(shorter) >= MIN_INSIDE and re.search(rf"(^|\s){re.escape(shorter)}($|\s)", longer):
        return Judgement(True, "inside")
    if not a or not b:
        return Judgement(False, "text")
    return None


class AgreementJudge:
    name = "agreement"

    def __init__(self, embed: Callable[[list[str]], Awaitable[np.ndarray]], min_similarity: float = 0.9):
        self._embed = embed
        self.min_similarity = min_similarity

    async def judge(self, fresh: str, cached: str) -> Judgement:
        found = by_text(fresh, cached)
        if found is not None:
            return found
        vectors = await self._embed([fresh, cached])
        similarity = float(vectors[0] @ vectors[1])
        return Judgement(similarity >= self.min_similarity, f"embedding {similarity:.2f}")


PROMPT = ("Two answers were given to two similar questions. Do they give the same information, so that "
          "either answer would serve both questions? Reply with one word: yes or no.\n\n"
          "Answer A: {a}\n\nAnswer B: {b}")


class LlmJudge:
    """A model decides; `ask` sends one chat prompt to the configured backend and returns its reply."""

    name = "llm"

    def __init__(self, ask: Callable[[str], Awaitable[str]]):
        self._ask = ask

    async def judge(self, fresh: str, cached: str) -> Judgement:
        found = by_text(fresh, cached)
        if found is not None:
            return found
        reply = (await self._ask(PROMPT.format(a=fresh[:2000], b=cached[:2000]))).strip().lower()
        return Judgement(reply.startswith("yes"), f"llm: {reply[:20]}")
