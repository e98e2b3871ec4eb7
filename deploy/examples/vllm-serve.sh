#!/usr/bin/env bash
# Rendered by `catcache deploy --format shell` from policies.yaml: edit the policy and render again.
# Run one backend per invocation, each on its own GPUs (set CUDA_VISIBLE_DEVICES).
set -euo pipefail

case "${1:?usage: $0 large|small}" in
  large)
    exec vllm serve meta-llama/Llama-3.1-8B-Instruct \
      --host 127.0.0.1 \
      --port 8000 \
      --enable-prefix-caching \
      --kv-cache-dtype fp8 \
      --max-model-len 16384 \
      --gpu-memory-utilization 0.9 \
      --tensor-parallel-size 1 \
      --kv-offloading-backend native \
      --kv-offloading-size 16
    ;;
  small)
    exec vllm serve Qwen/Qwen2.5-1.5B-Instruct \
      --host 127.0.0.1 \
      --port 8001 \
      --enable-prefix-caching \
      --kv-cache-dtype auto \
      --max-model-len 8192 \
      --gpu-memory-utilization 0.3 \
      --tensor-parallel-size 1
    ;;
  *) echo "unknown backend: $1 (one of: large small)" >&2; exit 2 ;;
esac
