"""Speculative forwarding: a miss that does not wait for its embedding.

Once the exact tier has missed and the large backend has room, the request goes to the backend at
once, and the embedding and the semantic tier run beside it (`Speculation.race`):
- a verified semantic hit found before the backend's first byte (the status line of a whole
  answer, the first event of a stream) wins: the backend call is closed, which makes vLLM abort
  the request, and the hit is served. The wasted call is counted (`Recorder.speculation`).
- otherwise the backend's answer is relayed untouched. If it came first it is relayed at once,
  and stored with the lookup's vector, and recorded under the lookup's category, when the lookup
  ends (`LateKeep`, outcomes.record).

When: per category, `speculate` in policies.yaml. Before the embedding the category is known only
if the rules gave it; otherwise every category the centroids may pick (those with exemplars, and
the default) must allow it. Never while the large backend has `speculation.max_in_flight`
requests or more in hand, so a hit wastes at most the one call it raced, and only a prefill the
backend had room for.
- `auto` speculates only while it pays: while the lookup is faster than the backend's first
  byte (`RaceClock`). A near miss the IC router sends to the small model (backends/ic.py: only
  when the large backend is busy, `ic.busy_at`) is tried while the large call runs on; if the
  small model answers, the large call is closed like one a hit won, else its answer is relayed.
  The speculative call counts in the large backend's load that the router reads.
- `always` speculates whether it pays or not, and the large backend answers every speculated
  near miss.
While the backend's first byte usually comes in less than half a lookup's time
(`RaceClock.backend_far_ahead`: `always` against a fast backend, `auto`'s probes), the lookup
waits for it, and for the answer to be relayed, before the embedding (at most as long as the
first byte usually takes): the miss is relayed without the forward pass taking the CPU beside it,
and it is stored, with its vector, once the lookup ends. A closer race is left to run.

Single flight: the speculative call leads the flight of the request's exact key, scoped to the
tenant unless the rules gave a shared category; an identical request meanwhile does not speculate,
and waits for that flight if its own lookup misses. An answer relayed before its lookup ended is
stored only once the lookup ends, so its flight stays open, answered, until then (`LateKeep`): an
identical request in that window takes that answer, as it would take the stored entry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from fastapi.responses import Response

from catcache.policy.schema import Category, Policy
from catcache.proxy.exchange import Exchange, Found
from catcache.proxy.forwarding import failed, relay, relayable, send
from catcache.proxy.incontext import in_context
from catcache.proxy.learner import Check
from catcache.proxy.state import ProxyState
from catcache.proxy.storing import Keep, storable, store
from catcache.proxy.tenancy import scoped
from catcache.reports.record import Outcome

BYTES_PER_TOKEN = 4  # to estimate a cancelled call's prompt tokens, which its backend never reported

PROBE_EVERY = 16  # under `auto`, while speculation does not pay, one request in this many still speculates
SMOOTHING = 0.1  # weight of a new sample in the running averages
YIELD_BELOW = 0.5  # a speculated lookup lets the relay go first while the first byte takes at most this share of it

_background: set[asyncio.Task] = set()  # stores and closes that outlive their request


def _keep_alive(task: asyncio.Task) -> None:
    _background.add(task)
    task.add_done_callback(_background.discard)


@dataclass
class RaceClock:
    """Running averages of the two sides of the race, for `auto`: how long the lookup takes once
    the exact tier has missed, and how long the large backend takes to its first byte. A proxy
    whose lookup is the slower one (a CPU-starved box, a backend with a tiny prefill) would lose
    hits to the backend and gain nothing, so `auto` speculates only while the lookup is faster,
    and one request in PROBE_EVERY anyway, to notice when that changes."""

    lookup_ms: float | None = None
    first_byte_ms: float | None = None
    skipped: int = 0

    def pays(self) -> bool:
        if not self.backend_wins():
            return True
        self.skipped = (self.skipped + 1) % PROBE_EVERY
        return self.skipped == 0

    def backend_wins(self) -> bool:
        """Whether the backend's first byte usually comes before the lookup's end."""
        return self.lookup_ms is not None and self.first_byte_ms is not None and self.lookup_ms >= self.first_byte_ms

    def backend_far_ahead(self) -> bool:
        """Whether the backend's first byte usually comes within YIELD_BELOW of a lookup's time: a
        race a hit almost never wins (a closer one it still may, and is left to run)."""
        return (self.lookup_ms is not None and self.first_byte_ms is not None
                and self.first_byte_ms <= YIELD_BELOW * self.lookup_ms)

    def looked(self, ms: float) -> None:
        self.lookup_ms = _smoothed(self.lookup_ms, ms)

    def answered(self, ms: float) -> None:
        self.first_byte_ms = _smoothed(self.first_byte_ms, ms)

    def outlasted(self, ms: float) -> None:
        """A call a hit closed: its first byte would have come after `ms`, a lower bound."""
        self.first_byte_ms = _smoothed(self.first_byte_ms, max(ms, self.first_byte_ms or ms))


def _smoothed(average: float | None, sample: float) -> float:
    return sample if average is None else average + SMOOTHING * (sample - average)


def _by_centroid(policy: Policy) -> list[Category]:
    """The categories a request no rule matched may end in: those with exemplars, and the default."""
    return [rules for name, rules in policy.categories.items() if rules.exemplars or name == policy.classifier.default]


Upstream = tuple[httpx.Response, AsyncIterator[bytes] | None]  # the answer, and its stream's body if begun


class Speculation:
    """One request's speculative call, from the exact tier's miss to its answer or cancellation."""

    def __init__(self, state: ProxyState, exchange: Exchange, clock: RaceClock):
        self.state, self.exchange, self.clock = state, exchange, clock
        self.owner = asyncio.current_task()  # the request's task: a flight it leads ends with it
        self.call: asyncio.Task[Upstream] | None = None
        self.called = asyncio.get_running_loop().create_future()  # done once `call` is made: wakes `race`
        self.relayed = asyncio.get_running_loop().create_future()  # done once `race` has relayed the call's answer
        self.flight: str | None = None
        self.joined: asyncio.Future | None = None  # an identical request's flight, found when the exact tier missed
        self.started = 0.0
        self.exact_missed: float | None = None  # when the lookup went on past the exact tier: its half of the race

    @classmethod
    def of(cls, state: ProxyState, exchange: Exchange, clock: RaceClock) -> Speculation | None:
        """None when no category may speculate: the request then takes the plain path, at no cost."""
        if exchange.control == "no-store" or all(c.speculate == "never" for c in state.policy.categories.values()):
            return None
        return cls(state, exchange, clock)

    @property
    def sent(self) -> bool:
        return self.call is not None

    async def start(self, category: str | None) -> None:
        """The lookup's `exact_missed`: send the request now, if the policy and the load allow.
        When the backend's first byte usually comes well before the lookup's end, the lookup waits
        for it (at most as long as it usually takes) and for the answer to be relayed: a hit could
        not have won that race, and the embedding, run beside the relay, takes the CPU the relay
        needs on a small machine."""
        self._send(category)
        if self.call is not None and self.clock.backend_far_ahead():
            assert self.clock.first_byte_ms is not None
            await asyncio.wait([self.call], timeout=self.clock.first_byte_ms / 1000)
            if self.call.done() and self._answered():
                await self.relayed  # `race` hands the answer to the client at once
        self.exact_missed = time.perf_counter()

    def _send(self, category: str | None) -> None:
        """Ask the large backend now, unless the policy, the load or a flight already under way forbid."""
        policy, exchange = self.state.policy, self.exchange
        in_flight = self.state.large().in_flight
        if in_flight >= policy.speculation.max_in_flight:
            return
        rules = [policy.category(category)] if category is not None else _by_centroid(policy)
        if any(r.speculate == "never" for r in rules):
            return
        if any(r.speculate == "auto" for r in rules) and not self.clock.pays():
            return
        shared = category is not None and policy.category(category).shared
        key = scoped(exchange.canon.functional_key, None if shared else exchange.tenant)
        self.joined = self.state.flights.leader(key, self.owner)
        if self.joined is not None:
            return  # being fetched, or answered and not yet stored: if its lookup misses, it takes that answer
        self.flight, self.started = key, time.perf_counter()
        self.call = asyncio.ensure_future(self._first_byte())
        self.called.set_result(None)

    async def _first_byte(self) -> Upstream:
        backend, exchange = self.state.large(), self.exchange
        upstream = await send(exchange, backend, relayable(exchange, backend, exchange.body))
        if not (exchange.stream and upstream.status_code < 300):
            self.clock.answered((time.perf_counter() - self.started) * 1000)
            return upstream, None
        try:
            pieces = upstream.aiter_bytes()
            first = await anext(pieces, b"")
        except BaseException:
            await upstream.aclose()
            raise
        self.clock.answered((time.perf_counter() - self.started) * 1000)
        return upstream, _primed(first, pieces)

    async def race(self, lookup: Coroutine[Any, Any, Found]) -> Found | Response:
        """The lookup's `Found`, or the backend's answer if a good one began before the lookup ended."""
        looking = asyncio.ensure_future(self._looked(lookup))
        try:
            while not looking.done():
                other = self.called if self.call is None else self.call
                await asyncio.wait([looking] if other.done() else [looking, other], return_when=asyncio.FIRST_COMPLETED)
                if self.call is not None and self.call.done() and self._answered():
                    break
        except BaseException:  # the client went away
            looking.cancel()
            self.cancel(count=False)
            raise
        if looking.done():
            return looking.result()
        self.exchange.looking = looking  # outcomes.record waits for it to name the category
        return await self._relay(Outcome.MISS, LateKeep(self.state, self.exchange, self.flight, looking))

    async def _looked(self, lookup: Coroutine[Any, Any, Found]) -> Found:
        """The lookup, what it found learnt before it counts as done, and the speculative call
        counted under its category. Whoever waits for it (the record, the late store) reads the
        exchange's category and keys: a done callback would set them only later on the loop."""
        try:
            found = await lookup
            self.exchange.learn(found)
            if self.exact_missed is not None:
                self.clock.looked((time.perf_counter() - self.exact_missed) * 1000)
            return found
        finally:
            if self.call is not None:
                self.state.recorder.speculation(self.exchange.category or "-", "sent")

    def _answered(self) -> bool:
        """Whether the call has a good answer under way (a failure or an error status waits for the lookup)."""
        assert self.call is not None
        if self.call.cancelled() or self.call.exception() is not None:
            return False
        return self.call.result()[0].status_code < 300

    async def settle(self, found: Found) -> Response | None:
        """After the lookup: None when a hit wins (the call is closed, the pipeline serves the hit);
        the small model's answer when the IC router takes a near miss (`auto`; the call is closed);
        else the large backend's answer, relayed and kept as the lookup's outcome says."""
        assert self.call is not None
        if found.doc is not None and not (self.call.done() and self._answered()):
            self.cancel(count=not self.call.done())
            return None
        if found.band and self.exchange.rules.speculate == "auto" and not self.call.done():
            answer = await in_context(self.state, self.exchange, found.band)
            if answer is not None:
                self.cancel(count=not self.call.done())
                return answer
        if found.outcome == Outcome.BYPASS:
            self.state.flights.land(self.flight, None)
            return await self._relay(Outcome.BYPASS, None)
        return await self._relay(Outcome.MISS, Keep(self.state, self.exchange, self.flight))

    async def _relay(self, outcome: Outcome, keep: Keep | None) -> Response:
        assert self.call is not None
        backend = self.state.large()
        try:
            upstream, pieces = await self.call
        except httpx.HTTPError as exc:
            return failed(self.state, self.exchange, backend, keep, exc)
        try:
            return await relay(self.state, self.exchange, backend, upstream, self.started, outcome, keep, pieces)
        finally:
            if not self.relayed.done():
                self.relayed.set_result(None)

    def cancel(self, count: bool = True) -> None:
        """Close the call (vLLM aborts a request whose connection closes); `count` it as waste."""
        if self.call is None:
            return
        if self.flight is not None:
            self.state.flights.land(self.flight, None)
        if not self.call.done():
            self.clock.outlasted((time.perf_counter() - self.started) * 1000)
            self.call.cancel()
        elif not self.call.cancelled() and self.call.exception() is None:
            _keep_alive(asyncio.ensure_future(self.call.result()[0].aclose()))
        if count:
            category = self.exchange.category or "-"
            self.state.recorder.speculation(category, "cancelled")
            self.state.recorder.speculation(category, "cancelled_prompt_tokens", prompt_tokens(self.exchange))


@dataclass
class LateKeep(Keep):
    """Keeps an answer that began before the lookup ended: stored, in the background, once the
    lookup has found it a miss (a hit found later means a neighbour answers it already)."""

    looking: asyncio.Future | None = None

    async def store(self, response: dict, latency_ms: float, backend_headers: httpx.Headers | None = None) -> bool:
        """False: the answer is not stored yet (nor ever, if it is not storable), so no key is sent."""
        if not storable(response, backend_headers, self.state.policy.finish_reasons):
            self.land(None)
            return False
        storing = asyncio.ensure_future(self._store_when_found(response, latency_ms))
        _keep_alive(storing)
        self.land(response, held_until=storing)  # an identical request meanwhile takes it, as if it were stored
        return False

    async def _store_when_found(self, response: dict, latency_ms: float) -> None:
        assert self.looking is not None
        try:
            found = await self.looking
        except asyncio.CancelledError:
            return
        if found.outcome == Outcome.MISS:
            stored = await store(self.state, self.exchange, response, latency_ms)
            check = Check.of(found, "near")  # the backend answered a near miss: judge it all the same
            if check is not None:
                self.state.learner.judge_later(check, response, self.exchange.doc_id if stored else "")


def prompt_tokens(exchange: Exchange) -> int:
    """A cancelled call's prompt, estimated from its size: the backend never said what it counted."""
    prompt = exchange.body.get("messages") or exchange.body.get("prompt") or ""
    return max(1, len(orjson.dumps(prompt)) // BYTES_PER_TOKEN)


async def _primed(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """A stream's body whose first piece was read to learn that the answer had begun."""
    if first:
        yield first
    async for piece in rest:
        yield piece
