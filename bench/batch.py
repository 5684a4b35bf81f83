"""Batch-mode and rate-limit benchmark: prints figures, passes or fails nothing.

- batch: N requests (default 10,000) through `--batch` against the loopback server with the Files
  and Batches endpoints (tests/openai_batch_server.py, in its own process), into a fresh corpus.
  Prints the wall time, the time spent sleeping between polls, the engine's time per request
  (wall minus sleeps: building lines, uploading, reading output files, storing `calls` and
  `batches`; it includes the loopback server's own work of answering a finished batch), and the
  corpus file's size. The server's ledger says how many lines were paid and whether any twice.
- rpm: the client limiter (--rpm R) against the same server enforcing R requests per minute
  (a token bucket of `--burst` requests, default one second's worth); prints the rate achieved over M requests, its error
  against R, and the 429s the server sent.

    python bench/batch.py                          # both parts, the defaults below
    python bench/batch.py --parts batch --requests 10000 --batch-max-requests 2500
    python bench/batch.py --parts rpm --rpm 3000 --rpm-requests 1000

The load average is printed with the figures: this machine is shared, and the figures move with it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@contextlib.contextmanager
def server(*extra: str) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "openai_batch_server.py"), "--port", str(port), *extra],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT / "tests",
                            env={**os.environ, "PYTHONPATH": str(ROOT / "tests")})
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("serving"):
            raise RuntimeError(f"batch server did not start (exit {proc.poll()})")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def ledger(base_url: str) -> dict:
    with urllib.request.urlopen(base_url + "/_ledger") as r:
        return json.loads(r.read())


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def bench_batch(n: int, max_requests: int, poll_s: float) -> None:
    from backends import CachedBackend, ChatRequest, SamplingParams
    from backends.batch import BatchOptions
    from backends.openai_api import OpenAIBackend
    from corpus import Corpus

    params = SamplingParams(temperature=0, max_new_tokens=16)
    reqs = [ChatRequest(messages=[{"role": "user", "content": f"benchmark prompt number {i}: say something"}], params=params)
            for i in range(n)]
    with server("--polls", "2") as url, tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.duckdb"
        corpus = Corpus(db)
        b = OpenAIBackend("m", base_url=url, timeout=120, batch=BatchOptions(poll_s=poll_s, max_requests=max_requests))
        sleeps = []
        real_sleep = time.sleep

        def counted(s: float) -> None:
            sleeps.append(s)
            real_sleep(s)

        time.sleep = counted  # the poll sleeps are not the engine's work
        try:
            t0 = time.perf_counter()
            comps = CachedBackend(b, corpus, "bench").generate(reqs)
            wall = time.perf_counter() - t0
        finally:
            time.sleep = real_sleep
        corpus.close()
        size = db.stat().st_size
        led = ledger(url)
    ok = sum(c.ok for c in comps)
    engine = wall - sum(sleeps)
    print(f"batch: {n:,} requests in {led['created']} batch(es) of at most {max_requests:,}; {ok:,} answered; "
          f"paid {led['paid']:,}, paid twice {led['paid_twice']}")
    print(f"  wall {wall:.2f} s, polling sleeps {sum(sleeps):.2f} s ({len(sleeps)} polls of {poll_s:g} s)")
    print(f"  engine time per request {engine / n * 1000:.3f} ms (wall minus sleeps; includes the server answering)")
    print(f"  corpus {size / 1e6:.1f} MB ({size / n:.0f} bytes per request: calls + batch ledger)")
    print(f"  {load()}")


def bench_rpm(rpm: float, n: int, burst: float) -> None:
    from backends import ChatRequest, SamplingParams
    from backends.openai_api import OpenAIBackend

    params = SamplingParams(temperature=0, max_new_tokens=4)
    reqs = [ChatRequest(messages=[{"role": "user", "content": f"r{i}"}], params=params) for i in range(n)]
    with server("--rpm", f"{rpm:g}", "--burst", f"{burst:g}") as url:
        b = OpenAIBackend("m", base_url=url, rpm=rpm, timeout=30, concurrency=16)
        t0 = time.perf_counter()
        comps = b.generate(reqs)
        wall = time.perf_counter() - t0
        led = ledger(url)
    # n requests spaced 60/rpm apart span (n - 1) intervals
    achieved = (n - 1) / wall * 60
    print(f"rpm: set {rpm:g}/min, server enforces {rpm:g}/min (burst {burst:g}); {n} requests in {wall:.1f} s, "
          f"{sum(c.ok for c in comps)} answered")
    print(f"  achieved {achieved:.1f}/min ({(achieved - rpm) / rpm * 100:+.2f}% of the set rate), "
          f"429s from the server: {led['n_429']}, requests the server saw: {led['chat']}")
    print(f"  {load()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="batch,rpm")
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--batch-max-requests", type=int, default=50_000)
    ap.add_argument("--poll", type=float, default=0.5, help="seconds between polls (default 0.5)")
    ap.add_argument("--rpm", type=float, default=3000)
    ap.add_argument("--rpm-requests", type=int, default=1000)
    ap.add_argument("--burst", type=float, default=None,
                    help="requests the server lets through at once (default: one second's worth, rpm/60, as OpenAI "
                         "enforces a per-minute limit over seconds)")
    a = ap.parse_args()
    parts = a.parts.split(",")
    if "batch" in parts:
        bench_batch(a.requests, a.batch_max_requests, a.poll)
    if "rpm" in parts:
        bench_rpm(a.rpm, a.rpm_requests, a.burst if a.burst is not None else max(1.0, a.rpm / 60))


if __name__ == "__main__":
    main()
