"""Collapse concurrent identical misses into one backend call.

The first request for a key leads and calls the backend; the others wait for its answer. If the
leader fails (an error, a truncated stream, a client gone before its stream began) the waiters
get None and go to the backend themselves, so single flight never turns one failure into many.
A flight is tied to the leader's request task (uvicorn serves a request, its streamed body
included, in one task), so it lands when that task ends, whatever the path.
"""

from __future__ import annotations

import asyncio


class SingleFlight:
    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Future] = {}

    def leader(self, key: str, task: asyncio.Task | None = None) -> asyncio.Future | None:
        """None if the caller leads a new flight for `key`; else the leader's future to await.
        The flight is tied to `task`, by default the caller's."""
        flight = self._flights.get(key)
        if flight is not None:
            return flight
        flight = asyncio.get_running_loop().create_future()
        self._flights[key] = flight
        task = task or asyncio.current_task()
        if task is not None:
            task.add_done_callback(lambda _: self._end(key, flight))
        return None

    def land(self, key: str, result: dict | None, held_until: asyncio.Future | None = None) -> None:
        """The leader's answer (None if it failed) for every waiter; the next request leads anew,
        or, with `held_until`, once that is done: a speculated answer is stored only when its
        lookup ends (proxy/speculation.py), and until then an identical request takes this answer
        instead of asking the backend again. Landing a flight that has landed changes nothing."""
        flight = self._flights.get(key)
        if flight is None or flight.done():
            return
        flight.set_result(result)
        if held_until is None or result is None:
            self._drop(key, flight)
        else:
            held_until.add_done_callback(lambda _: self._drop(key, flight))

    def _end(self, key: str, flight: asyncio.Future) -> None:
        """The leader's task ended: a flight it never landed fails."""
        if not flight.done():
            flight.set_result(None)
            self._drop(key, flight)

    def _drop(self, key: str, flight: asyncio.Future) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
