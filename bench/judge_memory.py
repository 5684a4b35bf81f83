"""Peak memory of the judge CLIs on the embedded model, for few and many long-prompt judgments;
prints figures, asserts nothing.

Memory must stay flat in the number of judgments: a forward batch holds at most --judge-batch-size
rows and `backends.hf.MAX_BATCH_TOKENS` padded tokens, only the last position's logits are kept,
and judgments are stored as they are done instead of collected. Each run is a fresh subprocess,
so its peak RSS (ru_maxrss from wait4) is its own:

- `eval`: `python -m judge eval --rubric prompts/pairwise_logprob.yaml --labels FILE --limit N`
  (N pairs, both orders: 2N judgments), the command that peaked at 11.9 GB for N=8 (issue 20);
- `judge`: `python -m judge --rubric prompts/pairwise_logprob.yaml` on a corpus holding N pairs;
- `decoded`: `python -m judge --rubric prompts/helpfulness.yaml` (decoded pointwise judgments of
  the 2N answers; slow on a CPU, so not in the default parts).

The labelled pairs are built from ../shared/data/hh_helpful_train.jsonl (Anthropic HH-RLHF):
consecutive dialogues are joined into one conversation until it reaches a length drawn between
2,500 and 10,500 characters; with the two answers the judge prompts run from about 1,800 to
3,700 tokens, longer than JudgeBench's 791-2,940 (the issue's figure was measured on JudgeBench,
which is not shipped here).

Measured here (2 CPUs shared with other jobs, load average 17-21, 2 threads, batch size 16):
`eval` on 8 pairs (16 judgments): peak RSS 2,187 MB in 1,432 s (the issue: 11.9 GB). At that
load a run of 80 pairs takes hours; run it on an idle machine.

    python bench/judge_memory.py [--items 8,80] [--parts eval,judge] [--threads 2] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "hh_helpful_train.jsonl"
RUBRICS = {"eval": "prompts/pairwise_logprob.yaml", "judge": "prompts/pairwise_logprob.yaml",
           "decoded": "prompts/helpfulness.yaml"}


def long_pairs(n: int, seed: int = 0) -> list[dict]:
    """n preference rows {prompt: messages, chosen, rejected} with long conversations."""
    from corpus.pair_files import hh_messages

    rng = random.Random(seed)
    rows = [json.loads(line) for line in DATA.open()]
    out, k = [], 0
    while len(out) < n:
        target, messages = rng.uniform(2500, 10500), []
        while True:
            r = rows[k % len(rows)]
            k += 1
            msgs = hh_messages(r["prompt"])
            if not msgs or msgs[-1]["role"] != "user":
                continue
            messages += msgs
            if sum(len(m["content"]) for m in messages) >= target and r["chosen"].strip() != r["rejected"].strip():
                out.append({"prompt": messages, "chosen": r["chosen"], "rejected": r["rejected"]})
                break
            messages.append({"role": "assistant", "content": r["chosen"]})  # earlier turns: a whole exchange
    return out


def run_measured(argv: list[str], threads: int) -> tuple[int, float, float]:
    """(exit status, peak RSS in MB, wall seconds) of one CLI run in its own process."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", *argv], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - t0
    err = child.stderr.read().decode(errors="replace") if child.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        print(f"  exit {code}: {err.strip().splitlines()[-1][:300] if err.strip() else ''}")
    return code, usage.ru_maxrss / 1024, wall


def prompt_tokens(pairs: list[dict]) -> tuple[int, int]:
    """Shortest and longest pairwise judge prompt, in the embedded model's tokens."""
    from backends.hf import HFBackend
    from judge.logprob import pairwise_request
    from judge.rubric import load_rubric

    rubric = load_rubric(ROOT / RUBRICS["eval"])
    hf = HFBackend(None, device="cpu")
    lens = [len(hf.prompt_ids(pairwise_request(rubric, rubric.criteria[0], p["prompt"], p["chosen"], p["rejected"])))
            for p in pairs]
    return min(lens), max(lens)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", default="8,80", help="pairs per run, comma-separated (default 8,80)")
    ap.add_argument("--parts", default="eval,judge", help="eval, judge, decoded (comma-separated)")
    ap.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads of each run (default 2)")
    ap.add_argument("--batch-size", type=int, default=16, help="--judge-batch-size (default 16, the CLI's default)")
    args = ap.parse_args()
    sizes = [int(x) for x in args.items.split(",")]
    parts = args.parts.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        labels = Path(tmp) / "long_pairs.jsonl"
        pairs = long_pairs(max(sizes))
        labels.write_text("".join(json.dumps(p) + "\n" for p in pairs))
        lo, hi = prompt_tokens(pairs)
        print(f"{len(pairs)} pairs from {DATA.name}; pairwise judge prompts of {lo}-{hi} tokens; {args.threads} threads; "
              f"--judge-batch-size {args.batch_size}; {os.cpu_count()} CPUs")
        print(f"{'part':8} {'pairs':>5} {'judgments':>9} {'peak RSS MB':>11} {'wall s':>7}  load average (1/5/15 min)")
        for part in parts:
            for n in sizes:
                db = Path(tmp) / f"{part}-{n}.duckdb"
                flags = ["--quiet", "--judge-batch-size", str(args.batch_size), "--db", str(db), "--rubric", RUBRICS[part]]
                if part == "eval":
                    argv = ["judge", "eval", *flags, "--labels", str(labels), "--limit", str(n)]
                else:
                    from corpus import Corpus
                    from corpus.import_pairs import import_pairs

                    import_pairs(Corpus(db), labels, limit=n)
                    argv = ["judge", *flags]
                code, peak, wall = run_measured(argv, args.threads)
                judgments = 2 * n  # pairwise: n pairs in both orders; decoded pointwise: 2n answers
                load = "/".join(f"{x:.1f}" for x in os.getloadavg())
                print(f"{part:8} {n:>5} {judgments:>9} {peak:>11.0f} {wall:>7.0f}  {load}" + ("" if code == 0 else f"  (exit {code})"),
                      flush=True)


if __name__ == "__main__":
    main()
