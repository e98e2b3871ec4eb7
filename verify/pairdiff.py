"""What two queries differ in, cheaply: the evidence a verifier weighs beyond their similarity.

Embeddings are good at topic and poor at the small words that change an answer: another number,
another name, a "not", a "why" for a "how", one extra content word. A cached answer is wrong in
exactly those cases, and a few set operations over the two word lists find them in microseconds.
"""

from __future__ import annotations

import re
from difflib import SequenceMatcher
from dataclasses import dataclass

import numpy as np

from catcache.verify import question

_WORD = re.compile(r"[A-Za-z]+(?:'[a-z]+)?|\d+(?:[.,]\d+)*")
_OPENERS = frozenset(".?!:;([{\"'\u201c\u2018")
_NEGATIONS = frozenset({"not", "no", "never", "none", "nothing", "nobody", "without", "cannot", "neither", "nor"})
_SAME_SENTENCE = 0.85  # difflib ratio of the two word lists once the exchanged words are put back
_LINKS = frozenset({"and", "or", "nor", "vs", "versus", "v", "a", "an", "the", "of"})
_ASKS = ("how", "why", "what", "when", "where", "who", "which", "whom", "whose",
         "is", "are", "can", "could", "should", "would", "will", "do", "does", "did")
_STOP = frozenset("""
a an the of to in on at for from by with about as into onto over under than then so and or but if
is are was were be been being am do does did doing have has had having can could should would will
shall may might must i me my mine we us our you your he him his she her it its they them their this
that these those there here what which who whom whose when where why how some any all each every
much many more most very just also too only own same other such s t get got getting one ones way
ever really please best good
""".split())


def words(text: str) -> list[str]:
    """Lower-cased words and numbers; "n't" counts as "not"."""
    found = []
    for token in _WORD.findall(text):
        token = token.lower()
        if token.endswith("n't"):
            found += [token[:-3], "not"]
        else:
            found.append(token.removesuffix("'s"))
    return found


def stem(word: str) -> str:
    """Just enough folding that "laptops" matches "laptop" and "learning" matches "learn"."""
    for suffix in ("ing", "ies", "es", "s", "ed", "ly"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return word


def _ask(tokens: list[str]) -> str:
    return next((t for t in tokens[:3] if t in _ASKS), "")


def _capitalised(text: str) -> set[str]:
    """Capitalised words, a proxy for names (Python, London, iPhone): not a word that opens the
    text or a sentence or clause (after . ? ! : ; or a bracket or quote), not "I", not a stop word."""
    found, last_end = set(), None
    for match in _WORD.finditer(text):
        token, gap = match.group(), text[last_end:match.start()] if last_end is not None else None
        last_end = match.end()
        lower = token.lower().removesuffix("'s")
        if gap is None or _OPENERS.intersection(gap) or lower in _STOP or lower.split("'")[0] == "i":
            continue
        if token[:1].isupper() or any(c.isupper() for c in token[1:]):
            found.add(lower)
    return found


@dataclass(frozen=True)
class PairDiff:
    only_query: frozenset[str]      # content stems the query has and the candidate lacks
    only_candidate: frozenset[str]
    shared: frozenset[str]
    numbers_query: frozenset[str]
    numbers_candidate: frozenset[str]
    names_differ: frozenset[str]    # capitalised words in one and not the other
    negation_differs: bool
    ask_query: str                  # leading question word ("how", "why", ...), or ""
    ask_candidate: str
    length_query: int
    length_candidate: int
    kind_query: str = ""            # the kind of answer asked for (question.answer_kind)
    kind_candidate: str = ""
    axis: str = ""                  # an axis both use at different ends ("east-west"), or ""
    swapped: tuple[str, ...] = ()   # two words that trade places around a relation ("men", "women")
    counts_query: frozenset[str] = frozenset()      # cardinal words as numbers ("three" -> "3")
    counts_candidate: frozenset[str] = frozenset()

    @property
    def kinds_differ(self) -> bool:
        return question.kinds_conflict(self.kind_query, self.kind_candidate)

    @property
    def numbers_differ(self) -> bool:
        """Another number or ordinal, or two different counts ("three" / "seven longest rivers")."""
        if self.numbers_query != self.numbers_candidate:
            return True
        if self.counts_query and self.counts_candidate:
            return self.counts_query | self.numbers_query != self.counts_candidate | self.numbers_candidate
        return False


def swapped_roles(query: list[str], candidate: list[str]) -> tuple[str, ...]:
    """Two words that trade places in otherwise the same sentence: "why do cats hate dogs" against
    "why do dogs hate cats", "from the UK to the USA" against "from the USA to the UK". Exchanging
    them back must make the two texts nearly the same, and more than "and" / "or" must stand
    between them, so "Java and Python" for "Python and Java" passes, as do paraphrases that reorder
    a whole question ("what city is the largest in Mississippi")."""
    stems_query, stems_candidate = [stem(w) for w in query], [stem(w) for w in candidate]
    shared = ({s for s, w in zip(stems_query, query) if w not in _STOP and w.isalpha()}
              & {s for s, w in zip(stems_candidate, candidate) if w not in _STOP and w.isalpha()})
    order_query, order_candidate = _order(stems_query, shared), _order(stems_candidate, shared)
    moved = [i for i, (a, b) in enumerate(zip(order_query, order_candidate)) if a != b]
    if len(moved) != 2:
        return ()
    first, second = order_query[moved[0]], order_query[moved[1]]
    if (order_candidate[moved[0]], order_candidate[moved[1]]) != (second, first):
        return ()
    exchange = {first: second, second: first}
    restored = [exchange.get(s, s) for s in stems_candidate]
    if SequenceMatcher(None, stems_query, restored, autojunk=False).ratio() < _SAME_SENTENCE:
        return ()
    if not (_related(query, stems_query, first, second) and _related(candidate, stems_candidate, first, second)):
        return ()
    return first, second


def _order(stems: list[str], shared: set[str]) -> list[str]:
    """The shared content stems in the order they first occur."""
    return list(dict.fromkeys(s for s in stems if s in shared))


def _related(tokens: list[str], stems: list[str], first: str, second: str) -> bool:
    """Whether a relation stands between the two words: more than "and", "or", "of", an article,
    or a word the text repeats ("web developer and web designer")."""
    i, j = sorted((stems.index(first), stems.index(second)))
    return any(t not in _LINKS and (t in _STOP or tokens.count(t) == 1) for t in tokens[i + 1:j])


def diff(query: str, candidate: str) -> PairDiff:
    wq, wc = words(query), words(candidate)
    cq = {stem(w) for w in wq if w not in _STOP}
    cc = {stem(w) for w in wc if w not in _STOP}
    qq, qc = question.words(query), question.words(candidate)
    nq, nc = question.quantities(qq), question.quantities(qc)
    negq = sum(w in _NEGATIONS for w in wq) % 2
    negc = sum(w in _NEGATIONS for w in wc) % 2
    names = _capitalised(query) ^ _capitalised(candidate)
    return PairDiff(frozenset(cq - cc), frozenset(cc - cq), frozenset(cq & cc), nq, nc,
                    frozenset(n for n in names if stem(n) not in cq & cc), negq != negc,
                    _ask(wq), _ask(wc), len(wq), len(wc), question.answer_kind(query),
                    question.answer_kind(candidate), question.opposite_axis(qq, qc), swapped_roles(wq, wc),
                    question.counts(qq), question.counts(qc))


FEATURES = ("similarity", "content_jaccard", "only_query", "only_candidate", "only_max",
            "only_total_chars", "numbers_differ", "names_differ", "negation_differs",
            "ask_differs", "length_ratio", "length_min", "kinds_differ", "axis_differs")


def features(query: str, candidate: str, similarity: float) -> np.ndarray:
    """The pair as a fixed-length vector, in the order of FEATURES."""
    d = diff(query, candidate)
    union = len(d.shared) + len(d.only_query) + len(d.only_candidate)
    longer = max(d.length_query, d.length_candidate, 1)
    return np.array([
        similarity,
        len(d.shared) / union if union else 1.0,
        len(d.only_query),
        len(d.only_candidate),
        max(len(d.only_query), len(d.only_candidate)),
        sum(map(len, d.only_query | d.only_candidate)),
        float(d.numbers_differ),
        len(d.names_differ),
        float(d.negation_differs),
        float(d.ask_query != d.ask_candidate),
        min(d.length_query, d.length_candidate) / longer,
        min(d.length_query, d.length_candidate),
        float(d.kinds_differ),
        float(bool(d.axis)),
    ], dtype=np.float64)
