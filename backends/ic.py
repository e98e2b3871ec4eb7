"""IC-Cache: answer a near miss with a small model, given similar cached exchanges as examples.

The examples go right after the system prompt, in a stable order (oldest entry first), so that
requests of one category share a prompt prefix and the backend's prefix cache reuses their KV.
The router's quality signals live here too: whether the examples agree with each other, and how
sure the small model was of its own answer (bench/ic.py measures both on ComQA).
"""

from __future__ import annotations

from catcache.store.documents import Document


def within_budget(examples: list[Document], budget_tokens: int) -> list[Document]:
    """The most relevant examples (given most similar first) whose text fits the category's
    prompt-token budget: each example costs the small model prefill on every IC request. Tokens
    are estimated at 4 characters each; an example too long to fit is skipped, not cut."""
    chosen, spent = [], 0
    for doc in examples:
        cost = (len(doc.query) + len(_answer_text(doc.response))) // 4 + 8  # + the chat template's markers
        if spent + cost <= budget_tokens:
            chosen.append(doc)
            spent += cost
    return chosen


def example_messages(examples: list[Document]) -> list[dict]:
    messages = []
    for doc in sorted(examples, key=lambda d: (d.created, d.doc_id)):
        answer = _answer_text(doc.response)
        if doc.query and answer:
            messages += [{"role": "user", "content": doc.query}, {"role": "assistant", "content": answer}]
    return messages


def in_context_request(body: dict, endpoint: str, examples: list[Document], model: str | None) -> dict:
    """The request for the small backend: the original with the examples spliced in."""
    shots = example_messages(examples)
    request = dict(body)
    if model:
        request["model"] = model
    if endpoint == "chat":
        messages = list(body["messages"])
        system = [m for m in messages[:1] if m.get("role") in ("system", "developer")]
        request["messages"] = system + shots + messages[len(system):]
    else:
        prefix = "".join(f"Q: {shots[i]['content']}\nA: {shots[i + 1]['content']}\n\n" for i in range(0, len(shots), 2))
        request["prompt"] = prefix + f"Q: {body['prompt']}\nA:" if shots else body["prompt"]
    return request


def agreement(examples: list[Document]) -> float:
    """1 when every example gives the same answer, 1/n when n answers differ: examples that
    disagree leave the small model to pick, which it does badly."""
    answers = {_answer_text(doc.response).strip().lower() for doc in examples}
    return 1.0 / len(answers) if answers else 0.0


def confident_request(request: dict, endpoint: str) -> dict:
    """`request` asked whole and with token log-probabilities, so the answer can be judged before it is served."""
    asked = {k: v for k, v in request.items() if k != "stream_options"}
    return dict(asked, stream=False, logprobs=True if endpoint == "chat" else 1)


def confidence(response: dict) -> float | None:
    """The mean log-probability of the answer's tokens; None when the backend sent none."""
    logprobs = (response.get("choices") or [{}])[0].get("logprobs") or {}
    values = [t.get("logprob") for t in logprobs.get("content") or []] or logprobs.get("token_logprobs") or []
    values = [v for v in values if isinstance(v, (int, float))]
    return sum(values) / len(values) if values else None


def _answer_text(response: dict) -> str:
    choices = response.get("choices") or [{}]
    first = choices[0]
    return (first.get("message") or {}).get("content") or first.get("text") or ""
