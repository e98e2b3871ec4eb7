"""The answers the fake backend gives, and the OpenAI payloads (messages, deltas, usage) that carry
them: plain data, shared by the uvicorn server and the plain http.server one."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

EMBEDDING_DIM = 16


@dataclass(frozen=True)
class Answer:
    """One choice: its streamed pieces (content, or tool-call arguments) and why it ended."""

    index: int
    pieces: list[str]
    finish_reason: str
    tool: dict[str, Any] | None = None  # the tool call, arguments left out (they are the pieces)

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def words(text: str) -> list[str]:
    """Whitespace-separated tokens, each keeping the space before it, so they join back exactly."""
    return re.findall(r"\s*\S+", text)


def answer_text(number: int, index: int, question: str) -> str:
    label = f"#{number}" if index == 0 else f"#{number} choice {index}"
    return f"Answer {label} to: {question}"


def text_answer(index: int, text: str, limit: int | None, tool: dict[str, Any] | None = None) -> Answer:
    pieces = words(text)
    if limit is not None and len(pieces) > limit:
        return Answer(index, pieces[:limit], "length", tool)
    return Answer(index, pieces, "tool_calls" if tool else "stop", tool)


def chat_answer(
    index: int, number: int, question: str, tool: dict[str, Any] | None, limit: int | None, text: str | None = None
) -> Answer:
    if tool is None:
        return text_answer(index, text or answer_text(number, index, question), limit)
    name = tool.get("function", {}).get("name", "")
    call = {"id": f"call_{number}_{index}", "type": "function", "function": {"name": name}}
    return text_answer(index, json.dumps({"question": question, "answer": number}), limit, call)


def message(answer: Answer) -> dict[str, Any]:
    if answer.tool is None:
        return {"role": "assistant", "content": answer.text}
    function = {**answer.tool["function"], "arguments": answer.text}
    return {"role": "assistant", "content": None, "tool_calls": [{**answer.tool, "function": function}]}


def opening_delta(answer: Answer) -> dict[str, Any]:
    if answer.tool is None:
        return {"role": "assistant", "content": ""}
    function = {**answer.tool["function"], "arguments": ""}
    call = {"index": 0, **answer.tool, "function": function}
    return {"role": "assistant", "content": None, "tool_calls": [call]}


def piece_delta(answer: Answer, piece: str) -> dict[str, Any]:
    if answer.tool is None:
        return {"content": piece}
    return {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}


def chat_payload(answer: Answer, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {"index": answer.index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def text_payload(answer: Answer, text: str, finish_reason: str | None = None) -> dict[str, Any]:
    return {"index": answer.index, "text": text, "logprobs": None, "finish_reason": finish_reason}


def steps(answers: list[Answer], payload: Callable[[Answer, str], dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Choice payloads grouped by token position: all choices advance one token per step."""
    longest = max((len(a.pieces) for a in answers), default=0)
    return [[payload(a, a.pieces[k]) for a in answers if k < len(a.pieces)] for k in range(longest)]


def usage(prompt_tokens: int, answers: list[Answer]) -> dict[str, int]:
    completion_tokens = sum(len(a.pieces) for a in answers)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def content_text(content: Any) -> str:
    """A message's text, whether content is a string or a list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def last_user_text(messages: list[dict[str, Any]]) -> str:
    for entry in reversed(messages):
        if entry.get("role") == "user":
            return content_text(entry.get("content"))
    return ""


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    return sum(len(words(content_text(m.get("content")))) for m in messages)


def fake_embedding(text: str, dim: int, as_base64: bool) -> list[float] | str:
    """A unit vector seeded by the text: equal texts embed alike, different ones do not."""
    rng = random.Random(hashlib.sha256(text.encode()).digest())
    vector = [rng.gauss(0, 1) for _ in range(dim)]
    norm = sum(x * x for x in vector) ** 0.5
    vector = [x / norm for x in vector]
    if as_base64:
        return base64.b64encode(struct.pack(f"<{dim}f", *vector)).decode()
    return vector


def sse(chunk: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
