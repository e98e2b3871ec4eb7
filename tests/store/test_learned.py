"""Learned state in a real Redis: proxies add up, it survives a new client, purge resets it."""

from __future__ import annotations

import asyncio

from catcache.store.connect import connect
from catcache.store.documents import DocumentStore
from catcache.store.learned import LearnedState, evidence_key
from catcache.store.purge import Purge, purge
from catcache.verify.learning import Evidence, bin_of

ON_CLUSTER_TOO = True  # conftest: every Redis test here runs on one server and on a cluster


def test_two_writers_add_up_and_a_new_reader_sees_it(redis_url, clean_redis):
    async def scenario() -> dict[str, Evidence]:
        first, second = connect(redis_url), connect(redis_url)
        key = evidence_key("factual")
        cell = evidence_key("factual", "date")
        await LearnedState(first).add({key: {f"seen:{bin_of(0.93)}": 1, f"false:{bin_of(0.93)}": 1}, cell: {"exact": 1}})
        await LearnedState(second).add({key: {f"seen:{bin_of(0.93)}": 2, "explored": 1}})
        reader = connect(redis_url)
        found = await LearnedState(reader).load([key, cell, evidence_key("code")])
        assert sorted(await LearnedState(reader).keys()) == sorted([key, cell])
        for client in (first, second, reader):
            await client.aclose()
        return found

    found = asyncio.run(scenario())
    factual = found[evidence_key("factual")]
    assert factual.seen[bin_of(0.93)] == 3 and factual.false[bin_of(0.93)] == 1 and factual.explored == 1
    assert found[evidence_key("factual", "date")].exact == 1
    assert found[evidence_key("code")] == Evidence()


def test_history_is_logged_in_order(redis_url, clean_redis):
    async def scenario() -> list[dict]:
        client = connect(redis_url)
        state = LearnedState(client)
        for threshold in (0.95, 0.94, 0.93):
            await state.log("factual", {"threshold": threshold, "estimate": 0.01})
        points = await state.history("factual")
        await client.aclose()
        return points

    points = asyncio.run(scenario())
    assert [p["threshold"] for p in points] == [0.95, 0.94, 0.93]
    assert all(p["time"] > 1.7e9 for p in points)


def test_purging_a_category_resets_what_it_learned_and_nothing_else(redis_url, clean_redis):
    async def scenario() -> list[str]:
        client = connect(redis_url)
        state = LearnedState(client)
        await state.add({evidence_key("factual"): {"exact": 1}, evidence_key("factual", "date"): {"exact": 1},
                         evidence_key("code"): {"exact": 1}})
        await state.log("factual", {"threshold": 0.9})
        await purge(DocumentStore(client, origin="test"), Purge(category="factual"))
        left = await state.keys()
        assert await state.history("factual") == []
        await purge(DocumentStore(client, origin="test"), Purge(category="code", older_than_s=60))
        assert await state.keys() == left  # a narrower purge keeps what the category learned
        await client.aclose()
        return left

    assert asyncio.run(scenario()) == [evidence_key("code")]


def test_report_history_plot_and_metrics(redis_url, clean_redis):
    from prometheus_client import CollectorRegistry, generate_latest

    from catcache.reports.learned import LearningSnapshot, latest, load_history, plot
    from catcache.reports.plots import STYLE

    async def scenario() -> dict:
        client = connect(redis_url)
        state = LearnedState(client)
        for threshold, estimate in ((0.95, 0.0), (0.94, 0.012), (0.93, 0.015)):
            await state.log("factual", {"threshold": threshold, "estimate": estimate, "low": estimate / 2,
                                        "high": estimate * 2, "observations": 100})
        history = await load_history(client, 0.0)
        await client.aclose()
        return history

    history = asyncio.run(scenario())
    assert latest(history)["factual"]["threshold"] == 0.93
    svg = plot(history, {"factual": "#2563eb"}, STYLE)
    assert svg.startswith("<svg") and "Live threshold" in svg
    registry = CollectorRegistry()
    noise = {"checked": 40, "different": 6, "subtracted": 0.15}
    registry.register(LearningSnapshot({"factual": {**latest(history)["factual"], "judge_noise": noise}},
                                       {"factual": 3}, {"factual": 7}))
    text = generate_latest(registry).decode()
    assert 'catcache_learned_threshold{category="factual"} 0.93' in text
    assert 'catcache_false_hit_estimate{bound="high",category="factual"} 0.03' in text
    assert 'catcache_explored_total{category="factual"} 3.0' in text
    assert 'catcache_judge_noise{category="factual"} 0.15' in text


def test_catcache_report_shows_what_was_learned(redis_url, clean_redis):
    from catcache.reports.report import table
    from catcache.reports.stats import Window
    from rich.console import Console

    async def scenario() -> Window:
        client = connect(redis_url)
        await LearnedState(client).log("factual", {"threshold": 0.9125, "estimate": 0.011, "low": 0.004,
                                                   "high": 0.018, "observations": 420, "hits": 300})
        window = await Window.load(client, "1h")
        await client.aclose()
        return window

    window = asyncio.run(scenario())
    assert window.summary()["learned"]["factual"]["threshold"] == 0.9125
    console = Console(width=200, record=True)
    console.print(table(window, "1h"))
    assert "factual 0.9125, false hits ~1.1% (0.4%-1.8%) from 420 observations" in console.export_text()
