"""RaceClock: `auto` speculates while the lookup beats the backend's first byte, and probes now and then."""

from __future__ import annotations

from catcache.proxy.speculation import PROBE_EVERY, RaceClock


def test_speculation_pays_until_the_clock_knows_better():
    clock = RaceClock()
    assert clock.pays(), "nothing measured yet"
    clock.looked(10.0)
    assert clock.pays(), "the backend's first byte not measured yet"
    clock.answered(200.0)
    assert clock.pays(), "a lookup of 10 ms beats a first byte at 200 ms"


def test_a_lookup_slower_than_the_backend_stops_speculation_but_for_probes():
    clock = RaceClock(lookup_ms=50.0, first_byte_ms=5.0)
    decisions = [clock.pays() for _ in range(3 * PROBE_EVERY)]
    assert decisions.count(True) == 3, "one request in PROBE_EVERY still speculates"
    for _ in range(60):
        clock.answered(400.0)  # the backend got slow: the probes' samples move the average
    assert clock.pays()


def test_the_backend_wins_only_once_both_sides_are_measured_and_the_lookup_is_slower():
    assert not RaceClock().backend_wins()
    assert not RaceClock(lookup_ms=50.0).backend_wins()
    assert not RaceClock(lookup_ms=10.0, first_byte_ms=200.0).backend_wins()
    assert RaceClock(lookup_ms=10.0, first_byte_ms=2.0).backend_wins()


def test_a_lookup_yields_to_the_relay_only_when_the_backend_is_far_ahead():
    """Then a speculated lookup lets the backend's answer go first (Speculation.start); a close race runs."""
    assert not RaceClock().backend_far_ahead()
    assert RaceClock(lookup_ms=10.0, first_byte_ms=2.0).backend_far_ahead()
    assert not RaceClock(lookup_ms=210.0, first_byte_ms=200.0).backend_far_ahead(), "the backend wins, but not by far"


def test_a_call_a_hit_closed_never_lowers_the_first_byte_estimate():
    clock = RaceClock(first_byte_ms=300.0)
    clock.outlasted(20.0)
    assert clock.first_byte_ms == 300.0
    clock.outlasted(600.0)
    assert 300.0 < clock.first_byte_ms < 600.0
