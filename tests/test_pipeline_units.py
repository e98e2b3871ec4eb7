"""Small pure parts of the request pipeline."""

from __future__ import annotations

import pytest

from catcache.policy.loader import parse_policy
from catcache.proxy.pipeline import adaptive_relief, cache_control, scoped


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
