"""Server-sent events: split a backend stream into events, fold chunks into one response, and
replay a stored response as chunks.

Stored documents always hold the whole (non-stream) response, so one entry answers both stream
and non-stream requests.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import orjson

DONE = b"data: [DONE]\n\n"


def event_payloads(event: bytes) -> Iterator[bytes]:
    """The `data:` payloads of one SSE event (comments and other fields are ignored)."""
    for line in event.splitlines():
        if line.startswith(b"data:"):
            yield line[5:].strip()


def encode_event(payload: dict) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


class StreamAssembler:
    """Folds chat or completion chunks into the response a non-stream request would have got."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.head: dict = {}
        self.choices: dict[int, dict] = {}
        self.usage: dict | None = None
        self.done = False
        self.corrupt = False

    def add(self, chunk: dict) -> None:
        for key in ("id", "model", "created", "system_fingerprint"):
            if key in chunk and chunk[key] is not None:
                self.head.setdefault(key, chunk[key])
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            merged = self.choices.setdefault(choice.get("index", 0), {"index": choice.get("index", 0)})
            if choice.get("finish_reason") is not None:
                merged["finish_reason"] = choice["finish_reason"]
            if self.endpoint == "chat":
                _merge_delta(merged.setdefault("message", {"role": "assistant", "content": None}),
                             choice.get("delta") or {})
            else:
                merged["text"] = merged.get("text", "") + (choice.get("text") or "")
            if choice.get("logprobs"):
                _merge_logprobs(merged, choice["logprobs"])

    @property
    def complete(self) -> bool:
        """A stream is worth storing only if it ended with [DONE] and every choice has a finish_reason."""
        return (self.done and not self.corrupt and bool(self.choices)
                and all("finish_reason" in c for c in self.choices.values()))

    def response(self) -> dict:
        response = {
            "id": self.head.get("id", ""),
            "object": "chat.completion" if self.endpoint == "chat" else "text_completion",
            "created": self.head.get("created", int(time.time())),
            "model": self.head.get("model", ""),
            "choices": [self.choices[i] for i in sorted(self.choices)],
        }
        if "system_fingerprint" in self.head:
            response["system_fingerprint"] = self.head["system_fingerprint"]
        if self.usage:
            response["usage"] = self.usage
        return response


def _merge_delta(message: dict, delta: dict) -> None:
    if delta.get("role"):
        message["role"] = delta["role"]
    for key in ("content", "refusal", "reasoning_content"):
        if delta.get(key) is not None:
            message[key] = (message.get(key) or "") + delta[key]
    for call in delta.get("tool_calls") or []:
        calls = message.setdefault("tool_calls", [])
        index = call.get("index", len(calls))
        while len(calls) <= index:
            calls.append({"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        target = calls[index]
        if call.get("id"):
            target["id"] = call["id"]
        if call.get("type"):
            target["type"] = call["type"]
        function = call.get("function") or {}
        target["function"]["name"] += function.get("name") or ""
        target["function"]["arguments"] += function.get("arguments") or ""


def _merge_logprobs(choice: dict, logprobs: dict) -> None:
    merged = choice.setdefault("logprobs", {})
    for key, value in logprobs.items():
        if isinstance(value, list):
            merged[key] = merged.get(key, []) + value
        else:
            merged[key] = value


def replay_chunks(response: dict, endpoint: str, include_usage: bool) -> Iterator[bytes]:
    """A stored response as the SSE events a streaming backend would have sent, then [DONE]."""
    head = {"id": response.get("id", ""), "created": response.get("created", int(time.time())),
            "model": response.get("model", "")}
    if endpoint == "chat":
        head["object"] = "chat.completion.chunk"
        for choice in response.get("choices", []):
            index, message = choice.get("index", 0), choice.get("message") or {}
            delta: dict = {"role": message.get("role", "assistant"), "content": message.get("content") or ""}
            if message.get("tool_calls"):
                delta["tool_calls"] = [dict(call, index=i) for i, call in enumerate(message["tool_calls"])]
            if message.get("refusal"):
                delta["refusal"] = message["refusal"]
            content_choice = {"index": index, "delta": delta, "finish_reason": None}
            if choice.get("logprobs"):
                content_choice["logprobs"] = choice["logprobs"]
            yield encode_event({**head, "choices": [content_choice]})
            yield encode_event({**head, "choices": [{"index": index, "delta": {},
                                                     "finish_reason": choice.get("finish_reason", "stop")}]})
    else:
        head["object"] = "text_completion"
        for choice in response.get("choices", []):
            yield encode_event({**head, "choices": [{"index": choice.get("index", 0), "text": choice.get("text", ""),
                                                     "logprobs": choice.get("logprobs"),
                                                     "finish_reason": choice.get("finish_reason", "stop")}]})
    if include_usage and response.get("usage"):
        yield encode_event({**head, "choices": [], "usage": response["usage"]})
    yield DONE
