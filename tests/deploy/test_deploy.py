"""`catcache deploy`: the rendered vLLM flags and manifests follow the policy."""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import yaml

from catcache import cli
from catcache.deploy import render
from catcache.policy.loader import load_policy, parse_policy
from catcache.policy.schema import Policy

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "deploy" / "examples"


def make_policy(**vllm: object) -> Policy:
    return Policy.model_validate({"backends": {
        "large": {"url": "http://127.0.0.1:8000/v1", "model": "llama-70b", "api_key_env": "LARGE_KEY",
                  "vllm": {"model": "meta-llama/Llama-3.3-70B-Instruct", "served_model_name": "llama-70b",
                           "kv_cache_dtype": "fp8", "max_model_len": 32768, "tensor_parallel_size": 4,
                           "replicas": 3, "kv_offload_gb": 64, **vllm}},
        "small": {"url": "http://127.0.0.1:8001/v1", "role": "small",
                  "vllm": {"model": "Qwen/Qwen2.5-1.5B-Instruct", "gpu_memory_utilization": 0.3}},
        "hosted": {"url": "https://api.openai.com/v1", "role": "small", "api_key_env": "OPENAI_API_KEY"},
    }})


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def large_command(policy: Policy) -> list[str]:
    return render.vllm_command("large", policy.backends["large"], host="0.0.0.0", port=8000)


def test_flags_follow_the_policy():
    command = large_command(make_policy())
    assert command[:3] == ["vllm", "serve", "meta-llama/Llama-3.3-70B-Instruct"]
    assert flag(command, "--kv-cache-dtype") == "fp8"
    assert "--enable-prefix-caching" in command
    assert flag(command, "--max-model-len") == "32768"
    assert flag(command, "--tensor-parallel-size") == "4"
    assert flag(command, "--served-model-name") == "llama-70b"
    assert flag(command, "--gpu-memory-utilization") == "0.9"


def test_kv_offload_is_kv_offloading_not_weight_offloading():
    command = large_command(make_policy(kv_offload_backend="lmcache"))
    assert flag(command, "--kv-offloading-size") == "64"
    assert flag(command, "--kv-offloading-backend") == "lmcache"
    assert "--cpu-offload-gb" not in command
    assert "--kv-offloading-size" not in large_command(make_policy(kv_offload_gb=0))


def test_prefix_caching_off_is_explicit_and_extra_args_come_last():
    command = large_command(make_policy(enable_prefix_caching=False, extra_args=["--max-num-seqs", "64"]))
    assert "--no-enable-prefix-caching" in command and "--enable-prefix-caching" not in command
    assert command[-2:] == ["--max-num-seqs", "64"]


def test_served_name_defaults_to_the_name_the_proxy_sends():
    policy = make_policy(served_model_name=None)
    assert flag(large_command(policy), "--served-model-name") == "llama-70b"
    small = render.vllm_command("small", policy.backends["small"], host="0.0.0.0", port=8000)
    assert "--served-model-name" not in small


def test_a_served_name_the_proxy_would_not_send_is_refused():
    with pytest.raises(ValueError, match="served_model_name"):
        large_command(make_policy(served_model_name="other"))


def test_shell_script_serves_each_backend_where_its_url_points():
    script = render.render_shell(make_policy())
    assert "  large)\n    exec vllm serve meta-llama/Llama-3.3-70B-Instruct \\\n" in script
    assert "--port 8001" in script and "hosted" not in script
    if shutil.which("bash"):
        subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def docs(policy: Policy) -> list[dict]:
    return list(yaml.safe_load_all(render.render_k8s(policy, replicas=3)))


def named(documents: list[dict], kind: str, name: str) -> dict:
    return next(d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name)


def test_manifests_have_the_whole_stack():
    documents = docs(make_policy())
    kinds = Counter((d["kind"], d["metadata"]["name"]) for d in documents)
    assert kinds == Counter({("StatefulSet", "vllm-large"): 1, ("Service", "vllm-large"): 1,
                             ("Deployment", "vllm-small"): 1, ("Service", "vllm-small"): 1,
                             ("Service", "redis"): 1, ("StatefulSet", "redis"): 1,
                             ("Job", "redis-cluster-create"): 1,
                             ("ConfigMap", "catcache-policies"): 1, ("Deployment", "catcache"): 1,
                             ("Service", "catcache"): 1, ("HorizontalPodAutoscaler", "catcache"): 1,
                             ("ConfigMap", "prometheus-catcache-scrape"): 1})


def test_vllm_deployment_gets_gpus_replicas_probes_and_args():
    documents = docs(make_policy())
    large = named(documents, "StatefulSet", "vllm-large")["spec"]
    container = large["template"]["spec"]["containers"][0]
    assert large["replicas"] == 3
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert container["resources"]["requests"]["memory"] == "80Gi"  # the pinned 64 GiB offload buffer fits
    assert container["command"] + container["args"] == large_command(make_policy())
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": 8000}
    small = named(documents, "Deployment", "vllm-small")["spec"]["template"]["spec"]["containers"][0]
    assert small["resources"]["limits"]["nvidia.com/gpu"] == 1 and "memory" not in small["resources"]["requests"]
    assert named(documents, "Service", "vllm-large")["spec"]["selector"] == large["selector"]["matchLabels"]


def test_catcache_reads_the_policy_from_a_configmap_that_points_at_the_services():
    documents = docs(make_policy())
    proxy = named(documents, "Deployment", "catcache")["spec"]
    pod = proxy["template"]
    container = pod["spec"]["containers"][0]
    assert proxy["replicas"] == 3
    assert container["command"][:6] == ["catcache", "serve", "--redis", render.redis_cluster_url(3),
                                        "--policies", "/etc/catcache/policies.yaml"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert {e["name"] for e in container["env"]} == {"CATCACHE_ADMIN_TOKEN", "LARGE_KEY", "OPENAI_API_KEY"}
    assert "subPath" not in container["volumeMounts"][0]  # ConfigMap edits must reach the hot reload
    text = named(documents, "ConfigMap", "catcache-policies")["data"]["policies.yaml"]
    policy = parse_policy(text, "configmap")
    assert policy.backends["large"].urls == [f"http://vllm-large-{i}.vllm-large:8000/v1" for i in range(3)]
    assert policy.backends["small"].url == "http://vllm-small:8000/v1"
    assert policy.backends["hosted"].url == "https://api.openai.com/v1"
    assert policy.backends["large"].vllm == make_policy().backends["large"].vllm


def test_admin_routes_need_a_token_from_a_secret_and_prometheus_scrapes_with_it():
    documents = docs(make_policy())
    pod = named(documents, "Deployment", "catcache")["spec"]["template"]
    token = next(e for e in pod["spec"]["containers"][0]["env"] if e["name"] == "CATCACHE_ADMIN_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "catcache-admin", "key": "token"}  # not optional
    assert "annotations" not in pod["metadata"], "an annotation-driven scrape would go without the token"
    [job] = yaml.safe_load(named(documents, "ConfigMap", "prometheus-catcache-scrape")["data"]["catcache-scrape.yaml"])
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"] == {"type": "Bearer", "credentials_file": render.PROMETHEUS_TOKEN_FILE}
    assert {"source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"], "regex": "catcache",
            "action": "keep"} in job["relabel_configs"]


def test_vllm_replicas_have_stable_names_the_proxy_routes_to():
    documents = docs(make_policy())
    large = named(documents, "StatefulSet", "vllm-large")["spec"]
    assert large["serviceName"] == "vllm-large"
    assert named(documents, "Service", "vllm-large")["spec"]["clusterIP"] == "None"  # one DNS name a pod


def test_redis_cluster_of_three_masters_with_a_replica_each():
    documents = docs(make_policy())
    redis = named(documents, "StatefulSet", "redis")["spec"]
    assert redis["replicas"] == 6
    args = redis["template"]["spec"]["containers"][0]["args"]
    assert flag(args, "--cluster-enabled") == "yes" and flag(args, "--appendonly") == "yes"
    script = named(documents, "Job", "redis-cluster-create")["spec"]["template"]["spec"]["containers"][0]["command"][2]
    assert "--cluster create " + " ".join(f"redis-{i}.redis:6379" for i in range(6)) + " --cluster-replicas 1" in script
    assert render.redis_cluster_url(3).startswith("redis+cluster://redis-0.redis:6379,redis-1.redis:6379,")


def test_the_proxies_scale_on_cpu():
    documents = docs(make_policy())
    hpa = named(documents, "HorizontalPodAutoscaler", "catcache")["spec"]
    assert hpa["scaleTargetRef"]["name"] == "catcache" and hpa["minReplicas"] == 3 and hpa["maxReplicas"] == 12
    container = named(documents, "Deployment", "catcache")["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"]["cpu"]  # utilisation is measured against the request


def test_one_redis_server_keeps_an_append_only_file_on_a_volume():
    documents = list(yaml.safe_load_all(render.render_k8s(make_policy(), replicas=3, redis_shards=1)))
    redis = named(documents, "StatefulSet", "redis")["spec"]
    args = redis["template"]["spec"]["containers"][0]["args"]
    assert flag(args, "--appendonly") == "yes"
    assert redis["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert named(documents, "Service", "redis")["spec"]["clusterIP"] == "None"


def run_cli(*argv: str) -> int:
    return cli.main(["deploy", *argv])


def test_cli_writes_into_out_and_refuses_a_bad_policy(tmp_path, capsys):
    assert run_cli("--policies", str(REPO / "policies.yaml"), "--format", "shell", "--out", str(tmp_path)) == 0
    assert (tmp_path / "vllm-serve.sh").stat().st_mode & 0o111
    bad = tmp_path / "bad.yaml"
    bad.write_text("backends: {large: {url: http://x/v1, vllm: {model: m, kv_cache_dtype: int4}}}\n")
    assert run_cli("--policies", str(bad)) == 2
    assert "kv_cache_dtype" in capsys.readouterr().err


def test_committed_examples_are_current():
    """Re-render with `catcache deploy --policies policies.yaml --format shell|k8s --out deploy/examples`."""
    policy = load_policy(REPO / "policies.yaml")
    assert (EXAMPLES / "vllm-serve.sh").read_text() == render.render_shell(policy)
    # The ConfigMap copies every category, so edits to categories alone do not stale the example.
    committed = [d for d in yaml.safe_load_all((EXAMPLES / "k8s.yaml").read_text()) if d["kind"] != "ConfigMap"]
    current = [d for d in yaml.safe_load_all(render.render_k8s(policy)) if d["kind"] != "ConfigMap"]
    assert committed == current
