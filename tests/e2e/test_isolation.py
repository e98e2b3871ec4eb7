"""Who is served what, for every tenancy mode and every tier (issue 21, findings 5 and 10).

One proxy per tenancy mode (`api_key`, `header`, `none`), each served by uvicorn in a thread of
its own (so none sits frozen while another is asked), on the session's Redis, in front of the
test backend, which numbers every answer it generates: an answer generated for one
caller and served to another is a cross-tenant hit. Each test asks questions of its own.

`isolated(a, b)` is the property: b never receives an answer generated for a, on the exact tier
and on the semantic tier (the same question in lower case: the embedder is uncased, so it is a
neighbour at similarity 1, with another exact key), while a's own answers are served back to a
from both tiers (so the tiers were exercised, not skipped). `shared(a, b)` is its opposite, for
the modes and categories that share.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest
import yaml

from catcache.proxy.app import Settings, create_app

from catcache.testing.fuzz import ServedApp

POLICIES = Path(__file__).parents[1] / "data" / "policies-e2e.yaml"
TOKEN = "admin-token-for-isolation"
Who = dict[str, str]


@contextmanager
def running_proxies(backend_url: str, redis_url: str, directory: Path) -> Iterator[dict[str, httpx.Client]]:
    """A client of a running proxy per tenancy mode (also scripts/mutate.py's)."""
    base = yaml.safe_load(POLICIES.read_text())
    running = {}
    with ExitStack() as stack:
        for mode in ("api_key", "header", "none"):
            policy = dict(base, tenancy={"by": mode, "header": "x-tenant"})
            path = directory / f"policies-{mode}.yaml"
            path.write_text(yaml.safe_dump(policy))
            served = stack.enter_context(ServedApp(create_app(Settings(
                backend=backend_url, policies=path, redis_url=redis_url, admin_token=TOKEN))))
            running[mode] = stack.enter_context(httpx.Client(base_url=served.url, timeout=60))
        yield running


@pytest.fixture(scope="module")
def proxies(backend, server_redis_url, tmp_path_factory) -> Iterator[dict[str, httpx.Client]]:
    with running_proxies(backend.base_url, server_redis_url, tmp_path_factory.mktemp("isolation")) as running:
        yield running


def ask(proxy: httpx.Client, who: Who, text: str, stream: bool = False) -> tuple[str, str, str | None]:
    """(x-catcache, the answer's text, x-catcache-key), through the raw client: the SDK always
    sends an Authorization header, and these callers send other credentials or none."""
    body = {"model": "test-model", "messages": [{"role": "user", "content": text}], "stream": stream}
    response = proxy.post("/v1/chat/completions", json=body, headers=who)
    assert response.status_code == 200, response.text[:300]
    if stream:
        answer = "".join(_deltas(response.text))
    else:
        answer = response.json()["choices"][0]["message"]["content"]
    return response.headers["x-catcache"], answer, response.headers.get("x-catcache-key")


def _deltas(sse: str) -> Iterator[str]:
    import orjson

    for line in sse.splitlines():
        if line.startswith("data: {"):
            for choice in orjson.loads(line[6:]).get("choices", []):
                yield choice.get("delta", {}).get("content") or ""


def question(topic: str) -> str:
    return f"What is the capital of {topic} {uuid.uuid4().hex[:8]}?"


def isolated(proxy: httpx.Client, a: Who, b: Who, topic: str = "France") -> None:
    text = question(topic)
    outcome, mine, _ = ask(proxy, a, text)
    assert outcome == "miss"
    outcome, theirs, _ = ask(proxy, b, text)
    assert theirs != mine, f"exact tier: {b} was served {a}'s answer"
    assert ask(proxy, a, text)[:2] == ("hit-exact", mine)
    assert ask(proxy, b, text)[:2] == ("hit-exact", theirs)
    assert ask(proxy, a, text, stream=True)[:2] == ("hit-exact", mine)
    # The semantic tier: another exact key, a neighbour at similarity 1.
    outcome, again, _ = ask(proxy, a, text.lower())
    assert (outcome, again) == ("hit-semantic", mine)
    other = question(topic)
    ask(proxy, a, other)
    outcome, answer, _ = ask(proxy, b, other.lower())
    assert outcome != "hit-semantic" and answer != mine, f"semantic tier: {b} was served {a}'s answer"


def shared(proxy: httpx.Client, a: Who, b: Who, topic: str = "Spain") -> None:
    text = question(topic)
    _, mine, _ = ask(proxy, a, text)
    assert ask(proxy, b, text)[:2] == ("hit-exact", mine)
    assert ask(proxy, b, text.lower())[:2] == ("hit-semantic", mine)


def bearer(key: str) -> Who:
    return {"authorization": f"Bearer {key}"}


def key() -> str:
    return f"sk-isolation-{uuid.uuid4().hex}"


def tenant(credential: str) -> str:
    """The tenant catcache records for a credential: a hash, never the key itself."""
    return hashlib.sha256(credential.encode()).hexdigest()[:32]


# -- tenancy: api_key (the default) --------------------------------------------------------------

def test_api_key_mode_keeps_bearer_keys_apart(proxies) -> None:
    isolated(proxies["api_key"], bearer(key()), bearer(key()))


def test_api_key_mode_keeps_keyless_callers_and_keyed_ones_apart(proxies) -> None:
    alice = bearer(key())
    isolated(proxies["api_key"], {}, alice)
    isolated(proxies["api_key"], alice, {})


@pytest.mark.parametrize("header", ["api-key", "x-api-key"])
def test_api_key_mode_reads_the_other_credential_headers(proxies, header) -> None:
    """Azure OpenAI's SDK sends `api-key`, Anthropic-style clients `x-api-key`: each key is a tenant."""
    proxy = proxies["api_key"]
    isolated(proxy, {header: key()}, {header: key()})
    isolated(proxy, {header: key()}, {})
    isolated(proxy, {}, {header: key()})


def test_one_key_is_one_tenant_whichever_header_carries_it(proxies) -> None:
    credential = key()
    shared(proxies["api_key"], bearer(credential), {"api-key": credential})


def test_a_shared_category_is_shared_across_keys(proxies) -> None:
    public = {"x-catcache-category": "public"}
    shared(proxies["api_key"], bearer(key()) | public, bearer(key()) | public)
    shared(proxies["api_key"], bearer(key()) | public, public)


# -- tenancy: header ---------------------------------------------------------------------------

def test_header_mode_keeps_tenants_apart_whatever_their_keys(proxies) -> None:
    same_key = bearer(key())
    isolated(proxies["header"], {"x-tenant": "t1"} | same_key, {"x-tenant": "t2"} | same_key)
    isolated(proxies["header"], {"x-tenant": "t1"}, same_key)  # no tenant header: the anonymous scope


def test_header_mode_shares_within_a_tenant_across_keys(proxies) -> None:
    tenant_header = {"x-tenant": f"t-{uuid.uuid4().hex}"}
    shared(proxies["header"], tenant_header | bearer(key()), tenant_header | bearer(key()))


# -- tenancy: none -----------------------------------------------------------------------------

def test_none_mode_is_one_cache_for_every_caller(proxies) -> None:
    shared(proxies["none"], bearer(key()), bearer(key()))
    shared(proxies["none"], {"api-key": key()}, {})


# -- feedback and purge --------------------------------------------------------------------------

def feedback(proxy: httpx.Client, who: Who, entry: str, correct: bool = False) -> int:
    return proxy.post("/v1/cache/feedback", json={"key": entry, "correct": correct}, headers=who).status_code


@pytest.mark.parametrize("mode, alice, bob", [
    ("api_key", bearer("sk-feedback-alice"), bearer("sk-feedback-bob")),
    ("api_key", {"api-key": "sk-feedback-carol"}, {"x-api-key": "sk-feedback-dan"}),
    ("api_key", bearer("sk-feedback-erin"), {}),
    ("api_key", {}, bearer("sk-feedback-frank")),
    ("header", {"x-tenant": "feedback-1"}, {"x-tenant": "feedback-2"}),
])
def test_feedback_reaches_only_the_entries_its_caller_could_be_served(proxies, mode, alice, bob) -> None:
    proxy = proxies[mode]
    text = question("Peru")
    _, mine, entry = ask(proxy, alice, text)
    assert entry is not None
    assert feedback(proxy, bob, entry) == 404, "another tenant could report (and evict) this entry"
    assert ask(proxy, alice, text)[:2] == ("hit-exact", mine)
    assert feedback(proxy, alice, entry) == 200
    assert ask(proxy, alice, text)[0] == "miss", "the entry its tenant reported wrong was still served"


@pytest.mark.parametrize("mode, alice, bob, category", [
    ("none", bearer("sk-feedback-gina"), bearer("sk-feedback-hal"), {}),
    ("none", {"api-key": "sk-feedback-ivy"}, {}, {}),
    ("api_key", bearer("sk-feedback-jo"), bearer("sk-feedback-kim"), {"x-catcache-category": "public"}),
    ("api_key", bearer("sk-feedback-lee"), {}, {"x-catcache-category": "public"}),
])
def test_feedback_reaches_an_entry_its_caller_could_be_served(proxies, mode, alice, bob, category) -> None:
    """One cache for everyone (`tenancy.by: none`), or a shared category: anyone it is served to may report it."""
    proxy = proxies[mode]
    text = question("Fiji")
    _, mine, entry = ask(proxy, alice | category, text)
    assert ask(proxy, bob | category, text)[:2] == ("hit-exact", mine)
    assert feedback(proxy, bob, entry) == 200
    assert ask(proxy, alice | category, text)[0] == "miss", "the reported entry was still served"


def test_an_unscoped_entry_of_a_category_that_is_not_shared_is_no_tenants_to_report(proxies) -> None:
    _, _, entry = ask(proxies["none"], {}, question("Mali"))
    for who in (bearer(key()), {}):
        assert feedback(proxies["api_key"], who, entry) == 404


def test_purge_by_tenant_removes_only_that_tenants_entries(proxies) -> None:
    proxy = proxies["api_key"]
    alice, bob = key(), key()
    text = question("Chile")
    ask(proxy, bearer(alice), text)
    _, bobs, _ = ask(proxy, bearer(bob), text)
    purged = proxy.post("/admin/purge", json={"tenant": tenant(alice)}, headers=bearer(TOKEN))
    assert purged.status_code == 200 and purged.json()["purged"] == 1, purged.text
    assert ask(proxy, bearer(alice), text)[0] == "miss"
    assert ask(proxy, bearer(bob), text)[:2] == ("hit-exact", bobs)


def test_entries_of_a_shared_cache_reach_no_tenant(proxies) -> None:
    """An unscoped entry of a category that is not shared (stored by a `tenancy: none` proxy on the
    same Redis, or before tenants were kept) is served to no keyed or anonymous tenant."""
    text = question("Norway")
    _, everyones, _ = ask(proxies["none"], {}, text)
    for who in (bearer(key()), {}, {"api-key": key()}):
        outcome, answer, _ = ask(proxies["api_key"], who, text)
        assert answer != everyones, f"{who} was served the shared cache's answer ({outcome})"
    assert ask(proxies["header"], {"x-tenant": "t-norway"}, text)[1] != everyones


def test_a_neighbour_stored_under_a_longer_ttl_is_too_old_for_a_shorter_one(proxies) -> None:
    """What is served, not only to whom: an entry stored under `default` (1 h) answers a `weather`
    paraphrase (2 s) only while it is younger than weather's TTL."""
    import time

    proxy, who = proxies["api_key"], bearer(key())
    text = f"Weather in Oslo on day {uuid.uuid4().hex[:6]}?"
    outcome, stored, _ = ask(proxy, who | {"x-catcache-category": "default"}, text)
    assert outcome == "miss"
    assert ask(proxy, who, text.lower())[:2] == ("hit-semantic", stored)  # classified weather: a neighbour from default
    weather = f"Weather in Lima on day {uuid.uuid4().hex[:6]}?"
    assert ask(proxy, who, weather)[0] == "miss"  # stored under weather's own 2 s
    time.sleep(2.5)
    outcome, answer, _ = ask(proxy, who, text.lower())
    assert answer != stored, "a neighbour older than the query's category's TTL was served"
    assert ask(proxy, who, weather)[0] == "miss", "an entry outlived its category's TTL"
