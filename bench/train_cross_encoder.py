"""Fine-tune the packaged MiniLM into a cross-encoder that reads both questions at once.

    python -m bench.train_cross_encoder prepare --out .train        # here: data and base weights
    python3 -m bench.train_cross_encoder train .train --layers 6 --out OUT  # on a GPU machine (torch, transformers)
    python -m bench.train_cross_encoder evaluate .train OUT/heldout_scores_l6.json  # here: against the guard

`prepare` writes half 0 of comqa-dev and qqp-dev as labeled pairs (bench/heldout.py: the labeled
pairs, each query's graded nearest earlier neighbour, and, where labels are complete, every pair
above 0.70 cosine), half 1's graded neighbours as they meet the cache (to score, never to train),
and the packaged all-MiniLM-L6-v2 in fp16. `train` keeps the word, position and type embeddings
frozen, so what it writes (`cross_encoder_l{N}.safetensors`) is only the transformer layers and the
head; at run time they are put back on top of the packaged embeddings (verify/cross_encoder.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import shutil
import time
from pathlib import Path

from bench.paths import add_workloads

BASE_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def prepare(out: Path, workloads: Path | None = None, dense_above: float = 0.70) -> None:
    import numpy as np
    from safetensors.numpy import load_file, save_file

    from bench.heldout import HELDOUT, TRAIN, labeled_pairs, split_stream, training_pairs
    from bench.paths import workload
    from catcache.index.embedder import Embedder, model_path
    from catcache.verify.labels import Grader, neighbour_pairs, normalise

    encode = Embedder().encode
    out.mkdir(parents=True, exist_ok=True)
    train: dict[frozenset, dict] = {}
    heldout = []
    for name in ("comqa-dev", "qqp-dev"):
        folder = workload(workloads, name)
        for pair in training_pairs(folder, encode):
            train.setdefault(frozenset((normalise(pair["a"]), normalise(pair["b"]))), {**pair, "workload": name})
        stream = split_stream(folder, TRAIN)
        grader = Grader.for_rows(stream, labeled_pairs(folder, TRAIN))
        if not grader.partial:  # every pair is labeled: the dense neighbourhood is free training data
            vectors = encode([row["text"] for row in stream])
            similar = np.triu(vectors @ vectors.T, 1) >= dense_above
            for i, j in zip(*np.nonzero(similar)):
                key = frozenset((normalise(stream[i]["text"]), normalise(stream[j]["text"])))
                if len(key) == 2:
                    train.setdefault(key, {"a": stream[i]["text"], "b": stream[j]["text"],
                                           "equivalent": bool(grader.right(stream[j], stream[i])), "workload": name})
        measured = split_stream(folder, HELDOUT)
        graded = Grader.for_rows(measured, labeled_pairs(folder, HELDOUT))
        met = neighbour_pairs(measured, encode, graded, above=0.80)
        a, b = encode([p["a"] for p in met]), encode([p["b"] for p in met])
        heldout += [{**p, "workload": name, "similarity": float(u @ v)} for p, u, v in zip(met, a, b)]
    rows = list(train.values())
    for path, items in (("train.jsonl", rows), ("heldout.jsonl", heldout)):
        (out / path).write_text("".join(json.dumps(r) + "\n" for r in items), encoding="utf-8")
    base = out / "base"
    base.mkdir(exist_ok=True)
    source = model_path("all-MiniLM-L6-v2")
    for name in BASE_FILES:
        shutil.copy(source / name, base / name)
    weights = load_file(str(source / "model.safetensors"))
    save_file({k: v.astype(np.float16) for k, v in weights.items()}, str(base / "model.safetensors"))
    positives = sum(r["equivalent"] for r in rows)
    print(f"{len(rows)} training pairs ({positives} equivalent), {len(heldout)} held-out neighbours -> {out}")


def _validation(pair: dict) -> bool:
    """One pair in ten, by hash, chooses the epoch; the rest train."""
    return hashlib.sha256((pair["a"] + "\x00" + pair["b"]).encode()).digest()[0] % 10 == 0


def recall_at_precision(scores: list[float], labels: list[bool], precision: float) -> float:
    """The largest share of positives accepted by a score cut whose accepted pairs are `precision` right."""
    ranked = sorted(zip(scores, labels), key=lambda s: -s[0])
    right = best = 0
    positives = max(1, sum(labels))
    for n, (_, label) in enumerate(ranked, 1):
        right += label
        if right / n >= precision:
            best = max(best, right / positives)
    return best


def train(folder: Path, layers: int, epochs: int, lr: float, batch: int, out: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    random.seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    base = folder / "base"
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, num_hidden_layers=layers,
                                                               dtype=torch.float32).to(device)
    for p in model.bert.embeddings.parameters():
        p.requires_grad = False
    rows = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    fit = [r for r in rows if not _validation(r)]
    valid = [r for r in rows if _validation(r)]
    heldout = [json.loads(line) for line in (folder / "heldout.jsonl").read_text().splitlines()]
    examples = [(r["a"], r["b"], float(r["equivalent"])) for r in fit] + [(r["b"], r["a"], float(r["equivalent"])) for r in fit]
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    steps = epochs * math.ceil(len(examples) / batch)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min(1.0, s / (0.1 * steps)) * max(0.0, (steps - s) / (0.9 * steps)))
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def scores(pairs: list[tuple[str, str]]) -> list[float]:
        model.eval()
        found = []
        with torch.no_grad():
            for i in range(0, len(pairs), 512):
                a, b = zip(*pairs[i:i + 512])
                enc = tokenizer(list(a), list(b), truncation=True, max_length=128, padding=True, return_tensors="pt").to(device)
                found += torch.sigmoid(model(**enc).logits[:, 0]).tolist()
        model.train()
        return found

    best, best_state, log = -1.0, None, []
    started = time.time()
    for epoch in range(epochs):
        random.shuffle(examples)
        for i in range(0, len(examples), batch):
            a, b, y = zip(*examples[i:i + batch])
            enc = tokenizer(list(a), list(b), truncation=True, max_length=128, padding=True, return_tensors="pt").to(device)
            loss = loss_fn(model(**enc).logits[:, 0], torch.tensor(y, device=device))
            loss.backward()
            optimiser.step()
            schedule.step()
            optimiser.zero_grad()
        # symmetric at run time too: the mean of both orders
        s = [(x + y) / 2 for x, y in zip(scores([(r["a"], r["b"]) for r in valid]), scores([(r["b"], r["a"]) for r in valid]))]
        quality = recall_at_precision(s, [r["equivalent"] for r in valid], 0.98)
        log.append({"epoch": epoch + 1, "recall_at_p98": round(quality, 4), "seconds": round(time.time() - started, 1)})
        print(log[-1], flush=True)
        if quality > best:
            best = quality
            best_state = {k: v.detach().to("cpu", torch.float16).clone() for k, v in model.state_dict().items()
                          if not k.startswith("bert.embeddings.")}
    model.load_state_dict(best_state, strict=False)
    out.mkdir(parents=True, exist_ok=True)
    save_file(best_state, str(out / f"cross_encoder_l{layers}.safetensors"),
              metadata={"layers": str(layers), "base": "all-MiniLM-L6-v2"})
    s = [(x + y) / 2 for x, y in zip(scores([(r["a"], r["b"]) for r in heldout]), scores([(r["b"], r["a"]) for r in heldout]))]
    (out / f"heldout_scores_l{layers}.json").write_text(json.dumps({"log": log, "scores": s}))


def evaluate(folder: Path, scores_file: Path, out: Path) -> None:
    """Neighbour recall and false share on half 1, per workload: cosine alone, the lexical guard,
    the cross-encoder, and both, at each threshold; the same decision the proxy would make."""
    import numpy as np

    from catcache.verify.verifiers import LexicalGuard

    rows = [json.loads(line) for line in (folder / "heldout.jsonl").read_text().splitlines()]
    cross = np.array(json.loads(scores_file.read_text())["scores"])
    similarity = np.array([r["similarity"] for r in rows])
    right = np.array([r["equivalent"] for r in rows])
    verifier = LexicalGuard()
    guard = np.array([verifier.score(r["b"], r["a"], r["similarity"]) >= 0.5 for r in rows])
    workload = np.array([r["workload"] for r in rows])
    table = []
    for name in sorted(set(workload)):
        mine = workload == name
        for threshold in (0.88, 0.90, 0.92, 0.94, 0.96):
            above = mine & (similarity >= threshold)
            for setting, accepted in (("cosine", above), ("lexical-guard", above & guard),
                                      ("cross-encoder 0.9", above & (cross >= 0.9)),
                                      ("guard + cross-encoder 0.9", above & guard & (cross >= 0.9))):
                table.append({"workload": name, "threshold": threshold, "setting": setting,
                              "recall": round(float((accepted & right).sum() / max(1, (mine & right).sum())), 4),
                              "false": round(float((accepted & ~right).sum() / max(1, accepted.sum())), 4)})
                print(f"{name:10} {threshold:.2f} {setting:26} recall {table[-1]['recall']:.1%}  false {table[-1]['false']:.1%}")
    out.write_text(json.dumps({"scores": str(scores_file), "rows": table}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("prepare")
    p.add_argument("--out", type=Path, required=True)
    add_workloads(p)
    t = commands.add_parser("train")
    t.add_argument("folder", type=Path)
    t.add_argument("--layers", type=int, default=6)
    t.add_argument("--epochs", type=int, default=4)
    t.add_argument("--lr", type=float, default=4e-5)
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--out", type=Path, required=True)
    e = commands.add_parser("evaluate")
    e.add_argument("folder", type=Path)
    e.add_argument("scores", type=Path)
    e.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cross_encoder.json")
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.out, args.workloads)
    elif args.command == "evaluate":
        evaluate(args.folder, args.scores, args.out)
    else:
        train(args.folder, args.layers, args.epochs, args.lr, args.batch, args.out)


if __name__ == "__main__":
    main()
