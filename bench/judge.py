"""Judge benchmarks; prints figures, asserts nothing.

1. Prefix KV-cache reuse on the hf backend with the embedded SmolLM2-135M-Instruct: judgments/s
   for the same greedy judge requests through the plain hf backend (batched, whole prompt
   prefilled per row) and through `PrefixReuseBackend` (rubric prefix prefilled once per batch).
2. A fully cached rerun of `run_judge` over 10,000 candidates: the corpus is built synthetically
   and judged once with a scripted FakeBackend (no model can judge 10,000 items here in
   benchmark time); then the same command is timed again, when every judgment already exists.

    python bench/judge.py [--items 32] [--max-new-tokens 48] [--candidates 10000] [--skip-model]
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
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} CPU cores, torch threads default")
    if not args.skip_model:
        bench_prefix(args.items, args.max_new_tokens, args.batch_size)
    bench_rerun(args.candidates)


if __name__ == "__main__":
    main()
