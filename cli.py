"""The `catcache` command: serve, policy check, calibrate, report, deploy, purge.

This module owns the command line: it parses the flags and calls each package's plain function
(`verify.calibrate.run`, `reports.report.run`, `deploy.render.run`, `store.purge.run`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.run(args)


def parser() -> argparse.ArgumentParser:
    """Every subcommand's flags; each sets `run`, which takes the parsed arguments."""
    root = argparse.ArgumentParser(prog="catcache", description=__doc__.split("\n\n")[0])
    commands = root.add_subparsers(dest="command", required=True)
    for add in (_add_serve, _add_policy, _add_calibrate, _add_report, _add_deploy, _add_purge):
        add(commands)
    return root


def _env(flag: str, default: str | None = None) -> str | None:
    return os.environ.get(f"CATCACHE_{flag.upper().replace('-', '_')}", default)


def _add_serve(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="run the caching proxy",
                                description="Run the caching proxy. Every flag can also be set as CATCACHE_<FLAG>.")
    serve.add_argument("--backend", default=_env("backend"),
                       help="OpenAI-style base URL of the large backend, including /v1 (overrides policies.yaml); "
                            "`local`: the bundled SmolLM2-135M-Instruct on the CPU, also the default without one")
    serve.add_argument("--policies", default=_env("policies"),
                       help="policies.yaml (default: ./policies.yaml if present, else the built-in defaults)")
    serve.add_argument("--redis", default=_env("redis"),
                       help="redis:// URL, or redis+cluster://HOST:PORT for a Redis Cluster; without it catcache runs its own redis-server in the data dir")
    serve.add_argument("--data-dir", default=_env("data_dir"), help="where the embedded Redis keeps its files")
    serve.add_argument("--host", default=_env("host", "127.0.0.1"))
    serve.add_argument("--port", type=port, default=_env("port", "8080"))
    serve.add_argument("--log-level", default=_env("log_level", "info"), choices=["debug", "info", "warning", "error"])
    serve.add_argument("--backend-timeout", type=positive_seconds, default=_env("backend_timeout"),
                       help="seconds the large backend may stay silent before the client gets a 504 "
                            "(default: the policy's backends.large.timeout, 600)")
    serve.add_argument("--max-body-bytes", type=byte_size, default=_env("max_body_bytes", "8MB"),
                       help="largest request body; a larger one gets a 413 (default 8MB)")
    serve.add_argument("--admin-token", default=_env("admin_token"),
                       help="bearer token that /admin/*, /stats and /metrics require (prefer CATCACHE_ADMIN_TOKEN: "
                            "a flag shows in the process list)")
    serve.set_defaults(run=_serve)


def positive_seconds(value: str) -> float:
    seconds = float(value)
    if not 0 < seconds < float("inf"):
        raise ValueError(value)
    return seconds


def byte_size(value: str) -> int:
    """`8388608`, `8MB`, `512KB` or `8MiB` (KB and MB are 1024-based here, as in Nginx's client_max_body_size)."""
    text = value.strip().upper().removesuffix("B").removesuffix("I")
    factor = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(text[-1:], 1)
    number = int(text[:-1] if factor > 1 else text)
    if number <= 0:
        raise ValueError(value)
    return number * factor


def port(value: str) -> int:
    """A TCP port, from --port or CATCACHE_PORT; argparse turns the ValueError into a usage error."""
    number = int(value)
    if not 0 < number < 65536:
        raise ValueError(value)
    return number


def _log_to_stderr(level: str) -> None:
    """Operational messages with time, level and logger; the access log as bare JSON lines, one
    object a line, so log shippers can parse it without a pattern."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    access = logging.getLogger("catcache.access")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(handler)
    access.propagate = False


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from catcache.backends.local import LOCAL, LocalModel, uses_local
    from catcache.policy.loader import PolicyError, load_policy
    from catcache.proxy.app import Settings, create_app
    from catcache.store.embedded import DataDirInUse, EmbeddedRedis, default_data_dir

    _log_to_stderr(args.log_level)
    policies = Path(args.policies) if args.policies else (Path("policies.yaml") if Path("policies.yaml").is_file() else None)
    try:
        policy = load_policy(policies)
    except PolicyError as exc:
        print(f"catcache: the policy file is not valid:\n{exc}", file=sys.stderr)
        return 2
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    backend = args.backend or (None if policy.backend("large") else LOCAL)
    local = LocalModel(data_dir) if uses_local(policy, backend) else None
    embedded = None
    redis_url = args.redis or policy.redis_url
    if redis_url is None:
        embedded = EmbeddedRedis(data_dir)
    try:
        redis_url = embedded.start() if embedded else redis_url
        local_url = local.start() if local else None
    except (DataDirInUse, RuntimeError) as exc:
        print(f"catcache: {exc}", file=sys.stderr)
        for child in (embedded, local):
            if child is not None:
                child.stop()
        return 2
    try:
        from catcache.index import snapshot

        snapshots = snapshot.directory(data_dir, None if embedded is not None else redis_url)
        app = create_app(Settings(backend=backend, policies=policies, redis_url=redis_url, embedded=embedded,
                                  snapshots=snapshots, local=local, local_url=local_url,
                                  backend_timeout=args.backend_timeout, max_body_bytes=args.max_body_bytes,
                                  admin_token=args.admin_token or None))
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False,
                    loop="uvloop" if sys.platform != "win32" else "auto", timeout_graceful_shutdown=5)
    finally:
        for child in (embedded, local):
            if child is not None:
                child.stop()  # when startup failed; after a normal start the app's shutdown stopped it
    return 0


def _add_policy(commands: argparse._SubParsersAction) -> None:
    policy = commands.add_parser("policy", help="work with policies.yaml")
    verbs = policy.add_subparsers(dest="verb", required=True)
    check = verbs.add_parser("check", help="validate a policy file; print every error with its line and field")
    check.add_argument("file", type=Path)
    check.set_defaults(run=_policy_check)


def _policy_check(args: argparse.Namespace) -> int:
    from catcache.policy.loader import PolicyError, load_policy

    try:
        policy = load_policy(args.file)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{args.file}: ok ({len(policy.categories)} categories: {', '.join(policy.categories)})")
    return 0


def _add_calibrate(commands: argparse._SubParsersAction) -> None:
    from catcache.verify import calibrate

    parser = commands.add_parser(
        "calibrate", help="pick per-category thresholds from labeled pairs",
        description=(calibrate.__doc__ or "").split("\n\n")[1].replace("\n", " "))
    parser.add_argument("--pairs", type=Path, action="append", default=[],
                        help='JSON lines: {"a": ..., "b": ..., "equivalent": true|false}; repeatable')
    parser.add_argument("--stream", type=Path, action="append", default=[],
                        help='JSON lines in arrival order: {"text": ..., "group": ..., "answer": ...}; each query '
                             "is paired with its nearest earlier query and labeled by group (or agreeing answers); "
                             "rows without answers next to a pairs.jsonl are labeled only where they form one of its "
                             "pairs, as in the workloads; repeatable")
    parser.add_argument("--target-precision", type=float, required=True,
                        help="wanted share of correct answers among semantic hits, e.g. 0.98")
    parser.add_argument("--policies", type=Path, default=Path("policies.yaml"), help="policy file to start from")
    parser.add_argument("--out", type=Path, help="where to write the calibrated copy (default: <policies>.calibrated.yaml)")
    parser.add_argument("--uniform", action="store_true", help="one threshold for every category, for comparison")
    parser.add_argument("--trust-labels", action="store_true",
                        help="count every 'different' label as a false hit (no label-error estimate)")
    parser.add_argument("--ceiling", type=float, default=calibrate.CEILING,
                        help=f"highest threshold to write (default {calibrate.CEILING}): above it the semantic tier "
                             "would only see case and punctuation variants of a cached text")
    parser.set_defaults(run=lambda args: calibrate.run(
        args.pairs, args.stream, args.target_precision, args.policies, args.out, args.uniform, args.trust_labels,
        args.ceiling))


def _add_report(commands: argparse._SubParsersAction) -> None:
    from catcache.reports import report

    parser = commands.add_parser(
        "report", help="hit rates and what the cache saved, per category",
        description="Hit rates, near misses and what the cache saved, per category, from the counters "
                    "every proxy keeps in Redis.")
    parser.add_argument("--since", default="24h", help="window ending now: 90m, 24h, 7d (default 24h)")
    parser.add_argument("--redis", default=_env("redis"),
                        help="redis:// (or redis+cluster://) URL the proxies use; without it, the embedded Redis of --data-dir")
    parser.add_argument("--data-dir", default=_env("data_dir"),
                        help="data dir of a stopped `catcache serve` (default: the serve default)")
    parser.add_argument("--format", choices=["table", "html", "json"], default="table")
    parser.add_argument("--out", type=Path, help="write here instead of standard output")
    parser.set_defaults(run=lambda args: report.run(args.since, args.redis, args.data_dir, args.format, args.out))


def _add_deploy(commands: argparse._SubParsersAction) -> None:
    from catcache.deploy import render

    parser = commands.add_parser("deploy", help="render vllm serve command lines or Kubernetes manifests",
                                 description=(render.__doc__ or "").split("\n\n")[0])
    parser.add_argument("--policies", type=Path,
                        help="policies.yaml (default: ./policies.yaml if present, else the built-in defaults)")
    parser.add_argument("--format", choices=["shell", "k8s"], default="k8s")
    parser.add_argument("--out", type=Path, help="write vllm-serve.sh or k8s.yaml into this directory (default: stdout)")
    parser.add_argument("--image", default=render.CATCACHE_IMAGE, help="catcache container image (k8s)")
    parser.add_argument("--vllm-image", default=render.VLLM_IMAGE, help="vLLM container image (k8s)")
    parser.add_argument("--replicas", type=int, default=2, help="catcache proxy replicas at least (k8s)")
    parser.add_argument("--max-replicas", type=int, help="catcache proxy replicas at most, for the autoscaler "
                        "(k8s; default 4 x --replicas)")
    parser.add_argument("--redis-shards", type=int, default=render.REDIS_SHARDS,
                        help="Redis Cluster masters, each with one replica; 1 renders one Redis server (k8s)")
    parser.set_defaults(run=lambda args: render.run(args.policies, args.format, args.out, args.image, args.vllm_image,
                                                    args.replicas, args.max_replicas, args.redis_shards))


def _add_purge(commands: argparse._SubParsersAction) -> None:
    from catcache.store import purge

    parser = commands.add_parser(
        "purge", help="remove cached entries by category, tenant, age or key",
        description="Remove cached entries from Redis; running proxies drop them from their indexes too "
                    "(they follow Redis's event stream). Conditions given together must all hold.")
    parser.add_argument("--category")
    parser.add_argument("--tenant", help="tenant hash, as in the access log")
    parser.add_argument("--older-than", help="age, e.g. 90m, 2d")
    parser.add_argument("--key", help="an entry's id (the x-catcache-key response header)")
    parser.add_argument("--all", action="store_true", help="every entry (alone)")
    parser.add_argument("--redis", default=_env("redis"), help="redis:// URL the proxies use")
    parser.add_argument("--data-dir", default=_env("data_dir"),
                        help="data dir of a running or stopped `catcache serve` (default: the serve default)")
    parser.set_defaults(run=lambda args: purge.run(
        {"category": args.category, "tenant": args.tenant, "older_than": args.older_than, "key": args.key,
         "all": args.all}, args.redis, args.data_dir))
