"""Reward-model benchmark through the engine's own commands: import human preference pairs
(`corpus import-pairs --release`), train the reward model (`train rm`, which holds out
--eval-fraction of the pairs), and print its held-out accuracy with the 95% interval next to
the "longer answer wins" baseline on the same pairs. Prints figures; asserts nothing.

    python bench/rm.py                                  # hh_helpful_dev, the settings below
    python bench/rm.py --lora --lr 2e-4 --max-steps 40 --max-length 256 --batch-size 8

Every figure is printed with the load average and thread pins (the CPU here is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return (f"{os.cpu_count()}-core CPU, torch threads {torch.get_num_threads()}, "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default=str(DATA / "hh_helpful_dev.jsonl"), help="preference file (any import-pairs shape)")
    ap.add_argument("--limit", type=int, default=None, help="use the first N pairs")
    ap.add_argument("--eval-fraction", type=float, default=0.2)
    ap.add_argument("--base", default="embedded")
    ap.add_argument("--lora", action="store_true")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--max-steps", type=int, default=-1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="keep the corpus and model here (default: a temp folder)")
    args = ap.parse_args()

    from corpus import Corpus
    from corpus.import_pairs import import_pairs
    from train import train_model

    print(f"bench/rm.py on {machine()}; {load()}", flush=True)
    with tempfile.TemporaryDirectory() as d:
        work = Path(args.workdir or d)
        work.mkdir(parents=True, exist_ok=True)
        corpus = Corpus(work / "rm.duckdb")
        imp = import_pairs(corpus, args.pairs, release=True, limit=args.limit)
        print(f"imported {imp['pairs']} pairs, release {imp['release_id']}", flush=True)
        t0 = time.perf_counter()
        mid = train_model(corpus, "rm", base=args.base, out=work / "rm", release=imp["release_id"], lora=args.lora,
                          lr=args.lr, epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
                          max_length=args.max_length, seed=args.seed, eval_fraction=args.eval_fraction, progress=False)
        wall = time.perf_counter() - t0
        row = corpus.query("SELECT config, metrics FROM models WHERE id = ?", [mid])[0]
        m, cfg = json.loads(row["metrics"]), json.loads(row["config"])
        losses = [r["loss"] for r in corpus.query("SELECT loss FROM train_steps WHERE model_id = ? ORDER BY step", [mid])]
    settings = {k: cfg[k] for k in ("lora", "lr", "epochs", "max_steps", "batch_size", "max_length", "seed", "eval_fraction")}
    settings["lr"] = settings["lr"] or "default"
    out = {
        "settings": settings, "train_pairs": cfg["rows"], "train_pairs_used": m.get("train_pairs_used"),
        "steps": m["steps"], "wall_s": round(wall, 1), "s_per_step": round(m.get("train_runtime", wall) / max(1, m["steps"]), 1),
        "heldout_pairs": m.get("heldout_pairs"), "heldout_accuracy": m.get("heldout_accuracy"),
        "heldout_95": [m.get("heldout_lower"), m.get("heldout_upper")], "longer_wins_same_pairs": m.get("heldout_longer_wins"),
        "last_batch_accuracy": m.get("last_batch_accuracy"),
        "loss_first_last": [losses[0], losses[-1]] if losses else None,
    }
    print("rm:", json.dumps(out), f"({load()})", flush=True)


if __name__ == "__main__":
    main()
