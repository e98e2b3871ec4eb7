"""Collapse concurrent identical misses into one backend call.

The first request for a key leads and calls the backend; the others wait for its answer. If the
leader fails (an error, a truncated stream) the waiters get None and go to the backend themselves,
so single flight never turns one failure into many.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager


class SingleFlight:
    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Future] = {}

    def leader(self, key: str) -> asyncio.Future | None:
        """None if the caller leads a new flight for `key`; else the leader's future to await."""
        flight = self._flights.get(key)
        if flight is not None:
            return flight
        self._flights[key] = asyncio.get_running_loop().create_future()
        return None

    def land(self, key: str, result: dict | None) -> None:
        """The leader's answer (None if it failed) for every waiter; the next request leads anew."""
        flight = self._flights.pop(key, None)
        if flight is not None and not flight.done():
            flight.set_result(result)

    @contextmanager
    def leading(self, key: str) -> Iterator[None]:
        """Make sure the flight lands even if the leader is cancelled or raises."""
        try:
            yield
        finally:
            self.land(key, None)
