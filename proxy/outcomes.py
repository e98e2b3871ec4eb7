"""What each answer tells: the client, through the x-catcache headers, and the reports and
metrics, through one RequestRecord."""

from __future__ import annotations

from catcache.proxy.exchange import Exchange
from catcache.proxy.state import ProxyState
from catcache.reports.record import Outcome, RequestRecord

SIMILARITY_SHOWN = (Outcome.HIT_SEMANTIC, Outcome.IC, Outcome.MISS)


def headers(exchange: Exchange, outcome: Outcome, entry: str | None = None) -> dict[str, str]:
    """x-catcache (the outcome), and the entry's key, category, similarity and verdict where known."""
    found = {"x-catcache": outcome}
    if entry:
        found["x-catcache-key"] = entry
    if exchange.category:
        found["x-catcache-category"] = exchange.category
    if exchange.similarity is not None and outcome in SIMILARITY_SHOWN:
        found["x-catcache-similarity"] = f"{exchange.similarity:.4f}"
    if exchange.verdict and outcome != Outcome.HIT_SEMANTIC:
        found["x-catcache-verdict"] = exchange.verdict[:200]
    return found


def record(state: ProxyState, exchange: Exchange, outcome: Outcome, backend_ms: float | None,
           usage: dict | None) -> None:
    """Record the request; one answered before its lookup ended (proxy/speculation.py) is recorded
    when the lookup has named its category."""
    latency_ms = exchange.elapsed_ms()
    if exchange.looking is not None and not exchange.looking.done():
        exchange.looking.add_done_callback(lambda _: _write(state, exchange, outcome, backend_ms, usage, latency_ms))
    else:
        _write(state, exchange, outcome, backend_ms, usage, latency_ms)


def _write(state: ProxyState, exchange: Exchange, outcome: Outcome, backend_ms: float | None,
           usage: dict | None, latency_ms: float) -> None:
    usage = usage or {}
    small = state.live.backends.get(exchange.rules.ic.backend) if outcome == Outcome.IC else None
    model = (small and small.config.model) or exchange.canon.model  # an IC answer costs the small model's price
    state.recorder.record(RequestRecord(
        outcome=outcome, category=exchange.category or "-", model=model, tenant=exchange.tenant,
        similarity=exchange.similarity, verdict=exchange.verdict, latency_ms=latency_ms,
        backend_latency_ms=backend_ms, prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0), endpoint=exchange.endpoint))
