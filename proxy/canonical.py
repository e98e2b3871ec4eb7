"""The canonical form of a request: what changes the answer, spelt one way.

Hashed whole it keys the functional tier; hashed without the last user turn it is the scope a
semantic neighbour must share. Unknown keys are kept: a key we do not know may change the
answer, and a missed hit is cheaper than a wrong one.
"""

from __future__ import annotations

import hashlib
import math
import unicodedata
from dataclasses import dataclass

import orjson

from catcache.proxy.codenorm import Fenced, language, looks_like_code, normalise_code, split_fenced

ENDPOINTS = ("chat", "completions")
DROPPED = frozenset({"stream", "stream_options", "user", "metadata", "store", "request_id",
                     "service_tier"})


class InvalidRequest(ValueError):
    """A request the proxy refuses with a 400, `param` naming the offending field."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True)
class CanonicalRequest:
    endpoint: str          # "chat" or "completions"
    model: str
    query_text: str        # last user turn (or the prompt), NFKC and white space collapsed
    canonical: bytes       # sorted, compact JSON of everything that changes the answer
    functional_key: str    # sha256 of endpoint and canonical (proxy/tenancy.scoped makes it a tenant's)
    scope_key: str         # sha256 of the same without the query's text
    has_code: bool         # the query has a fenced block or looks like code
    n: int                 # choices asked for


def canonicalise(endpoint: str, body: dict) -> CanonicalRequest:
    """Validate a chat or completions body and put it in canonical form."""
    if endpoint not in ENDPOINTS:
        raise ValueError(f"unknown endpoint {endpoint!r}")
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' must be a non-empty string.", "model")
    try:
        if endpoint == "chat":
            canon, scope, query = _chat(body)
        else:
            canon, scope, query = _completions(body)
        n = _n(canon.get("n"))
        canonical = orjson.dumps(canon, option=orjson.OPT_SORT_KEYS)
        scope_bytes = orjson.dumps(scope, option=orjson.OPT_SORT_KEYS)
    except RecursionError:
        raise InvalidRequest("The request is nested too deeply.") from None
    except orjson.JSONEncodeError:
        raise InvalidRequest("The request holds text that is not valid Unicode.") from None
    return CanonicalRequest(
        endpoint=endpoint,
        model=model,
        query_text=_plain(query),
        canonical=canonical,
        functional_key=functional_key(endpoint, canonical),
        scope_key=_digest(b"scope", endpoint, scope_bytes),
        has_code=any(isinstance(p, Fenced) for p in split_fenced(query)) or looks_like_code(query),
        n=n,
    )


def functional_key(endpoint: str, canonical: bytes) -> str:
    """The exact tier's key; also recomputed from a stored entry to tell whose entry it is."""
    return _digest(b"functional", endpoint, canonical)


def _digest(kind: bytes, endpoint: str, payload: bytes) -> str:
    # The JSON head cannot run into the payload. Its null once held a tenant (tenancy.scoped does
    # that now); it stays so that keys already stored keep their value.
    head = orjson.dumps([endpoint, None])
    return hashlib.sha256(kind + b"\n" + head + b"\n" + payload).hexdigest()


def _chat(body: dict) -> tuple[dict, dict, str]:
    raw = body.get("messages")
    canon = {k: _value(v, k) for k, v in body.items() if k not in DROPPED and k != "messages"}
    canon["messages"] = messages = _messages(raw)
    users = [i for i, m in enumerate(raw) if m["role"] == "user"]
    if not users:
        return canon, canon, ""
    last = users[-1]
    content = raw[last].get("content")
    if isinstance(content, list):
        texts = [p["text"] for p in content if p["type"] == "text"]
        others = [c for p, c in zip(content, messages[last]["content"]) if p["type"] != "text"]
    else:
        texts, others = [content] if isinstance(content, str) else [], []
    # The scope keeps everything but the query's text, images included; the marker is no
    # content a request could send.
    scoped = list(messages)
    scoped[last] = {**messages[last], "content": {"query": others}}
    return canon, {**canon, "messages": scoped}, "\n".join(texts)


def _completions(body: dict) -> tuple[dict, dict, str]:
    prompt = body.get("prompt")
    if not _valid_prompt(prompt):
        raise InvalidRequest("'prompt' must be a string, an array of strings or an array of "
                             "token ids.", "prompt")
    # The prompt is kept exactly: a completion model continues its text, spaces included.
    canon = {k: _value(v, k) for k, v in body.items() if k not in DROPPED}
    query = prompt if isinstance(prompt, str) else prompt[0] if len(prompt) == 1 and isinstance(
        prompt[0], str) else ""
    if not query:
        return canon, canon, ""
    return canon, {k: v for k, v in canon.items() if k != "prompt"}, query


def _valid_prompt(prompt: object) -> bool:
    if isinstance(prompt, str):
        return True
    if not isinstance(prompt, list) or not prompt:
        return False
    return (all(isinstance(p, str) for p in prompt) or all(_token_ids(p) for p in prompt)
            or _token_ids(prompt))


def _token_ids(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value)


def _n(n: object) -> int:
    if n is None:
        return 1
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidRequest("'n' must be a positive integer.", "n")
    return n


def _messages(messages: object) -> list[dict]:
    if messages is None:
        raise InvalidRequest("'messages' is required.", "messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array.", "messages")
    out = []
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidRequest(f"{param} must be an object.", param)
        if not isinstance(message.get("role"), str):
            raise InvalidRequest(f"{param}.role must be a string.", f"{param}.role")
        content = message.get("content")
        if content is None and message["role"] != "assistant":
            raise InvalidRequest(f"{param}.content is required.", f"{param}.content")
        canon = {k: _value(v, f"{param}.{k}") for k, v in message.items() if k != "content"}
        if "content" in message:
            canon["content"] = _content(content, f"{param}.content")
        out.append(canon)
    return out


def _content(content: object, param: str) -> object:
    if content is None:
        return None
    if isinstance(content, str):
        return _text(content)
    if not isinstance(content, list):
        raise InvalidRequest(f"{param} must be a string, null or an array of parts.", param)
    parts = []
    for j, part in enumerate(content):
        where = f"{param}[{j}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise InvalidRequest(f"{where} must be an object with a string 'type'.", where)
        canon = _value(part, where)
        if part["type"] == "text":
            if not isinstance(part.get("text"), str):
                raise InvalidRequest(f"{where}.text must be a string.", f"{where}.text")
            canon["text"] = _text(part["text"])
        parts.append(canon)  # image_url, input_audio...: kept as sent
    return parts


def _plain(text: str) -> str:
    """Prose as compared: NFKC, runs of white space as one space, no space at the ends."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


def _text(text: str) -> str | list:
    """Message text: prose as `_plain`, code through codenorm. Code keeps its layout, so the two
    are kept apart (a list of prose strings and code objects) and neither can pass for the other.
    """
    pieces = split_fenced(text)
    if len(pieces) == 1 and isinstance(pieces[0], str) and not looks_like_code(pieces[0]):
        return _plain(text)
    out: list = []
    for piece in pieces:
        if isinstance(piece, Fenced):
            out.append({"lang": language(piece.info), "code": normalise_code(piece.body, piece.info)})
        elif looks_like_code(piece):  # unfenced code: its line breaks and indents may matter
            out.append({"lang": None, "code": normalise_code(piece.strip("\r\n"), None)})
        elif prose := _plain(piece):
            out.append(prose)
    return out


def _value(value: object, param: str) -> object:
    """A JSON value with numbers spelt one way (1.0 is 1), checked to be JSON."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, int):
        if not -2**63 <= value < 2**64:
            raise InvalidRequest(f"{param}: integer out of range.", param)
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidRequest(f"{param}: numbers must be finite.", param)
        return int(value) if value.is_integer() and abs(value) < 2**63 else value
    if isinstance(value, list):
        return [_value(v, param) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise InvalidRequest(f"{param}: object keys must be strings.", param)
        return {k: _value(v, param) for k, v in value.items()}
    raise InvalidRequest(f"{param} is not a JSON value.", param)
