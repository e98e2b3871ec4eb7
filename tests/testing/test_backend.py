"""The test backend speaks OpenAI well enough for the official SDK, and fails on request."""

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from catcache.testing import TestBackend


@pytest.fixture
def client(fresh_backend: TestBackend) -> openai.OpenAI:
    return openai.OpenAI(base_url=fresh_backend.base_url, api_key="test-key", max_retries=0)


def answer_number(text: str) -> int:
    match = re.match(r"Answer #(\d+)", text)
    assert match, text
    return int(match.group(1))


def ask(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}]


def test_chat_answers_and_counts(client: openai.OpenAI, fresh_backend: TestBackend) -> None:
    first = client.chat.completions.create(model="test-model", messages=ask("what is  a monad?"))
    second = client.chat.completions.create(model="test-model", messages=ask("what is  a monad?"))

    content = first.choices[0].message.content
    assert content is not None and content.endswith(" to: what is  a monad?")
    assert answer_number(second.choices[0].message.content or "") == answer_number(content) + 1
    assert first.choices[0].finish_reason == "stop"
    assert first.model == "test-model" and first.object == "chat.completion"
    assert first.usage is not None
    assert (first.usage.prompt_tokens, first.usage.completion_tokens, first.usage.total_tokens) == (6, 7, 13)
    assert fresh_backend.calls("/v1/chat/completions") == 2 and fresh_backend.calls() == 2


def test_chat_stream_with_usage_matches_the_plain_answer(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="test-model", messages=ask("hello"), stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"Answer #{answer_number(text)} to: hello"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4 and chunks[-1].usage.prompt_tokens == 3


def test_stream_without_include_usage_sends_no_usage(fresh_backend: TestBackend) -> None:
    body = {"model": "m", "messages": ask("hi"), "stream": True}
    raw = httpx.post(f"{fresh_backend.base_url}/chat/completions", json=body).text
    events = [line.removeprefix("data: ") for line in raw.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    assert all("usage" not in json.loads(event) for event in events[:-1])


def test_max_tokens_cuts_with_length(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="m", messages=ask("one two three four"), max_tokens=3)
    assert reply.choices[0].finish_reason == "length"
    assert reply.choices[0].message.content == f"Answer #{answer_number(reply.choices[0].message.content or '')} to:"
    assert reply.usage is not None and reply.usage.completion_tokens == 3


def test_n_choices_share_the_answer_number(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="m", messages=ask("pick"), n=3)
    texts = [choice.message.content or "" for choice in reply.choices]
    assert [choice.index for choice in reply.choices] == [0, 1, 2]
    assert len(set(texts)) == 3 and len({answer_number(text) for text in texts}) == 1


def test_completions_plain_and_streamed(client: openai.OpenAI, fresh_backend: TestBackend) -> None:
    plain = client.completions.create(model="m", prompt="Once upon a time")
    assert plain.choices[0].text.endswith(" to: Once upon a time")
    assert plain.choices[0].finish_reason == "stop"
    assert plain.usage is not None and plain.usage.prompt_tokens == 4

    chunks = list(
        client.completions.create(model="m", prompt="Once", stream=True, stream_options={"include_usage": True})
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == f"Answer #{answer_number(plain.choices[0].text) + 1} to: Once"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 5
    assert fresh_backend.calls("/v1/completions") == 2


def test_tool_call_plain_and_streamed(client: openai.OpenAI) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    plain = client.chat.completions.create(model="m", messages=ask("please use tool now"), tools=tools)
    call = plain.choices[0].message.tool_calls
    assert plain.choices[0].finish_reason == "tool_calls" and call is not None
    assert call[0].function.name == "lookup"
    assert json.loads(call[0].function.arguments)["question"] == "please use tool now"

    chunks = list(
        client.chat.completions.create(model="m", messages=ask("please use tool now"), tools=tools, stream=True)
    )
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].function is not None and deltas[0].function.name == "lookup"
    arguments = json.loads("".join(d.function.arguments or "" for d in deltas if d.function))
    assert arguments["answer"] == json.loads(call[0].function.arguments)["answer"] + 1
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("status", [400, 429, 503])
def test_error_trigger(client: openai.OpenAI, fresh_backend: TestBackend, status: int) -> None:
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model="m", messages=ask("hi"), extra_headers={"x-test-status": str(status)})
    assert failed.value.status_code == status
    assert "status" in failed.value.message
    assert fresh_backend.calls("/v1/chat/completions") == 1


def test_truncated_stream_ends_without_finish(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="m", messages=ask("a long enough question"), stream=True, extra_headers={"x-test-truncate": "1"}
    )
    seen = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in stream:
            seen.append(chunk)
    assert len(seen) > 1
    assert all(chunk.choices[0].finish_reason is None for chunk in seen)


def test_embeddings_are_deterministic_unit_vectors(client: openai.OpenAI) -> None:
    first = client.embeddings.create(model="m", input=["same text", "other text"])
    again = client.embeddings.create(model="m", input="same text", encoding_format="float")
    assert len(first.data) == 2 and len(first.data[0].embedding) == 16
    assert first.data[0].embedding == pytest.approx(again.data[0].embedding, abs=1e-6)
    assert first.data[0].embedding != pytest.approx(first.data[1].embedding, abs=1e-6)
    assert sum(x * x for x in first.data[1].embedding) == pytest.approx(1.0, abs=1e-5)


def test_models_echo_and_stats(client: openai.OpenAI, fresh_backend: TestBackend) -> None:
    assert [model.id for model in client.models.list()] == ["test-model"]
    echoed = httpx.post(
        f"{fresh_backend.base_url}/files?purpose=batch", json={"a": 1}, headers={"authorization": "Bearer k"}
    ).json()
    assert echoed["method"] == "POST" and echoed["path"] == "/v1/files" and echoed["query"] == "purpose=batch"
    assert echoed["json"] == {"a": 1} and echoed["headers"]["authorization"] == "Bearer k"
    stats = httpx.get(f"{fresh_backend.url}/stats").json()
    assert stats == {"/v1/models": 1, "/v1/files": 1}


def test_think_time_and_token_rate() -> None:
    with TestBackend(think_ms=150, tokens_per_s=100) as slow:
        client = openai.OpenAI(base_url=slow.base_url, api_key="k", max_retries=0)
        began = time.monotonic()
        stream = client.chat.completions.create(model="m", messages=ask("x y"), stream=True)
        arrivals = [time.monotonic() - began for chunk in stream if chunk.choices and chunk.choices[0].delta.content]
        assert arrivals[0] >= 0.15
        assert arrivals[-1] >= 0.15 + 5 * 0.01  # "Answer #n to: x y" is five tokens

        began = time.monotonic()
        client.chat.completions.create(model="m", messages=ask("x y"))
        assert time.monotonic() - began >= 0.15 + 5 * 0.01


def test_slots_queue_generations_and_replies_answer_known_questions() -> None:
    with TestBackend(think_ms=200, slots=2, replies={"capital of france?": "Paris."}) as busy:
        client = openai.OpenAI(base_url=busy.base_url, api_key="k", max_retries=0)
        began = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(lambda q: client.chat.completions.create(model="m", messages=ask(q)),
                                    ["capital of france?", "b", "c", "d"]))
        assert time.monotonic() - began >= 0.4, "four generations through two slots take two turns"
        assert replies[0].choices[0].message.content == "Paris."
        assert replies[1].choices[0].message.content.startswith("Answer #")


def test_groups_answer_every_question_of_a_group_alike() -> None:
    groups = {"capital of france?": "g1", "what is france's capital?": "g1", "capital of peru?": "g2"}
    with TestBackend(groups=groups, replies={"capital of peru?": "Lima."}) as known:
        client = openai.OpenAI(base_url=known.base_url, api_key="test-key", max_retries=0)

        def reply(question: str, stream: bool = False) -> str:
            if stream:
                chunks = client.chat.completions.create(model="m", messages=ask(question), stream=True)
                return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            return client.chat.completions.create(model="m", messages=ask(question)).choices[0].message.content

        first, paraphrase = reply("capital of france?"), reply("what is france's capital?", stream=True)
        assert first == paraphrase and not first.startswith("Answer #")
        assert reply("capital of peru?") == "Lima."  # an explicit reply wins over the group's
        assert reply("capital of spain?").startswith("Answer #")  # outside every group: numbered
        assert known.calls("/v1/chat/completions") == 4


def test_the_bench_backend_models_a_prefix_cache_of_n_system_prompts():
    with TestBackend(prefix_ms=1, prefix_slots=2) as server:
        client = httpx.Client(base_url=server.url)
        for system in ("a", "b", "a", "c", "b", "c"):  # LRU of 2: a, b miss; a hits; c evicts b; b evicts a
            body = {"model": "test-model",
                    "messages": [{"role": "system", "content": system}, {"role": "user", "content": "hi"}]}
            assert client.post("/v1/chat/completions", json=body).status_code == 200
        assert client.get("/stats/prefix-cache").json() == {"hits": 2, "misses": 4, "slots": 2}
        client.close()
