"""Re-create verify/models/pair_classifier.json from the training half of a labeled workload.

    python -m bench.train_verifier [--workload ../shared/workloads/qqp-dev]

Examples are the half-0 labeled pairs (bench/heldout.py) plus what a cache actually meets: each
query of the half-0 stream against its nearest earlier query, graded by the workload's labels
(verify/labels.py; QQP's only where the two form a labeled pair). Half 1 is never read, so bench/verify_sweep.py can measure on it. The trees are stored
as plain JSON (no pickle) and evaluated by catcache.verify.verifiers.PairClassifier.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.ensemble import GradientBoostingClassifier

from bench.heldout import training_pairs
from bench.paths import add_workloads
from bench.paths import workload as workload_folder
from catcache.verify.pairdiff import FEATURES, features
from catcache.verify.verifiers import PAIR_CLASSIFIER


def examples(workloads: list[Path], encode) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows and labels from half 0 of each workload (bench/heldout.py training_pairs)."""
    rows, labels = [], []
    for workload in workloads:
        pairs = training_pairs(workload, encode)
        a = encode([p["a"] for p in pairs])
        b = encode([p["b"] for p in pairs])
        rows += [features(p["b"], p["a"], float(u @ v)) for p, u, v in zip(pairs, a, b)]
        labels += [bool(p["equivalent"]) for p in pairs]
    return np.array(rows), np.array(labels)


def fit(x: np.ndarray, y: np.ndarray) -> GradientBoostingClassifier:
    model = GradientBoostingClassifier(n_estimators=150, max_depth=3, learning_rate=0.1, subsample=0.8,
                                       min_samples_leaf=20, random_state=0)
    return model.fit(x, y)


def export(model: GradientBoostingClassifier) -> dict:
    """The fitted trees as lists, enough for PairClassifier.predict to reproduce predict_proba."""
    trees = []
    for (estimator,) in model.estimators_:
        t = estimator.tree_
        trees.append({"feature": t.feature.tolist(), "threshold": t.threshold.tolist(),
                      "left": t.children_left.tolist(), "right": t.children_right.tolist(),
                      "value": t.value[:, 0, 0].tolist()})
    probe = np.zeros((1, len(FEATURES)))
    base = float(model._raw_predict_init(probe)[0, 0])
    return {"features": list(FEATURES), "base": base, "learning_rate": model.learning_rate, "trees": trees}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", action="append", default=[],
                        help="a workload's name or folder; repeatable (default: comqa-dev and qqp-dev)")
    add_workloads(parser)
    parser.add_argument("--out", type=Path, default=PAIR_CLASSIFIER)
    args = parser.parse_args()

    from catcache.index.embedder import Embedder

    workloads = [workload_folder(args.workloads, name) for name in args.workload or ["comqa-dev", "qqp-dev"]]
    x, y = examples(workloads, Embedder().encode)
    model = fit(x, y)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(export(model), separators=(",", ":")))
    print(f"{len(y)} examples ({int(y.sum())} equivalent) -> {args.out} ({args.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
