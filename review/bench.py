"""`python -m review.bench`: figures for the review server (prints them; asserts nothing).

Builds a corpus of N judged candidates, then measures through the real server on loopback:
- writer: a page load and a verdict POST, alone and while a writer process inserts generations
  in batches into the same file (the situation a reviewer meets while a batch job runs);
- flood: a logged-in reviewer's page load, idle and while 4 threads post wrong tokens to /login
  as fast as they can, once with the default login rate limits and once with the limits lifted
  (so every attempt pays its scrypt: the hash must not stall the reviewer either way); and the
  login time for a known token id with a wrong secret against an unknown id.
`--old-code DIR` also runs the flood against another checkout's server (e.g. /work/main) as the
"before" figure. Every figure line carries the load average: on a shared machine it matters.
"""

from __future__ import annotations

import argparse
import os
import random
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


def machine() -> str:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"[load {load}; {os.cpu_count()} cpus, pinned to {len(os.sched_getaffinity(0))}]"


def start_server(db: Path, port: int, root: Path, *flags: str) -> subprocess.Popen:
    import httpx

    server = subprocess.Popen([sys.executable, "-m", "review", "--db", str(db), "serve", "--port", str(port), *flags],
                              cwd=root, stdout=subprocess.DEVNULL)
    for _ in range(600):
        try:
            httpx.get(f"http://127.0.0.1:{port}/login")
            return server
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError("review server did not start")


def page_loads(url: str, token: str, rounds: int) -> list[float]:
    """A logged-in reviewer opens the queue (GET / and its redirect to the item page) `rounds` times."""
    import httpx

    with httpx.Client(base_url=url, timeout=300) as c:
        page = c.get("/login")
        nonce = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        assert c.post("/login", data={"token": token, "csrf_token": nonce}).status_code == 303
        out = []
        for _ in range(rounds):
            t = time.perf_counter()
            assert c.get("/", follow_redirects=True).status_code == 200
            out.append(time.perf_counter() - t)
    return out


FLOOD = """
import json, random, re, sys, threading, time
import httpx
url, seconds, threads = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
codes, end = [], time.monotonic() + seconds
def attack():
    with httpx.Client(base_url=url, timeout=300) as c:
        nonce = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/login").text).group(1)
        while time.monotonic() < end:
            token = f"{random.getrandbits(48):012x}.{random.getrandbits(64):x}"
            codes.append(c.post("/login", data={"token": token, "csrf_token": nonce}).status_code)
workers = [threading.Thread(target=attack) for _ in range(threads)]
[w.start() for w in workers]; [w.join() for w in workers]
print(json.dumps({str(k): codes.count(k) for k in sorted(set(codes))}))
"""


def flood_figures(label: str, url: str, token: str, rounds: int, root: Path, threads: int = 4) -> None:
    """The flood runs in its own process (4 threads of wrong tokens with random ids), so its
    client work does not share a GIL with the reviewer being timed."""
    import json

    idle = page_loads(url, token, rounds)
    print(f"{label} idle:      page load {fmt(idle)} {machine()}")
    seconds = max(5.0, 2 + 3 * rounds * statistics.median(idle))
    attacker = subprocess.Popen([sys.executable, "-c", FLOOD, url, str(seconds), str(threads)], cwd=root,
                                stdout=subprocess.PIPE, text=True)
    time.sleep(1.5)  # the flood reaches its steady state
    busy = page_loads(url, token, rounds)
    out, _ = attacker.communicate()
    codes = json.loads(out)
    rate = sum(codes.values()) / seconds
    ratio = statistics.median(busy) / statistics.median(idle)
    print(f"{label} {threads}-thread login flood: page load {fmt(busy)}; {ratio:.2f}x idle median; "
          f"flood {rate:.0f} logins/s ({', '.join(f'{k}: {v}' for k, v in codes.items())}) {machine()}")


def login_times(url: str, token_id: str, rounds: int) -> tuple[list[float], list[float]]:
    """Wrong secrets on a real token id and on unknown ids, interleaved (limits must be lifted)."""
    import httpx

    known, unknown = [], []
    with httpx.Client(base_url=url, timeout=300) as c:
        page = c.get("/login")
        nonce = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        for i in range(rounds):
            for ids, out in ((token_id, known), (f"{random.getrandbits(48):012x}", unknown)):
                t = time.perf_counter()
                assert c.post("/login", data={"token": f"{ids}.wrong{i}", "csrf_token": nonce}).status_code == 401
                out.append(time.perf_counter() - t)
    return known, unknown


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--sample", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--parts", default="writer,flood", help="comma-separated: writer, flood (default both)")
    ap.add_argument("--old-code", type=Path, help="also flood the server of this checkout (the 'before' figure)")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    from corpus import Corpus
    from review import add_reviewer, sample_queue

    root = Path(__file__).resolve().parent.parent
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} {machine()}")
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
        url = f"http://127.0.0.1:{port}"
        if "writer" in parts:
            server = start_server(db, port, root)
            try:
                loads, posts = timed_requests(url, token, args.rounds)
                print(f"alone:        page load {fmt(loads)}; verdict POST {fmt(posts)} {machine()}")
                writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db), "600"], cwd=root,
                                          stdout=subprocess.PIPE, text=True)
                try:
                    loads, posts = timed_requests(url, token, args.rounds)
                finally:
                    writer.terminate()
                    writer.wait()
                print(f"with writer:  page load {fmt(loads)}; verdict POST {fmt(posts)} {machine()}")
                n = c.query("SELECT count(*) AS n FROM reviews")[0]["n"]
                print(f"verdicts stored: {n} of {2 * args.rounds} posted")
            finally:
                server.terminate()
                server.wait()
        if "flood" in parts:
            lifted = ("--login-rate-per-address", "1000000/second", "--login-rate-per-token", "1000000/second")
            runs = [("default limits:", root, ()), ("limits lifted: ", root, lifted)]
            if args.old_code:
                runs.append(("old code:      ", args.old_code.resolve(), ()))
            for label, code, flags in runs:
                server = start_server(db, port, code, *flags)
                try:
                    flood_figures(label, url, token, args.rounds, root)
                    if flags:
                        known, unknown = login_times(url, token.split(".")[0], args.rounds)
                        print(f"{label} wrong secret, known id: {fmt(known)}; unknown id: {fmt(unknown)} {machine()}")
                finally:
                    server.terminate()
                    server.wait()


if __name__ == "__main__":
    main()
