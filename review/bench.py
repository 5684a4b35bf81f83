"""`python -m review.bench`: figures for the review server (prints them; asserts nothing).

Builds a corpus of N judged candidates, then measures: sampling the queue, a page load and a
verdict POST through the real server on loopback, alone and while a writer process inserts
generations in batches into the same file (the situation a reviewer meets while a batch job
runs).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WRITER = """
import sys, time
from corpus import BatchWriter, Corpus, Generation
c = Corpus(sys.argv[1]); end = time.monotonic() + float(sys.argv[2]); i = 0
with BatchWriter(c, every=64, seconds=1.0) as w:
    while time.monotonic() < end:
        w.add([Generation(prompt_id="bench", backend="bench", model="bench", params={}, sample_idx=i, response="x" * 200)])
        i += 1; time.sleep(0.002)
print(i)
"""


def build(db: Path, n: int) -> None:
    from corpus import Corpus, Generation, Judgment, Prompt

    c = Corpus(db)
    prompts = [Prompt(messages=[{"role": "user", "content": f"bench question {i}?"}]) for i in range(n)]
    gens = [Generation(prompt_id=p.id, backend="bench", model="m", params={}, response=f"answer {i}")
            for i, p in enumerate(prompts)]
    judg = [Judgment(target_id=g.id, judge=j, rubric="r", rubric_version="1", criterion=cr, score=(i * 7 + k) % 6)
            for i, g in enumerate(gens) for k, (j, cr) in enumerate([("a", "x"), ("b", "x"), ("a", "y")])]
    c.insert(prompts + gens + judg)
    c.execute(
        "INSERT INTO criterion_scores (id, generation_id, prompt_id, rubric, rubric_version, criterion, score, "
        "score_norm, weight, n_judgments) SELECT generation_id || criterion, generation_id, NULL, 'r', '1', criterion, "
        "avg(score), avg(score) / 5, 1, count(*) FROM (SELECT target_id AS generation_id, criterion, score FROM judgments) "
        "GROUP BY ALL"
    )


def timed_requests(url: str, token: str, rounds: int) -> tuple[list[float], list[float]]:
    import httpx

    with httpx.Client(base_url=url, timeout=300) as c:
        page = c.get("/login")
        nonce = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        c.post("/login", data={"token": token, "csrf_token": nonce})
        loads, posts = [], []
        for _ in range(rounds):
            t = time.perf_counter()
            r = c.get("/", follow_redirects=True)
            loads.append(time.perf_counter() - t)
            item = r.url.path.rsplit("/", 1)[-1]
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', r.text).group(1)
            t = time.perf_counter()
            c.post(f"/item/{item}/verdict", data={"verdict": "approve", "csrf_token": csrf})
            posts.append(time.perf_counter() - t)
    return loads, posts


def fmt(xs: list[float]) -> str:
    xs = sorted(xs)
    return f"median {statistics.median(xs) * 1000:.0f} ms, p90 {xs[int(0.9 * (len(xs) - 1))] * 1000:.0f} ms, max {xs[-1] * 1000:.0f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--sample", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    from corpus import Corpus
    from review import add_reviewer, sample_queue

    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as d:
        db = Path(d) / "bench.duckdb"
        t = time.perf_counter()
        build(db, args.items)
        print(f"built {args.items} judged candidates in {time.perf_counter() - t:.1f} s")
        c = Corpus(db)
        t = time.perf_counter()
        res = sample_queue(c, args.sample, population="judged")
        print(f"sample --size {args.sample} over {res['candidates']} candidates: {time.perf_counter() - t:.2f} s")
        token = add_reviewer(c, "bench")
        port = 8765
        server = subprocess.Popen([sys.executable, "-m", "review", "--db", str(db), "serve", "--port", str(port)], cwd=root)
        try:
            import httpx

            for _ in range(600):
                try:
                    httpx.get(f"http://127.0.0.1:{port}/login")
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            url = f"http://127.0.0.1:{port}"
            loads, posts = timed_requests(url, token, args.rounds)
            print(f"alone:        page load {fmt(loads)}; verdict POST {fmt(posts)}")
            writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db), "600"], cwd=root, stdout=subprocess.PIPE, text=True)
            try:
                loads, posts = timed_requests(url, token, args.rounds)
            finally:
                writer.terminate()
                writer.wait()
            print(f"with writer:  page load {fmt(loads)}; verdict POST {fmt(posts)}")
            n = c.query("SELECT count(*) AS n FROM reviews")[0]["n"]
            print(f"verdicts stored: {n} of {2 * args.rounds} posted")
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
