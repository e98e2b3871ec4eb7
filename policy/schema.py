"""The shape of policies.yaml: every key, its type and range, and nothing else (unknown keys are errors)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_duration(value: object) -> object:
    """Accept seconds as a number or a string such as '90s', '10m', '6h', '30d', '2w'."""
    if isinstance(value, str):
        found = _DURATION.match(value)
        if not found:
            raise ValueError(f"'{value}' is not a duration (use seconds or a number with s, m, h, d or w)")
        return float(found.group(1)) * _UNIT_SECONDS[found.group(2)]
    return value


Seconds = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
Similarity = Annotated[float, Field(ge=0.0, le=1.0)]
Problem = tuple[tuple[str | int, ...], str]  # a field's path below the model that found it, and what is wrong


class FieldErrors(ValueError):
    """Problems a model-level check found, each blamed on one field by its path below the model.

    Pydantic locates a model validator's error at the model itself; the loader reads `problems`
    (from the error's context) to report each one at its own key's line, and all of them at once."""

    def __init__(self, problems: list[Problem]):
        super().__init__("; ".join(f"{'.'.join(map(str, path))}: {message}" for path, message in problems))
        self.problems = problems


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MatchRules(Strict):
    """Rules tried before the exemplar centroids; any one that matches assigns the category."""

    models: list[str] = []
    paths: list[str] = []
    header: list[str] = Field(default=[], description="values of the x-catcache-category header")
    regex: list[str] = []
    has_code: bool | None = None

    @model_validator(mode="after")
    def _regexes_compile(self) -> "MatchRules":
        problems: list[Problem] = []
        for index, pattern in enumerate(self.regex):
            try:
                re.compile(pattern)
            except (re.error, OverflowError) as exc:  # OverflowError: a repeat count such as {99999999999}
                problems.append((("regex", index), f"{pattern!r} does not compile: {exc}"))
        if problems:
            raise FieldErrors(problems)
        return self


class InContext(Strict):
    """IC-Cache band: a near miss with similarity in [low, threshold) is answered by the small
    backend with the category's k most similar cached pairs as in-context examples."""

    low: Similarity
    k: int = Field(default=3, ge=1, le=16)
    backend: str = "small"
    example_tokens: int = Field(default=1024, ge=16, description="prompt tokens the examples may take at most")
    # The router: a near miss goes to the small backend only when all of these hold, else to the large one.
    busy_at: int = Field(default=0, ge=0, description="requests in flight at the large backend from which "
                         "near misses are offloaded; below it the large backend has room and answers them")
    small_full_at: int | None = Field(default=None, ge=1, description="requests in flight at the small "
                                      "backend from which near misses go to the large one: a small model with "
                                      "a queue answers slower than the large one; none: no limit")
    min_agreement: float = Field(default=0.0, ge=0.0, le=1.0,
                                 description="1/(distinct answers among the examples) needed")
    min_logprob: float | None = Field(default=None, le=0.0, description="the small answer's mean token "
                                      "log-probability needed; it is then asked whole, not streamed")


class Verify(Strict):
    """Second opinion on a semantic neighbour before it is served (verify/verifiers.py,
    docs/verification.md). `threshold` is the verifier's score a neighbour needs, in [0, 1]."""

    enabled: bool = True
    verifier: Literal["lexical-guard", "pair-classifier", "none"] = "lexical-guard"
    threshold: Similarity = 0.5


class Exploration(Strict):
    """The share of would-be hits checked against the backend: `most` at first, halved every
    `half_life` checks, never below `least`. A `shadow` check serves the hit and asks the backend
    beside it (an extra call, at most `budget` of the requests); a `miss` check answers the client
    from the backend instead (no extra call, one hit fewer)."""

    most: float = Field(default=0.10, ge=0.0, le=1.0)
    least: float = Field(default=0.02, ge=0.0, le=1.0)
    half_life: int = Field(default=100, ge=1)
    mode: Literal["shadow", "miss"] = "shadow"
    budget: float = Field(default=0.05, ge=0.0, le=1.0, description="shadow checks: extra backend calls "
                          "as a share of the requests")

    @model_validator(mode="after")
    def _least_below_most(self) -> "Exploration":
        if self.least > self.most:
            raise FieldErrors([(("least",), f"{self.least} must not be above most ({self.most})")])
        return self


class Judge(Strict):
    """Whether a fresh answer and a neighbour's cached one agree (verify/judge.py)."""

    kind: Literal["agreement", "llm"] = "agreement"
    min_similarity: Similarity = Field(default=0.9, description="answer embeddings at least this alike agree")
    backend: str = Field(default="small", description="the backend an llm judge asks")


class Learning(Strict):
    """Thresholds learned from the traffic under a false-hit target (verify/learning.py,
    docs/verification.md). Each category's `threshold` is the prior it starts from."""

    enabled: bool = False
    target_false_hit_rate: float = Field(default=0.02, gt=0.0, lt=0.5)
    confidence: float = Field(default=0.95, ge=0.5, lt=1.0, description="of the one-sided bound")
    min_observations: int = Field(default=50, ge=1, description="at or above a threshold before it moves")
    band: float = Field(default=0.06, gt=0.0, le=0.2, description="near misses this far under the threshold "
                        "are judged")
    ceiling: Similarity = 0.995
    entry_margin: float | None = Field(default=0.02, ge=0.0, le=0.1, description="an entry whose own judged "
                                       "near misses agreed down to similarity s serves from s - entry_margin, "
                                       "within the band, unless one disagreed there; null: off")
    exploration: Exploration = Exploration()
    judge: Judge = Judge()


class Category(Strict):
    match: MatchRules = MatchRules()
    exemplars: list[str] = []
    threshold: Similarity = 0.92
    ttl: Seconds = 86400.0
    quota: int = Field(default=100_000, ge=1)
    eviction: Literal["lru", "lfu"] = "lru"
    ic: InContext | None = None
    cacheable: bool = True
    shared: bool = False
    verify: Verify = Verify()
    target_false_hit_rate: float | None = Field(default=None, gt=0.0, lt=0.5,
                                                description="this category's, over learning's")
    speculate: Literal["auto", "always", "never"] = Field(
        default="never", description="send a request to the large backend as soon as the exact tier misses, "
        "while the semantic tier still looks, if the backend has room (proxy/speculation.py): auto, while the "
        "lookup is faster than the backend's first byte, and a near miss the IC router takes still goes to the "
        "small model; always, whether it pays or not, and the large backend answers it; never")

    @model_validator(mode="after")
    def _ic_below_threshold(self) -> "Category":
        if self.ic is not None and self.ic.low >= self.threshold:
            raise FieldErrors([(("ic", "low"), f"{self.ic.low} must be below threshold ({self.threshold})")])
        return self


class VllmSettings(Strict):
    """What deploy/ renders into `vllm serve` for this backend."""

    model: str
    served_model_name: str | None = None
    enable_prefix_caching: bool = True
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] = "auto"
    # KV offloading to CPU memory, rendered as `--kv-offloading-size GB --kv-offloading-backend B`
    # (vllm/config/cache.py, CacheConfig.kv_offloading_size: GiB summed over TP ranks; 0 = off).
    # Not `--cpu-offload-gb`, which offloads model weights. "lmcache" needs LMCache in the image.
    kv_offload_gb: float = Field(default=0.0, ge=0.0)
    kv_offload_backend: Literal["native", "lmcache"] = "native"
    max_model_len: int | None = Field(default=None, ge=256)
    gpu_memory_utilization: float = Field(default=0.9, gt=0.0, le=1.0)
    tensor_parallel_size: int = Field(default=1, ge=1)
    replicas: int = Field(default=1, ge=1)
    port: int = Field(default=8000, ge=1, le=65535)
    extra_args: list[str] = []


class Backend(Strict):
    url: str | None = Field(default=None, description="OpenAI-style base URL including /v1")
    urls: list[str] = Field(default=[], description="several replicas of one model, instead of `url`")
    routing: Literal["prefix", "round-robin"] = Field(
        default="prefix", description="prefix: requests sharing a prompt prefix go to the same replica")
    load_factor: float = Field(default=1.25, ge=1.0, le=10.0,
                               description="no replica takes more than this times the mean requests in flight")
    role: Literal["large", "small"] = "large"
    model: str | None = Field(default=None, description="model name to send; default: the request's")
    api_key_env: str | None = None
    timeout: Seconds = 600.0
    vllm: VllmSettings | None = None

    @model_validator(mode="after")
    def _one_way_to_name_replicas(self) -> "Backend":
        if (self.url is None) == (not self.urls):
            raise FieldErrors([(("urls",) if self.urls else ("url",), "give either `url` or a list of `urls`")])
        problems: list[Problem] = [(("urls", i), f"{url!r} is not an http(s) URL")
                                   for i, url in enumerate(self.urls) if not re.match(r"^https?://[^/\s]+", url)]
        if len(set(self.urls)) < len(self.urls):
            problems.append((("urls",), "lists a replica twice"))
        if problems:
            raise FieldErrors(problems)
        return self

    @property
    def replica_urls(self) -> list[str]:
        return [self.url] if self.url is not None else list(self.urls)


class Price(Strict):
    input: float = Field(ge=0.0, description="USD per 1M prompt tokens")
    output: float = Field(ge=0.0, description="USD per 1M completion tokens")


class Adaptive(Strict):
    """As the large backend's queue grows, relax thresholds and lengthen TTLs, within bounds."""

    enabled: bool = False
    queue_high: int = Field(default=32, ge=1, description="waiting requests at which the full step applies")
    max_threshold_step: float = Field(default=0.02, ge=0.0, le=0.2)
    max_ttl_factor: float = Field(default=2.0, ge=1.0, le=10.0)


class Speculation(Strict):
    """The bound on speculative forwarding: a request is sent before its semantic lookup only while
    the large backend has fewer than `max_in_flight` requests in hand, so that a hit found meanwhile
    wastes a prefill the backend had room for, never a place in its queue."""

    max_in_flight: int = Field(default=8, ge=1)


class Tenancy(Strict):
    by: Literal["api_key", "header", "none"] = "api_key"
    header: str = "x-tenant"
    credentials: list[str] = Field(default=[], description="more headers that carry an API key, beside "
                                   "authorization, api-key and x-api-key (by: api_key)")


class Classifier(Strict):
    min_confidence: Similarity = 0.25
    default: str = "default"


class Reports(Strict):
    retention_days: int = Field(default=14, ge=1, le=3650)


class Policy(Strict):
    version: Literal[1] = 1
    embedding_model: str = "all-MiniLM-L6-v2"
    redis_url: str | None = None
    tenancy: Tenancy = Tenancy()
    classifier: Classifier = Classifier()
    backends: dict[str, Backend] = {}
    prices: dict[str, Price] = {}
    adaptive: Adaptive = Adaptive()
    speculation: Speculation = Speculation()
    reports: Reports = Reports()
    learning: Learning = Learning()
    categories: dict[str, Category] = Field(default_factory=lambda: {"default": Category()})
    finish_reasons: list[str] = Field(default=["stop", "tool_calls"], description="the finish_reason every "
                                      "choice of an answer must have for it to be stored (not length, content_filter)")

    @model_validator(mode="after")
    def _references_resolve(self) -> "Policy":
        problems: list[Problem] = []
        if self.classifier.default not in self.categories:
            problems.append((("classifier", "default"), f"names '{self.classifier.default}', which is not a category"))
        if self.learning.enabled and self.learning.judge.kind == "llm" and self.learning.judge.backend not in self.backends:
            problems.append((("learning", "judge", "backend"),
                             f"names '{self.learning.judge.backend}', which is not a backend"))
        for name, category in self.categories.items():
            if category.ic is not None and category.ic.backend not in self.backends:
                problems.append((("categories", name, "ic", "backend"),
                                 f"names '{category.ic.backend}', which is not a backend"))
        if problems:
            raise FieldErrors(problems)
        return self

    def category(self, name: str) -> Category:
        return self.categories.get(name) or self.categories[self.classifier.default]

    def backend(self, role: str) -> Backend | None:
        """The backend named `role`, or else the first one with that role."""
        if role in self.backends:
            return self.backends[role]
        return next((b for b in self.backends.values() if b.role == role), None)
