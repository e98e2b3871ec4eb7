"""`catcache serve` flags: each has a CATCACHE_<FLAG> environment variable, and bad values are usage errors."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from catcache import cli


def serve_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli._add_serve(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


def test_every_flag_reads_its_environment_variable(monkeypatch):
    values = {"BACKEND": "http://vllm:8000/v1", "POLICIES": "/etc/catcache/policies.yaml",
              "REDIS": "redis://cache:6379/0", "DATA_DIR": "/var/lib/catcache", "HOST": "0.0.0.0", "PORT": "9090"}
    for name, value in values.items():
        monkeypatch.setenv(f"CATCACHE_{name}", value)
    args = serve_args([])
    assert (args.backend, args.policies, args.redis, args.data_dir, args.host, args.port) == (
        "http://vllm:8000/v1", "/etc/catcache/policies.yaml", "redis://cache:6379/0", "/var/lib/catcache",
        "0.0.0.0", 9090)
    assert serve_args(["--port", "7070"]).port == 7070, "a flag beats its variable"


def test_defaults(monkeypatch):
    for name in ("BACKEND", "POLICIES", "REDIS", "DATA_DIR", "HOST", "PORT"):
        monkeypatch.delenv(f"CATCACHE_{name}", raising=False)
    args = serve_args([])
    assert (args.backend, args.redis, args.host, args.port) == (None, None, "127.0.0.1", 8080)


@pytest.mark.parametrize("env, argv", [({"CATCACHE_PORT": "eighty"}, []), ({}, ["--port", "70000"])])
def test_a_bad_port_is_a_usage_error(env, argv):
    done = subprocess.run([sys.executable, "-m", "catcache", "serve", *argv], env={**env, "PATH": ""},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "invalid port value" in done.stderr and "Traceback" not in done.stderr
