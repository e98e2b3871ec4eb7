"""Single flight: waiters get the leader's answer, or None however the leader ends."""

from __future__ import annotations

import asyncio

from catcache.proxy.singleflight import SingleFlight


async def test_waiters_get_the_leaders_answer():
    flights = SingleFlight()

    async def lead():
        assert flights.leader("k") is None
        await asyncio.sleep(0.01)
        flights.land("k", {"answer": 1})

    leader = asyncio.create_task(lead())
    await asyncio.sleep(0)
    waiter = flights.leader("k")
    assert waiter is not None
    assert await waiter == {"answer": 1}
    await leader
    assert flights.leader("k") is None, "a landed flight makes way for a new leader"


async def test_a_leader_that_ends_without_landing_releases_its_waiters():
    flights = SingleFlight()

    async def lead_and_vanish():
        assert flights.leader("k") is None
        raise asyncio.CancelledError  # e.g. the client went away before the stream began

    leader = asyncio.create_task(lead_and_vanish())
    await asyncio.sleep(0)
    waiter = flights.leader("k")
    assert waiter is not None
    assert await asyncio.wait_for(waiter, 1) is None
    assert leader.cancelled()


async def test_an_old_leaders_end_does_not_land_a_newer_flight():
    flights = SingleFlight()
    release_old, release_newer = asyncio.Event(), asyncio.Event()

    async def old_leader():
        assert flights.leader("k") is None
        flights.land("k", {"answer": "old"})
        await release_old.wait()

    async def newer_leader():
        assert flights.leader("k") is None
        await release_newer.wait()
        flights.land("k", {"answer": "new"})

    old = asyncio.create_task(old_leader())
    await asyncio.sleep(0)
    newer = asyncio.create_task(newer_leader())
    await asyncio.sleep(0)
    waiter = flights.leader("k")
    assert waiter is not None
    release_old.set()
    await old
    assert not waiter.done(), "the old leader's end must not land the newer leader's flight"
    release_newer.set()
    assert await asyncio.wait_for(waiter, 1) == {"answer": "new"}
    await newer


async def test_a_held_flight_answers_newcomers_until_its_answer_is_stored():
    """A speculated answer is stored after its lookup ends: until then an identical request takes it."""
    flights = SingleFlight()
    stored = asyncio.get_running_loop().create_future()

    async def lead():
        assert flights.leader("k") is None
        flights.land("k", {"answer": 1}, held_until=stored)

    await asyncio.create_task(lead())  # the leader's request has ended
    waiter = flights.leader("k")
    assert waiter is not None and await waiter == {"answer": 1}
    flights.land("k", None)
    assert flights.leader("k") is waiter, "landing again changes nothing"
    stored.set_result(None)
    await asyncio.sleep(0)
    assert flights.leader("k") is None, "once stored, the next request leads anew"


async def test_a_failed_answer_is_never_held():
    flights = SingleFlight()
    stored = asyncio.get_running_loop().create_future()
    assert flights.leader("k") is None
    flights.land("k", None, held_until=stored)
    assert flights.leader("k") is None
