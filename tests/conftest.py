"""Shared fixtures: a real Redis, the OpenAI-compatible test backend, and `catcache serve` runs."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from catcache.store.embedded import EmbeddedRedis
from catcache.testing import ProxyProcess, TestBackend
from catcache.testing.proxy import DEFAULT_POLICIES
from catcache.testing.redis import RedisClusterServers, sync_client


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A run that collected no test (a moved path, a filter that matches nothing) is a mistake, not
    a pass: it fails as one, so pytest's "no tests" status (5) never reaches CI."""
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A module that sets `ON_CLUSTER_TOO = True` runs its Redis tests on one server and again on
    a Redis Cluster (three masters, one replica each)."""
    if getattr(metafunc.module, "ON_CLUSTER_TOO", False) and "redis_url" in metafunc.fixturenames:
        metafunc.parametrize("redis_url", ["server", "cluster"], indirect=True, scope="session")


@pytest.fixture(scope="session")
def server_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One redis-server for the session; tests that need it empty ask for `clean_redis`."""
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """One Redis Cluster for the session, started only if a test asks for it."""
    with RedisClusterServers(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest, server_redis_url: str) -> str:
    if getattr(request, "param", "server") == "cluster":
        return request.getfixturevalue("redis_cluster").url
    return server_redis_url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis | redis.RedisCluster]:
    client = sync_client(redis_url)
    yield client
    client.close()


@pytest.fixture
def clean_redis(redis_client: redis.Redis | redis.RedisCluster) -> redis.Redis | redis.RedisCluster:
    redis_client.flushall()
    return redis_client


@pytest.fixture(scope="session")
def backend() -> Iterator[TestBackend]:
    with TestBackend() as server:
        yield server


@pytest.fixture
def fresh_backend(backend: TestBackend) -> TestBackend:
    """The session backend with its call counts zeroed (answer numbers keep counting)."""
    backend.reset()
    return backend


ProxyFactory = Callable[..., ProxyProcess]


@contextmanager
def _proxy_factory(backend: TestBackend, root: Path) -> Iterator[ProxyFactory]:
    """Start `catcache serve` processes in front of the test backend; all are stopped at the end.

    Each call gets its own data dir (and so its own embedded Redis) unless `data_dir` or
    `redis_url` says otherwise.
    """
    proxies: list[ProxyProcess] = []

    def start(
        *,
        policies: Path | str = DEFAULT_POLICIES,
        redis_url: str | None = None,
        backend_url: str | None = None,
        data_dir: Path | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> ProxyProcess:
        proxy = ProxyProcess(
            backend_url or backend.base_url,
            policies,
            data_dir or root / f"proxy-{len(proxies)}",
            redis_url=redis_url,
            extra_args=extra_args,
            env=env,
        )
        proxies.append(proxy)
        try:
            return proxy.start()
        except RuntimeError as exc:
            pytest.fail(str(exc), pytrace=False)

    try:
        yield start
    finally:
        for proxy in proxies:
            proxy.stop()


@pytest.fixture
def proxy_factory(backend: TestBackend, tmp_path: Path) -> Iterator[ProxyFactory]:
    with _proxy_factory(backend, tmp_path) as start:
        yield start


@pytest.fixture(scope="module")
def module_proxy_factory(backend: TestBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyFactory]:
    """Like `proxy_factory`, for one proxy shared by a module's tests (each test keeps to its own
    tenant, see `api_key`), since a start costs seconds of model loading."""
    with _proxy_factory(backend, tmp_path_factory.mktemp("proxies")) as start:
        yield start


@pytest.fixture
def api_key() -> str:
    """A key no other test uses: tenancy keeps this test's cache entries to itself."""
    return f"sk-test-{uuid.uuid4().hex}"
