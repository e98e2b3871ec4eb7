"""The soak benchmark: a few seconds of it in the default suite; the 10-minute run is slow."""

from __future__ import annotations

import pytest

from bench import output, soak


def test_soak_smoke() -> None:
    result = soak.soak(clients_n=4, duration=4, every=1, warmup=1, think_ms=0, tokens_per_s=200)
    assert result["errors"] == 0, result["error_examples"]
    assert set(result["sent"]) == {kind for kind, _ in soak.KINDS}
    assert {"hit-exact", "hit-semantic", "miss"} <= set(result["outcomes"])
    assert len(result["samples"]) >= 3 and result["rss_mb_end"] > 50 and result["fds_end"] > 0
    assert result["redis_clients_end"] >= 1


@pytest.mark.slow
def test_soak_ten_minutes() -> None:
    """32 clients for 600 s: 0 errors, RSS within ±10% after warm-up, no growth in descriptors or
    Redis connections (a little slack for pools that happen to be mid-refill at the last sample)."""
    result = soak.soak(clients_n=32, duration=600, every=10, warmup=60, think_ms=20, tokens_per_s=200)
    output.save("soak", {"clients": 32, "duration_s": 600, "warmup_s": 60, **result})
    assert result["errors"] == 0, result["error_examples"]
    assert abs(result["rss_change"]) <= 0.10
    assert result["fds_end"] <= result["fds_after_warmup"] + 8
    assert result["redis_clients_end"] <= result["redis_clients_after_warmup"] + 4
