"""The learning curve: does the model-trains-model loop make the model better, measurably?

Runs `train prompts` (checkable instructions on base prompts from ../shared/data), then the
whole loop once per algorithm (DPO, GRPO; SFT with --algos) with the engine's own verifiers
(prompts/instructions.yaml) as the judge and auto-release, and prints the rounds side by side:
held-out pass rate (all checks) on unseen base prompts of the trained check types and on check
types never trained on, each with its 95% bootstrap interval and the paired difference to M0,
mean length, wall time and generated tokens. Asserts nothing; it prints the issue's target
(M_last >= M0 + 10 points with the interval's lower bound > 0, held-out types not worse beyond
their interval, length within 1.5x) as met or not.

    python bench/loop.py --preset smoke   # a tiny random model: the plumbing, a few minutes
    python bench/loop.py --preset cpu     # SmolLM2-135M-Instruct, 2 rounds of DPO (82 min, idle 2-core CPU)
    python bench/loop.py --preset cpu --algos grpo --rounds 1 --from-corpus R1/dpo.duckdb  # GRPO on the same round 0
    # (R1: the work folder of a --algos dpo --rounds 1 run)
    python bench/loop.py --preset gpu     # 240 prompts x 8 samples, 3 rounds, vLLM rollouts

Any preset value can be overridden (--prompts 40 --rounds 1 ...).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"

COMMON = dict(rubric="prompts/instructions.yaml", rounds=2, algos="dpo,grpo", heldout_types="include_word,ends_with", max_checks=1, temperature=1.0,
              lora=True, beta=None, epochs=1.0, max_steps=-1, batch_size=4, prompts_per_step=2, backend="hf",
              eval_limit=None, min_margin=0.5, seed=0, save_steps=2)
PRESETS = {
    # the plumbing on a 2-layer random model: figures mean nothing, the run must finish
    # and a random model passes no instruction, so its judge is a regex it passes about half the time
    "smoke": dict(model="tiny", prompts=24, n=3, max_new_tokens=12, max_steps=2, lr=1e-4, eval_limit=6,
                  rubric="smoke", min_margin=0.1),
    # SmolLM2-135M-Instruct on the CPU; one check per prompt keeps a 135M model's pass rate off the floor
    # (the settings of the curve in docs/benchmarks.md: 240 prompts leave 41 + 52 held-out eval prompts);
    # DPO only, which fits the 90 minutes: --algos dpo,grpo doubles it, --from-corpus compares at round 1
    "cpu": dict(model="embedded", prompts=240, n=4, max_new_tokens=96, lr=1e-4, eval_limit=60, epochs=2.0, max_steps=40,
                algos="dpo"),
    "gpu": dict(model="embedded", prompts=240, n=8, max_new_tokens=256, rounds=3, lr=5e-5, eval_limit=100,
                backend="vllm", batch_size=8, prompts_per_step=4),
}

SMOKE_RUBRIC = """\
name: starts_early
task: Reply to the user.
criteria:
  - name: starts_early
    kind: verifier
    description: the reply starts with a letter from a to m
    verifier: {type: regex, pattern: "^\\\\s*[a-mA-M]"}
judges: []
"""

FILTERS = """\
prompts: {exact_dedup: true, near_dedup: null, decontaminate: null}
responses: {empty: true, truncated: null, refusal: null, repetition: null, language: null,
            length: {min_words: 1}, exact_dedup: true, near_dedup: null, decontaminate: null}
sft: {min_score: 1.0}
pairs: {method: best_worst, min_margin: MARGIN}
"""


def tiny_model(out: Path) -> str:
    """The tests' tiny random model (2 layers, SmolLM2's tokenizer), for the smoke preset."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from backends.embedded import embedded_model_dir

    if (out / "config.json").exists():
        return str(out)
    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def run_algo(algo: str, work: Path, prompts: Path, s: dict) -> dict:
    from corpus import Corpus
    from train.loop import run_loop
    from train.policy import PolicyBackend
    from train.report import loop_rounds, plot_rounds

    (work / "filters.yaml").write_text(FILTERS.replace("MARGIN", str(s["min_margin"])))
    rubric = ROOT / s["rubric"]
    if s["rubric"] == "smoke":
        rubric = work / "smoke_rubric.yaml"
        rubric.write_text(SMOKE_RUBRIC)
    db = work / f"{algo}.duckdb"
    if s.get("from_corpus") and not db.exists():
        # start from a copy of a corpus in which a run on the same prompts finished round 0's generate,
        # judge and review: this loop finds those replies and verdicts stored and trains on them, so two
        # algorithms can be compared on the same round-0 data without generating it twice
        shutil.copyfile(s["from_corpus"], db)
    corpus = Corpus(db)
    t0 = time.perf_counter()
    out = run_loop(corpus, str(prompts), str(rubric), s["rounds"], base=s["base"],
                   workdir=str(work / f"{algo}-loop"), auto_release=True, algo=algo, n=s["n"],
                   temperature=s["temperature"], max_new_tokens=s["max_new_tokens"], lora=s["lora"], lr=s["lr"],
                   beta=s["beta"], epochs=s["epochs"], max_steps=s["max_steps"], batch_size=s["batch_size"],
                   prompts_per_step=s["prompts_per_step"], filters_config=str(work / "filters.yaml"),
                   heldout_types=s["heldout_types"].split(",") if s["heldout_types"] else None,
                   eval_limit=s["eval_limit"], seed=s["seed"], save_steps=s["save_steps"], policy=PolicyBackend(s["backend"]), progress=True)
    wall = time.perf_counter() - t0
    _, rows = loop_rounds(corpus, out["loop_id"])
    plot_rounds(rows, str(work / f"{algo}.png"))
    gen_tokens = corpus.query("SELECT coalesce(sum(completion_tokens), 0) AS n FROM generations")[0]["n"]
    grpo_tokens = sum(json.loads(m["metrics"]).get("rollout_tokens", 0)
                      for m in corpus.query("SELECT metrics FROM models WHERE kind = 'grpo'"))
    # a resumed bench's wall time covers only its own invocation; the corpus knows every finished run's
    recorded = corpus.query("SELECT coalesce(sum(epoch(ended_at - started_at)), 0) AS s FROM runs "
                            "WHERE ended_at IS NOT NULL AND status = 'ok'")[0]["s"]
    stages = {(r["round"], r["stage"]): json.loads(r["result"]) for r in corpus.query(
        "SELECT round, stage, result FROM loop_stages WHERE loop_id = ?", [out["loop_id"]])}
    corpus.close()
    return {"algo": algo, "rows": rows, "wall_s": wall, "recorded_s": recorded, "tokens": gen_tokens + grpo_tokens, "grpo_tokens": grpo_tokens,
            "png": str(work / f"{algo}.png"), "stages": stages}


def _ci(v: list | None, signed: bool = False) -> str:
    if not v:
        return "-"
    f = "+.3f" if signed else ".3f"
    return f"{v[0]:{f}} [{v[1]:{f}}, {v[2]:{f}}]"


def verdict(rows: list[dict]) -> str:
    last, m0 = rows[-1], rows[0]
    d, h = last.get("trained_delta"), last.get("heldout_delta")
    ok_gain = bool(d) and d[0] >= 0.10 and d[1] > 0
    ok_held = not h or h[2] >= 0  # not worse beyond the interval: the interval reaches 0 or above
    ratio = (last["words"][0] / m0["words"][0]) if last.get("words") and m0.get("words") and m0["words"][0] else None
    ok_len = ratio is not None and ratio <= 1.5
    return (f"target: gain>=10pt & CI>0 {'MET' if ok_gain else 'not met'}; held-out types not worse "
            f"{'MET' if ok_held else 'not met'}; length x{ratio:.2f} {'MET' if ok_len else 'not met'}"
            if ratio is not None else "target: -")


def _check_round0_corpus(ap: argparse.ArgumentParser, path: str) -> None:
    """--from-corpus must hold round 0's replies alone: a later round's replies would be pooled into
    round 0's pairs and the comparison would not be fair. Read through the corpus's own read-only open,
    which words a missing, locked or non-corpus file as one line."""
    from corpus import Corpus, UserError

    try:
        models = Corpus(path, create=False, read_only=True).query(
            "SELECT count(DISTINCT model) AS n FROM generations WHERE provenance = 'model'")[0]["n"]
    except UserError as e:
        ap.error(f"--from-corpus: {e}")
    if models > 1:
        ap.error(f"--from-corpus {path}: holds replies of {models} models, not round 0's alone; "
                 "copy a corpus from a run with --rounds 1")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="smoke")
    ap.add_argument("--workdir", default=None, help="keep corpora, models and PNGs here (default: a temp folder)")
    ap.add_argument("--from-corpus", default=None,
                    help="start each algorithm's corpus as a copy of this one (a corpus where a run on the same prompts "
                         "finished round 0 up to review): round 0's replies and verdicts are reused, not generated again")
    for k, v in {**COMMON, **PRESETS["cpu"]}.items():
        ap.add_argument("--" + k.replace("_", "-"), type=type(v) if v is not None and not isinstance(v, bool) else str,
                        default=None)
    a = ap.parse_args(argv)
    s = {**COMMON, **PRESETS[a.preset], "from_corpus": a.from_corpus}
    if a.from_corpus:
        _check_round0_corpus(ap, a.from_corpus)
    for k in s:
        v = getattr(a, k, None)
        if v is not None:
            s[k] = (v.lower() in ("1", "true", "yes")) if isinstance(COMMON.get(k), bool) else v
    if s["beta"] is not None:
        s["beta"] = float(s["beta"])
    work = Path(a.workdir or tempfile.mkdtemp(prefix="bench-loop-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    s["base"] = tiny_model(work / "tiny") if s["model"] == "tiny" else (None if s["model"] == "embedded" else s["model"])

    from train.synth import run_prompts

    prompts = work / "prompts.jsonl"
    bases = [DATA / "arena_hard_prompts.jsonl", DATA / "selfinstruct_seed_tasks.jsonl"]
    made = run_prompts(None, bases, s["prompts"], seed=s["seed"], max_checks=s["max_checks"], out=prompts)
    print(f"preset {a.preset}: {made['prompts']} prompts {made['checks_by_type']}; settings {json.dumps(s)}")
    print(f"machine: {os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
          f"torch threads={__import__('torch').get_num_threads()}, load average at start {os.getloadavg()}")

    results = [run_algo(algo, work, prompts, s) for algo in s["algos"].split(",")]
    print(f"\nload average at the end {os.getloadavg()}; work folder {work}")
    for r in results:
        print(f"\n== {r['algo']}: wall {r['wall_s'] / 60:.1f} min (this invocation; all finished runs in the corpus: "
              f"{r['recorded_s'] / 60:.1f} min), generated tokens {r['tokens']} "
              f"(of which GRPO rollouts {r['grpo_tokens']}); curve {r['png']}")
        print(f"{'M':>3} {'trained types pass':>24} {'vs M0':>26} {'held-out types pass':>24} {'vs M0':>26} {'words':>7}  note")
        for row in r["rows"]:
            words = f"{row['words'][0]:.1f}" if row.get("words") else "-"
            note = ("not trained: " + row["skipped"][:60]) if row.get("skipped") else ""
            print(f"{row['round']:>3} {_ci(row['trained_pass']):>24} {_ci(row['trained_delta'], True) if row['round'] else '':>26} "
                  f"{_ci(row['heldout_pass']):>24} {_ci(row['heldout_delta'], True) if row['round'] else '':>26} {words:>7}  {note}")
        print(verdict(r["rows"]))
        for t in range(s["rounds"]):
            tr = r["stages"].get((t, "train"), {})
            print(f"   round {t}: trained={tr.get('trained')} rows/prompts={tr.get('rows', tr.get('prompts'))} "
                  f"release={str(tr.get('release_id'))[:12]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
