"""Folding streamed chunks into one response, and replaying it as chunks, are inverses."""

from __future__ import annotations

import orjson

from catcache.proxy.sse import DONE, StreamAssembler, event_payloads, replay_chunks

RESPONSE = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
    "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "Let me look.",
        "tool_calls": [{"id": "call_1", "type": "function",
                        "function": {"name": "lookup", "arguments": "{\"q\": \"x\"}"}}]}}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
}


def fold(events: list[bytes], endpoint: str) -> StreamAssembler:
    assembler = StreamAssembler(endpoint)
    for event in events:
        for payload in event_payloads(event):
            if payload == b"[DONE]":
                assembler.done = True
            else:
                assembler.add(orjson.loads(payload))
    return assembler


def test_chat_round_trip_with_tool_calls_and_usage():
    events = list(replay_chunks(RESPONSE, "chat", include_usage=True))
    assert events[-1] == DONE
    assembler = fold(events, "chat")
    assert assembler.complete
    folded = assembler.response()
    assert folded["choices"] == RESPONSE["choices"]
    assert folded["usage"] == RESPONSE["usage"]


def test_usage_chunk_only_when_asked():
    events = list(replay_chunks(RESPONSE, "chat", include_usage=False))
    assert not any(b'"usage"' in e for e in events)


def test_split_deltas_are_concatenated():
    chunks = [{"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]},
              {"choices": [{"index": 0, "delta": {"content": "lo"}}]},
              {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "t", "function": {"name": "f", "arguments": "{\"a\""}}]}}]},
              {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}}]},
              {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
    assembler = fold([b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks] + [DONE], "chat")
    message = assembler.response()["choices"][0]["message"]
    assert message["content"] == "Hello"
    assert message["tool_calls"][0]["function"] == {"name": "f", "arguments": "{\"a\": 1}"}


def test_incomplete_streams_are_not_complete():
    events = list(replay_chunks(RESPONSE, "chat", include_usage=False))
    assert not fold(events[:-1], "chat").complete, "no [DONE]"
    assert not fold([events[0], DONE], "chat").complete, "no finish_reason"


def test_completions_round_trip():
    response = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
                "choices": [{"index": 0, "text": "hi there", "finish_reason": "length", "logprobs": None}]}
    folded = fold(list(replay_chunks(response, "completions", include_usage=False)), "completions").response()
    assert folded["choices"][0]["text"] == "hi there" and folded["choices"][0]["finish_reason"] == "length"
