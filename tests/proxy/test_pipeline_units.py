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


def test_tenant_scoping_separates_keys_and_keeps_shared_ones():
    assert scoped("k", None) == "k"
    assert scoped("k", "alice") != scoped("k", "bob") != "k"


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
