"""The side-by-side table of bench/README.md, section 2, from the JSON that bench.peers wrote.

    python -m bench.peer_table bench/results/peers.json [--restart bench/results/peers-restart.json]
        [--install bench/results/peers-install.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SYSTEMS = ("catcache", "RedisVL", "LiteLLM", "GPTCache")
TITLES = {"comqa-dev": "ComQA", "qqp-dev": "QQP"}


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def hits_cell(run: dict | None, cosine: bool = True) -> str:
    if not run:
        return "none within the bound"
    where = f", cos ≥ {run['cosine']:g}" if cosine and "cosine" in run else ""
    return f"**{pct(run['hit_rate'])}** ({pct(run['false_hit_rate'])} false{where})"


def ms(p: dict | None) -> str:
    if not p or p.get("p50") is None:
        return "-"
    return f"{p['p50']:.1f} / {p['p99']:.1f}"


def litellm_cell(run: dict) -> str:
    """LiteLLM on its first queries, and RedisVL on those same queries at the same threshold."""
    same = run.get("RedisVL_same_queries")
    check = f"; RedisVL on them: {pct(same['hit_rate'])}, {pct(same['false_hit_rate'])} false" if same else ""
    return f"{hits_cell(run)}, RedisVL's best, first {run['queries']:,} queries{check}"


def stream_rows(streams: dict) -> list[list[str]]:
    rows = []
    for name, row in streams.items():
        title = f"{TITLES.get(name, name)}: hit rate at ≤ {100 * row['bound']:g}% false hits ({row['queries']:,} queries)"
        litellm = (row.get("LiteLLM") or {}).get("best")
        rows.append([title, hits_cell(row["catcache"], False) + ", as shipped", hits_cell(row["RedisVL"]["best"]),
                     litellm_cell(litellm) if litellm else "-", hits_cell(row["GPTCache"]["best"])])
    for name, row in streams.items():
        if "calibrated" not in row["RedisVL"]:
            continue
        title = f"{TITLES.get(name, name)}: threshold picked on the calibration half instead"
        rows.append([title, "(as shipped: calibrated on that half)", hits_cell(row["RedisVL"]["calibrated"]),
                     "(as RedisVL)", "(as RedisVL)"])
    for name, row in streams.items():
        title = f"{TITLES.get(name, name)}: false-hit rate at the documented default"
        litellm = (row.get("LiteLLM") or {}).get("default")
        cells = [f"{pct(row['catcache']['false_hit_rate'])} (shipped policy; hit rate {pct(row['catcache']['hit_rate'])})"]
        for peer, label in (("RedisVL", "distance 0.1"), ("GPTCache", "similarity 0.8")):
            run = row[peer]["default"]
            cells.append(f"{pct(run['false_hit_rate'])} ({label} = cos ≥ {run['cosine']:g}; "
                         f"hit rate {pct(run['hit_rate'])})")
        cells.insert(2, f"{pct(litellm['false_hit_rate'])} (docs' example 0.8, no default; hit rate "
                        f"{pct(litellm['hit_rate'])}; first {litellm['queries']:,} queries)" if litellm else "-")
        rows.append([title, *cells])
    return rows


def latency_rows(document: dict) -> list[list[str]]:
    first = next(iter(document["streams"].values()))
    library = document.get("library_latency", {})
    catcache = first["catcache"]
    litellm = (first.get("LiteLLM") or {}).get("best") or {}
    semantic = [ms(catcache["latency"]["semantic_hit"]), ms(library.get("RedisVL", {}).get("replay", {})
                                                           .get("semantic_hit")),
                ms(litellm.get("latency", {}).get("semantic_hit")),
                ms(library.get("GPTCache", {}).get("replay", {}).get("semantic_hit"))]
    exact = [ms(catcache["exact_repeat"]), ms(library.get("RedisVL", {}).get("exact_repeat")),
             ms(litellm.get("exact_repeat")), ms(library.get("GPTCache", {}).get("exact_repeat"))]
    rows = [["semantic hit, p50 / p99 ms (own path)", *semantic],
            ["exact repeat, p50 / p99 ms (own path)", *exact]]
    overhead = document.get("miss_overhead")
    if overhead:
        miss = overhead.get("catcache", {})
        off = overhead.get("LiteLLM, cache off")
        on = overhead.get("LiteLLM, redis-semantic")
        rows.append(["latency added to a miss, p50 ms (paired, vs the backend direct at "
                     f"{overhead['backend direct']['p50']:.1f} ms)",
                     f"+{miss['added_p50']:.1f}", "- (a library: check + store, below)",
                     f"+{off['added_p50']:.1f} cache off, +{on['added_p50']:.1f} redis-semantic" if off and on else "-",
                     "- (a library)"])
        store = [library.get(p, {}) for p in ("RedisVL", "GPTCache")]
        rows.append(["a library's own cost of a miss, p50 ms: check + store", "-",
                     *(f"{s['replay']['miss']['p50'] + s['store_ms']['p50']:.1f}" if s else "-" for s in store[:1]),
                     "-", *(f"{s['replay']['miss']['p50'] + s['store_ms']['p50']:.1f}" if s else "-"
                            for s in store[1:])])
    return rows


def litellm_memory(document: dict) -> str:
    runs = [r["LiteLLM"]["default"] for r in document["streams"].values() if (r.get("LiteLLM") or {}).get("default")]
    if not runs:
        return "-"
    return (f"{runs[0]['redis_bytes_per_entry']:,} (Redis, RedisVL's store; measured in the replay, "
            "with the test backend's short answers)")


def cost_rows(document: dict, install: dict | None) -> list[list[str]]:
    rows = []
    memory = document.get("memory")
    if memory:
        c, r, g = memory["catcache"], memory["RedisVL"], memory["GPTCache"]
        rows.append([f"memory per entry, bytes ({memory['entries']:,} entries, {memory['answer_chars']:,}-char answers)",
                     f"{c['total']:,} (Redis {c['redis']:,} + index {c['index_rss']:,})", f"{r['total']:,} (Redis)",
                     litellm_memory(document), f"{g['rss']:,} in RAM + {g['disk']:,} on disk"])
    restart = document.get("restart")
    if restart:
        r = {name: restart[name]["ready_s"] for name in ("catcache", "RedisVL", "GPTCache")}
        rows.append([f"restart with {restart['entries']:,} entries (synthetic vectors), s, median of {restart['rounds']}",
                     f"{r['catcache']:.1f} (Redis + index snapshot) + proxy start",
                     f"{r['RedisVL']:.1f} (Redis reload + re-index)", f"{r['RedisVL']:.1f} + proxy start",
                     f"{r['GPTCache']:.1f} (SQLite + hnswlib file)"])
    cold = [next(iter(document["streams"].values()))["catcache"].get("cold_start_s")]
    litellm = (next(iter(document["streams"].values())).get("LiteLLM") or {}).get("default") or {}
    rows.append(["proxy start to ready, empty cache, s", f"{cold[0]}", "- (a library)",
                 f"{litellm.get('cold_start_s', '-')}", "- (a library)"])
    if install:
        systems = install["systems"]
        cell = {s: f"{systems[s]['bytes'] / 1e6:,.0f} MB" if systems.get(s, {}).get("ok") else "-" for s in systems}
        complete = cell.get("RedisVL + Redis 8 + MiniLM")
        rows.append(["install size, fresh venv (`pip install`, `du`)", cell["catcache"],
                     cell["RedisVL"] + (f" ({complete} with Redis 8 + RediSearch and MiniLM)" if complete else ""),
                     cell["LiteLLM proxy"], cell["GPTCache"]])
    return rows


def probe_rows(probes: dict) -> list[list[str]]:
    names = {"multi_turn": ("same question after different earlier turns", "safe"),
             "multi_turn_long": ("same, after a long first turn that differs in one word", "safe"),
             "tenants": ("two API keys", "isolated"), "stream": ("streamed answer stored and replayed", "replayed"),
             "feedback": ("wrong hit reported and evicted", "evicted")}
    rows = []
    for row, (title, key) in names.items():
        cells = []
        for system in SYSTEMS:
            found = probes.get(system, {}).get(row)
            if found is None:
                cells.append("not probed")
                continue
            cells.append({True: "yes", False: "**no**", None: "n/a"}[found[key]])
        rows.append([title, *cells])
    return rows


def probe_notes(probes: dict) -> list[str]:
    """What each probe saw, one line per system and probe, for the list under the table."""
    return [f"- {system}, {row}: {' '.join(found['seen'].split())}" for system in SYSTEMS
            for row, found in probes.get(system, {}).items() if isinstance(found, dict)]


def markdown(document: dict, install: dict | None) -> str:
    rows = [*stream_rows(document["streams"]), *latency_rows(document), *cost_rows(document, install),
            *probe_rows(document.get("probes", {}))]
    lines = ["| | " + " | ".join(SYSTEMS) + " |", "|---|" + "---|" * len(SYSTEMS)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join([*lines, "", *probe_notes(document.get("probes", {}))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--restart", type=Path, help="the restart part's results, when run apart")
    parser.add_argument("--memory", type=Path, help="the memory part's results, when run apart")
    parser.add_argument("--install", type=Path, help="bench.peer_install's results")
    args = parser.parse_args()
    document = json.loads(args.results.read_text())
    for part in ("restart", "memory"):
        if getattr(args, part):
            document[part] = json.loads(getattr(args, part).read_text())[part]
    print(markdown(document, json.loads(args.install.read_text()) if args.install else None))


if __name__ == "__main__":
    main()
