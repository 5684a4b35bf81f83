"""Near-duplicate benchmark for filters.MinHashDedup: throughput (docs/s), per-document cost at
two sizes (it should stay flat: linear total cost), peak memory, and recall / precision on planted
near-duplicate pairs. Prints figures; asserts nothing.

    python bench/filters.py                 # 10,000 and 100,000 documents
    python bench/filters.py --sizes 20000   # any sizes
    python bench/filters.py --pipeline 20000  # the whole run_filters chain on 20,000 candidates

Each size runs in a fresh subprocess so its peak memory is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def synthetic(n: int, seed: int = 0, dup_frac: float = 0.1, vocab_size: int = 30_000):
    """n documents of 60-140 Zipf-distributed words; dup_frac of them are edited copies of another
    (1-12 word substitutions, deletions or insertions), so the planted pairs span Jaccard 0.5-1."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = np.array(["".join(rng.choice(letters, size=rng.integers(3, 10))) for _ in range(vocab_size)])
    probs = 1.0 / np.arange(1, vocab_size + 1) ** 1.05
    probs /= probs.sum()
    n_dup = int(n * dup_frac)
    n_orig = n - n_dup
    lengths = rng.integers(60, 141, size=n_orig)
    flat = rng.choice(vocab_size, size=int(lengths.sum()), p=probs)
    cuts = np.cumsum(lengths)[:-1]
    originals = [list(vocab[w]) for w in np.split(flat, cuts)]
    docs: list[list[str]] = list(originals)
    planted = {}  # copy index -> source index
    for k in range(n_dup):
        src = int(rng.integers(n_orig))
        words = list(originals[src])
        for _ in range(int(rng.integers(1, 13))):
            op, pos = rng.integers(3), int(rng.integers(len(words)))
            if op == 0:
                words[pos] = str(vocab[rng.integers(vocab_size)])
            elif op == 1 and len(words) > 10:
                del words[pos]
            else:
                words.insert(pos, str(vocab[rng.integers(vocab_size)]))
        planted[len(docs)] = src
        docs.append(words)
    order = rng.permutation(len(docs))          # copies are not all at the end
    where = {int(old): new for new, old in enumerate(order)}
    texts = [" ".join(docs[i]) for i in order]
    planted = {where[c]: where[s] for c, s in planted.items()}
    return texts, planted


def shingle_set(text: str, n: int = 3) -> set:
    w = text.split()
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def jaccard(a: str, b: str) -> float:
    x, y = shingle_set(a), shingle_set(b)
    return len(x & y) / len(x | y)


def run_one(data: Path, threshold: float, num_perm: int, index: str) -> dict:
    """Dedup the documents in `data` (written by a separate process, so that this process's peak
    memory is the documents plus the dedup, not the generator's scratch)."""
    from filters.base import Item, run_pipeline
    from filters.dedup import MinHashDedup

    saved = json.loads(data.read_text())
    texts, planted = saved["texts"], {int(k): v for k, v in saved["planted"].items()}
    del saved
    n = len(texts)
    items = [Item(id=str(i), kind="generation", text=t) for i, t in enumerate(texts)]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    f = MinHashDedup(threshold=threshold, num_perm=num_perm, index=index)
    t0, c0 = time.perf_counter(), time.process_time()
    run_pipeline([f], items)
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    flagged = {int(d.item.id): int(d.details["duplicate_of"]) for d in f.decisions}
    # a planted pair counts as found when the later of the two is flagged as a duplicate of the
    # earlier one or of another copy of the same source
    cluster = {}
    for c, s in planted.items():
        cluster.setdefault(s, {s}).add(c)
    true_pairs = [(c, s, jaccard(texts[c], texts[s])) for c, s in planted.items()]
    hi = [(c, s) for c, s, j in true_pairs if j >= threshold]
    found = 0
    for c, s in hi:
        later, earlier = max(c, s), min(c, s)
        if later in flagged and flagged[later] in cluster[s]:
            found += 1
        elif earlier in flagged and flagged[earlier] in cluster[s] and later in flagged:
            found += 1
    members = {m for ms in cluster.values() for m in ms}
    correct = sum(1 for d, o in flagged.items() if d in members and o in members)
    exact_ok = sum(1 for d, o in flagged.items() if jaccard(texts[d], texts[o]) >= threshold)
    return {
        "index": index, "docs": n, "seconds": round(secs, 2), "docs_per_s": round(n / secs),
        "us_per_doc": round(secs / n * 1e6, 1), "cpu_seconds": round(cpu, 2), "docs_per_cpu_s": round(n / cpu),
        "cpu_us_per_doc": round(cpu / n * 1e6, 1), "load_avg": round(os.getloadavg()[0], 1),
        "peak_rss_mb": round(rss_peak / 1024), "dedup_rss_mb": round((rss_peak - rss_before) / 1024),
        "planted_pairs_j_ge_threshold": len(hi), "recall": round(found / max(1, len(hi)), 4),
        "flagged": len(flagged), "precision_planted": round(correct / max(1, len(flagged)), 4),
        "precision_exact_jaccard": round(exact_ok / max(1, len(flagged)), 4),
    }


def run_pipeline_bench(n_candidates: int, per_prompt: int = 4) -> dict:
    """The whole `run_filters` chain (default config) over a fresh corpus of synthetic prompts,
    candidates and judge scores."""
    import tempfile as tf

    import pyarrow as pa

    from corpus import Corpus, Generation, Prompt
    from filters import run_filters

    texts, _ = synthetic(n_candidates + n_candidates // per_prompt, seed=1)
    rng = np.random.default_rng(1)
    with tf.TemporaryDirectory() as tmp:
        corpus = Corpus(Path(tmp) / "bench.duckdb")
        prompts = [Prompt(messages=[{"role": "user", "content": f"({i}) " + " ".join(t.split()[:30]) + "?"}])
                   for i, t in enumerate(texts[: n_candidates // per_prompt])]
        gens = [
            Generation(prompt_id=prompts[i // per_prompt].id, backend="bench", model="m", params={}, sample_idx=i % per_prompt,
                       response=texts[len(prompts) + i], finish_reason="length" if rng.random() < 0.05 else "stop")
            for i in range(n_candidates)
        ]
        corpus.insert(prompts + gens)
        scores = rng.random(n_candidates)
        tbl = pa.table({  # noqa: F841 (DuckDB reads it by name)
            "id": [g.id + ":q" for g in gens], "generation_id": [g.id for g in gens],
            "prompt_id": [g.prompt_id for g in gens], "score_norm": scores,
        })
        with corpus.transaction() as con:
            con.execute("INSERT INTO criterion_scores (id, generation_id, prompt_id, rubric, rubric_version, criterion, "
                        "score, score_norm, weight, n_judgments) SELECT id, generation_id, prompt_id, 'bench', '1', "
                        "'quality', score_norm * 4 + 1, score_norm, 1, 1 FROM tbl")
        t0, c0 = time.perf_counter(), time.process_time()
        summary = run_filters(corpus)
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0
        corpus.close()
    return {"candidates": n_candidates, "prompts": len(prompts), "seconds": round(secs, 2), "cpu_seconds": round(cpu, 2),
            "candidates_per_cpu_s": round(n_candidates / cpu), "sft": summary["sft"], "pairs": summary["pairs"],
            "flags": summary["flags"], "load_avg": round(os.getloadavg()[0], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--index", nargs="+", default=["numpy", "datasketch"], choices=["numpy", "datasketch"],
                    help="LSH index(es) to measure")
    ap.add_argument("--pipeline", type=int, metavar="N", help="instead: time the whole run_filters chain on N candidates")
    ap.add_argument("--make", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--one", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.pipeline:
        r = run_pipeline_bench(args.pipeline)
        print(f"run_filters, default config: {r['candidates']} candidates of {r['prompts']} prompts in {r['seconds']} s wall, "
              f"{r['cpu_seconds']} s CPU ({r['candidates_per_cpu_s']} candidates/s CPU; load avg {r['load_avg']}); "
              f"accepted_sft {r['sft']}, pairs {r['pairs']}, flags {r['flags']}")
        return
    if args.make:
        texts, planted = synthetic(args.make)
        print(json.dumps({"texts": texts, "planted": planted}))
        return
    if args.one:
        print(json.dumps(run_one(args.one, args.threshold, args.num_perm, args.index[0])))
        return
    print(f"near-dup benchmark: MinHash ({args.num_perm} perms, word 3-grams), LSH index {'/'.join(args.index)}, "
          f"Jaccard threshold {args.threshold}; {os.cpu_count()} CPUs")
    rows: dict[str, list[dict]] = {i: [] for i in args.index}
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "docs.json"
            with data.open("w") as f:
                subprocess.run([sys.executable, __file__, "--make", str(n)], stdout=f, check=True)
            for index in args.index:
                out = subprocess.run(
                    [sys.executable, __file__, "--one", str(data), "--threshold", str(args.threshold),
                     "--num-perm", str(args.num_perm), "--index", index],
                    capture_output=True, text=True, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                rows[index].append(r)
                print(f"{index:>10} {r['docs']:>7} docs: {r['docs_per_s']:>5} docs/s wall, "
                      f"{r['docs_per_cpu_s']:>5} docs/s CPU ({r['cpu_us_per_doc']} us/doc; load avg {r['load_avg']}); "
                      f"peak RSS {r['peak_rss_mb']} MB (dedup +{r['dedup_rss_mb']} MB); "
                      f"recall {r['recall']:.3f} on {r['planted_pairs_j_ge_threshold']} planted pairs with J>={args.threshold}; "
                      f"precision {r['precision_planted']:.3f} (planted) / {r['precision_exact_jaccard']:.3f} (exact J)")
    for index, rs in rows.items():
        if len(rs) < 2:
            continue
        a, b = rs[0], rs[-1]
        print(f"{index}: "
              f"per-document CPU cost {a['cpu_us_per_doc']} us at {a['docs']} vs {b['cpu_us_per_doc']} us at {b['docs']}: "
              f"x{b['cpu_us_per_doc'] / a['cpu_us_per_doc']:.2f} (1.00 = linear total cost)")


if __name__ == "__main__":
    main()
