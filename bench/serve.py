"""Reward service benchmark: prints figures, passes or fails nothing.

- code, llm: rewards/s and p50/p99 request latency at 1, 8 and 64 concurrent clients, served
  (`python -m judge serve` on loopback, HTTP) vs in-process (the same scorer called from the
  clients' threads, records to the same kind of writer), for a code_exec rubric (HumanEval-like
  tests in the bwrap sandbox) and an LLM-judge rubric (tests/openai_server.py in a child process
  as the judge, answering after --judge-latency seconds);
- ray: 1 -> 4 Ray Serve replicas against a latency-bound judge (--ray-latency seconds per call,
  2 items at a time per replica), 16 clients.

Every item is new (no cache hits): the figure is scoring, not the cache.

    python bench/serve.py                       # everything
    python bench/serve.py --parts llm --requests 64
    python bench/serve.py --parts ray --ray-latency 0.5
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

CODE_RUBRIC = """\
name: bench_code
task: Write the function.
criteria:
  - name: passes
    kind: verifier
    verifier: {type: code_exec, tests: "meta:test", entry_point: add, timeout_s: 5}
judges: []
"""

LLM_RUBRIC = """\
name: bench_llm
task: Answer the user.
criteria:
  - name: helpful
    description: How helpful the answer is.
    scale: {{1: useless, 2: weak, 3: fair, 4: good, 5: excellent}}
judges:
  - {{backend: openai, model: judge, base_url: "{url}", api_key_env: BENCH_NO_KEY}}
retries: 0
"""

_counter = itertools.count()


def item(kind: str) -> dict[str, Any]:
    n = next(_counter)  # every item new: no reward cache hit
    if kind == "code":
        return {"prompt": f"Write add(a, b). #{n}", "response": f"```python\ndef add(a, b):\n    return a + b  # {n}\n```",
                "metadata": {"test": "assert add(1, 2) == 3\nassert add(-1, 1) == 0"}}
    return {"prompt": f"Say something #{n}.", "response": f"Something number {n}."}


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def drive(clients: int, requests: int, batch: int, kind: str, send: Callable[[list[dict]], Any]) -> dict[str, Any]:
    """`clients` threads send `requests` batches in all; latency per request, rewards/s overall."""
    lat: list[float] = []
    lock = threading.Lock()
    todo = itertools.count()

    def client() -> None:
        while next(todo) < requests:
            items = [item(kind) for _ in range(batch)]
            t0 = time.perf_counter()
            send(items)
            with lock:
                lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as ex:
        for f in [ex.submit(client) for _ in range(clients)]:
            f.result()
    wall = time.perf_counter() - t0
    lat.sort()
    return {"clients": clients, "rewards_per_s": round(requests * batch / wall, 1),
            "p50_ms": round(statistics.median(lat) * 1000, 1),
            "p99_ms": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000, 1), "load": load()}


def start_server(rubric: Path, db: Path, *args: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "judge", "serve", "--rubric", str(rubric), "--db", str(db), "--port", "0",
                             "--max-concurrency", "256", *args], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("serving"):
        proc.kill()
        raise RuntimeError(f"judge serve did not start: {line}")
    return proc, re.search(r"http://\S+", line).group(0)  # type: ignore[union-attr]


def served_sender(url: str) -> Callable[[list[dict]], Any]:
    from backends.reward_client import RewardClient

    client = RewardClient(url)
    return lambda items: client.score(items)


def inprocess_sender(rubric: Path, db: Path, workers: int) -> tuple[Callable[[list[dict]], Any], Callable[[], None]]:
    """The scorer in this process, as a trainer would call it without the service."""
    from corpus import Corpus
    from judge.serve_log import CorpusSink, RewardLog
    from judge.serve_score import RubricScorer, ServeItem

    corpus = Corpus(db)
    writer = RewardLog(CorpusSink(corpus))
    scorer = RubricScorer(corpus, str(rubric), "bench", writer.add)
    pool = ThreadPoolExecutor(workers)  # the same item parallelism the server has

    def send(items: list[dict]) -> Any:
        out = list(pool.map(lambda it: scorer.score(ServeItem(**it)), items))
        for s in out:
            writer.add(s.records)
        return out

    def close() -> None:
        pool.shutdown()
        writer.close()
        scorer.close()

    return send, close


def compare(kind: str, rubric_text: str, args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    rubric = work / f"{kind}.yaml"
    rubric.write_text(rubric_text)
    rows = []
    proc, url = start_server(rubric, work / f"{kind}-served.duckdb", "--workers", str(args.workers))
    try:
        send = served_sender(url)
        send([item(kind)])  # warm: first sandbox / first connection
        for c in args.clients:
            rows.append({"rubric": kind, "mode": "served", **drive(c, max(args.requests, c), args.batch, kind, send)})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    send, close = inprocess_sender(rubric, work / f"{kind}-inproc.duckdb", args.workers)
    try:
        send([item(kind)])
        for c in args.clients:
            rows.append({"rubric": kind, "mode": "in-process", **drive(c, max(args.requests, c), args.batch, kind, send)})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        close()
    return rows


def ray_scaling(args: argparse.Namespace, work: Path, judge_url: str) -> list[dict[str, Any]]:
    rubric = work / "ray.yaml"
    rubric.write_text(LLM_RUBRIC.format(url=judge_url))
    rows = []
    for replicas in (1, 4):
        t0 = time.perf_counter()
        proc, url = start_server(rubric, work / f"ray-{replicas}.duckdb", "--executor", "ray", "--replicas", str(replicas),
                                 "--workers", "2")
        started = time.perf_counter() - t0
        try:
            send = served_sender(url)
            send([item("llm")])
            r = drive(16, args.ray_requests, 1, "llm", send)
            rows.append({"rubric": "llm", "mode": f"ray x{replicas}", "startup_s": round(started, 1), **r})
            print(json.dumps(rows[-1]), flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=180)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="code,llm,ray", help="code,llm,ray")
    ap.add_argument("--clients", default="1,8,64", help="concurrent clients per level")
    ap.add_argument("--requests", type=int, default=32, help="requests per level (at least one per client)")
    ap.add_argument("--batch", type=int, default=2, help="items per request")
    ap.add_argument("--workers", type=int, default=8, help="items scored at once, served and in-process")
    ap.add_argument("--judge-latency", type=float, default=0.05, help="seconds the loopback judge takes per call")
    ap.add_argument("--ray-latency", type=float, default=0.5, help="judge latency for the Ray part")
    ap.add_argument("--ray-requests", type=int, default=64)
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    parts = args.parts.split(",")
    from openai_server import serve_in_subprocess

    print(f"# bench/serve.py on {os.cpu_count()} CPUs, load average at start {load()}", flush=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "code" in parts:
            rows += compare("code", CODE_RUBRIC, args, work)
        if "llm" in parts:
            with serve_in_subprocess(latency_s=args.judge_latency) as url:
                rows += compare("llm", LLM_RUBRIC.format(url=url), args, work)
        if "ray" in parts:
            with serve_in_subprocess(latency_s=args.ray_latency) as url:
                rows += ray_scaling(args, work, url)
    print(f"\n{'rubric':6} {'mode':11} {'clients':>7} {'rewards/s':>9} {'p50 ms':>8} {'p99 ms':>8}  load")
    for r in rows:
        print(f"{r['rubric']:6} {r['mode']:11} {r['clients']:>7} {r['rewards_per_s']:>9} {r['p50_ms']:>8} {r['p99_ms']:>8}  {r['load']}")
    print(f"# load average at the end {load()}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
