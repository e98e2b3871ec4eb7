"""Security: the admin token, API keys kept out of logs, Redis and reports, and tenant isolation."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import redis
from starlette.responses import PlainTextResponse

from catcache.proxy.admin_auth import AdminAuth
from catcache.proxy.app import Settings
from catcache.testing.inprocess import InProcess, in_process
from catcache.testing.traffic import drive

POLICIES = Path(__file__).parents[1] / "data" / "policies-e2e.yaml"
TOKEN = "s3cret-admin-token"
OPERATOR_ROUTES = [("GET", "/stats"), ("GET", "/metrics"), ("POST", "/admin/reload")]


@pytest.fixture(scope="module")
def proxy(backend, redis_url) -> Iterator[InProcess]:
    with in_process(Settings(backend=backend.base_url, policies=POLICIES, redis_url=redis_url,
                             admin_token=TOKEN)) as running:
        yield running


# -- the admin token -------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path"), OPERATOR_ROUTES)
def test_operator_routes_need_the_token(proxy, method, path) -> None:
    def call(authorization: str | None) -> httpx.Response:
        headers = {"authorization": authorization} if authorization else {}
        return proxy.run(proxy.http.request(method, path, headers=headers))

    missing = call(None)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["error"]["code"] == "admin_token_required"
    for wrong in (f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer sk-an-api-key", f"Basic {TOKEN}"):
        refused = call(wrong)
        assert refused.status_code in (401, 403) and set(refused.json()["error"]) == {"message", "type", "param", "code"}
    assert call(f"Bearer {TOKEN}").status_code == 200
    assert call(f"bearer  {TOKEN} ").status_code == 200  # the scheme is case-insensitive (RFC 7235)


def test_health_and_the_openai_routes_keep_their_own_keys(proxy, api_key) -> None:
    assert proxy.run(proxy.http.get("/healthz")).status_code == 200
    answer = proxy.run(proxy.openai(api_key).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "Is the token needed here?"}]))
    assert answer.choices[0].message.content


def test_without_a_token_the_routes_are_open() -> None:
    async def ok(scope, receive, send):
        await PlainTextResponse("ok")(scope, receive, send)

    async def status(app, path: str) -> int:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return (await client.get(path)).status_code

    assert asyncio.run(status(AdminAuth(ok, token=None), "/stats")) == 200
    assert asyncio.run(status(AdminAuth(ok, token=TOKEN), "/admin/anything")) == 401
    assert asyncio.run(status(AdminAuth(ok, token=TOKEN), "/statistics")) == 200  # only the routes named


# -- tenant isolation ------------------------------------------------------------------------

def test_tenants_asking_the_same_questions_never_get_each_others_entries(proxy) -> None:
    """2,000 mixed requests (exact, semantic, streams) from 10 tenants; the 100,000-request run over
    50 tenants is `python -m bench.isolation`."""
    run = uuid.uuid4().hex[:8]
    clients = [proxy.openai(f"sk-iso-{run}-{i}") for i in range(10)]
    tally = proxy.run(drive(clients, requests=2000, concurrency=32))
    outcomes = tally.outcomes()
    assert tally.errors == [] and len(tally.answers) == 2000
    assert outcomes["hit-exact"] > 500 and outcomes["hit-semantic"] > 100, outcomes
    assert tally.cross_tenant() == []


# -- API keys never written down -------------------------------------------------------------

def test_api_keys_never_reach_logs_redis_or_reports(proxy_factory, fresh_backend, tmp_path) -> None:
    key = f"sk-LEAKCHECK-{uuid.uuid4().hex}"
    proxy = proxy_factory(policies=POLICIES, extra_args=["--log-level", "debug"], env={"CATCACHE_ADMIN_TOKEN": TOKEN})
    api = openai.OpenAI(base_url=proxy.base_url, api_key=key, max_retries=0)
    question = [{"role": "user", "content": "Where do API keys end up?"}]
    for _ in range(2):
        api.chat.completions.create(model="test-model", messages=question)
        list(api.chat.completions.create(model="test-model", messages=question, stream=True))
    api.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "where do api keys end up?"}])
    api.completions.create(model="test-model", prompt="Say hello")
    api.models.list()
    with pytest.raises(openai.APIError):
        list(api.chat.completions.create(model="test-model", messages=question, stream=True,
                                         extra_headers={"x-test-truncate": "1", "cache-control": "no-cache"}))
    with pytest.raises(openai.InternalServerError):
        api.chat.completions.create(model="test-model", messages=question, extra_headers={"x-test-status": "503", "cache-control": "no-cache"})
    with pytest.raises(openai.BadRequestError):
        api.chat.completions.create(model="test-model", messages="not a list")
    for route in ("/stats", "/metrics"):  # an API key offered as the admin token
        assert httpx.get(f"{proxy.url}{route}", headers={"authorization": f"Bearer {key}"}).status_code == 403
    admin = {"authorization": f"Bearer {TOKEN}"}
    served = [httpx.get(f"{proxy.url}{route}", headers=admin).text for route in ("/stats", "/metrics")]
    reports = [subprocess.run([sys.executable, "-m", "catcache", "report", "--data-dir", str(proxy.data_dir),
                               "--since", "1h", "--format", fmt], capture_output=True, text=True, timeout=120)
               for fmt in ("table", "json", "html")]
    assert all(r.returncode == 0 for r in reports), [r.stderr for r in reports]
    proxy.stop()  # the log and the append-only file are complete

    secret = key.encode()
    assert secret not in proxy.log_path.read_bytes(), "an API key in the proxy's log"
    for path in proxy.data_dir.rglob("*"):
        if path.is_file():
            assert secret not in path.read_bytes(), f"an API key in {path}"
    for text in served + [r.stdout + r.stderr for r in reports]:
        assert key not in text, "an API key in a report"
    assert '"requests"' in reports[1].stdout  # the reports did read the traffic
    from catcache.store.embedded import EmbeddedRedis

    with EmbeddedRedis(proxy.data_dir) as server:
        dumped = dump_everything(redis.Redis.from_url(server.url))
    assert len(dumped) > 1000 and b"Where do API keys end up?" in dumped  # the dump did read the entries
    assert secret not in dumped, "an API key in Redis"


def dump_everything(client: redis.Redis) -> bytes:
    """Every key and value in Redis, read by type (DUMP would compress long strings)."""
    out = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        value = {b"string": lambda: client.get(key), b"hash": lambda: client.hgetall(key),
                 b"zset": lambda: client.zrange(key, 0, -1, withscores=True), b"list": lambda: client.lrange(key, 0, -1),
                 b"set": lambda: client.smembers(key), b"stream": lambda: client.xrange(key)}[kind]()
        out.append(key + b"=" + repr(value).encode())
    return b"\n".join(out)
