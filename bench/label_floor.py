"""How false can a QQP-graded hit rate get below? The labels' own floor, on the calibration half.

    python -m bench.label_floor [--workload qqp-dev] [--half 0]

QQP's labeled pairs were picked to be hard, and some labels are wrong: a pair whose two questions
differ by one space before the question mark can be labeled "not duplicate". A cache graded on
labeled pairs meets those labels on every hit it serves between them, at any threshold. This
counts, per similarity band, the labeled pairs the verifier accepts and the share labeled not
duplicate: the false-hit rate a threshold serving that band is graded at, whatever it learned.
Written to bench/results/label_floor-h<half>.json.
"""

from __future__ import annotations

import argparse

import numpy as np

from bench import output, paths
from bench.heldout import TRAIN, labeled_pairs
from catcache.index.embedder import Embedder
from catcache.verify.verifiers import load_verifier

BANDS = (0.90, 0.935, 0.95, 0.9637, 0.975, 0.99, 1.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="qqp-dev", help="by name or folder")
    parser.add_argument("--half", type=int, default=TRAIN, choices=(0, 1))
    paths.add_workloads(parser)
    args = parser.parse_args()
    folder = paths.workload(args.workloads, args.workload)
    pairs = labeled_pairs(folder, args.half)
    embedder = Embedder()
    a, b = embedder.encode([p["a"] for p in pairs]), embedder.encode([p["b"] for p in pairs])
    similarity = (a * b).sum(axis=1)
    guard = load_verifier("lexical-guard")
    accepted = np.array([guard.score(p["a"], p["b"], float(s)) >= 0.5 for p, s in zip(pairs, similarity)])
    different = np.array([not p["equivalent"] for p in pairs])
    rows = []
    for low, high in zip(BANDS, BANDS[1:]):
        inside = (similarity >= low) & (similarity < high)
        kept = inside & accepted
        rows.append({"band": f"{low}-{min(high, 1.0)}", "pairs": int(inside.sum()),
                     "not_duplicate": int(different[inside].sum()), "accepted": int(kept.sum()),
                     "accepted_not_duplicate": int(different[kept].sum()),
                     "floor": round(float(different[kept].mean()), 4) if kept.any() else None})
    output.show(f"{folder.name} half {args.half}: labeled pairs the verifier accepts, labeled not duplicate",
                list(rows[0]), [list(r.values()) for r in rows])
    output.save(f"label_floor-h{args.half}", {"workload": str(folder), "half": args.half, "pairs": len(pairs), "bands": rows})


if __name__ == "__main__":
    main()
