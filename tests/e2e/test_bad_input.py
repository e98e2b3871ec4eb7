"""Bad input: a body-size limit (413 in OpenAI's shape) and property-based fuzzing of the OpenAI
routes and the admin routes, in-process: 0 server errors from catcache.

The default suite fuzzes FUZZ_EXAMPLES requests per route family; `pytest -m slow -k fuzz` runs
FUZZ_EXAMPLES_SLOW (over 10,000 in all).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from catcache.proxy.app import Settings
from catcache.store.embedded import EmbeddedRedis
from catcache.testing.inprocess import InProcess, in_process

POLICIES = Path(__file__).parents[1] / "data" / "policies-e2e.yaml"
LIMIT = 256 * 1024
TOKEN = "admin-token-for-fuzzing"
FUZZ_EXAMPLES = 100
# Per route family (chat+completions count twice): 3,400 x 3 = 10,200 requests. On a shared machine,
# CATCACHE_FUZZ_EXAMPLES splits it over parallel runs (each with its own random seed).
FUZZ_EXAMPLES_SLOW = int(os.environ.get("CATCACHE_FUZZ_EXAMPLES", "3400"))


@pytest.fixture(scope="module")
def proxy(backend, tmp_path_factory) -> Iterator[InProcess]:
    """On a Redis of its own: the fuzzer also sends valid purges, which would empty a shared one."""
    with EmbeddedRedis(tmp_path_factory.mktemp("fuzz-redis")) as redis, \
            in_process(Settings(backend=backend.base_url, policies=POLICIES, redis_url=redis.url,
                                max_body_bytes=LIMIT, admin_token=TOKEN)) as running:
        yield running


def assert_openai_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text[:300]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


# -- the body-size limit ---------------------------------------------------------------------

def test_a_body_over_the_limit_is_a_413_through_the_sdk(proxy, api_key) -> None:
    api = proxy.openai(api_key)
    with pytest.raises(openai.APIStatusError) as refused:
        proxy.run(api.chat.completions.create(model="m", messages=[{"role": "user", "content": "x" * LIMIT}]))
    assert refused.value.status_code == 413 and refused.value.body["code"] == "request_too_large"
    answer = proxy.run(api.chat.completions.create(model="m", messages=[{"role": "user", "content": "x" * 1000}]))
    assert answer.choices[0].message.content


def chunks(sent: list[int], count: int, size: int = 64 * 1024):
    async def body():
        for _ in range(count):
            sent.append(size)
            yield b"x" * size
    return body()


def test_a_declared_length_over_the_limit_is_refused_before_reading(proxy) -> None:
    sent: list[int] = []
    response = proxy.run(proxy.http.post("/v1/chat/completions", content=chunks(sent, 64),
                                         headers={"content-length": str(64 * 64 * 1024)}))
    assert assert_openai_error(response, 413)["code"] == "request_too_large"
    assert sent == [], "the body was read although its length said it was too large"


def test_a_chunked_body_is_cut_off_once_it_passes_the_limit(proxy) -> None:
    sent: list[int] = []
    response = proxy.run(proxy.http.post("/v1/completions", content=chunks(sent, 64)))  # no length: chunked
    assert_openai_error(response, 413)
    assert LIMIT < sum(sent) <= LIMIT + 64 * 1024, "read on past the limit"


def test_the_limit_covers_pass_through_and_admin_routes(proxy) -> None:
    big = b"x" * (LIMIT + 1)
    assert_openai_error(proxy.run(proxy.http.post("/v1/embeddings", content=big)), 413)
    assert_openai_error(proxy.run(proxy.http.post("/admin/reload", content=big,
                                                  headers={"authorization": f"Bearer {TOKEN}"})), 413)


def test_max_body_bytes_is_validated() -> None:
    from catcache.cli import byte_size

    assert byte_size("8MB") == 8 * 1024 * 1024 and byte_size("512kb") == 512 * 1024 and byte_size("100") == 100
    for bad in ("0", "-1", "lots", "MB"):
        with pytest.raises(ValueError):
            byte_size(bad)


# -- fuzzing ---------------------------------------------------------------------------------

def json_values(leaf=None):
    leaf = leaf or (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
                    | st.text(max_size=40))
    return st.recursive(leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                         max_size=4), max_leaves=12)


ANY = json_values()
TEXT = st.text(max_size=200) | st.sampled_from(["", " ", "\x00", "\ud800", "x" * 20_000, "```python\ndef f(:\n```"])
ROLES = st.sampled_from(["user", "system", "assistant", "tool", "developer", "", "robot"]) | ANY
PART = st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "input_audio"]) | ANY},
                             optional={"text": TEXT | ANY, "image_url": ANY})
VALID_MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant"]), "content": TEXT})
MESSAGE = VALID_MESSAGE | st.fixed_dictionaries({}, optional={
    "role": ROLES, "content": TEXT | st.lists(PART, max_size=3) | ANY, "name": ANY, "tool_calls": ANY})
OPTIONS = {
    "stream": st.booleans(), "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "temperature": st.floats(0, 2), "n": st.integers(1, 3), "max_tokens": st.integers(1, 64),
    "stop": st.text(max_size=5) | st.lists(st.text(max_size=5), max_size=2), "seed": st.integers(0, 2**31),
    "user": st.text(max_size=10),
}
MODEL = st.sampled_from(["test-model", "gpt-4o"])
CHAT = st.fixed_dictionaries({"model": MODEL, "messages": st.lists(VALID_MESSAGE | MESSAGE, min_size=1, max_size=4)},
                             optional=OPTIONS)
COMPLETION = st.fixed_dictionaries({"model": MODEL, "prompt": TEXT | st.lists(TEXT, max_size=3)
                                    | st.lists(st.integers(-1, 10**6), max_size=5)}, optional=OPTIONS)
FIELDS = ["model", "messages", "prompt", *OPTIONS, "tools", "response_format", "logprobs", "extra"]


@st.composite
def mutated(draw, valid):
    """A valid request with some fields dropped and some replaced by values of any type or size."""
    body = dict(draw(valid))
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=2)):
        body.pop(name, None)
    body.update(draw(st.dictionaries(st.sampled_from(FIELDS), ANY | TEXT, max_size=2)))
    return body


RAW = st.binary(max_size=300) | st.sampled_from([b"", b"{", b"[]", b"null", b"1e999", b'{"model": "m"' * 50,
                                                  b"\xff\xfe", b'{"a":' * 2000 + b"1" + b"}" * 2000])
HEADERS = st.fixed_dictionaries({}, optional={
    "authorization": st.sampled_from(["", "Bearer", "Bearer sk-fuzz", "Basic x", f"Bearer {TOKEN}", "Bearer \t"]),
    "cache-control": st.sampled_from(["no-store", "no-cache", "max-age=0, no-cache", "junk"]),
    "x-catcache-category": st.sampled_from(["code", "public", "private", "nope", ""]),
    "content-type": st.sampled_from(["application/json", "text/plain", "multipart/form-data"]),
})


def encode(body: object) -> bytes:
    if isinstance(body, bytes):
        return body
    return orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS) if _encodable(body) else b"{}"


def _encodable(value: object) -> bool:
    try:
        orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        return False
    return not (isinstance(value, float) and not math.isfinite(value))


def send(proxy: InProcess, method: str, path: str, body: object, headers: dict[str, str]) -> httpx.Response:
    response = proxy.run(proxy.http.request(method, path, content=encode(body) if body is not None else None,
                                            headers=headers))
    assert response.status_code < 500 or _from_backend(response) or _redis_down(response), \
        f"{response.status_code} {response.text[:300]}"
    if response.status_code >= 400 and response.headers.get("content-type", "").startswith("application/json"):
        assert "error" in response.json() or "detail" in response.json()
    return response


def _redis_down(response: httpx.Response) -> bool:
    """/stats's documented 503 while Redis misses its time budget (a loaded machine, not the input)."""
    return response.status_code == 503 and response.json()["error"]["code"] == "redis_down"


def _from_backend(response: httpx.Response) -> bool:
    """A backend's own 5xx passed through unchanged is not catcache's error."""
    return response.headers.get("x-catcache") is not None and "backend_" not in response.text


def fuzz(count: int):
    return settings(max_examples=count, deadline=None, derandomize=False, database=None,
                    suppress_health_check=list(HealthCheck))


def openai_routes(proxy: InProcess, count: int) -> Counter:
    """Statuses seen; the caller checks the fuzzing reached the cache (200s) and the validation (400s)."""
    seen: Counter = Counter()

    @fuzz(count)
    @given(endpoint=st.sampled_from(["chat", "completions"]), chat=CHAT | mutated(CHAT),
           completion=COMPLETION | mutated(COMPLETION), raw=RAW,
           use_raw=st.integers(0, 9), headers=HEADERS)
    def one(endpoint, chat, completion, raw, use_raw, headers):
        body = raw if use_raw == 0 else (chat if endpoint == "chat" else completion)
        path = f"/v1/{'chat/completions' if endpoint == 'chat' else 'completions'}"
        seen[send(proxy, "POST", path, body, headers).status_code] += 1

    one()
    return seen


def admin_routes(proxy: InProcess, count: int) -> Counter:
    paths = st.sampled_from(["/admin/reload", "/admin/purge", "/admin/", "/admin/x", "/stats", "/stats/",
                             "/metrics", "/healthz"])
    query = st.sampled_from(["", "since=1h", "since=", "since=-5m", "since=99999999999d", "since=%00", "since=1h&x=1"])
    purge = st.fixed_dictionaries({}, optional={"category": ANY, "tenant": ANY, "older_than": ANY, "key": ANY,
                                                "all": ANY})

    seen: Counter = Counter()

    @fuzz(count)
    @given(path=paths, query=query, method=st.sampled_from(["GET", "POST", "DELETE"]), body=purge | ANY | RAW,
           headers=HEADERS)
    def one(path, query, method, body, headers):
        target = f"{path}?{query}" if query else path
        seen[send(proxy, method, target, body if method == "POST" else None, headers).status_code] += 1

    one()
    return seen


def test_fuzz_openai_routes(proxy) -> None:
    seen = openai_routes(proxy, FUZZ_EXAMPLES * 2)
    assert seen[200] and seen[400], seen


def test_fuzz_admin_routes(proxy) -> None:
    seen = admin_routes(proxy, FUZZ_EXAMPLES)
    assert sum(seen.values()) >= FUZZ_EXAMPLES // 2 and seen[401], seen
    # Whether the random headers ever carried the right token is luck; the three answers are not.
    statuses = [send(proxy, "GET", "/stats", None, headers).status_code
                for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": f"Bearer {TOKEN}"})]
    assert statuses == [401, 403, 200]


@pytest.mark.slow
@pytest.mark.timeout(0)
def test_fuzz_slow_ten_thousand(proxy) -> None:
    """The figure in the README: over 10,000 generated requests, 0 server errors."""
    seen = openai_routes(proxy, FUZZ_EXAMPLES_SLOW * 2) + admin_routes(proxy, FUZZ_EXAMPLES_SLOW)
    print(f"\nfuzzed {sum(seen.values())} requests; statuses {dict(sorted(seen.items()))}")
    assert sum(seen.values()) >= FUZZ_EXAMPLES_SLOW * 3
