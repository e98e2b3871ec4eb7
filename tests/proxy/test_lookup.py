"""proxy/lookup.py with fakes for the store, the index, the embedder and the classifier: what the
tiers find for a request, with no proxy, no Redis and no model. The policy and the verifier are real."""

from __future__ import annotations

import time

import numpy as np
import pytest

from catcache.categories.classifier import Classification
from catcache.index.hnsw import Entry, Neighbour
from catcache.policy.loader import parse_policy
from catcache.proxy.canonical import canonicalise
from catcache.proxy.exchange import Exchange
from catcache.proxy.lookup import Tiers, look_up, vouched
from catcache.proxy.tenancy import scoped
from catcache.reports.record import Outcome
from catcache.store.documents import Document
from catcache.store.health import CacheUnavailable

POLICY = """
backends: {small: {url: 'http://small/v1', role: small}}
classifier: {default: general}
categories:
  general: {threshold: 0.90, ttl: 3600, ic: {low: 0.70}, verify: {enabled: false}}
  strict: {threshold: 0.97, ttl: 60, verify: {enabled: false}}
  guarded: {threshold: 0.90, verify: {enabled: true, verifier: lexical-guard}}
  team: {threshold: 0.90, shared: true, verify: {enabled: false}}
  private: {cacheable: false}
"""
QUERY = "how do I sort a list in python by the second item"
QUERY_VECTOR = np.array([1.0, 0.0, 0.0], np.float32)


def at(similarity: float) -> np.ndarray:
    """A unit vector whose cosine with QUERY_VECTOR is `similarity`."""
    return np.array([similarity, np.sqrt(1 - similarity ** 2), 0.0], np.float32)


class FakeStore:
    def __init__(self, *docs: Document):
        self.docs = {doc.doc_id: doc for doc in docs}
        self.asked: list[list[str]] = []

    async def get_many(self, ids: list[str]) -> list[Document | None]:
        self.asked.append(list(ids))
        return [self.docs.get(doc_id) for doc_id in ids]


class FakeGuard:
    def __init__(self, healthy: bool = True, fail: bool = False):
        self.healthy, self.fail = healthy, fail

    async def run(self, call, timeout=None):
        if self.fail:
            call.close()
            raise CacheUnavailable("redis went away")
        return await call


class FakeIndex:
    """Exact cosine search over a few entries; no `remove`, so a lookup that tried would fail."""

    def __init__(self, entries: dict[str, list[tuple[str, str, np.ndarray]]]):
        self.entries = entries

    def categories(self) -> list[str]:
        return [name for name, entries in self.entries.items() if entries]

    def search(self, category: str, vector: np.ndarray, scope_key: str, k: int, floor: float) -> list[Neighbour]:
        found = [Neighbour(Entry(doc_id, scope), float(v @ vector)) for doc_id, scope, v in self.entries[category]
                 if scope == scope_key and float(v @ vector) >= floor]
        return sorted(found, key=lambda n: -n.similarity)[:k]


class FakeEmbedder:
    def __init__(self):
        self.embedded: list[str] = []

    async def embed(self, text: str) -> np.ndarray:
        self.embedded.append(text)
        return QUERY_VECTOR


class FakeClassifier:
    def __init__(self, category: str = "general", ruled: str | None = None):
        self.category, self.ruled = category, ruled

    def by_rules(self, traits) -> Classification | None:
        return Classification(self.ruled, 1.0, "header") if self.ruled else None

    def classify(self, traits, vector) -> Classification:
        return Classification(self.category, 0.9, "centroid")


def exchange(text: str = QUERY, tenant: str | None = None, control: str | None = None) -> Exchange:
    body = {"model": "m", "messages": [{"role": "user", "content": text}]}
    return Exchange(endpoint="chat", path="/v1/chat/completions", body=body, canon=canonicalise("chat", body),
                    headers={}, tenant=tenant, stream=False, include_usage=False, control=control)


def doc(doc_id: str, category: str, query: str = QUERY, scope_key: str = "", created: float | None = None) -> Document:
    return Document(doc_id, "chat", "m", category, scope_key, query, {"choices": [{"text": doc_id}]},
                    created=time.time() if created is None else created)


async def find(asked: Exchange, store: FakeStore, index: FakeIndex | None = None,
               classifier: FakeClassifier | None = None, guard: FakeGuard | None = None,
               embedder: FakeEmbedder | None = None, waiting: int = 0):
    tiers = Tiers(parse_policy(POLICY, "policies.yaml"), classifier or FakeClassifier(), store,
                  guard or FakeGuard(), index or FakeIndex({}), embedder or FakeEmbedder())
    return await look_up(tiers, asked, waiting)


async def test_an_exact_hit_beats_a_closer_semantic_one_and_embeds_nothing():
    asked = exchange()
    exact = doc(asked.canon.functional_key, "general")
    store = FakeStore(exact, doc("paraphrase", "general"))
    embedder = FakeEmbedder()
    index = FakeIndex({"general": [("paraphrase", asked.canon.scope_key, at(1.0))]})
    found = await find(asked, store, index, embedder=embedder)
    assert (found.outcome, found.doc) == (Outcome.HIT_EXACT, exact)
    assert found.category == "general" and found.doc_id == asked.canon.functional_key
    assert embedder.embedded == [] and found.vector is None


async def test_the_exact_tier_reads_the_tenants_own_entry_and_only_shared_unscoped_ones():
    asked = exchange(tenant="alice")
    key = asked.canon.functional_key
    own = doc(scoped(key, "alice"), "general")
    assert (await find(asked, FakeStore(own))).doc == own

    unscoped_private = doc(key, "general")  # another tenant's? no: stored without a tenant, not shared
    found = await find(exchange(tenant="alice"), FakeStore(unscoped_private))
    assert found.outcome == Outcome.MISS and found.doc is None

    unscoped_shared = doc(key, "team")
    found = await find(exchange(tenant="alice"), FakeStore(unscoped_shared))
    assert (found.outcome, found.doc, found.category) == (Outcome.HIT_EXACT, unscoped_shared, "team")
    assert found.doc_id == key, "a shared category's key is not scoped to the tenant"

    store = FakeStore()
    await find(exchange(tenant=None), store)
    assert store.asked[0] == [key], "without a tenant only the plain key is read"


async def test_a_neighbour_from_another_category_is_judged_by_the_stricter_policy():
    asked = exchange()
    scope = asked.canon.scope_key
    store = FakeStore(doc("mine", "general", scope_key=scope), doc("theirs", "strict", scope_key=scope))

    found = await find(asked, store, FakeIndex({"strict": [("theirs", scope, at(0.95))]}))
    assert found.outcome == Outcome.MISS, "0.95 passes general's 0.90 but not strict's 0.97"
    assert found.similarity is None, "strict's index is searched from the stricter floor"

    found = await find(exchange(), store, FakeIndex({"general": [("mine", scope, at(0.95))]}))
    assert (found.outcome, found.doc.doc_id) == (Outcome.HIT_SEMANTIC, "mine")

    old = FakeStore(doc("theirs", "strict", scope_key=scope, created=time.time() - 120))
    found = await find(exchange(), old, FakeIndex({"strict": [("theirs", scope, at(0.99))]}))
    assert found.outcome == Outcome.MISS, "alive under strict's TTL of 60 s? no: 120 s old is past it"


async def test_the_ic_band_holds_the_near_misses_above_low_most_similar_first():
    asked = exchange()
    scope = asked.canon.scope_key
    index = FakeIndex({"general": [("far", scope, at(0.60)), ("near", scope, at(0.85)),
                                   ("nearer", scope, at(0.88)), ("mid", scope, at(0.75)),
                                   ("other-scope", "elsewhere", at(0.89))]})
    found = await find(asked, FakeStore(), index)
    assert found.outcome == Outcome.MISS and found.doc is None
    assert [doc_id for _, doc_id in found.band] == ["nearer", "near", "mid"]
    assert [round(s, 2) for s, _ in found.band] == [0.88, 0.85, 0.75]
    assert found.similarity == pytest.approx(0.88)


async def test_the_verifier_vetoes_a_neighbour_and_says_why():
    asked = exchange()
    scope = asked.canon.scope_key
    refused = doc("third", "guarded", query=QUERY.replace("second", "third"), scope_key=scope)
    found = await find(asked, FakeStore(refused), FakeIndex({"guarded": [("third", scope, at(0.96))]}),
                       FakeClassifier("guarded"))
    assert found.outcome == Outcome.MISS and found.doc is None
    assert found.verdict.startswith("numbers differ")

    accepted = doc("same", "guarded", query=QUERY, scope_key=scope)
    found = await find(exchange(), FakeStore(accepted), FakeIndex({"guarded": [("same", scope, at(0.96))]}),
                       FakeClassifier("guarded"))
    assert (found.outcome, found.doc, found.verdict) == (Outcome.HIT_SEMANTIC, accepted, None)


async def test_an_entry_gone_from_redis_is_reported_stale_not_removed():
    asked = exchange()
    index = FakeIndex({"general": [("gone", asked.canon.scope_key, at(0.95))]})
    found = await find(asked, FakeStore(), index)
    assert found.outcome == Outcome.MISS and found.stale == [("general", "gone")]
    assert index.entries["general"], "the lookup leaves the index alone"


async def test_bypasses_keep_what_was_learnt():
    assert (await find(exchange(control="no-store"), FakeStore())).outcome == Outcome.BYPASS
    assert (await find(exchange(), FakeStore(), guard=FakeGuard(healthy=False))).outcome == Outcome.BYPASS

    found = await find(exchange(), FakeStore(), classifier=FakeClassifier(ruled="private"))
    assert (found.outcome, found.category) == (Outcome.BYPASS, "private")

    found = await find(exchange(control="no-cache"), FakeStore(), guard=FakeGuard(fail=True))
    assert (found.outcome, found.category) == (Outcome.MISS, "general"), "no-cache reads no Redis"

    found = await find(exchange(), FakeStore(), guard=FakeGuard(fail=True))
    assert found.outcome == Outcome.BYPASS and found.category == ""


@pytest.mark.parametrize("agreed, disagreed, similarity, served", [
    (None, None, 0.95, False),   # no evidence of its own: the threshold decides
    (0.93, None, 0.915, True),   # within the margin under the lowest query that agreed
    (0.93, None, 0.905, False),  # further under it
    (0.93, 0.92, 0.915, False),  # a query there or above wanted another answer
    (0.93, 0.90, 0.915, True),   # one that did lay lower
])
def test_an_entry_vouches_for_the_band_only_on_its_own_evidence(agreed, disagreed, similarity, served):
    doc = Document("d", "chat", "m", "general", "s", "q", {}, agreed=agreed, disagreed=disagreed)
    assert vouched(doc, similarity, 0.02) is served
    assert vouched(doc, similarity, None) is False
