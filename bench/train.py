"""Training benchmark: (a) a reward model from SmolLM2-135M-Instruct on HH-RLHF pairs, its
accuracy on held-out pairs and samples/s; (b) a 2-round model-trains-model loop on synthesized
checkable-instruction prompts with their verifiers as the judge: pass rate of M0, M1, M2 on
held-out prompts, and mean length. Prints figures; asserts nothing.

    python bench/train.py            # GPU: the issue's sizes (800/200 pairs; 200 prompts x 4)
    python bench/train.py --cpu      # the smallest meaningful version, for a CPU (minutes)

Sizes can be set one by one (--rm-train, --rm-test, --loop-prompts, ...).
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

GPU_SIZES = dict(rm_train=800, rm_test=200, rm_epochs=1.0, rm_steps=-1, loop_prompts=200, eval_prompts=50, n=4,
                 max_new_tokens=128, dpo_steps=-1, batch_size=8)
CPU_SIZES = dict(rm_train=48, rm_test=40, rm_epochs=1.0, rm_steps=6, loop_prompts=8, eval_prompts=8, n=4,
                 max_new_tokens=48, dpo_steps=3, batch_size=4)


def release_hh_pairs(corpus, pairs: list[dict]) -> str:
    """HH-RLHF pairs into the corpus and one auto release of them, as the review stage records one."""
    from corpus import Generation, Pair, Prompt, Release, snapshot_hash

    recs, items = [], []
    for d in pairs:
        p = Prompt(messages=d["prompt"], source="hh_helpful_dev")
        c = Generation(prompt_id=p.id, backend="dataset", model="hh-rlhf", params={}, sample_idx=0,
                       response=d["chosen"][0]["content"], provenance="human")
        r = Generation(prompt_id=p.id, backend="dataset", model="hh-rlhf", params={}, sample_idx=1,
                       response=d["rejected"][0]["content"], provenance="human")
        pr = Pair(prompt_id=p.id, chosen_id=c.id, rejected_id=r.id, method="human")
        recs += [p, c, r, pr]
        items.append(pr.id)
    rel = Release(snapshot_hash=snapshot_hash("release", items), decision="auto_released",
                  sample_stats={"note": "bench: HH-RLHF human labels, no review"})
    corpus.insert(recs + [rel])
    with corpus.transaction() as con:
        con.executemany("INSERT INTO release_items VALUES (?, 'pair', ?)", [[rel.id, i] for i in items])
    return rel.id


def bench_rm(tmp: Path, s: dict) -> dict:
    from corpus import Corpus
    from train import train_model
    from train.data import pairs_from_jsonl
    from train.evaluate import run_eval

    pairs = pairs_from_jsonl(str(DATA / "hh_helpful_dev.jsonl"))
    train, test = pairs[: s["rm_train"]], pairs[-s["rm_test"]:]
    corpus = Corpus(tmp / "rm.duckdb")
    rel = release_hh_pairs(corpus, train)
    held = tmp / "held.jsonl"
    held.write_text("".join(json.dumps(p) + "\n" for p in test))
    t0 = time.perf_counter()
    from train.reward import RewardScorer

    base_acc = RewardScorer(_rm_from_base(tmp)).pair_accuracy(test)["rm_accuracy"]
    mid = train_model(corpus, "rm", base="embedded", out=tmp / "rm", release=rel, epochs=s["rm_epochs"],
                      max_steps=s["rm_steps"], batch_size=s["batch_size"], max_length=512, progress=False)
    train_s = time.perf_counter() - t0
    metrics = json.loads(corpus.query("SELECT metrics FROM models WHERE id = ?", [mid])[0]["metrics"])
    acc = run_eval(corpus, mid, pairs=str(held), progress=False)
    return {"rm_train_pairs": len(train), "rm_test_pairs": len(test), "rm_steps": metrics["steps"],
            "rm_samples_per_s": metrics.get("train_samples_per_second"), "rm_accuracy": acc["rm_accuracy"],
            "rm_accuracy_untrained_head": base_acc, "rm_wall_s": round(train_s, 1)}


def _rm_from_base(tmp: Path) -> str:
    """The untrained 135M with a fresh (seeded) reward head: the accuracy a trained RM must beat."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from backends.embedded import resolve_model

    path = tmp / "rm0"
    torch.manual_seed(0)
    m = AutoModelForSequenceClassification.from_pretrained(resolve_model(None), num_labels=1)
    m.save_pretrained(path)
    AutoTokenizer.from_pretrained(resolve_model(None)).save_pretrained(path)
    return str(path)


def bench_loop(tmp: Path, s: dict) -> dict:
    from corpus import Corpus
    from train.loop import run_loop
    from train.report import loop_rounds
    from train.synth import run_prompts

    bases = [DATA / "arena_hard_prompts.jsonl", DATA / "selfinstruct_seed_tasks.jsonl"]
    run_prompts(None, bases, s["loop_prompts"], out=tmp / "train_prompts.jsonl", seed=1)
    run_prompts(None, bases, s["eval_prompts"], out=tmp / "eval_prompts.jsonl", seed=2)
    corpus = Corpus(tmp / "loop.duckdb")
    t0 = time.perf_counter()
    out = run_loop(corpus, str(tmp / "train_prompts.jsonl"), str(ROOT / "prompts" / "instructions.yaml"), 2,
                   eval_prompts=str(tmp / "eval_prompts.jsonl"), auto_release=True, n=s["n"],
                   max_new_tokens=s["max_new_tokens"], max_steps=s["dpo_steps"], batch_size=s["batch_size"],
                   max_length=512, lr=5e-6, workdir=str(tmp / "loop"), progress=False)
    _, rows = loop_rounds(corpus, out["loop_id"])
    stages = corpus.query("SELECT round, result FROM loop_stages WHERE stage = 'filter' ORDER BY round")
    return {"loop_status": out["status"], "loop_wall_s": round(time.perf_counter() - t0, 1),
            "pairs_per_round": [json.loads(r["result"])["pairs"] for r in stages],
            "rounds": [{k: r[k] for k in ("round", "pass_rate", "all_pass_rate", "mean_words", "win_rate_vs_m0", "reward")}
                       for r in rows]}


def main() -> None:
    import torch
    from rich.console import Console
    from rich.table import Table

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="the small CPU version, even where a GPU exists")
    ap.add_argument("--skip-rm", action="store_true")
    ap.add_argument("--skip-loop", action="store_true")
    for k, v in GPU_SIZES.items():
        ap.add_argument("--" + k.replace("_", "-"), type=type(v), default=None)
    args = ap.parse_args()
    gpu = torch.cuda.is_available() and not args.cpu
    sizes = dict(GPU_SIZES if gpu else CPU_SIZES)
    sizes.update({k: getattr(args, k) for k in GPU_SIZES if getattr(args, k) is not None})
    machine = torch.cuda.get_device_name(0) if gpu else f"{os.cpu_count()}-core CPU, no GPU"
    print(f"bench/train.py on {machine} ({'GPU sizes' if gpu else 'CPU version: the smallest meaningful sizes'}): {sizes}")
    results: dict = {"machine": machine, "sizes": sizes}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        # each part's figures are printed as soon as they exist: a long CPU run that is cut off
        # still leaves the first part's numbers behind
        if not args.skip_rm:
            results["rm"] = bench_rm(tmp, sizes)
            print("rm:", json.dumps(results["rm"]), flush=True)
        if not args.skip_loop:
            results["loop"] = bench_loop(tmp, sizes)
            print("loop:", json.dumps(results["loop"]), flush=True)
    t = Table(title=f"bench/train.py: {machine}")
    t.add_column("figure")
    t.add_column("value", justify="right")
    for k, v in results.get("rm", {}).items():
        t.add_row(k, f"{v:.3f}" if isinstance(v, float) else str(v))
    loop = results.get("loop")
    if loop:
        t.add_row("loop wall (s)", str(loop["loop_wall_s"]))
        t.add_row("pairs per round", str(loop["pairs_per_round"]))
        for r in loop["rounds"]:
            f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
            t.add_row(f"M{r['round']} pass rate / all pass / mean words / win vs M0",
                      f"{f(r['pass_rate'])} / {f(r['all_pass_rate'])} / {f(r['mean_words'])} / {f(r['win_rate_vs_m0'])}")
    Console(width=120).print(t)
    print(json.dumps(results, default=str))


if __name__ == "__main__":
    main()
