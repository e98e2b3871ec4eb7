"""The cache tiers for one request, in order: rules, exact, embed, classify, semantic (+ verifier),
IC band. Reads only: what the tiers found comes back as a `Found`; recording it, answering with
it and storing are the pipeline's. A fault of the cache makes the request a bypass, never an error.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from catcache.categories.classifier import Classification, Classifier, RequestTraits
from catcache.index.embedder import Embedder
from catcache.index.hnsw import Neighbour
from catcache.index.semantic import SemanticIndex
from catcache.policy.schema import Category, Policy
from catcache.proxy.exchange import Band, Exchange, Found
from catcache.proxy.tenancy import scoped
from catcache.reports.record import Outcome
from catcache.store.documents import Document, DocumentStore
from catcache.store.health import CacheUnavailable, RedisGuard
from catcache.verify.question import answer_kind
from catcache.verify.verifiers import load_verifier

if TYPE_CHECKING:
    from catcache.proxy.learner import Learner
    from catcache.proxy.state import ProxyState

log = logging.getLogger("catcache.proxy")
NEIGHBOURS = 8
VERIFY_AT_MOST = 3


@dataclass(frozen=True)
class Tiers:
    """What a lookup reads: the live policy and classifier, the store and the index."""

    policy: Policy
    classifier: Classifier
    store: DocumentStore
    guard: RedisGuard
    index: SemanticIndex
    embedder: Embedder
    learner: Learner | None = None  # None: the policy's thresholds as they are, nothing learned

    @classmethod
    def of(cls, state: ProxyState) -> Tiers:
        return cls(state.policy, state.live.classifier, state.store, state.guard, state.index, state.embedder,
                   state.learner)


def adaptive_relief(policy: Policy, waiting: int) -> float:
    """0..1: how far the adaptive policy relaxes thresholds and stretches TTLs, from the number of
    requests the large backend has in hand (1 at `queue_high` and beyond)."""
    if not policy.adaptive.enabled:
        return 0.0
    return min(1.0, waiting / policy.adaptive.queue_high)


# Told the category the rules gave, if any; the lookup goes on once it returns (proxy/speculation.py).
ExactMissed = Callable[[str | None], Awaitable[None]]


async def look_up(tiers: Tiers, exchange: Exchange, waiting: int, exact_missed: ExactMissed | None = None) -> Found:
    """What the tiers found for `exchange`; `waiting` is the large backend's load (adaptive policy).
    `exact_missed` is awaited once the exact tier has missed, before the embedding."""
    return await _Lookup(tiers, exchange, waiting, exact_missed).run()


class _Lookup:
    """One request's way through the tiers; `found` grows as they learn more."""

    def __init__(self, tiers: Tiers, exchange: Exchange, waiting: int, exact_missed: ExactMissed | None = None):
        self.tiers, self.exchange, self.policy = tiers, exchange, tiers.policy
        self.exact_missed = exact_missed
        # How far thresholds are lowered under load: the adaptive policy's relief, as a similarity.
        self.threshold_step = adaptive_relief(self.policy, waiting) * self.policy.adaptive.max_threshold_step
        self.found = Found(Outcome.BYPASS)

    async def run(self) -> Found:
        try:
            return await self._tiers()
        except CacheUnavailable:
            pass
        except Exception:  # noqa: BLE001 - a fault of the cache must never become the client's error
            log.exception("cache lookup failed; the request passes through")
        return replace(self.found, outcome=Outcome.BYPASS, doc=None, band=[])

    def _as(self, outcome: Outcome, doc: Document | None = None, band: Band | None = None) -> Found:
        self.found = replace(self.found, outcome=outcome, doc=doc, band=band or [])
        return self.found

    async def _tiers(self) -> Found:
        tiers, exchange, canon = self.tiers, self.exchange, self.exchange.canon
        if exchange.control == "no-store" or canon.n > 1 or not tiers.guard.healthy:
            return self._as(Outcome.BYPASS)
        traits = RequestTraits(canon.model, exchange.path, exchange.category_header, canon.query_text,
                               canon.has_code)
        ruled = tiers.classifier.by_rules(traits)
        if ruled is not None and not self.policy.category(ruled.category).cacheable:
            self._classify(ruled)
            return self._as(Outcome.BYPASS)
        if exchange.control != "no-cache":
            doc = await self._exact()
            if doc is not None:
                return self._as(Outcome.HIT_EXACT, doc)
        if self.exact_missed is not None:
            await self.exact_missed(ruled.category if ruled is not None else None)
        if canon.query_text:
            self.found = replace(self.found, vector=await tiers.embedder.embed(canon.query_text))
        self._classify(ruled or tiers.classifier.classify(traits, self.found.vector))
        if not self.found.rules.cacheable:
            return self._as(Outcome.BYPASS)
        if exchange.control == "no-cache" or self.found.vector is None:
            return self._as(Outcome.MISS)
        doc, band = await self._semantic()
        return self._as(Outcome.HIT_SEMANTIC, doc) if doc is not None else self._as(Outcome.MISS, band=band)

    def _classify(self, classification: Classification) -> None:
        """Take the category, its rules, and the keys scoped as the rules say (shared or the tenant's)."""
        policy, canon = self.policy, self.exchange.canon
        category = classification.category if classification.category in policy.categories \
            else policy.classifier.default
        rules = policy.category(category)
        tenant = None if rules.shared else self.exchange.tenant
        self.found = replace(self.found, category=category, rules=rules,
                             doc_id=scoped(canon.functional_key, tenant), scope_key=scoped(canon.scope_key, tenant))

    async def _exact(self) -> Document | None:
        """The tenant's own entry, or a shared category's entry; one Redis round trip."""
        key, tenant, categories = self.exchange.canon.functional_key, self.exchange.tenant, self.policy.categories
        candidates = [scoped(key, tenant)] + ([key] if tenant else [])
        docs = await self.tiers.guard.run(self.tiers.store.get_many(candidates))
        for doc in docs:
            if doc is None or doc.category not in categories:
                continue
            rules = categories[doc.category]
            if not rules.cacheable or (doc.doc_id == key and tenant and not rules.shared):
                continue
            self._classify(Classification(doc.category, 1.0, "exact"))
            return doc
        return None

    async def _semantic(self) -> tuple[Document | None, Band]:
        """The verified neighbour to serve, else the neighbours inside the IC band.

        A paraphrase may have been classified into another category when it was stored, so every
        category's index is searched; a neighbour from another category is judged by the stricter
        of the two policies (see `strictest`)."""
        tiers, exchange, step = self.tiers, self.exchange, self.threshold_step
        self.found = found = replace(self.found, cell=answer_kind(exchange.canon.query_text))
        learner = tiers.learner
        # Near misses this far under the threshold are judged when their fresh answer comes back.
        band = learner.band() if learner is not None and learner.enabled else 0.0
        mine = learned(learner, found.category, found.cell, found.rules)
        candidates: list[tuple[str, Neighbour, Category]] = []
        for name in tiers.index.categories():
            their_rules = self.policy.categories.get(name)
            if their_rules is None or not their_rules.cacheable:
                continue
            rules = strictest(mine, learned(learner, name, found.cell, their_rules))
            floor = rules.threshold - step - band
            if name == found.category and rules.ic:
                floor = min(floor, rules.ic.low)
            tenant = None if their_rules.shared else exchange.tenant
            neighbours = tiers.index.search(name, found.vector, scoped(exchange.canon.scope_key, tenant),
                                            NEIGHBOURS, floor)
            candidates += [(name, n, rules) for n in neighbours]
        if not candidates:
            return None, []
        candidates.sort(key=lambda c: -c[1].similarity)
        self.found = replace(self.found, similarity=candidates[0][1].similarity)
        above = [c for c in candidates if c[1].similarity >= c[2].threshold - step - band][:VERIFY_AT_MOST]
        if above:
            docs = await tiers.guard.run(tiers.store.get_many([n.entry.doc_id for _, n, _ in above]))
            for (name, neighbour, rules), doc in zip(above, docs):
                if doc is None:
                    self.found = replace(self.found, stale=self.found.stale + [(name, neighbour.entry.doc_id)])
                    continue
                if name != found.category and time.time() - doc.created > rules.ttl:
                    continue  # alive under its own category's TTL, too old for this query's
                verdict = verify(rules, exchange.canon.query_text, doc, neighbour.similarity)
                if verdict is None:
                    self.found = replace(self.found, best=(neighbour.similarity, doc))
                    if neighbour.similarity < rules.threshold - step:
                        margin = learner.entry_margin(found.category) if learner is not None else None
                        if not vouched(doc, neighbour.similarity, margin):
                            break  # the best accepted neighbour lies in the band: a near miss to judge
                        self.found = replace(self.found, vouched=True)
                    self.found = replace(self.found, similarity=neighbour.similarity)
                    return doc, []
                self.found = replace(self.found, verdict=self.found.verdict or verdict)
        low = found.rules.ic.low if found.rules.ic else None
        band = [(n.similarity, n.entry.doc_id) for _, n, _ in candidates if low is not None and n.similarity >= low]
        return None, band[:NEIGHBOURS]


def learned(learner: Learner | None, category: str, cell: str, rules: Category) -> Category:
    """`rules` with the threshold the learner has learned for `category` (its prior until then)."""
    if learner is None:
        return rules
    threshold = learner.threshold(category, cell, rules.threshold)
    return rules if threshold == rules.threshold else rules.model_copy(update={"threshold": threshold})


def vouched(doc: Document, similarity: float, margin: float | None) -> bool:
    """Whether the entry's own evidence serves a query in the band under the threshold: judged
    queries agreed with it down to `doc.agreed`, this one lies at most `margin` below that, and
    none judged to want another answer lay there or above (vCache's per-entry threshold, in its
    simplest form; docs/verification.md)."""
    if margin is None or doc.agreed is None:
        return False
    lowest = doc.agreed - margin
    return similarity >= lowest and (doc.disagreed is None or doc.disagreed < lowest)


def strictest(rules: Category, their_rules: Category) -> Category:
    """The rules a neighbour stored under `their_rules` must pass to answer a query under `rules`:
    the higher threshold, the shorter TTL and, where either verifies, a verifier (the query's
    first). Only the query's IC band applies: near misses are answered under its own policy."""
    if their_rules is rules:
        return rules
    check = rules.verify if rules.verify.enabled or not their_rules.verify.enabled else their_rules.verify
    return rules.model_copy(update={"threshold": max(rules.threshold, their_rules.threshold),
                                    "ttl": min(rules.ttl, their_rules.ttl), "verify": check})


def verify(rules: Category, query: str, doc: Document, similarity: float) -> str | None:
    """None to serve `doc` for `query`, else the reason it was refused."""
    check = rules.verify
    if not check.enabled or check.verifier == "none":
        return None
    # On the event loop: the verifiers are pure Python of ~0.1 ms (bench/README, section 6), which
    # holds the GIL in a worker thread too, and a hop to one and back cost more than the check.
    verdict = load_verifier(check.verifier).check(query, doc.query, similarity, check.threshold)
    return None if verdict.accepted else verdict.reason
