"""Try settings of the learner side by side on the calibration halves, over several seeds.

    python -m bench.learn_trials --variant '{}' --variant '{"explore_most": 1.0}' --seeds 3

Each variant (a JSON object of `bench.learn_sim.Settings` fields) runs on ComQA's half, QQP's half
(target 3%) and the two interleaved (2%), with seeds 1..N for the exploration coin; the table shows
the mean hit rate, false-hit rate (labels) and extra calls per stream, and each seed's hit rate,
since one seed can move QQP's hit rate by 3 points (when `default` goes to the ceiling). Written to
bench/results/learn_trials.json. For the calibration halves only: the measurement halves are
replayed once, through `catcache serve`, with the settings chosen here.
"""

from __future__ import annotations

import argparse
import json
from statistics import mean

from bench import output, paths
from bench.learn_sim import ROOT, Settings, prepare, simulate, with_repeats

STREAMS = {"comqa": (["comqa-dev"], 0.02), "qqp": (["qqp-dev"], 0.03), "mixed": (["comqa-dev", "qqp-dev"], 0.02)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", default=[], help="a JSON object of Settings fields")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--stream", action="append", choices=list(STREAMS), help="only these (default: all)")
    parser.add_argument("--repeat-share", type=float, default=0.0,
                        help="put in exact repeats of earlier queries (bench.learn_sim.with_repeats)")
    parser.add_argument("--name", default="learn_trials", help="save to bench/results/NAME.json")
    paths.add_workloads(parser)
    args = parser.parse_args()
    variants = [json.loads(v) for v in args.variant or ["{}"]]
    rows, results = [], []
    for stream in args.stream or list(STREAMS):
        names, target = STREAMS[stream]
        data = prepare([paths.workload(args.workloads, n) for n in names], 0, ROOT / "policies.yaml")
        if args.repeat_share:
            data = with_repeats(data, args.repeat_share)
        for variant in variants:
            runs = [simulate(data, ROOT / "policies.yaml", Settings(target=target, seed=seed, **variant))
                    for seed in range(1, args.seeds + 1)]
            found = {"stream": stream, "variant": variant, "target": target,
                     "hit_rate": round(mean(r["hit_rate"] for r in runs), 4),
                     "false_hit_rate": round(mean(r["false_hit_rate"] for r in runs), 4),
                     "extra_calls_share": round(mean(r["extra_calls_share"] for r in runs), 4),
                     "hit_rates": [r["hit_rate"] for r in runs]}
            results.append(found)
            rows.append([stream, json.dumps(variant), f"{found['hit_rate']:.1%}", f"{found['false_hit_rate']:.2%}",
                         f"{found['extra_calls_share']:.1%}", " ".join(f"{h:.1%}" for h in found["hit_rates"])])
    output.show(f"learner settings on the calibration halves, seeds 1-{args.seeds}",
                ["stream", "variant", "hit rate", "false (labels)", "extra calls", "per seed"], rows)
    output.save(args.name, {"seeds": args.seeds, "repeat_share": args.repeat_share, "results": results})


if __name__ == "__main__":
    main()
