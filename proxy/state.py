"""Everything one proxy process holds: the live policy and what is derived from it, the cache
tiers, the backends. A policy reload builds the derived parts first and swaps them in at once,
so a request sees either the old policy or the new one, never half of each."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from catcache.backends.client import BackendClient
from catcache.backends.local import LOCAL, local_everywhere, resolve
from catcache.categories.classifier import Classifier
from catcache.index.embedder import Embedder
from catcache.index.semantic import SemanticIndex
from catcache.policy.loader import PolicyError, PolicyIssue, load_policy
from catcache.policy.schema import Backend, Policy
from catcache.proxy.singleflight import SingleFlight
from catcache.reports.recorder import Recorder
from catcache.store.documents import DocumentStore
from catcache.store.health import RedisGuard

log = logging.getLogger("catcache.policy")


@dataclass
class Live:
    """What is live now: the policy and the parts built from it (classifier, backend clients),
    swapped together on a reload so a request sees one policy whole."""

    policy: Policy
    classifier: Classifier
    backends: dict[str, BackendClient]


@dataclass
class ProxyState:
    live: Live
    policy_path: Path | None
    backend_override: str | None
    embedder: Embedder
    store: DocumentStore
    guard: RedisGuard
    index: SemanticIndex
    recorder: Recorder
    timeout_override: float | None = None  # --backend-timeout: the large backend's, over the policy's
    flights: SingleFlight = field(default_factory=SingleFlight)
    last_reload_error: str | None = None
    local_url: str | None = None  # the bundled model's, for backends whose url is `local`

    @property
    def policy(self) -> Policy:
        return self.live.policy

    def large(self) -> BackendClient:
        return self.live.backends["large"]

    async def reload(self) -> Policy:
        """Load the policy file again; on any error keep the live policy and raise PolicyError."""
        try:
            policy = await asyncio.to_thread(load_policy, self.policy_path)
            live = await asyncio.to_thread(build_live, policy, self.embedder, self.backend_override,
                                           self.live.backends, self.local_url,
                                           self.timeout_override)
        except PolicyError as exc:
            self.last_reload_error = str(exc)
            log.error("policy reload refused, the old policy stays live:\n%s", exc)
            raise
        old, self.live = self.live, live
        self.last_reload_error = None
        log.info("policy reloaded from %s", self.policy_path or "built-in defaults")
        kept = {id(client) for client in live.backends.values()}
        for client in old.backends.values():
            if id(client) not in kept:
                asyncio.create_task(close_when_idle(client))
        return policy


def build_live(policy: Policy, embedder: Embedder, backend_override: str | None,
               previous: dict[str, BackendClient] | None = None, local_url: str | None = None,
               timeout_override: float | None = None) -> Live:
    """The parts derived from `policy`; a backend whose settings did not change keeps its client
    from `previous`, with its pool and the requests it is carrying."""
    configs = dict(policy.backends)
    large = policy.backend("large")
    if backend_override:
        configs["large"] = large.model_copy(update={"url": backend_override, "urls": []}) if large else Backend(url=backend_override)
    elif large is not None:
        configs["large"] = large
    if "large" in configs and timeout_override is not None:
        configs["large"] = configs["large"].model_copy(update={"timeout": timeout_override})
    if "large" not in configs:
        raise PolicyError([PolicyIssue("policies.yaml", None, "backends",
                                       "no backend with role large: add one, or pass --backend URL")])
    if backend_override == LOCAL:
        configs = local_everywhere(configs)
    previous = previous or {}
    backends = {}
    for name, config in configs.items():
        try:
            config = config.model_copy(update={"url": resolve(config.url, local_url)})
        except RuntimeError as exc:
            raise PolicyError([PolicyIssue("policies.yaml", None, f"backends.{name}.url", str(exc))]) from None
        kept = previous.get(name)
        backends[name] = kept if kept is not None and kept.config == config else BackendClient(name, config)
    return Live(policy, Classifier.build(policy, embedder.encode), backends)


async def close_when_idle(client: BackendClient, poll_s: float = 0.5) -> None:
    """Close a replaced backend's pool once the requests it carries have ended (at most its timeout)."""
    deadline = time.monotonic() + client.config.timeout
    while client.in_flight > 0 and time.monotonic() < deadline:
        await asyncio.sleep(poll_s)
    await client.aclose()
