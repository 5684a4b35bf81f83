"""Judge benchmarks; prints figures, asserts nothing.

1. Prefix KV-cache reuse on the hf backend with the embedded SmolLM2-135M-Instruct: judgments/s
   for the same greedy judge requests through the plain hf backend (batched, whole prompt
   prefilled per row) and through `PrefixReuseBackend` (rubric prefix prefilled once per batch).
2. A fully cached rerun of `run_judge` over 10,000 candidates: the corpus is built synthetically
   and judged once with a scripted FakeBackend (no model can judge 10,000 items here in
   benchmark time); then the same command is timed again, when every judgment already exists.
3. `--methods N`: the embedded judge on N HH items (pointwise helpfulness, and pairwise on the
   same items' chosen vs rejected answers, N/2 pairs in both orders = N judgments), three ways on
   the same requests: decoded without a schema (the hf backend before structured output),
   decoded under the JSON schema (backends/structured.py), and `method: logprob` (one forward
   pass). Prints parse failures, finish=length and judgments/s for each, and for pairwise how
   often the first slot wins.

    python bench/judge.py [--items 32] [--max-new-tokens 48] [--candidates 10000] [--skip-model]
    python bench/judge.py --parts methods --methods 100 [--judge-tokens 160] [--threads 1]
        [--which before,after,logprob] [--kinds pointwise,pairwise]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"


def _requests(n: int, max_new_tokens: int):
    from judge.render import pointwise_request
    from judge.rubric import JudgeSpec, load_rubric

    rubric = load_rubric(ROOT / "prompts" / "helpfulness.yaml")
    crit = rubric.criteria[0]
    spec = JudgeSpec(max_new_tokens=max_new_tokens)
    rows = [json.loads(line) for line in open(DATA / "hh_helpful_dev.jsonl")][:n]
    reqs = []
    for r in rows:
        question = r["prompt"].rsplit("Human:", 1)[-1].replace("Assistant:", "").strip()[:400]
        answer = " ".join(r["chosen"].split()[:60])
        reqs.append(pointwise_request(rubric, crit, spec, [{"role": "user", "content": question}], answer, 0, logprobs=True))
    return reqs


def bench_prefix(items: int, max_new_tokens: int, batch_size: int) -> None:
    import torch

    from backends.hf import HFBackend
    from judge.prefix_cache import PrefixReuseBackend

    torch.set_num_threads(os.cpu_count() or 1)
    hf = HFBackend(None, batch_size=batch_size, device="cpu")
    reqs = _requests(items, max_new_tokens)
    ids = [hf.prompt_ids(r) for r in reqs]
    from judge.prefix_cache import _common_prefix

    shared = _common_prefix(ids)
    print(f"prefix reuse: {items} judge requests, SmolLM2-135M-Instruct fp32 CPU, batch {batch_size}, "
          f"max_new_tokens {max_new_tokens}; prompt tokens mean {sum(map(len, ids)) / len(ids):.0f}, shared prefix {shared}")
    hf.generate(reqs[:2])  # warm-up
    t = time.perf_counter()
    plain = hf.generate(reqs)
    t_plain = time.perf_counter() - t
    pr = PrefixReuseBackend(hf)
    t = time.perf_counter()
    reused = pr.generate(reqs)
    t_reuse = time.perf_counter() - t
    same = sum(a.text == b.text for a, b in zip(plain, reused))
    print(f"  without prefix reuse: {items / t_plain:6.2f} judgments/s ({t_plain:.1f} s)")
    print(f"  with prefix reuse:    {items / t_reuse:6.2f} judgments/s ({t_reuse:.1f} s)")
    print(f"  speedup {t_plain / t_reuse:.2f}x; identical outputs {same}/{items}")


def _hh_items(n: int) -> list[dict]:
    rows = [json.loads(line) for line in open(DATA / "hh_helpful_dev.jsonl")][:n]
    out = []
    for r in rows:
        question = r["prompt"].rsplit("Human:", 1)[-1].replace("Assistant:", "").strip()[:400]
        out.append({"q": [{"role": "user", "content": question}], "chosen": " ".join(r["chosen"].split()[:60]),
                    "rejected": " ".join(r["rejected"].split()[:60])})
    return out


def bench_methods(n: int, judge_tokens: int, batch_size: int, which: set[str], only: set[str]) -> None:
    """Unconstrained vs schema-constrained decoding vs logprob judging, on the same requests."""
    import torch

    from backends import SamplingParams
    from backends.hf import HFBackend
    from judge import logprob
    from judge.parse import parse_pairwise, parse_pointwise
    from judge.prefix_cache import PrefixReuseBackend
    from judge.render import pairwise_request, pointwise_request
    from judge.rubric import JudgeSpec, load_rubric

    hf = HFBackend(None, batch_size=batch_size, device="cpu")
    judge = PrefixReuseBackend(hf)  # the judge's default hf path
    spec = JudgeSpec(max_new_tokens=judge_tokens)
    spec_one = SamplingParams(temperature=0.0, max_new_tokens=1)
    items = _hh_items(n)
    helpful = load_rubric(ROOT / "prompts" / "helpfulness.yaml")
    pair = load_rubric(ROOT / "prompts" / "pairwise.yaml")
    hc, pc = helpful.criteria[0], pair.criteria[0]
    pairs = [(it, a, b) for it in items[: n // 2] for a, b in ((it["chosen"], it["rejected"]), (it["rejected"], it["chosen"]))]
    kinds = {
        "pointwise": ([pointwise_request(helpful, hc, spec, it["q"], it["chosen"]) for it in items],
                      lambda t: parse_pointwise(t, hc.lo, hc.hi),
                      [logprob.pointwise_request(helpful, hc, it["q"], it["chosen"]) for it in items],
                      tuple(str(x) for x in range(hc.lo, hc.hi + 1))),
        "pairwise": ([pairwise_request(pair, pc, spec, it["q"], a, b) for it, a, b in pairs], parse_pairwise,
                     [logprob.pairwise_request(pair, pc, it["q"], a, b) for it, a, b in pairs], logprob.PAIR_LABELS),
    }
    print(f"judging methods: embedded SmolLM2-135M-Instruct fp32 CPU, {torch.get_num_threads()} torch threads, batch {batch_size}, judge max_new_tokens "
          f"{judge_tokens}, greedy, prefix reuse on; {n} HH items; load {_load()}")
    hf.generate([kinds["pointwise"][0][0].model_copy(update={"params": spec_one})])  # warm-up, grammar's tokenizer view
    for kind, (reqs, parse, lp_reqs, labels) in kinds.items():
        if kind not in only:
            continue
        runs = (("before", "decoded, no schema (before)", [r.model_copy(update={"json_schema": None}) for r in reqs]),
                ("after", "decoded, JSON schema (after)", reqs))
        for key, name, batch in runs:
            if key not in which and "decoded" not in which:
                continue
            t = time.perf_counter()
            comps = judge.generate(batch)
            dt = time.perf_counter() - t
            parsed = [parse(c.text) for c in comps]
            failed = sum(not p.ok for p in parsed)
            length = sum(c.finish_reason == "length" for c in comps)
            first = _first_slot(parsed) if kind == "pairwise" else ""
            print(f"  {kind:9s} {name:29s} {len(reqs)} judgments: parse failures {failed} ({failed / len(reqs):.0%}), "
                  f"finish=length {length}; {len(reqs) / dt:6.2f} judgments/s ({dt:.1f} s){first}; load {_load()}")
        if "logprob" not in which:
            continue
        t = time.perf_counter()
        scored = logprob.label_logprobs(judge, lp_reqs, labels)
        dt = time.perf_counter() - t
        bad = sum(not isinstance(r, dict) for r, _ in scored)
        first = ""
        if kind == "pairwise":
            p_a = [math.exp(r["A"]) / (math.exp(r["A"]) + math.exp(r["B"])) for r, _ in scored]
            debiased = [(p_a[i] + 1 - p_a[i + 1]) / 2 for i in range(0, len(p_a), 2)]  # chosen first, then second
            first = (f"; first slot wins {sum(p > 0.5 for p in p_a) / len(p_a):.0%}, mean P(A) {sum(p_a) / len(p_a):.3f}; "
                     f"order-averaged: chosen preferred in {sum(d > 0.5 for d in debiased)} of {len(debiased)} pairs")
        print(f"  {kind:9s} {'logprob (one forward pass)':29s} {len(lp_reqs)} judgments: failures {bad}; "
              f"{len(lp_reqs) / dt:6.2f} judgments/s ({dt:.1f} s){first}; load {_load()}")


def _first_slot(parsed: list) -> str:
    wins = [p.verdict["winner"] for p in parsed if p.ok]
    return f"; first slot wins {wins.count('A')} of {len(wins)} parsed" if wins else ""


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def bench_rerun(n: int) -> None:
    from backends.fake import FakeBackend
    from corpus import Corpus, Generation, Prompt
    from judge import run_judge

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Corpus(Path(tmp) / "bench.duckdb")
        per = 4
        recs = []
        for i in range(n // per):
            p = Prompt(messages=[{"role": "user", "content": f"Question {i}: how do I do thing {i}?"}])
            recs.append(p)
            for s in range(per):
                recs.append(Generation(prompt_id=p.id, backend="hf", model="m", params={}, sample_idx=s,
                                       response=f"Answer {s} to {i}: " + "word " * (5 + (i * 7 + s) % 40)))
        corpus.insert(recs)
        rubric = ROOT / "prompts" / "helpfulness.yaml"
        fake = FakeBackend("scripted-judge", default=lambda r: '{"rationale": "ok", "score": %d}' % (len(r.messages[1]["content"]) % 6))
        t = time.perf_counter()
        first = run_judge(corpus, str(rubric), backend=fake, progress=False)
        t_first = time.perf_counter() - t
        t = time.perf_counter()
        again = run_judge(corpus, str(rubric), backend=fake, progress=False)
        t_again = time.perf_counter() - t
        print(f"cached rerun: {n} candidates, rubric helpfulness (1 criterion), scripted FakeBackend judge")
        print(f"  first run: {first['judged']} judged in {t_first:.1f} s")
        print(f"  rerun:     {again['judged']} judged, {again['cached']} skipped in {t_again:.2f} s (target < 5 s)")
        corpus.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--candidates", type=int, default=10000)
    ap.add_argument("--skip-model", action="store_true", help="only the cached-rerun benchmark")
    ap.add_argument("--methods", type=int, default=100, help="HH items for the judging-methods comparison")
    ap.add_argument("--judge-tokens", type=int, default=160, help="max_new_tokens of the decoded judges (the rubric default)")
    ap.add_argument("--parts", default="prefix,rerun,methods", help="comma-separated: prefix, rerun, methods")
    ap.add_argument("--kinds", default="pointwise,pairwise", help="methods part: pointwise, pairwise")
    ap.add_argument("--threads", type=int, default=0, help="torch threads for the methods part (0: CPU cores)")
    ap.add_argument("--which", default="decoded,logprob", help="methods part: before (no schema), after (schema), decoded (both), logprob")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    print(f"machine: {os.cpu_count()} CPU cores; load average {_load()}")
    if not args.skip_model and "prefix" in parts:
        bench_prefix(args.items, args.max_new_tokens, args.batch_size)
    if not args.skip_model and "methods" in parts:
        import torch

        torch.set_num_threads(args.threads or os.cpu_count() or 1)
        bench_methods(args.methods, args.judge_tokens, args.batch_size, set(args.which.split(",")), set(args.kinds.split(",")))
    if "rerun" in parts:
        bench_rerun(args.candidates)


if __name__ == "__main__":
    main()
