"""Answers for a test backend that answers every query of a group alike: a stand-in for a
deterministic model, so that the learner's judge has something true to compare.

ComQA rows carry their cluster's answer set ("https://en.wikipedia.org/wiki/paris | ..."), which
is what the backend says. Rows with only a group (QQP) get a sentence of words drawn from the
group's hash: two groups' answers then share no more than chance words, as two different
answers would, where "The answer for g17." and "... g18." would sit at cosine 0.95 and fool an
embedding judge into calling every pair the same.
"""

from __future__ import annotations

import hashlib

WORDS = ("amber basalt cedar delta ember fjord garnet harbor indigo juniper kelp lagoon meadow nectar "
         "obsidian prairie quartz rapids saffron tundra umber valley willow xenon yarrow zephyr anvil "
         "beacon canyon dune estuary falcon glacier heron island jasper kestrel lantern marble nimbus "
         "orchard pebble quiver ridge summit thistle upland vortex wharf yonder zenith").split()


def group_answer(group: str, length: int = 8) -> str:
    digest = hashlib.sha256(group.encode()).digest()
    return " ".join(WORDS[byte % len(WORDS)] for byte in digest[:length]).capitalize() + "."


def answers(rows: list[dict]) -> dict[str, str]:
    """{query text: the answer the backend gives it}; a text asked in two groups keeps its first."""
    found: dict[str, str] = {}
    for row in rows:
        answer = row["answer"] if row.get("answer") else group_answer(f"{row.get('source', '')}{row['group']}")
        found.setdefault(row["text"], answer)
    return found
