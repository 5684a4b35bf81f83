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
    python bench/loop.py --preset cpu     # SmolLM2-135M-Instruct, 8 replies per prompt, a narrow SFT warm start + 2 rounds of DPO, 200 + 100 eval prompts
    python bench/loop.py --preset cpu --n 4 --warm-start-types "" --warm-start-epochs none --length-balance false  # the preset before 2026-12-05
    python bench/loop.py --preset cpu --algos grpo --rounds 1 --from-corpus R1/dpo.duckdb  # GRPO on the same round 0
    # (R1: the work folder of a --algos dpo --rounds 1 run)
    python bench/loop.py --preset gpu     # 1000 prompts x 8 samples, 3 rounds, vLLM (--plan: check it, run nothing)

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
              eval_trained=200, eval_heldout=100, eval_max_new_tokens=384, eval_every_round=False, warm_start="", warm_start_types="",
              warm_start_epochs=None,
              min_margin=0.5, length_balance=False, ld_alpha=None, seed=0, save_steps=2, serve_adapters=False)
PRESETS = {
    # the plumbing on a 2-layer random model: figures mean nothing, the run must finish
    # and a random model passes no instruction, so its judge is a regex it passes about half the time
    "smoke": dict(model="tiny", prompts=24, n=3, max_new_tokens=12, eval_max_new_tokens=12, max_steps=2, lr=1e-4,
                  eval_trained=6, eval_heldout=4, rubric="smoke", min_margin=0.1),
    # SmolLM2-135M-Instruct on the CPU, one check per prompt. The eval: 200 unseen trained-type + 100
    # held-out-type prompts (a +10-point gain clears 0 in ~91% of paired bootstraps at 200), greedy,
    # 384 tokens; rollouts 192 tokens so min_words 120 can pass; 8 replies per prompt (a pair on 1.56x
    # the prompts 4 gave, so DPO teaches what only a long warm start taught, without its shortening);
    # an SFT warm start of 3 passes over M0's passing replies to the types that give almost no pair
    # (sparse), then DPO on length-balanced pairs pooled across rounds: the point of
    # docs/benchmarks.md's trade-off table that met all three targets (until 2026-12-05: n 4, a full
    # warm start of 40 steps, pairs by id: +15.5 at x0.38 of the length).
    # vLLM samples where it is installed (3x hf here).
    "cpu": dict(model="embedded", prompts=160, n=8, max_new_tokens=192, lr=1e-4, epochs=2.0, max_steps=40,
                algos="dpo", warm_start="sft", warm_start_types="sparse", warm_start_epochs=3.0, length_balance=True,
                backend="vllm-if-installed"),
    # the same code larger, sized for one call on a GPU machine (<= 8 min of GPU time, estimated from
    # vLLM's throughput on a 135M model: see docs/benchmarks.md): more prompts, n 8, 3 rounds
    # one vLLM engine for the whole run (--serve-adapters): each round's model a LoRA adapter on M0,
    # instead of an engine start per round (about a minute each with CUDA graphs)
    "gpu": dict(model="embedded", prompts=1000, n=8, max_new_tokens=256, rounds=3, lr=5e-5, epochs=1.0, max_steps=120,
                algos="dpo", warm_start="sft", backend="vllm", batch_size=8, prompts_per_step=4, eval_every_round=True,
                serve_adapters=True),
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

# `truncated` is left at the filters' default (a reply cut at the cap may only be a pair's rejected
# side), except in the smoke preset: a random model never stops, so every reply is cut
FILTERS = """\
prompts: {exact_dedup: true, near_dedup: null, decontaminate: null}
responses: {empty: true, TRUNCATEDrefusal: null, repetition: null, language: null,
            length: {min_words: 1}, exact_dedup: true, near_dedup: null, decontaminate: null}
sft: {min_score: 1.0}
pairs: {method: best_worst, min_margin: MARGIN, length_balance: BALANCE}
"""


def filters_yaml(s: dict) -> str:
    return FILTERS.replace("MARGIN", str(s["min_margin"])).replace("BALANCE", str(s["length_balance"]).lower()).replace("TRUNCATED", "truncated: null, " if s["model"] == "tiny" else "")


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
    from train.report import loop_rounds, plot_rounds

    (work / "filters.yaml").write_text(filters_yaml(s))
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
    out = run_loop(corpus, str(prompts), str(rubric), s["rounds"], **loop_options(algo, work, s), progress=True)
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
            "png": str(work / f"{algo}.png"), "stages": stages, "budget": out.get("budget") or [],
            "engine_starts": out.get("engine_starts", 0)}


def loop_options(algo: str, work: Path, s: dict) -> dict:
    """The bench settings as `run_loop` options (a LoopConfig checks them: --plan builds one)."""
    from train.policy import PolicyBackend

    return dict(base=s["base"], workdir=str(work / f"{algo}-loop"), auto_release=True, algo=algo, n=s["n"],
                temperature=s["temperature"], max_new_tokens=s["max_new_tokens"], lora=s["lora"], lr=s["lr"],
                beta=s["beta"], ld_alpha=s["ld_alpha"] if algo == "dpo" else None, epochs=s["epochs"], max_steps=s["max_steps"], batch_size=s["batch_size"],
                prompts_per_step=s["prompts_per_step"], filters_config=str(work / "filters.yaml"),
                heldout_types=s["heldout_types"].split(",") if s["heldout_types"] else None,
                eval_prompts=str(work / "eval_prompts.jsonl"), eval_max_new_tokens=s["eval_max_new_tokens"],
                eval_every_round=s["eval_every_round"], warm_start=(s["warm_start"] or None) if algo == "dpo" else None,
                warm_start_types=(s["warm_start_types"] or None) if algo == "dpo" else None,
                warm_start_epochs=s["warm_start_epochs"] if algo == "dpo" else None,
                seed=s["seed"], save_steps=s["save_steps"], policy=PolicyBackend(s["backend"]),
                serve_adapters=s["serve_adapters"])


def base_key(base: str) -> str:
    """A base prompt's place without the folder it was read from ('arena_hard_prompts.jsonl:231'): the
    split must not depend on where the checkout lives. (Runs before 2026-12-05 hashed the whole
    path, so their split was that of a checkout beside /work/runs/shared.)"""
    path, _, line = base.rpartition(":")
    return f"{Path(path).name}:{line}"


def split_prompts(work: Path, s: dict) -> dict:
    """Training prompts and an eval set on base prompts never trained on: bases fall into eval or
    train by a hash (a fifth to eval), so no base prompt is in both; the eval holds s["eval_trained"]
    prompts of the trained check types and s["eval_heldout"] of the held-out types."""
    from corpus import content_id
    from train.synth import DEFAULT_TEMPLATES, load_templates, synthesize

    held = set(s["heldout_types"].split(",")) if s["heldout_types"] else set()
    bases = [DATA / "arena_hard_prompts.jsonl", DATA / "selfinstruct_seed_tasks.jsonl"]
    # held-out types are 2 of 9 and eval bases a fifth: draw enough for every share
    pool = synthesize(bases, max(3000, 6 * (s["prompts"] + s["eval_trained"]) + 25 * s["eval_heldout"]),
                      load_templates(DEFAULT_TEMPLATES), s["seed"], s["max_checks"])
    train, ev_trained, ev_held = [], [], []
    for p in pool:
        types = {c["type"] for c in p.meta["checks"]}
        to_eval = int(content_id("eval-base", base_key(p.meta["base"]))[:8], 16) % 5 == 0
        if types & held:
            if to_eval and len(ev_held) < s["eval_heldout"] and types <= held:
                ev_held.append(p)
        elif to_eval:
            if len(ev_trained) < s["eval_trained"]:
                ev_trained.append(p)
        elif len(train) < s["prompts"]:
            train.append(p)
    for name, ps in (("prompts.jsonl", train), ("eval_prompts.jsonl", ev_trained + ev_held)):
        with open(work / name, "w", encoding="utf-8") as f:
            for p in ps:
                f.write(json.dumps({"messages": p.messages, **p.meta}, ensure_ascii=False) + "\n")
    by_type: dict[str, int] = {}
    for p in train:
        for c in p.meta["checks"]:
            by_type[c["type"]] = by_type.get(c["type"], 0) + 1
    return {"train": len(train), "eval_trained": len(ev_trained), "eval_heldout": len(ev_held), "train_types": by_type}


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
    # within 1.5x both ways: a gain bought by replies much longer, or much shorter, than M0's is a
    # change of length, not only of instruction following
    ok_len = ratio is not None and 1 / 1.5 <= ratio <= 1.5
    side = "" if ok_len or ratio is None else (" (longer)" if ratio > 1.5 else " (shorter)")
    # not part of the target, beside it: the mean of replies that ended on their own (a reply run to
    # the eval cap, often a loop, weighs in the mean above as however long the cap let it be)
    fin = ""
    if last.get("finished_words") and m0.get("finished_words"):
        fin = (f" [finished replies only: x{last['finished_words'] / m0['finished_words']:.2f}; "
               f"cut at the eval cap {m0['cut_rate']:.0%} -> {last['cut_rate']:.0%}]")
    return (f"target: gain>=10pt & CI>0 {'MET' if ok_gain else 'not met'}; held-out types not worse "
            f"{'MET' if ok_held else 'not met'}; length x{ratio:.2f} within 1.5x {'MET' if ok_len else 'not met'}{side}{fin}"
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


def resolve_backend(name: str) -> str:
    if name != "vllm-if-installed":
        return name
    import importlib.util

    return "vllm" if importlib.util.find_spec("vllm") is not None else "hf"


def plan(s: dict, work: Path) -> dict:
    """--plan: everything a run checks before it samples: the settings as a LoopConfig (bad values
    fail here, one line), the prompt split, and the round's sizes. Loads no model."""
    from train.loop import LoopConfig

    rubric = ROOT / s["rubric"] if s["rubric"] != "smoke" else work / "smoke_rubric.yaml"
    if s["rubric"] == "smoke":
        rubric.write_text(SMOKE_RUBRIC)
    (work / "filters.yaml").write_text(filters_yaml(s))
    for algo in s["algos"].split(","):  # LoopConfig and PolicyBackend check every value they get
        LoopConfig(prompts=str(work / "prompts.jsonl"), rubric=str(rubric), rounds=s["rounds"], **loop_options(algo, work, s))
    return {"rollouts_per_round": s["prompts"] * s["n"], "rollout_token_cap": s["max_new_tokens"],
            "eval_prompts": s["eval_trained"] + s["eval_heldout"], "eval_token_cap": s["eval_max_new_tokens"],
            "evals": (s["rounds"] + 1) if s["eval_every_round"] else 2, "rounds": s["rounds"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="smoke")
    ap.add_argument("--workdir", default=None, help="keep corpora, models and PNGs here (default: a temp folder)")
    ap.add_argument("--from-corpus", default=None,
                    help="start each algorithm's corpus as a copy of this one (a corpus where a run on the same prompts "
                         "finished round 0 up to review): round 0's replies and verdicts are reused, not generated again")
    ap.add_argument("--plan", action="store_true", help="check the settings and write the prompt split, then stop "
                    "(no model is loaded): what a GPU call would run")
    optional = ("beta", "ld_alpha", "warm_start_epochs")  # numbers or "none" (the trainer's default)
    for k, v in {**COMMON, **PRESETS["cpu"]}.items():
        kind = type(v) if v is not None and not isinstance(v, bool) and k not in optional else str
        ap.add_argument("--" + k.replace("_", "-"), type=kind, default=None)
    a = ap.parse_args(argv)
    s = {**COMMON, **PRESETS[a.preset], "from_corpus": a.from_corpus}
    if a.from_corpus:
        _check_round0_corpus(ap, a.from_corpus)
    for k in s:
        v = getattr(a, k, None)
        if v is not None:
            s[k] = (v.lower() in ("1", "true", "yes")) if isinstance(COMMON.get(k), bool) else v
    for k in optional:  # argparse takes them as text: a number, or none
        try:
            s[k] = None if s[k] is None or str(s[k]).lower() == "none" else float(s[k])
        except ValueError:
            ap.error(f"--{k.replace('_', '-')} {s[k]}: give a number, e.g. {3 if k == 'warm_start_epochs' else 0.1}, or none")
    for k in ("prompts", "n", "eval_trained", "eval_heldout", "max_new_tokens", "eval_max_new_tokens", "rounds"):
        if s[k] < 1:
            ap.error(f"--{k.replace('_', '-')} {s[k]}: give a positive number")
    s["backend"] = resolve_backend(s["backend"])
    work = Path(a.workdir or tempfile.mkdtemp(prefix="bench-loop-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    s["base"] = (str(work / "tiny") if s["model"] == "tiny" else None) if s["model"] in ("tiny", "embedded") else s["model"]
    from corpus import UserError

    if not DATA.is_dir():
        ap.error(f"{DATA}: no such folder; the bench draws its prompts from ../shared/data beside the checkout")
    try:
        split = split_prompts(work, s)
    except UserError as e:
        ap.error(str(e))
    print(f"preset {a.preset}: {json.dumps(split)}; settings {json.dumps(s)}")
    if a.plan:
        try:
            sizes = plan(s, work)
        except UserError as e:
            ap.error(str(e))
        print(f"plan: {json.dumps(sizes)}; nothing run (--plan)")
        return 0
    if s["model"] == "tiny":
        tiny_model(work / "tiny")
    import torch

    print(f"machine: {os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
          f"torch threads={torch.get_num_threads()}, load average at start {os.getloadavg()}")
    results = [run_algo(algo, work, work / "prompts.jsonl", s) for algo in s["algos"].split(",")]
    print(f"\nload average at the end {os.getloadavg()}; work folder {work}")
    for r in results:
        print_result(r, s)
    return 0


def print_result(r: dict, s: dict) -> None:
    from rich.console import Console

    from train.report import budget_table, type_table

    print(f"\n== {r['algo']}: wall {r['wall_s'] / 60:.1f} min (this invocation; all finished runs in the corpus: "
          f"{r['recorded_s'] / 60:.1f} min), generated tokens {r['tokens']} "
          f"(of which GRPO rollouts {r['grpo_tokens']}); vLLM engine starts {r['engine_starts']}; curve {r['png']}")
    print(f"{'M':>3} {'rollout tokens':>14} {'trained types pass':>24} {'vs M0':>26} {'held-out types pass':>24} {'vs M0':>26} {'words':>7} {'cut':>5} {'fin.w':>6} {'loop':>5}  note")
    for row in r["rows"]:
        words = f"{row['words'][0]:.1f}" if row.get("words") else "-"
        # cut: share of eval replies that ran to the eval cap; fin.w: mean words of the others
        cut = f"{row['cut_rate']:.2f}" if row.get("cut_rate") is not None else "-"
        fin = f"{row['finished_words']:.1f}" if row.get("finished_words") is not None else "-"
        loop = f"{row['looping_rate']:.2f}" if row.get("looping_rate") is not None else "-"  # in a degenerate loop
        note = ("not trained: " + row["skipped"][:60]) if row.get("skipped") else ("not evaluated" if row.get("not_evaluated") else "")
        print(f"{row['round']:>3} {row['tokens_spent']:>14} {_ci(row['trained_pass']):>24} "
              f"{_ci(row['trained_delta'], True) if row['round'] else '':>26} "
              f"{_ci(row['heldout_pass']):>24} {_ci(row['heldout_delta'], True) if row['round'] else '':>26} {words:>7} {cut:>5} {fin:>6} {loop:>5}  {note}")
    ev = [row for row in r["rows"] if row.get("trained_pass")]
    print(verdict(ev) if len(ev) > 1 else "target: - (one evaluated model)")
    trained = set(r["stages"].get((0, "eval_base"), {}).get("trained_types") or [])
    print("| check type | group | n | M0 | last |\n|---|---|---|---|---|")
    for t in type_table(r["rows"], trained):
        print(f"| {t['type']} | {t['group']} | {t['n']} | {t['m0']:.3f} | {t['last']:.3f} (M{t['last_round']}) |")
    for t in range(s["rounds"]):
        tr = r["stages"].get((t, "train"), {})
        print(f"   round {t}: trained={tr.get('trained')} rows={tr.get('rows', tr.get('prompts'))} "
              f"by round={tr.get('rows_by_round')} warm start={tr.get('warm_start')} release={str(tr.get('release_id'))[:12]}")
    if r["budget"]:
        Console(width=140).print(budget_table(r["budget"]))


if __name__ == "__main__":
    raise SystemExit(main())
