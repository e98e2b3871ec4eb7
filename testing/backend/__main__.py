"""`python -m catcache.testing.backend`: the fake backend as a server process of its own."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import uvicorn

from . import __doc__ as about
from .app import create_app
from .state import DEFAULT_MODELS


def _table(path: str | None) -> dict[str, str] | None:
    return json.loads(Path(path).read_text(encoding="utf-8")) if path else None


def main() -> None:
    parser = argparse.ArgumentParser(description=(about or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--think-ms", type=float, default=0, help="delay before the first token")
    parser.add_argument("--tokens-per-s", type=float, default=0, help="token rate; 0 sends all at once")
    parser.add_argument("--model", action="append", help="a model for /v1/models (repeatable)")
    parser.add_argument("--prefix-slots", type=int, default=0, help="system prompts the prefix cache holds")
    parser.add_argument("--prefix-ms", type=float, default=0, help="prefill wait of a system prompt not cached")
    parser.add_argument("--slots", type=int, default=0, help="generations at once, the rest queue; 0: no limit")
    parser.add_argument("--replies", help="a JSON file {question: answer} of answers to give instead of 'Answer #n'")
    parser.add_argument("--groups", help="a JSON file {question: group}: one answer for all questions of a group")
    args = parser.parse_args()
    app = create_app(args.think_ms, args.tokens_per_s, args.model or DEFAULT_MODELS, args.prefix_ms,
                     args.prefix_slots, args.slots, _table(args.replies), _table(args.groups))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
