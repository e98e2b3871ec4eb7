"""What a question asks for, in the few ways an embedding blurs and an answer never survives.

"When was Bethany Hamilton born?" and "Where was Bethany Hamilton born?" sit at 0.97 cosine;
"the largest country in the western hemisphere" and "... in the eastern hemisphere" at 0.96;
"Nicki Minaj's first album" and "her second album" close behind. Each pair differs in one small
word that changes the answer: the kind of answer asked for (a date, a place, a person, a number),
an ordinal, or a word at the other end of an axis (east/west, born/died, mother/father). These
checks read that word, in any domain and without training; they run in microseconds.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?|\d+(?:[.,]\d+)*(?:st|nd|rd|th)?")

_ORDINALS = {
    "first": "1", "second": "2", "third": "3", "fourth": "4", "fifth": "5", "sixth": "6", "seventh": "7",
    "eighth": "8", "ninth": "9", "tenth": "10", "last": "last", "latest": "last", "final": "last",
    "next": "next", "previous": "previous", "former": "previous",
}
# Cardinal words ("the three longest rivers" against "the seven ..."); not "one", which is as often a
# pronoun ("which one") as a number.
_CARDINALS = {word: str(value) for value, word in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve".split()) if value > 1}
_CARDINALS |= {word: str(10 * tens) for tens, word in enumerate(
    "- - twenty thirty forty fifty sixty seventy eighty ninety".split()) if tens > 1}
_NUMBER = re.compile(r"(\d+(?:[.,]\d+)*)(?:st|nd|rd|th)?$")
_SCALES = {"hundred": 100, "thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000}

# Words at the ends of one axis: a question with one end asks something else than one with
# another. Only an axis present in both questions counts ("his wife" against "his wife's name" is
# the same question; "his wife" against "her husband" is not).
_AXES = {
    "family": ("mother mom mum", "father dad", "sister", "brother", "son", "daughter", "wife", "husband",
               "child children kid kids", "sibling siblings", "grandfather", "grandmother", "parent parents"),
    "east-west": ("east eastern", "west western"),
    "north-south": ("north northern", "south southern"),
    "size": ("largest biggest greatest highest tallest longest oldest richest most heaviest",
             "smallest least lowest shortest youngest newest poorest fewest lightest"),
    "life": ("born birth birthplace birthday", "die died death dead"),
    "marriage": ("marry married wed wedding", "divorce divorced"),
    "outcome": ("win won winner victory", "lose lost loser defeat"),
    "order": ("before", "after"),
    "ends": ("start started begin began beginning", "end ended ending"),
    "quality": ("best", "worst"),
    "extreme": ("minimum min", "maximum max"),
    "trade": ("import imports", "export exports"),
    "season": ("summer", "winter"),
    "direction": ("buy buying", "sell selling"),
    "access": ("open", "close"),
    "state": ("enable enabled", "disable disabled"),
    "motion": ("increase raise", "decrease reduce lower"),
    "time": ("past", "future"),
}
_POLE = {word: (axis, end) for axis, ends in _AXES.items() for end, words in enumerate(ends) for word in words.split()}

_DATE = re.compile(r"\bwhen\b|\b(what|which|in what|the) (year|day|date|month|time|century|decade)\b")
_NUMBER_ASK = re.compile(r"\bhow (many|much|old|tall|long|far|big|high|deep|large|fast|heavy|often)\b"
                         r"|\b(population|percentage)\b|\b(what|which|the) age\b")
_PLACE = re.compile(r"\bwhere\b|\b(what|which) (country|state|city|continent|place|town|county|region|province"
                    r"|island|nation|part of)\b|\bbirthplace\b|\bplace of birth\b")
_PERSON = re.compile(r"\b(who|whom|whose)\b")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def answer_kind(text: str) -> str:
    """The kind of answer asked for: number, date, place, person, reason, manner, or "thing" for
    another what / which question; "" for text that asks nothing ("my card has not arrived")."""
    lowered = " ".join(words(text))
    if _NUMBER_ASK.search(lowered):
        return "number"
    if _DATE.search(lowered):
        return "date"
    if _PLACE.search(lowered):
        return "place"
    if _PERSON.search(lowered):
        return "person"
    if re.search(r"\bwhy\b", lowered):
        return "reason"
    if re.search(r"\bhow\b", lowered):
        return "manner"
    return "thing" if re.search(r"\b(what|which)\b", lowered) else ""


def kinds_conflict(first: str, second: str) -> bool:
    """Whether answers of these two kinds cannot be the same answer. "What was her first album?"
    (a thing) may name a person or a place, but never a date or a number."""
    if not first or not second or first == second:
        return False
    return "thing" not in (first, second) or bool({first, second} & {"date", "number"})


def counts(tokens: list[str]) -> frozenset[str]:
    """Cardinal number words as numbers ("three" is "3"). A count in one question only is no
    difference ("what are two religions in finland" asks what "what religions" does); two counts
    are. A word that multiplies a scale ("three hundred") is part of a quantity, not a count."""
    return frozenset(_CARDINALS[token] for token, after in zip(tokens, tokens[1:] + [""])
                     if token in _CARDINALS and after not in _SCALES)


def quantities(tokens: list[str]) -> frozenset[str]:
    """Numbers and ordinals as one set, so "16th" and "16" agree and "first" equals "1st"; a number
    written with a scale word counts too ("one hundred" is "100", "3 million" is "3000000")."""
    found = set()
    for before, token, after in zip([""] + tokens, tokens, tokens[1:] + [""]):
        if token in _SCALES:
            found.add(str(_multiplier(before) * _SCALES[token]))
        elif token in _ORDINALS:
            found.add(_ORDINALS[token])
        elif (match := _NUMBER.match(token)) and after not in _SCALES:
            found.add(match.group(1).replace(",", ""))
    return frozenset(found)


def _multiplier(word: str) -> int:
    """What a scale word is multiplied by: "three" -> 3, "20" -> 20, anything else ("a", "one") -> 1."""
    if word in _CARDINALS:
        return int(_CARDINALS[word])
    return int(word) if word.isdigit() else 1


def _base(token: str) -> str:
    token = token.removesuffix("'s").rstrip("'")
    for suffix in ("es", "s", "ed", "ing"):
        if token.endswith(suffix) and token[: -len(suffix)] in _POLE:
            return token[: -len(suffix)]
    return token


def opposite_axis(query: list[str], candidate: list[str]) -> str:
    """The first axis both questions use but at different ends ("east-west"); "" when none."""
    ends_query = {_POLE[b] for b in map(_base, query) if b in _POLE}
    ends_candidate = {_POLE[b] for b in map(_base, candidate) if b in _POLE}
    for axis in sorted({a for a, _ in ends_query} & {a for a, _ in ends_candidate}):
        if {e for e in ends_query if e[0] == axis} != {e for e in ends_candidate if e[0] == axis}:
            return axis
    return ""

