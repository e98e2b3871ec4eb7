"""Mutation testing of the code that decides who is served what: tenant scoping, the exact and
semantic tiers' scoping, the verifier call, feedback's reportability and store acceptance.

Each mutant is one small change to one function (a comparison flipped, `and` for `or`, a clause
of a condition dropped, a `not` dropped, a condition negated, a constant changed). It is put in
place by swapping the function's code object in the running process, and the isolation checks
run against it: the isolation tests (tests/e2e/test_isolation.py) against three running proxies
(one per tenancy mode, started once), and the unit tests of tenancy and store acceptance. A
mutant is killed when any check fails; a survivor is listed, unless it is marked equivalent
below with the reason it cannot change who is served what.

    python scripts/mutate.py [--only tenancy.tenant_of] [--list]
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import copy
import importlib
import inspect
import itertools
import sys
import tempfile
import textwrap
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# module (under catcache.proxy) and function: the code that decides who is served what.
TARGETS = [
    ("tenancy", "tenant_of"), ("tenancy", "_credential"), ("tenancy", "scoped"),
    ("lookup", "_Lookup._classify"), ("lookup", "_Lookup._exact"), ("lookup", "_Lookup._semantic"),
    ("lookup", "verify"), ("feedback", "reportable"), ("storing", "storable"), ("storing", "store"),
]

# Survivors that cannot change who is served what, with the reason (the mutant's id: its line).
EQUIVALENT: dict[str, str] = {
    "tenancy.tenant_of line 38: string '\x00' misspelt":
        "the separator between several credentials: any that no header value holds keeps them apart",
    "tenancy.scoped line 51: string '\x00' misspelt":
        "every scoped key changes alike: tenants stay apart, shared keys stay unscoped",
    "lookup._Lookup._exact line 129: string 'exact' misspelt": "the classification's reason, a label",
    "lookup._Lookup._semantic line 143: Or -> And":
        "searches the index of a category that is not cacheable too, but nothing is ever indexed under one: "
        "only a policy reload that turns `cacheable` off could leave entries there (not covered)",
    "lookup._Lookup._semantic line 156: 0 -> 1": "the similarity reported on a miss (a header, the record), not what is served",
    "lookup._Lookup._semantic line 170: Or -> And": "which refusal reason x-catcache-verdict reports",
    "lookup._Lookup._semantic line 164: Gt -> GtE": "an age exactly equal to the TTL (float equality)",
    "lookup._Lookup._semantic line 172: GtE -> Gt": "a similarity exactly equal to ic.low (float equality) joins the IC band",
    "lookup.verify line 190: string 'none' misspelt": "the shortcut only: verifier `none` (NoVerifier) accepts every pair too",
    "storing.storable line 50: drop clause `not isinstance(choices, list)`":
        "choices that are not a list fail the next check anyway: none of their items is a dict with a finish_reason",
    "storing.storable line 56: string ',' misspelt": "`;` becomes `,_`: the split on `,` still isolates each directive",
    "lookup._Lookup._semantic line 157: GtE -> Gt": "a similarity exactly equal to the threshold (float equality)",
    "storing.store line 66: False -> True":
        "unreachable: store() runs after storable(), which has checked the choices, and a kept request has its rules",
    "storing.store line 65: Or -> And":
        "store() runs after storable(), which has checked the choices, and a kept request always has its rules",
}


# -- mutants ---------------------------------------------------------------------------------

SWAPS = {ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
         ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.And: ast.Or, ast.Or: ast.And}


def mutants(tree: ast.FunctionDef | ast.AsyncFunctionDef) -> Iterator[tuple[str, ast.AST]]:
    """(description, mutated function) for each mutation of the function's body."""
    nodes = [n for n in ast.walk(tree) if n is not tree]
    docstring = tree.body[0].value if isinstance(tree.body[0], ast.Expr) else None
    logged = {id(n) for call in nodes if _is_log_call(call) for n in ast.walk(call)}
    for index, node in enumerate(nodes):
        if node is docstring or id(node) in logged:
            continue
        for description, change in _changes(node):
            mutated = copy.deepcopy(tree)
            target = [n for n in ast.walk(mutated) if n is not mutated][index]
            change(target)
            yield f"line {node.lineno}: {description}", mutated


def _is_log_call(node: ast.AST) -> bool:
    """A `log.warning(...)` and the like: what it writes changes no one's answer."""
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
        isinstance(node.func.value, ast.Name) and node.func.value.id == "log"


def _changes(node: ast.AST) -> Iterator[tuple[str, Callable[[ast.AST], None]]]:
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in SWAPS:
                yield f"{type(op).__name__} -> {SWAPS[type(op)].__name__}", lambda n, i=i: n.ops.__setitem__(i, SWAPS[type(n.ops[i])]())
    elif isinstance(node, ast.BoolOp):
        yield f"{type(node.op).__name__} -> {SWAPS[type(node.op)].__name__}", lambda n: setattr(n, "op", SWAPS[type(n.op)]())
        for i, value in enumerate(node.values):
            yield f"drop clause `{ast.unparse(value)}`", lambda n, i=i: n.values.pop(i)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        yield f"drop `not` of `{ast.unparse(node.operand)}`", lambda n: _become(n, n.operand)
    elif isinstance(node, (ast.If, ast.IfExp)):
        yield f"negate `{ast.unparse(node.test)}`", lambda n: setattr(n, "test", ast.UnaryOp(ast.Not(), n.test))
    elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
        yield f"{node.value} -> {not node.value}", lambda n: setattr(n, "value", not n.value)
    elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value:
        yield f"string {node.value!r} misspelt", lambda n: setattr(n, "value", n.value + "_")
    elif isinstance(node, ast.Constant) and type(node.value) is int:
        yield f"{node.value} -> {node.value + 1}", lambda n: setattr(n, "value", n.value + 1)


def _become(node: ast.AST, other: ast.AST) -> None:
    node.__class__ = other.__class__
    node.__dict__.update(copy.deepcopy(other).__dict__)


def resolve(module: str, qualified: str) -> tuple[object, Callable]:
    owner: object = importlib.import_module(f"catcache.proxy.{module}")
    *path, name = qualified.split(".")
    for part in path:
        owner = getattr(owner, part)
    return owner, getattr(owner, name)


def compile_like(function: Callable, tree: ast.AST) -> object:
    """The code object of `tree`, a mutated copy of `function`'s definition, compiled in its module."""
    ast.fix_missing_locations(tree)
    module = ast.Module(body=[tree], type_ignores=[])
    namespace: dict = {}
    exec(compile(module, inspect.getsourcefile(function), "exec"), function.__globals__, namespace)  # noqa: S102
    return namespace[tree.name].__code__


def definition(function: Callable) -> ast.FunctionDef | ast.AsyncFunctionDef:
    source = textwrap.dedent(inspect.getsource(function))
    tree = ast.parse(source).body[0]
    ast.increment_lineno(tree, inspect.getsourcelines(function)[1] - 1)
    return tree


# -- checks ----------------------------------------------------------------------------------

def checks(proxies: dict) -> list[tuple[str, Callable[[], None]]]:
    """Every isolation test (with each of its parameters) and the unit tests of tenancy and storing."""
    sys.path.insert(0, str(ROOT.parent))
    isolation = importlib.import_module("catcache.tests.e2e.test_isolation")
    units = importlib.import_module("catcache.tests.proxy.test_pipeline_units")
    found = []
    for module, fixtures in ((units, {}), (isolation, {"proxies": proxies})):
        for name, test in inspect.getmembers(module, inspect.isfunction):
            if not name.startswith("test_") or test.__module__ != module.__name__:
                continue
            for params in _parameters(test):
                found.append((f"{module.__name__.rsplit('.', 1)[1]}::{name}{params or ''}",
                              lambda test=test, params=params: test(**fixtures_for(test, fixtures), **params)))
    return found


def fixtures_for(test: Callable, fixtures: dict) -> dict:
    return {name: value for name, value in fixtures.items() if name in inspect.signature(test).parameters}


def _parameters(test: Callable) -> list[dict]:
    sets = [{}]
    for mark in getattr(test, "pytestmark", []):
        if mark.name != "parametrize":
            continue
        names = [n.strip() for n in mark.args[0].split(",")] if isinstance(mark.args[0], str) else list(mark.args[0])
        values = [v if len(names) > 1 else (v,) for v in mark.args[1]]
        sets = [dict(s, **dict(zip(names, v))) for s, v in itertools.product(sets, values)]
    return sets


def run_checks(cases: list[tuple[str, Callable[[], None]]]) -> str | None:
    """The first check that fails (the mutant is killed), or None (it survived)."""
    for name, case in cases:
        try:
            case()
        except Exception:  # noqa: BLE001 - any failure kills the mutant
            return f"{name}: {traceback.format_exc(limit=1).strip().splitlines()[-1][:160]}"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="module.function, comma separated")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = parser.parse_args()
    targets = [t for t in TARGETS if not args.only or f"{t[0]}.{t[1]}" in args.only.split(",")]
    plan = []
    for module, qualified in targets:
        owner, function = resolve(module, qualified)
        for description, tree in mutants(definition(function)):
            plan.append((f"{module}.{qualified} {description}", function, tree))
    if args.list:
        print("\n".join(name for name, _, _ in plan))
        return
    from catcache.store.embedded import EmbeddedRedis
    from catcache.testing import TestBackend

    isolation = importlib.import_module("catcache.tests.e2e.test_isolation")
    with tempfile.TemporaryDirectory() as scratch, TestBackend() as backend, \
            EmbeddedRedis(Path(scratch) / "redis") as redis, \
            isolation.running_proxies(backend.base_url, redis.url, Path(scratch)) as proxies:
        cases = checks(proxies)
        assert run_checks(cases) is None, "the checks fail on the unmutated code"
        survivors, started = [], time.monotonic()
        for i, (name, function, tree) in enumerate(plan, 1):
            original = function.__code__
            try:
                function.__code__ = compile_like(function, tree)
            except (SyntaxError, ValueError) as exc:
                print(f"[{i}/{len(plan)}] not compiled ({exc}): {name}")
                continue
            try:
                killer = run_checks(cases)
            finally:
                function.__code__ = original
            if killer is None and name not in EQUIVALENT:
                survivors.append(name)
            status = "killed" if killer else ("equivalent" if name in EQUIVALENT else "SURVIVED")
            print(f"[{i}/{len(plan)}] {status}: {name}" + (f"  <- {killer}" if killer else ""), flush=True)
    print(f"\n{len(plan)} mutants, {len(survivors)} surviving, {time.monotonic() - started:.0f} s")
    for name in survivors:
        print(f"  SURVIVED {name}")
    raise SystemExit(1 if survivors else 0)


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
