import keyword
import string

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from catcache.proxy.canonical import InvalidRequest, canonicalise

word = st.text(string.ascii_letters + string.digits + ".,?!'-", min_size=1, max_size=8).filter(
    lambda w: not keyword.iskeyword(w))
sentence = st.lists(word, min_size=1, max_size=8).map(" ".join)
number = st.one_of(st.integers(0, 2), st.sampled_from([0.0, 0.25, 0.7, 1.0, 1.5]))
tool = st.builds(lambda name, kind: {"type": "function", "function": {
    "name": name, "parameters": {"type": "object", "properties": {"x": {"type": kind}}}}},
    st.sampled_from(["search", "lookup"]), st.sampled_from(["string", "integer"]))
PARAMS = {
    "temperature": number,
    "top_p": number,
    "max_tokens": st.integers(1, 4096),
    "seed": st.integers(0, 2**31),
    "stop": st.one_of(st.just("\n"), st.lists(sentence, max_size=2)),
    "tools": st.lists(tool, min_size=1, max_size=2),
    "response_format": st.just({"type": "json_object"}),
}

CODE = "def total(a, b):\n    return a + b\n\nprint(total(1, 2))\n"


@st.composite
def chat(draw) -> dict:
    """A chat body: optional system prompt, earlier turns, a last user turn, some parameters."""
    messages = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(sentence)})
    for _ in range(draw(st.integers(0, 2))):
        messages.append({"role": "user", "content": draw(sentence)})
        messages.append({"role": "assistant", "content": draw(sentence)})
    last = draw(sentence)
    if draw(st.booleans()):
        last += "\n```python\n" + CODE + "```\n" + draw(sentence)
    messages.append({"role": "user", "content": last})
    body = {"model": draw(st.sampled_from(["llama-3-8b", "qwen-7b"])), "messages": messages}
    for key in draw(st.lists(st.sampled_from(sorted(PARAMS)), unique=True, max_size=4)):
        body[key] = draw(PARAMS[key])
    return body


def key(body: dict) -> str:
    return canonicalise("chat", body).functional_key


def scope(body: dict) -> str:
    return canonicalise("chat", body).scope_key


@st.composite
def shuffled(draw, value):
    """The same JSON value with every object's keys in another order."""
    if isinstance(value, dict):
        keys = draw(st.permutations(list(value)))
        return {k: draw(shuffled(value[k])) for k in keys}
    if isinstance(value, list):
        return [draw(shuffled(v)) for v in value]
    return value


SPACES = [" ", "  ", "\n", "\t", " \n\n ", "\u00a0", "\u3000"]


@st.composite
def respaced(draw, text: str) -> str:
    """Prose with other white space and some letters in their full-width (NFKC) forms."""
    out = draw(st.sampled_from(["", " ", "\n"]))
    for w in text.split(" "):
        out += "".join(chr(ord(c) + 0xFEE0) if c.isalpha() and draw(st.booleans()) else c
                       for c in w)
        out += draw(st.sampled_from(SPACES))
    return out


@settings(max_examples=60, deadline=None)
@given(chat(), st.data())
def test_key_order_spacing_unicode_and_dropped_keys_do_not_count(body, data):
    variant = data.draw(shuffled(body))
    for message in variant["messages"]:
        if "```" not in message["content"]:
            message["content"] = data.draw(respaced(message["content"]))
    for dropped in data.draw(st.lists(st.sampled_from(
            ["stream", "user", "stream_options", "metadata", "store", "service_tier"]))):
        variant[dropped] = {"stream": True, "stream_options": {"include_usage": True}}.get(
            dropped, "x")
    a, b = canonicalise("chat", body), canonicalise("chat", variant)
    assert (a.functional_key, a.scope_key, a.query_text) == (b.functional_key, b.scope_key,
                                                            b.query_text)


@settings(max_examples=30, deadline=None)
@given(chat(), st.sampled_from(["  ", "\n\n", "  # just a comment\n"]))
def test_reformatted_and_renamed_code_is_the_same_request(body, extra):
    last = body["messages"][-1]
    assume("```" in last["content"])
    other = CODE.replace("total", "add").replace("a", "x").replace("b", "y").replace(
        " + ", "+").replace("\n\n", "\n" + extra + "\n")
    variant = {**body, "messages": body["messages"][:-1] + [
        {**last, "content": last["content"].replace(CODE, other)}]}
    assert key(body) == key(variant)


def changes(body: dict) -> st.SearchStrategy:
    """Bodies that differ from `body` in something that changes the answer."""
    def replace(k, v):
        return {**body, k: v}
    options = [
        st.just(replace("model", body["model"] + "-instruct")),
        st.just(replace("temperature", body.get("temperature", 1) + 0.5)),
        st.just(replace("max_tokens", body.get("max_tokens", 16) + 1)),
        st.just(replace("seed", body.get("seed", 0) + 1)),
        st.just(replace("stop", body.get("stop", []) + ["."] if isinstance(
            body.get("stop", []), list) else "\n\n")),
        st.just(replace("tools", body.get("tools", []) + [{"type": "function", "function": {
            "name": "other"}}])),
        st.just(replace("n", 2)),
        st.just(replace("parallel_tool_calls", False)),
        st.just(replace("some_new_option", 1)),
    ]
    return st.one_of(options)


@settings(max_examples=80, deadline=None)
@given(chat(), st.data())
def test_what_changes_the_answer_changes_the_key(body, data):
    assert key(body) != key(data.draw(changes(body)))


@settings(max_examples=80, deadline=None)
@given(chat(), st.data(), st.sampled_from(string.ascii_letters + string.digits + ".,?!'-"))
def test_any_changed_character_changes_the_key(body, data, new):
    i = data.draw(st.integers(0, len(body["messages"]) - 1))
    text = body["messages"][i]["content"]
    j = data.draw(st.sampled_from([k for k, c in enumerate(text) if not c.isspace()]))
    assume(text[j] != new)
    messages = list(body["messages"])
    messages[i] = {**messages[i], "content": text[:j] + new + text[j + 1:]}
    assert key(body) != key({**body, "messages": messages})


@settings(max_examples=30, deadline=None)
@given(chat(), st.sampled_from([("a + b", "a - b"), ("(1, 2)", "(1, 3)"), ("print(", "repr(")]))
def test_a_changed_operator_or_literal_in_code_changes_the_key(body, change):
    last = body["messages"][-1]
    assume("```" in last["content"])
    messages = body["messages"][:-1] + [{**last, "content": last["content"].replace(*change)}]
    assert key(body) != key({**body, "messages": messages})


@settings(max_examples=40, deadline=None)
@given(chat(), sentence)
def test_only_the_last_user_turn_is_outside_the_scope(body, text):
    last = body["messages"][-1]
    assume(text != last["content"])
    variant = {**body, "messages": body["messages"][:-1] + [{**last, "content": text}]}
    assert scope(body) == scope(variant)
    assert key(body) != key(variant)


@settings(max_examples=60, deadline=None)
@given(chat(), sentence, st.data())
def test_everything_else_is_inside_the_scope(body, text, data):
    messages = body["messages"]
    earlier = data.draw(st.sampled_from([
        lambda: [{"role": "system", "content": text}] + messages,
        lambda: messages[:-1] + [{"role": "assistant", "content": text}] + messages[-1:],
        lambda: [{**messages[0], "content": messages[0]["content"] + " " + text}] + messages[1:]
        if len(messages) > 1 else [{"role": "system", "content": text}] + messages,
    ]))()
    assert scope(body) != scope({**body, "messages": earlier})
    assert scope(body) != scope({**body, "model": body["model"] + "-x"})
    assert scope(body) != scope({**body, "temperature": body.get("temperature", 1) + 0.5})


def test_integral_numbers_are_one_number():
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert key({**body, "temperature": 1}) == key({**body, "temperature": 1.0})
    assert key({**body, "temperature": 1}) != key(body)  # defaults are not dropped


def test_query_text_scope_and_code():
    request = canonicalise("chat", {"model": "m", "n": 2, "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [
            {"type": "text", "text": "What  is"},
            {"type": "image_url", "image_url": {"url": "https://x/1.png"}},
            {"type": "text", "text": "this?"}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function",
                                                                "function": {"name": "f"}}]},
        {"role": "tool", "tool_call_id": "1", "content": "42"}]})
    assert request.query_text == "What is this?"
    assert request.n == 2 and not request.has_code and request.endpoint == "chat"
    other_image = canonicalise("chat", {"model": "m", "n": 2, "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [
            {"type": "text", "text": "Anything"},
            {"type": "image_url", "image_url": {"url": "https://x/2.png"}}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function",
                                                                "function": {"name": "f"}}]},
        {"role": "tool", "tool_call_id": "1", "content": "42"}]})
    assert other_image.scope_key != request.scope_key  # the image is not the query's text

    assert canonicalise("chat", {"model": "m", "messages": [
        {"role": "user", "content": "Why?\n```\nfoo\n```"}]}).has_code
    assert canonicalise("chat", {"model": "m", "messages": [
        {"role": "user", "content": "def f(x):\n    return x"}]}).has_code


def test_unfenced_code_keeps_its_lines():
    def body(content):
        return {"model": "m", "messages": [{"role": "user", "content": content}]}
    one = "fix this\nif a:\n    b()\nc()\n"
    other = "fix this\nif a:\n    b()\n    c()\n"
    assert key(body(one)) != key(body(other))


def test_completions():
    request = canonicalise("completions", {"model": "m", "prompt": "Once  upon", "stream": True})
    assert request.query_text == "Once upon" and request.n == 1
    spaced = canonicalise("completions", {"model": "m", "prompt": "Once upon"})
    assert spaced.functional_key != request.functional_key  # a prompt is continued exactly
    assert spaced.scope_key == request.scope_key
    tokens = canonicalise("completions", {"model": "m", "prompt": [1, 2, 3]})
    assert tokens.query_text == ""
    assert tokens.scope_key != canonicalise("completions", {"model": "m", "prompt": [1, 2]}).scope_key


@pytest.mark.parametrize("endpoint, body, param", [
    ("chat", [], None),
    ("chat", {"messages": [{"role": "user", "content": "hi"}]}, "model"),
    ("chat", {"model": "", "messages": [{"role": "user", "content": "hi"}]}, "model"),
    ("chat", {"model": 3, "messages": [{"role": "user", "content": "hi"}]}, "model"),
    ("chat", {"model": "m"}, "messages"),
    ("chat", {"model": "m", "messages": {"role": "user", "content": "hi"}}, "messages"),
    ("chat", {"model": "m", "messages": []}, "messages"),
    ("chat", {"model": "m", "messages": ["hi"]}, "messages[0]"),
    ("chat", {"model": "m", "messages": [{"role": 1, "content": "hi"}]}, "messages[0].role"),
    ("chat", {"model": "m", "messages": [{"content": "hi"}]}, "messages[0].role"),
    ("chat", {"model": "m", "messages": [{"role": "user", "content": None}]},
     "messages[0].content"),
    ("chat", {"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ("chat", {"model": "m", "messages": [{"role": "user", "content": [{"text": "x"}]}]},
     "messages[0].content[0]"),
    ("chat", {"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}]}]},
     "messages[0].content[0].text"),
    ("chat", {"model": "m", "n": 0, "messages": [{"role": "user", "content": "hi"}]}, "n"),
    ("chat", {"model": "m", "temperature": float("nan"),
              "messages": [{"role": "user", "content": "hi"}]}, "temperature"),
    ("completions", {"model": "m"}, "prompt"),
    ("completions", {"model": "m", "prompt": 5}, "prompt"),
    ("completions", {"model": "m", "prompt": ["a", 1]}, "prompt"),
])
def test_invalid_requests(endpoint, body, param):
    with pytest.raises(InvalidRequest) as raised:
        canonicalise(endpoint, body)
    assert raised.value.param == param


def test_assistant_content_may_be_null():
    canonicalise("chat", {"model": "m", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": []}]})
