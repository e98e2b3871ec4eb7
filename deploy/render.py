"""`catcache deploy`: render the vLLM backends of a policy as `vllm serve` lines or as Kubernetes manifests.

The policy is the one source of truth: the flags that make vLLM's prefix cache and KV memory work
with the proxy (prefix caching, fp8 KV cache, KV offloading, max length) are derived from it, never
written by hand in a second place.
"""

from __future__ import annotations

import math
import re
import shlex
import sys
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from catcache.policy.schema import Backend, Policy

VLLM_IMAGE = "vllm/vllm-openai:latest"
CATCACHE_IMAGE = "catcache:latest"
REDIS_IMAGE = "redis:7-alpine"
CATCACHE_PORT = 8080
POLICY_DIR = "/etc/catcache"
REDIS_SHARDS = 3
REDIS_CLUSTER_BUS = 16379
PROXY_CPU_TARGET = 70  # % of the requested CPU at which the autoscaler adds a proxy
HEADER = "Rendered by `catcache deploy --format {format}` from policies.yaml: edit the policy and render again."


def vllm_command(name: str, backend: Backend, *, host: str, port: int) -> list[str]:
    """`vllm serve MODEL --flag value ...` for one backend (flag names as in vLLM's `vllm serve --help`)."""
    vllm = backend.vllm
    if vllm is None:
        raise ValueError(f"backends.{name} has no vllm: section")
    command = ["vllm", "serve", vllm.model, "--host", host, "--port", str(port)]
    served = _served_name(name, backend)
    if served != vllm.model:
        command += ["--served-model-name", served]
    # Explicit both ways: the default has changed between vLLM versions.
    command.append("--enable-prefix-caching" if vllm.enable_prefix_caching else "--no-enable-prefix-caching")
    command += ["--kv-cache-dtype", vllm.kv_cache_dtype]
    if vllm.max_model_len is not None:
        command += ["--max-model-len", str(vllm.max_model_len)]
    command += ["--gpu-memory-utilization", f"{vllm.gpu_memory_utilization:g}",
                "--tensor-parallel-size", str(vllm.tensor_parallel_size)]
    if vllm.kv_offload_gb > 0:
        command += ["--kv-offloading-backend", vllm.kv_offload_backend, "--kv-offloading-size", f"{vllm.kv_offload_gb:g}"]
    return command + list(vllm.extra_args)


def _served_name(name: str, backend: Backend) -> str:
    """The model name vLLM must answer to: the proxy sends `backend.model` when it is set."""
    vllm = backend.vllm
    if vllm.served_model_name and backend.model and vllm.served_model_name != backend.model:
        raise ValueError(f"backends.{name}: model '{backend.model}' is not vllm.served_model_name "
                         f"'{vllm.served_model_name}', so vLLM would refuse what the proxy sends")
    return vllm.served_model_name or backend.model or vllm.model


def vllm_backends(policy: Policy) -> dict[str, Backend]:
    return {name: backend for name, backend in policy.backends.items() if backend.vllm is not None}


def render_shell(policy: Policy) -> str:
    """One script, `vllm-serve.sh BACKEND`, that runs vLLM where the policy's url for that backend points."""
    backends = vllm_backends(policy)
    lines = ["#!/usr/bin/env bash", f"# {HEADER.format(format='shell')}",
             "# Run one backend per invocation, each on its own GPUs (set CUDA_VISIBLE_DEVICES).",
             "set -euo pipefail", "", f'case "${{1:?usage: $0 {"|".join(backends) or "BACKEND"}}}" in']
    for name, backend in backends.items():
        url = urlsplit(backend.replica_urls[0])
        host = "127.0.0.1" if url.hostname in {"127.0.0.1", "localhost", "::1"} else "0.0.0.0"
        command = vllm_command(name, backend, host=host, port=url.port or backend.vllm.port)
        lines += [f"  {shlex.quote(name)})", "    exec " + " \\\n      ".join(_lines(command)), "    ;;"]
    lines += ['  *) echo "unknown backend: $1 (one of: ' + " ".join(backends) + ')" >&2; exit 2 ;;', "esac", ""]
    return "\n".join(lines)


def _lines(command: list[str]) -> list[str]:
    """`vllm serve MODEL`, then one `--flag value` a line, so the script reads like the policy."""
    groups = [shlex.join(command[:3])]
    for arg in command[3:]:
        if not arg.startswith("--") and groups[-1].startswith("--") and " " not in groups[-1]:
            groups[-1] += " " + shlex.quote(arg)
        else:
            groups.append(shlex.quote(arg))
    return groups


def render_k8s(policy: Policy, *, image: str = CATCACHE_IMAGE, vllm_image: str = VLLM_IMAGE,
               replicas: int = 2, max_replicas: int | None = None, redis_shards: int = REDIS_SHARDS) -> str:
    """The whole stack as one multi-document YAML: vLLM backends, Redis (a Redis Cluster of
    `redis_shards` masters with a replica each, or one server if 1), catcache and its policy, with
    a HorizontalPodAutoscaler from `replicas` to `max_replicas` proxies."""
    documents: list[dict] = []
    for name, backend in vllm_backends(policy).items():
        documents += _vllm_objects(name, backend, vllm_image)
    if redis_shards > 1:
        documents += _redis_cluster_objects(redis_shards)
        redis_url = redis_cluster_url(redis_shards)
    else:
        documents += _redis_objects()
        redis_url = "redis://redis:6379/0"
    documents += _catcache_objects(policy, image, replicas, redis_url)
    documents.append(_autoscaler(replicas, max_replicas or 4 * replicas))
    body = yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, explicit_start=True, width=120)
    return f"# {HEADER.format(format='k8s')}\n{body}"


class _Dumper(yaml.SafeDumper):
    """SafeDumper for people reading the manifests: no &id001 anchors, the policy as a `|` block."""

    def ignore_aliases(self, data: object) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _str)


def service_name(backend_name: str) -> str:
    """A DNS-1035 label (lowercase, digits, '-'; starts with a letter) for a backend's objects."""
    return "vllm-" + (re.sub(r"[^a-z0-9-]+", "-", backend_name.lower()).strip("-") or "backend")


def _vllm_objects(name: str, backend: Backend, image: str) -> list[dict]:
    vllm = backend.vllm
    label = service_name(name)
    command = vllm_command(name, backend, host="0.0.0.0", port=vllm.port)
    resources: dict = {"limits": {"nvidia.com/gpu": vllm.tensor_parallel_size},
                       "requests": {"nvidia.com/gpu": vllm.tensor_parallel_size}}
    if vllm.kv_offload_gb > 0:
        # The offload buffer is pinned host memory: place the pod where it fits, with room for the server.
        resources["requests"]["memory"] = f"{math.ceil(vllm.kv_offload_gb) + 16}Gi"
    container = {
        "name": "vllm",
        "image": image,
        "command": command[:2],
        "args": command[2:],
        "ports": [{"name": "http", "containerPort": vllm.port}],
        "env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token", "optional": True}}}],
        "resources": resources,
        # Downloading and loading weights takes minutes: liveness waits for the startup probe.
        "startupProbe": _http_probe("/health", vllm.port, period=10, failures=90),
        "readinessProbe": _http_probe("/health", vllm.port, period=5, failures=3),
        "livenessProbe": _http_probe("/health", vllm.port, period=10, failures=3),
        "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"},
                         {"name": "hf-cache", "mountPath": "/root/.cache/huggingface"}],
    }
    volumes = [{"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}},  # NCCL between TP ranks
               {"name": "hf-cache", "emptyDir": {}}]
    workload = _deployment(label, "vllm", vllm.replicas, container, volumes, _scrape(vllm.port))
    service = _service(label, vllm.port, component="vllm")
    if vllm.replicas > 1:
        # Replicas with stable names (vllm-large-0.vllm-large, ...) that the proxy lists in `urls`
        # and routes to by prefix; a Service spreading requests at random would recompute each
        # category's prefix on every replica.
        workload["kind"] = "StatefulSet"
        workload["spec"].update(serviceName=label, podManagementPolicy="Parallel")
        service["spec"]["clusterIP"] = "None"
    return [workload, service]


def vllm_replica_urls(name: str, backend: Backend) -> list[str]:
    label, vllm = service_name(name), backend.vllm
    if vllm.replicas == 1:
        return [f"http://{label}:{vllm.port}/v1"]
    return [f"http://{label}-{i}.{label}:{vllm.port}/v1" for i in range(vllm.replicas)]


def redis_cluster_url(shards: int) -> str:
    """Every node as a seed, so a proxy starts while any one of them is down."""
    return "redis+cluster://" + ",".join(f"redis-{i}.redis:6379" for i in range(2 * shards))


def _redis_cluster_objects(shards: int) -> list[dict]:
    """A Redis Cluster of `shards` masters with one replica each: a StatefulSet whose pods
    announce their stable host names (Redis 7), and a Job that joins them once."""
    labels = _labels("redis", "store")
    nodes = 2 * shards
    container = {
        "name": "redis",
        "image": REDIS_IMAGE,
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "args": ["redis-server", "--cluster-enabled", "yes", "--cluster-config-file", "/data/nodes.conf",
                 "--cluster-node-timeout", "5000", "--cluster-announce-hostname", "$(POD_NAME).redis",
                 "--cluster-preferred-endpoint-type", "hostname",
                 "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--dir", "/data"],
        "ports": [{"name": "redis", "containerPort": 6379}, {"name": "bus", "containerPort": REDIS_CLUSTER_BUS}],
        **_REDIS_PROBES_AND_DATA,
    }
    statefulset = _redis_statefulset(container, nodes, podManagementPolicy="Parallel")
    service = _service("redis", 6379, component="store", port_name="redis")
    service["spec"]["clusterIP"] = "None"
    service["spec"]["ports"].append({"name": "bus", "port": REDIS_CLUSTER_BUS, "targetPort": REDIS_CLUSTER_BUS})
    service["spec"]["publishNotReadyAddresses"] = True  # the nodes must find each other before the cluster is up
    hosts = " ".join(f"redis-{i}.redis:6379" for i in range(nodes))
    script = (f"for h in {hosts}; do until redis-cli -h ${{h%:*}} ping; do sleep 2; done; done; "
              "redis-cli -h redis-0.redis cluster info | grep -q cluster_state:ok || "
              f"redis-cli --cluster create {hosts} --cluster-replicas 1 --cluster-yes")
    job = {"apiVersion": "batch/v1", "kind": "Job",
           "metadata": {"name": "redis-cluster-create", "labels": labels},
           "spec": {"backoffLimit": 10, "template": {"metadata": {"labels": _labels("redis-cluster-create", "store")},
                    "spec": {"restartPolicy": "OnFailure", "containers": [
                        {"name": "create", "image": REDIS_IMAGE, "command": ["sh", "-c", script]}]}}}}
    return [service, statefulset, job]


def _autoscaler(replicas: int, max_replicas: int) -> dict:
    """More proxies as CPU use grows: a proxy's work (embedding, search) is CPU-bound."""
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "catcache", "labels": _labels("catcache", "proxy")},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "catcache"},
                     "minReplicas": replicas, "maxReplicas": max(replicas, max_replicas),
                     "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                         "type": "Utilization", "averageUtilization": PROXY_CPU_TARGET}}}]}}


_REDIS_PROBES_AND_DATA = {
    "readinessProbe": {"exec": {"command": ["redis-cli", "ping"]}, "periodSeconds": 5},
    "livenessProbe": {"tcpSocket": {"port": 6379}, "periodSeconds": 10},
    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
}


def _redis_statefulset(container: dict, replicas: int, **spec: object) -> dict:
    """Redis pods named redis-0, redis-1, ... behind the `redis` service, each with its own 10 Gi volume."""
    labels = _labels("redis", "store")
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "redis", "labels": labels},
        "spec": {
            "serviceName": "redis",
            "replicas": replicas,
            **spec,
            "selector": {"matchLabels": _selector("redis")},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}}}],
        },
    }


def _redis_objects() -> list[dict]:
    container = {
        "name": "redis",
        "image": REDIS_IMAGE,
        # AOF as the embedded Redis runs it: cached answers and quota sets survive a restart.
        "args": ["redis-server", "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--dir", "/data"],
        "ports": [{"name": "redis", "containerPort": 6379}],
        **_REDIS_PROBES_AND_DATA,
    }
    statefulset = _redis_statefulset(container, 1)
    service = _service("redis", 6379, component="store", port_name="redis")
    service["spec"]["clusterIP"] = "None"  # the StatefulSet's governing service
    return [service, statefulset]


def _catcache_objects(policy: Policy, image: str, replicas: int, redis_url: str) -> list[dict]:
    config = {"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": "catcache-policies", "labels": _labels("catcache", "proxy")},
              "data": {"policies.yaml": yaml.safe_dump(in_cluster_policy(policy), sort_keys=False, width=1 << 16)}}
    container = {
        "name": "catcache",
        "image": image,
        "command": ["catcache", "serve", "--redis", redis_url,
                    "--policies", f"{POLICY_DIR}/policies.yaml", "--host", "0.0.0.0", "--port", str(CATCACHE_PORT)],
        "ports": [{"name": "http", "containerPort": CATCACHE_PORT}],
        # The autoscaler scales on CPU use relative to this request. Memory: the in-process
        # indexes take about 2 KB per cached entry (README, Capacity), plus ~1 GiB for the model.
        "resources": {"requests": {"cpu": "2", "memory": "4Gi"}},
        "startupProbe": _http_probe("/healthz", CATCACHE_PORT, period=2, failures=60),
        "readinessProbe": _http_probe("/healthz", CATCACHE_PORT, period=5, failures=3),
        "livenessProbe": _http_probe("/healthz", CATCACHE_PORT, period=10, failures=3),
        # A whole-directory mount (not subPath) so an edited ConfigMap reaches the running
        # proxy, which reloads the file when it changes.
        "volumeMounts": [{"name": "policies", "mountPath": POLICY_DIR, "readOnly": True}],
    }
    keys = sorted({b.api_key_env for b in policy.backends.values() if b.api_key_env})
    container["env"] = [ADMIN_TOKEN_ENV] + [{"name": key, "valueFrom": {"secretKeyRef": {
        "name": "catcache-backend-keys", "key": key, "optional": True}}} for key in keys]
    volumes = [{"name": "policies", "configMap": {"name": "catcache-policies"}}]
    # No prometheus.io annotations: an annotation-driven job would scrape without the token and get 401s.
    return [config, _deployment("catcache", "proxy", replicas, container, volumes, {}),
            _service("catcache", CATCACHE_PORT, component="proxy"), _prometheus_job()]


# The token guarding /admin/*, /stats and /metrics. Not optional: a proxy never starts with those routes
# open. Create it once: kubectl create secret generic catcache-admin --from-literal=token="$(openssl rand -hex 32)"
ADMIN_TOKEN_ENV = {"name": "CATCACHE_ADMIN_TOKEN", "valueFrom": {"secretKeyRef": {"name": "catcache-admin",
                                                                                   "key": "token"}}}
PROMETHEUS_TOKEN_FILE = "/etc/prometheus/secrets/catcache-admin/token"


def _prometheus_job() -> dict:
    """A scrape job for the proxies' /metrics with the admin token, for Prometheus to include
    (mount the Secret catcache-admin into Prometheus at /etc/prometheus/secrets/catcache-admin)."""
    job = {
        "job_name": "catcache",
        "metrics_path": "/metrics",
        "authorization": {"type": "Bearer", "credentials_file": PROMETHEUS_TOKEN_FILE},
        "kubernetes_sd_configs": [{"role": "pod"}],
        "relabel_configs": [
            {"source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"], "regex": "catcache",
             "action": "keep"},
            {"source_labels": ["__meta_kubernetes_pod_container_port_number"], "regex": str(CATCACHE_PORT),
             "action": "keep"},
        ],
    }
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "prometheus-catcache-scrape", "labels": _labels("catcache", "proxy")},
            "data": {"catcache-scrape.yaml": yaml.safe_dump([job], sort_keys=False)}}


def in_cluster_policy(policy: Policy) -> dict:
    """The policy as the proxy in the cluster reads it: vLLM backends reached through their Services."""
    data = policy.model_dump(mode="json", exclude_unset=True)
    for name, backend in vllm_backends(policy).items():
        settings, urls = data["backends"][name], vllm_replica_urls(name, backend)
        settings.pop("url", None)
        settings.pop("urls", None)
        settings.update({"url": urls[0]} if len(urls) == 1 else {"urls": urls})
    return data


def _labels(name: str, component: str) -> dict:
    return {**_selector(name), "app.kubernetes.io/component": component, "app.kubernetes.io/part-of": "catcache"}


def _selector(name: str) -> dict:
    return {"app.kubernetes.io/name": name}


def _scrape(port: int) -> dict:
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}


def _http_probe(path: str, port: int, *, period: int, failures: int) -> dict:
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": period, "failureThreshold": failures}


def _deployment(name: str, component: str, replicas: int, container: dict, volumes: list[dict],
                annotations: dict) -> dict:
    metadata = {"labels": _labels(name, component)} | ({"annotations": annotations} if annotations else {})
    labels = _labels(name, component)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": _selector(name)},
            "template": {"metadata": metadata,
                         "spec": {"containers": [container], "volumes": volumes}},
        },
    }


def _service(name: str, port: int, *, component: str, port_name: str = "http") -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": _labels(name, component)},
            "spec": {"selector": _selector(name), "ports": [{"name": port_name, "port": port, "targetPort": port}]}}


def run(policies: Path | None = None, output_format: str = "k8s", out: Path | None = None,
        image: str = CATCACHE_IMAGE, vllm_image: str = VLLM_IMAGE, replicas: int = 2, max_replicas: int | None = None,
        redis_shards: int = REDIS_SHARDS) -> int:
    """`catcache deploy`: render the policy's vllm serve lines or manifests, to stdout or into `out`."""
    from catcache.policy.loader import PolicyError, load_policy

    path = policies or (Path("policies.yaml") if Path("policies.yaml").is_file() else None)
    try:
        policy = load_policy(path)
        if output_format == "shell":
            text, filename = render_shell(policy), "vllm-serve.sh"
        else:
            text = render_k8s(policy, image=image, vllm_image=vllm_image, replicas=replicas,
                              max_replicas=max_replicas, redis_shards=redis_shards)
            filename = "k8s.yaml"
    except (PolicyError, ValueError) as exc:
        print(f"catcache deploy: {exc}", file=sys.stderr)
        return 2
    if not vllm_backends(policy):
        print("catcache deploy: no backend has a vllm: section; nothing to run vLLM for", file=sys.stderr)
    if out is None:
        sys.stdout.write(text)
        return 0
    out.mkdir(parents=True, exist_ok=True)
    target = out / filename
    target.write_text(text, encoding="utf-8")
    if output_format == "shell":
        target.chmod(0o755)
    print(f"wrote {target}", file=sys.stderr)
    return 0
