"""The proxy's side of threshold learning: the live threshold of each category, which would-be hits
to check, and the judging of fresh answers against cached ones, in the background.

Counts are added up in memory and sent to Redis once a second (`sync`), which also reads back
what every proxy has added and decides each category's threshold again, so all proxies on one
Redis serve from the same thresholds within a second of each other. The maths is in
verify/learning.py; this module only keeps the books and calls the judge.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import orjson

from catcache.backends.client import BackendClient
from catcache.policy.schema import Policy
from catcache.store.learned import LearnedState, evidence_key, split_key
from catcache.verify import learning
from catcache.verify.judge import AgreementJudge, Judge, LlmJudge
from catcache.verify.learning import Decision, Estimate, Evidence, Rule

if TYPE_CHECKING:  # the exchange carries a Check: a run-time import would be a circle
    from catcache.proxy.exchange import Found

log = logging.getLogger("catcache.learning")
LOG_EVERY_S = 20.0  # a history point at least this often (20,000 points a category: 4.6 days)


@dataclass(frozen=True)
class Check:
    """A neighbour whose cached answer the request's fresh answer will be judged against."""

    category: str
    cell: str            # the kind of answer the query asks for (verify.question.answer_kind)
    similarity: float
    cached: str          # the neighbour's answer text
    why: str             # "near" (a near miss), "explore" (a would-be hit checked), "shadow" (a hit
                         # checked beside it), "vouched" (a hit an entry vouched for, checked beside
                         # it) or "repeat" (an exact hit checked beside it: the judge's own noise)
    doc_id: str = ""     # the neighbour's entry, which keeps its own evidence

    @classmethod
    def of(cls, found: Found, why: str) -> Check | None:
        """The check of `found`'s nearest verified neighbour, if the lookup had one."""
        if found.best is None:
            return None
        similarity, neighbour = found.best
        return cls(found.category, found.cell, similarity, answer_text(neighbour.response), why, neighbour.doc_id)


@dataclass(frozen=True)
class Standing:
    """What a category has learned, for /stats, /metrics and the reports."""

    prior: float
    decision: Decision
    estimate: Estimate
    evidence: Evidence
    cells: dict[str, float]  # cell -> its own threshold, where it differs from the category's


def answer_text(response: dict) -> str:
    """The text of a chat or completions answer ("" for anything else)."""
    choices = response.get("choices") or [{}]
    first = choices[0] if isinstance(choices[0], dict) else {}
    message = first.get("message") or {}
    return str(message.get("content") or first.get("text") or "")


async def post_chat(client: BackendClient, body: dict) -> tuple[int, bytes]:
    """One chat completion from `client`, read whole: its status and body."""
    response = await client.open("POST", "/v1/chat/completions", headers={"content-type": "application/json"},
                                 content=orjson.dumps(body))
    try:
        return response.status_code, await response.aread()
    finally:
        await response.aclose()


async def ask_backend(client: BackendClient, prompt: str) -> str:
    """One short chat turn to `client` (the LLM judge's question); "" if it answers an error."""
    body = {"model": client.config.model or "judge", "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 3, "temperature": 0}
    status, payload = await post_chat(client, body)
    return answer_text(orjson.loads(payload)) if status < 300 else ""


Remember = Callable[[str, float, bool], Awaitable[object]]  # (entry id, similarity, same): the entry's own evidence


class Learner:
    def __init__(self, state: LearnedState, policy: Callable[[], Policy],
                 embed: Callable[[list[str]], Awaitable[np.ndarray]],
                 ask: Callable[[str], Awaitable[str]] | None = None, chance: Callable[[], float] = random.random,
                 remember: Remember | None = None):
        self.state = state
        self._policy = policy
        self._embed = embed
        self._ask = ask
        self._chance = chance
        self._remember = remember
        self._pending: dict[str, Counter[str]] = defaultdict(Counter)
        self._evidence: dict[str, Evidence] = {}
        self._thresholds: dict[str, float] = {}   # evidence key -> live threshold
        self._logged: dict[str, tuple[float, float]] = {}  # category -> (time, threshold) of the last point
        self._tasks: set[asyncio.Task] = set()
        self.judged = Counter[str]()      # (category) judge calls, by this proxy
        self.explored = Counter[str]()    # would-be hits this proxy checked for its category's evidence
        self.shadowed = Counter[str]()    # of those, checked by an extra backend call beside the hit
        self.vouched = Counter[str]()     # hits under the threshold served on their entry's own evidence
        self.requests = 0                 # requests this proxy looked up: what the shadow budget is a share of

    @property
    def enabled(self) -> bool:
        return self._policy().learning.enabled

    def rule(self, category: str) -> Rule:
        settings = self._policy().learning
        own = self._policy().category(category).target_false_hit_rate
        return Rule(own or settings.target_false_hit_rate, settings.confidence, settings.min_observations,
                    settings.ceiling)

    def threshold(self, category: str, cell: str, prior: float) -> float:
        """The live threshold for a query of `category` asking for `cell`; the prior until learned."""
        if not self.enabled:
            return prior
        own = self._thresholds.get(evidence_key(category, cell))
        return own if own is not None else self._thresholds.get(evidence_key(category), prior)

    def band(self) -> float:
        return self._policy().learning.band

    # -- counting ------------------------------------------------------------------------------

    def _add(self, category: str, cell: str, name: str, amount: int = 1) -> None:
        for key in {evidence_key(category), evidence_key(category, cell)}:
            self._pending[key][name] += amount

    def ask(self, category: str, cell: str, similarity: float) -> None:
        """A lookup whose best verified neighbour lay at `similarity`."""
        if self.enabled and similarity >= learning.LOW:
            self._add(category, cell, f"demand:{learning.bin_of(similarity)}")

    def serve(self, category: str, cell: str, similarity: float | None, vouched: bool = False) -> None:
        """A hit: semantic at `similarity` (under the threshold if its entry `vouched` for it), or exact (None)."""
        if not self.enabled:
            return
        if vouched:
            self._add(category, cell, "vouched_served")
        elif similarity is None:
            self._add(category, cell, "exact")
        elif similarity >= learning.LOW:
            self._add(category, cell, f"served:{learning.bin_of(similarity)}")

    def explore(self, category: str, room: bool = True, vouched: bool = False) -> str | None:
        """Whether to check this would-be hit, and how: "shadow" (serve it, and ask the backend
        beside it: only while `room` says the backend has some, within the budget of extra
        calls), "miss" (answer from the backend instead), or None (serve it unchecked). A hit an
        entry `vouched` for under the threshold is always shadow-checked while the budget lasts,
        so that an entry that vouched wrongly learns it."""
        settings = self._policy().learning.exploration
        evidence = self._evidence.get(evidence_key(category), Evidence())
        rate = learning.exploration_rate(evidence.explored, settings.most, settings.least, settings.half_life)
        if vouched and settings.mode == "shadow":
            rate = 1.0
        if not self.enabled or self._chance() >= rate:
            return None
        if settings.mode == "shadow":
            if not self._shadow(category, room):
                return None
        if not vouched:  # the checks behind the category's evidence, which its exploration rate follows
            self._pending[evidence_key(category)]["explored"] += 1
            self.explored[category] += 1
        return settings.mode

    def repeat(self, category: str, room: bool = True) -> bool:
        """Whether to ask the backend again, beside an exact hit, what it answers to the very same
        request: any disagreement the judge then finds is its own noise (a sampling backend's
        wording), which the threshold rule subtracts (verify/learning.py, `judge_noise`). As often
        as would-be hits are checked, falling as repeats are; shadow mode only, within the budget."""
        settings = self._policy().learning.exploration
        if not self.enabled or settings.mode != "shadow":
            return False
        evidence = self._evidence.get(evidence_key(category), Evidence())
        rate = learning.exploration_rate(evidence.repeat_seen, settings.most, settings.least, settings.half_life)
        return self._chance() < rate and self._shadow(category, room)

    def _shadow(self, category: str, room: bool) -> bool:
        """Take one extra backend call from the budget, if the backend has room and the budget some left."""
        budget = self._policy().learning.exploration.budget
        if not room or sum(self.shadowed.values()) >= budget * self.requests:
            return False
        self.shadowed[category] += 1
        return True

    def entry_margin(self, category: str) -> float | None:
        """How far under an entry's own lowest agreeing similarity it may serve in `category` (None:
        not at all, also once the checks of its vouched hits show them over the target)."""
        if not self.enabled or category not in self._policy().categories:
            return None
        evidence = self._evidence.get(evidence_key(category))
        if evidence is not None and not learning.vouching_holds(evidence, self.rule(category)):
            return None
        return self._policy().learning.entry_margin

    def report_false(self, category: str) -> None:
        """An app reported a served hit wrong. Its similarity is not known, so it counts as a false
        observation at the category's live threshold, the least similar a hit could have been."""
        if self.enabled:
            live = self._thresholds.get(evidence_key(category), self._policy().category(category).threshold)
            self._pending[evidence_key(category)][f"seen:{learning.bin_of(live)}"] += 1
            self._pending[evidence_key(category)][f"false:{learning.bin_of(live)}"] += 1

    # -- judging -------------------------------------------------------------------------------

    def judge_later(self, check: Check, response: dict, fresh_id: str = "") -> None:
        """Judge the fresh answer against the neighbour's in the background; never delays the client.
        `fresh_id`: the entry the fresh answer was stored as, which the verdict concerns as much."""
        fresh = answer_text(response)
        if not self.enabled or not fresh or not check.cached:
            return
        self.later(self._judge(check, fresh, fresh_id))

    def later(self, work: Awaitable[None]) -> None:
        """Run `work` in the background; `settled` waits for it."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def judge(self) -> Judge:
        settings = self._policy().learning.judge
        if settings.kind == "llm" and self._ask is not None:
            return LlmJudge(self._ask)
        return AgreementJudge(self._embed, settings.min_similarity)

    async def _judge(self, check: Check, fresh: str, fresh_id: str = "") -> None:
        try:
            verdict = await self.judge().judge(fresh, check.cached)
        except Exception as exc:  # noqa: BLE001 - a failed judgement is one observation fewer, no more
            log.warning("could not judge a %s observation of %s: %r", check.why, check.category, exc)
            return
        self.judged[check.category] += 1
        self._add(check.category, check.cell, "judged")
        if check.why == "repeat":  # the same request twice: the judge's noise, no entry's evidence
            self._add(check.category, check.cell, "repeat_seen")
            if not verdict.same:
                self._add(check.category, check.cell, "repeat_false")
            return
        if check.why == "vouched":  # kept apart from the bins (verify/learning.py, Evidence)
            self._add(check.category, check.cell, "vouched_seen")
            if not verdict.same:
                self._add(check.category, check.cell, "vouched_false")
        elif check.similarity >= learning.LOW:
            b = learning.bin_of(check.similarity)
            self._add(check.category, check.cell, f"seen:{b}")
            if not verdict.same:
                self._add(check.category, check.cell, f"false:{b}")
        for doc_id in (check.doc_id, fresh_id):
            if self._remember is None or not doc_id:
                continue
            try:
                await self._remember(doc_id, check.similarity, verdict.same)
            except Exception as exc:  # noqa: BLE001 - the category's evidence is counted; the entry's can wait
                log.warning("could not note a judgement on entry %s: %r", doc_id, exc)

    async def settled(self) -> None:
        """Wait for the judgements under way (tests and shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- Redis ---------------------------------------------------------------------------------

    async def sync(self) -> None:
        """Send this proxy's counts, read everyone's, decide every category's threshold again."""
        pending, self._pending = self._pending, defaultdict(Counter)
        try:
            if pending:
                await self.state.add(pending)
            keys = await self.state.keys()
            self._evidence = await self.state.load(keys)
        except Exception:
            for key, counts in pending.items():  # keep them for the next try
                self._pending[key].update(counts)
            raise
        thresholds: dict[str, float] = {}
        policy = self._policy()
        for key, evidence in sorted(self._evidence.items(), key=lambda kv: kv[0].count(":")):
            category, cell = split_key(key)
            if category not in policy.categories:
                continue
            prior = policy.categories[category].threshold if not cell else \
                thresholds.get(evidence_key(category), policy.categories[category].threshold)
            thresholds[key] = learning.decide(evidence, prior, self.rule(category)).threshold
        self._thresholds = thresholds
        await self._log_points()

    async def _log_points(self) -> None:
        now = time.time()
        for category, standing in self.standings().items():
            last = self._logged.get(category)
            threshold = standing.decision.threshold
            if last is not None and last[1] == threshold and now - last[0] < LOG_EVERY_S:
                continue
            self._logged[category] = (now, threshold)
            estimate = standing.estimate
            await self.state.log(category, {"threshold": threshold, "estimate": round(estimate.rate, 5),
                                            "low": round(estimate.low, 5), "high": round(estimate.high, 5),
                                            "observations": standing.evidence.observations,
                                            "hits": estimate.hits})

    async def run(self, period_s: float = 1.0) -> None:
        """`sync` every `period_s` while learning is on; errors are logged and the next period retries."""
        while True:
            await asyncio.sleep(period_s)
            if not self.enabled:
                continue
            try:
                await self.sync()
            except Exception as exc:  # noqa: BLE001 - Redis down: the thresholds stay as they were
                log.warning("could not sync what the thresholds learned: %r", exc)

    def summary(self) -> dict[str, dict]:
        """Per category, plain numbers for /stats and /metrics."""
        found = {}
        for category, standing in sorted(self.standings().items()):
            decision, estimate, evidence = standing.decision, standing.estimate, standing.evidence
            found[category] = {
                "prior": standing.prior, "threshold": decision.threshold, "certified": decision.certified,
                "bound": round(decision.bound, 5), "observations": evidence.observations,
                "observed_false": sum(evidence.false), "estimate": round(estimate.rate, 5),
                "low": round(estimate.low, 5), "high": round(estimate.high, 5), "hits": estimate.hits,
                "explored": evidence.explored, "judged": evidence.judged, "cells": standing.cells,
                "vouched": {"served": evidence.vouched_served, "checked": evidence.vouched_seen,
                            "false": evidence.vouched_false},
                "judge_noise": {"checked": evidence.repeat_seen, "different": evidence.repeat_false,
                                "subtracted": round(learning.judge_noise(evidence).rate, 5)},
            }
        return found

    def standings(self) -> dict[str, Standing]:
        """Per category with evidence: its prior, live decision, estimate and cells' thresholds."""
        policy = self._policy()
        found = {}
        for key, evidence in self._evidence.items():
            category, cell = split_key(key)
            if cell or category not in policy.categories:
                continue
            rule = self.rule(category)
            prior = policy.categories[category].threshold
            decision = learning.decide(evidence, prior, rule)
            cells = {split_key(k)[1]: t for k, t in self._thresholds.items()
                     if split_key(k)[0] == category and split_key(k)[1] and t != decision.threshold}
            found[category] = Standing(prior, decision, learning.estimate(evidence, rule.confidence), evidence, cells)
        return found

