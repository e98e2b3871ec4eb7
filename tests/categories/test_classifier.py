"""The classifier with the real embedding model: rule order, never-cache rules, centroids, fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from catcache.categories.classifier import Classification, Classifier, RequestTraits, centroids
from catcache.index.embedder import Embedder
from catcache.policy.loader import load_policy, parse_policy

SHIPPED = Path(__file__).resolve().parents[2] / "policies.yaml"

# Categories with exemplars only, so every query here goes through the centroids.
TOPICS = """
classifier: {min_confidence: 0.25, default: default}
categories:
  code:
    exemplars:
      - How do I reverse a list in Python?
      - How do I read a file line by line in Python?
      - Why does my JavaScript promise never resolve?
      - How do I fix a segmentation fault in C?
  cooking:
    exemplars:
      - What is a good recipe for banana bread?
      - How long should I roast a chicken?
      - How do I make fresh pasta dough?
      - Which spices go well with lentil soup?
  travel:
    exemplars:
      - What should I pack for a week in Japan?
      - Do I need a visa to visit Brazil?
      - What are the cheapest airlines in Europe?
  default: {}
"""

# Every kind of rule, with a never-cache category listed last.
RULES = """
categories:
  chat:
    match: {models: [gpt-4o-mini], header: [fast-lane]}
    exemplars: ['Hi, how are you today?']
  embeddings:
    match: {paths: [/v1/embeddings]}
  weather:
    match: {regex: ['(?i)\\bweather\\b']}
    exemplars: ['Is it sunny outside?']
  private:
    match: {models: [private-llm], regex: ['(?i)\\bmy diary\\b']}
    cacheable: false
  default: {}
"""


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


@pytest.fixture(scope="module")
def shipped(embedder: Embedder) -> Classifier:
    return Classifier.build(load_policy(SHIPPED), embedder.encode)


@pytest.fixture(scope="module")
def topics(embedder: Embedder) -> Classifier:
    return Classifier.build(parse_policy(TOPICS, "topics.yaml"), embedder.encode)


@pytest.fixture(scope="module")
def rules(embedder: Embedder) -> Classifier:
    return Classifier.build(parse_policy(RULES, "rules.yaml"), embedder.encode)


def traits(text: str, model: str = "gpt-4o", path: str = "/v1/chat/completions", header: str | None = None,
           has_code: bool = False) -> RequestTraits:
    return RequestTraits(model, path, header, text, has_code)


def classify(classifier: Classifier, embedder: Embedder, text: str, **kwargs: object) -> Classification:
    return classifier.classify(traits(text, **kwargs), embedder.encode([text])[0])


# -- rules ----------------------------------------------------------------------------------------


def test_a_rule_beats_a_closer_centroid(rules: Classifier, embedder: Embedder) -> None:
    text = "Hi there, how are you doing?  Lovely weather."
    assert rules.by_centroid(embedder.encode([text])[0]).category == "chat"
    assert classify(rules, embedder, text) == Classification("weather", 1.0, "regex")


@pytest.mark.parametrize("text", ["What is my bank balance today?", "Calculate the interest on my credit card balance",
                                  "Show my account transactions from today"])
def test_never_cache_rules_beat_earlier_categories(shipped: Classifier, embedder: Embedder, text: str) -> None:
    """time_sensitive and math come before personal in policies.yaml and match these too."""
    assert classify(shipped, embedder, text) == Classification("personal", 1.0, "regex")


@pytest.mark.parametrize("text", ["I still have not received my new card", "How do I reset my password?",
                                  "Why does my bank app throw an exception in Python?", "Can I change my PIN online?"])
def test_first_person_phrasing_is_not_personal(shipped: Classifier, embedder: Embedder, text: str) -> None:
    """Personal means an answer that depends on the user's own data, not the word "my"."""
    assert classify(shipped, embedder, text).category != "personal"


def test_never_cache_model_beats_an_earlier_regex(rules: Classifier) -> None:
    found = rules.by_rules(traits("What is the weather?", model="private-llm"))
    assert found == Classification("private", 1.0, "model")


def test_header_picks_a_category_only_through_a_value_the_policy_lists(rules: Classifier, shipped: Classifier) -> None:
    """A client may not pick a cacheable category (and so its TTL) by naming it: only the values a
    category's `match.header` lists choose it (issue 21: `creative` by name turned 10 minutes into 30 days)."""
    found = shipped.by_rules(traits("What is the weather in Paris today?", header="creative"))
    assert found is None or found.reason != "header"
    assert rules.by_rules(traits("What is the weather?", header="chat")) == Classification("weather", 1.0, "regex")
    assert rules.by_rules(traits("What is the weather?", header="fast-lane")) == Classification("chat", 1.0, "header")
    assert rules.by_rules(traits("What is the weather?", header="no-such-category")) == \
        Classification("weather", 1.0, "regex")


def test_a_header_cannot_override_a_never_cache_rule(shipped: Classifier, rules: Classifier) -> None:
    assert shipped.by_rules(traits("What is my account balance?", header="factual")) == \
        Classification("personal", 1.0, "regex")
    found = rules.by_rules(traits("Hello", model="private-llm", header="chat"))
    assert found == Classification("private", 1.0, "model")


def test_a_header_naming_a_never_cache_category_wins(shipped: Classifier) -> None:
    assert shipped.by_rules(traits("Write a poem about Python", header="personal")) == \
        Classification("personal", 1.0, "header")


def test_model_path_and_code_rules(rules: Classifier, shipped: Classifier) -> None:
    assert rules.by_rules(traits("What is the weather?", model="gpt-4o-mini")) == Classification("chat", 1.0, "model")
    assert rules.by_rules(traits("What is the weather?", path="/v1/embeddings/x")) == \
        Classification("embeddings", 1.0, "path")
    assert rules.by_rules(traits("What is the weather?", path="/v1/completions")) == \
        Classification("weather", 1.0, "regex")
    assert shipped.by_rules(traits("Does this print anything?", has_code=True)) == Classification("code", 1.0, "code")
    assert shipped.by_rules(traits("Does this print anything?")) is None


# -- centroids ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "category"), [("How do I sort a dict by value in Python?", "code"),
                                                ("How many minutes do I boil an egg?", "cooking"),
                                                ("Which is the best hotel area to stay in Lisbon?", "travel")])
def test_a_clear_query_goes_to_its_centroid(topics: Classifier, embedder: Embedder, text: str, category: str) -> None:
    found = classify(topics, embedder, text)
    assert (found.category, found.reason) == (category, "centroid")
    assert found.confidence >= 0.25


def test_the_centroid_outvotes_one_odd_exemplar(embedder: Embedder) -> None:
    """A nearest-exemplar rule would follow code's stray bread question (similarity 0.92)."""
    policy = parse_policy("""
categories:
  code:
    exemplars:
      - How do I reverse a list in Python?
      - How do I read a file line by line in Python?
      - How do I sort a list of tuples in Python?
      - How do I bake sourdough bread?
  baking:
    exemplars:
      - What is a good recipe for banana bread?
      - How do I make a sourdough starter?
      - Why did my bread not rise?
      - How long should I knead bread dough?
  default: {}
""", "odd.yaml")
    found = classify(Classifier.build(policy, embedder.encode), embedder, "How do I bake sourdough bread at home?")
    assert (found.category, found.reason) == ("baking", "centroid")


@pytest.mark.parametrize("text", ["Qwerty asdf zxcv.", "The mitochondria is the powerhouse of the cell."])
def test_a_query_far_from_every_centroid_goes_to_default(topics: Classifier, embedder: Embedder, text: str) -> None:
    found = classify(topics, embedder, text)
    assert (found.category, found.reason) == ("default", "default")
    assert found.confidence < 0.25


def test_min_confidence_is_the_boundary(embedder: Embedder) -> None:
    text = "How many minutes do I boil an egg?"
    confidence = classify(Classifier.build(parse_policy(TOPICS, "t"), embedder.encode), embedder, text).confidence
    stricter = parse_policy(TOPICS.replace("min_confidence: 0.25", f"min_confidence: {confidence + 0.01:.4f}"), "t")
    assert classify(Classifier.build(stricter, embedder.encode), embedder, text).category == "default"


@pytest.mark.parametrize(("text", "category"), [("Tell me the capital of Canada.", "factual"),
                                                ("Hello, how are you doing?", "conversation")])
def test_shipped_policy_routes_unruled_questions_by_centroid(shipped: Classifier, embedder: Embedder, text: str,
                                                             category: str) -> None:
    found = classify(shipped, embedder, text)
    assert (found.category, found.reason) == (category, "centroid")


@pytest.mark.parametrize(("text", "category"), [
    ("who won the world series in 1994?", "factual"), ("what is a major religion in jamaica?", "factual"),
    ("how many senators does georgia have?", "factual"), ("What is the best way to learn French?", "default"),
    ("Which laptop should I buy?", "default"), ("belgrade is the capital of which european country?", "factual"),
    ("name the songs written by miley cyrus?", "factual"), ("How do I know which laptop to buy?", "default"),
    ("who won the cricket champions trophy 2008-09?", "factual"), ("What is 12 - 5?", "math")])
def test_shipped_factual_rules_take_questions_about_the_world(shipped: Classifier, text: str, category: str) -> None:
    """Questions about the world are factual by rule, not by luck; asks for advice or opinions are not."""
    found = shipped.by_rules(traits(text))
    assert (found.category if found else "default") == category


def test_no_vector_or_no_exemplars_means_default(rules: Classifier, embedder: Embedder) -> None:
    assert rules.classify(traits("Good morning"), None) == Classification("default", 0.0, "default")
    bare = Classifier.build(parse_policy("categories: {default: {}}\n", "bare.yaml"), embedder.encode)
    assert classify(bare, embedder, "Good morning") == Classification("default", 0.0, "default")


def test_centroids_are_unit_means_of_unit_rows() -> None:
    vectors = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, -3.0], [4.0, 0.0], [0.0, 0.5]], dtype=np.float32)
    found = centroids(vectors, [2, 3])
    assert np.allclose(found, [[np.sqrt(0.5), np.sqrt(0.5)], [1.0, 0.0]])
