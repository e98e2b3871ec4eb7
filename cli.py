"""The `catcache` command: serve, policy check, calibrate, report, deploy, purge."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="catcache", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_serve(commands)
    _add_policy(commands)
    for module in _feature_modules():
        module.add_parser(commands)
    args = parser.parse_args(argv)
    return args.run(args)


def _feature_modules() -> list:
    from catcache.deploy import render
    from catcache.verify import calibrate
    from catcache.reports import report
    from catcache.store import purge

    return [calibrate, report, render, purge]


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
    serve.add_argument("--client-timeout", type=positive_seconds, default=_env("client_timeout", "30"),
                       help="seconds a client may take to send a whole request; a slower one is disconnected (default 30)")
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
    from catcache.proxy.protocol import http_protocol
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
                    http=http_protocol(args.client_timeout),
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
