"""Small pure parts of the request pipeline."""

from __future__ import annotations

import asyncio

import pytest

from catcache.policy.loader import parse_policy
from catcache.proxy.lookup import adaptive_relief
from catcache.proxy.tenancy import cache_control, scoped


def test_adaptive_relief_grows_with_the_backend_queue_and_is_bounded():
    policy = parse_policy("adaptive: {enabled: true, queue_high: 10}\n", "policies.yaml")
    assert adaptive_relief(policy, 0) == 0.0
    assert adaptive_relief(policy, 5) == pytest.approx(0.5)
    assert adaptive_relief(policy, 50) == 1.0
    assert adaptive_relief(parse_policy("adaptive: {enabled: false}\n", "p"), 50) == 0.0


@pytest.mark.parametrize(("header", "expected"), [
    ("", None), ("no-cache", "no-cache"), ("No-Store", "no-store"),
    ("max-age=0, no-cache", "no-cache"), ("no-cache, no-store", "no-store"),
])
def test_cache_control(header, expected):
    assert cache_control(header) == expected


@pytest.mark.parametrize(("header", "pragma", "expected"), [
    ("no-store;", "", "no-store"), ("max-age=0; no-store", "", "no-store"), ("no-cache;", "", "no-cache"),
    ("", "no-cache", "no-cache"), ("", "No-Cache", "no-cache"), ("no-store", "no-cache", "no-store"), ("", "x", None),
])
def test_cache_control_takes_semicolons_and_pragma(header, pragma, expected):
    """`Cache-Control: no-store;` and HTTP/1.0's `Pragma: no-cache` were ignored (issue 21 #9)."""
    assert cache_control(header, pragma) == expected


def test_tenant_scoping_separates_keys_and_keeps_shared_ones():
    assert scoped("k", None) == "k"
    alice, bob = scoped("k", "alice"), scoped("k", "bob")
    assert alice != bob and alice != "k" and bob != "k"


def test_a_reload_keeps_unchanged_backends_and_closes_replaced_ones_once_idle():
    from types import SimpleNamespace

    import numpy as np

    from catcache.proxy.state import build_live, close_when_idle

    no_exemplars = SimpleNamespace(encode=lambda texts: np.zeros((len(texts), 384), np.float32))
    small = "backends: {{small: {{url: '{}', role: small}}}}\n"
    before = build_live(parse_policy(small.format("http://small/v1"), "p"), no_exemplars, "http://large/v1")
    after = build_live(parse_policy(small.format("http://other/v1"), "p"), no_exemplars, "http://large/v1",
                       before.backends)
    assert after.backends["large"] is before.backends["large"], "an unchanged backend keeps its pool"
    assert after.backends["small"] is not before.backends["small"]

    replaced = before.backends["small"]
    replaced.in_flight = 1

    async def scenario() -> None:
        closing = asyncio.create_task(close_when_idle(replaced, poll_s=0.01))
        await asyncio.sleep(0.05)
        assert not closing.done() and not replaced._http.is_closed, "a request is still in flight"
        replaced.in_flight = 0
        await asyncio.wait_for(closing, 1)
        assert replaced._http.is_closed

    asyncio.run(scenario())


def _request(*headers: tuple[str, str]):
    from starlette.requests import Request

    return Request({"type": "http", "headers": [(k.encode(), v.encode()) for k, v in headers]})


def test_every_credential_header_names_a_tenant():
    from catcache.proxy.tenancy import ANONYMOUS, tenant_of

    policy = parse_policy("tenancy: {by: api_key, credentials: [x-goog-api-key]}\n", "p")
    alice = tenant_of(_request(("authorization", "Bearer sk-alice")), policy)
    assert alice == tenant_of(_request(("api-key", "sk-alice")), policy) == tenant_of(_request(("x-api-key", "sk-alice")), policy)
    assert alice == tenant_of(_request(("x-goog-api-key", "sk-alice")), policy)
    assert alice != tenant_of(_request(("api-key", "sk-bob")), policy)
    assert tenant_of(_request(("api-key", "sk-alice"), ("x-api-key", "sk-bob")), policy) not in (alice, ANONYMOUS)
    assert tenant_of(_request(), policy) == tenant_of(_request(("authorization", "Bearer ")), policy) == ANONYMOUS
    assert "sk-alice" not in alice


def test_tenancy_modes():
    from catcache.proxy.tenancy import ANONYMOUS, tenant_of

    by_header = parse_policy("tenancy: {by: header, header: x-team}\n", "p")
    team = tenant_of(_request(("x-team", "blue"), ("authorization", "Bearer sk-1")), by_header)
    assert team == tenant_of(_request(("x-team", "blue"), ("authorization", "Bearer sk-2")), by_header)
    assert team != tenant_of(_request(("x-team", "red")), by_header)
    assert tenant_of(_request(("authorization", "Bearer sk-1")), by_header) == ANONYMOUS
    assert tenant_of(_request(("authorization", "Bearer sk-1")), parse_policy("tenancy: {by: none}\n", "p")) is None


def test_only_complete_successful_answers_are_storable():
    import httpx

    from catcache.proxy.storing import storable

    def answer(*reasons):
        return {"choices": [{"index": i, "message": {"content": "x"}, "finish_reason": r} for i, r in enumerate(reasons)]}

    allowed = ["stop", "tool_calls"]
    assert storable(answer("stop"), None, allowed) and storable(answer("tool_calls", "stop"), httpx.Headers(), allowed)
    for reasons in (("length",), ("stop", "length"), ("content_filter",), (None,)):
        assert not storable(answer(*reasons), None, allowed), reasons
    assert storable(answer("length"), None, ["stop", "length"])  # the policy may allow more
    assert not storable({"choices": []}, None, allowed) and not storable({}, None, allowed)
    assert not storable({**answer("stop"), "error": {"message": "overloaded"}}, None, allowed)
    for control in ("no-store", "private", "No-Store;", "max-age=0, private=\"x\""):
        assert not storable(answer("stop"), httpx.Headers({"cache-control": control}), allowed), control
    assert storable(answer("stop"), httpx.Headers({"cache-control": "max-age=60, public"}), allowed)
