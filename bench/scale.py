"""Scale-out benchmark (`--executor ray`): prints figures, passes or fails nothing.

Against the loopback echo server (tests/openai_server.py, in its own process) answering every
request after `--latency` seconds, each backend replica capped at `--per-worker` requests in
flight (so the server is the bottleneck per connection only, and 2 cores can show scaling):

- calls/s of the Ray executor with 1, 2 and 4 replicas, fed the way `python -m generate` feeds
  it: chunks of `--chunk` requests, the rest announced with `look_ahead`, so parts stream to
  replicas as they free up; optionally (`--single`) the single-process openai backend at the
  same total concurrency (replicas x cap);
- the fixed overhead: starting the private local cluster, the first call (replicas start, build
  their HTTP client);
- merging 1,000,000 call rows from Parquet shards into `calls` (one DuckDB statement);
- `--driver-memory N`: the driver's peak RSS for `python -m generate --executor ray` planning
  and storing N requests with the fake backend (a subprocess; its own getrusage).

    python bench/scale.py                              # the defaults below
    python bench/scale.py --requests 1200 --latency 0.5 --per-worker 8 --merge-rows 0
    python bench/scale.py --skip-throughput --merge-rows 0 --driver-memory 1000000

Threads are pinned to 1 (OMP, MKL, OpenBLAS, Arrow's pool is left alone); the load average is
printed at the start and beside every figure: other jobs on the machine change them.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_v, "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def machine() -> str:
    return (f"{platform.machine()} {os.cpu_count()} CPUs, python {platform.python_version()}, "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load average {os.getloadavg()[0]:.1f} at start")


def requests_for(n: int, tag: str) -> list:
    from backends import ChatRequest, SamplingParams

    params = SamplingParams(temperature=0.0, max_new_tokens=16)
    return [ChatRequest(messages=[{"role": "user", "content": f"{tag} request number {i}"}], params=params) for i in range(n)]


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def start_cluster(num_cpus: int):
    """The private local cluster `--executor ray` starts without --ray-address, started once here
    so that every replica count runs on the same one."""
    import secrets

    from backends.ray_cluster import LocalCluster
    from backends.ray_executor import _use_token

    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16), "PYTHONPATH": str(ROOT)}
    cluster = LocalCluster(num_cpus=num_cpus, env=env)
    address = cluster.start()
    _use_token({k: env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")})
    return cluster, address


def streamed(ex, requests: list, chunk: int) -> None:
    """Feed `ex` as the generate job does: one chunk at a time, the rest announced ahead."""
    ex.look_ahead(requests[chunk:])
    for s in range(0, len(requests), chunk):
        ex.generate(requests[s : s + chunk])


def bench_throughput(args: argparse.Namespace, base_url: str) -> None:
    from backends import load_backend
    from backends.ray_executor import RayExecutor

    work = Path(tempfile.mkdtemp(prefix="scale-work-"))
    print(f"\n== calls/s, {args.requests} requests in chunks of {args.chunk}, server latency {args.latency * 1000:.0f} ms, "
          f"{args.per_worker} in flight per replica, parts of {args.batch_size} ==")
    ideal = args.per_worker / args.latency
    rows, fixed = [], {}
    t0 = time.perf_counter()
    cluster, address = start_cluster(max(os.cpu_count() or 1, max(args.workers) + 1))
    fixed["cluster start (ray start --head)"] = time.perf_counter() - t0
    try:
        for w in args.workers:
            single = ""
            if args.single:
                one = load_backend("openai", "echo-model", base_url=base_url, concurrency=w * args.per_worker)
                t0 = time.perf_counter()
                one.generate(requests_for(args.requests, f"single{w}"))
                single = f"single process {args.requests / (time.perf_counter() - t0):7.1f} calls/s | "
                one.close()
            ex = RayExecutor("openai", "echo-model", {"base_url": base_url, "concurrency": args.per_worker},
                             work_dir=str(work / f"w{w}"), address=address, workers=w, num_cpus_per_worker=1.0,
                             batch_size=args.batch_size)
            try:
                t0 = time.perf_counter()
                ex.generate(requests_for(w, f"warm{w}"))  # join the cluster, start the replicas, first call
                fixed[f"join + first call, {w} replica(s)"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                streamed(ex, requests_for(args.requests, f"ray{w}"), args.chunk)
                t_ray = time.perf_counter() - t0
            finally:
                ex.close()
            rows.append((w, args.requests / t_ray))
            print(f"  {single}ray {w} replica(s) {args.requests / t_ray:7.1f} calls/s | server bound {ideal * w:6.1f} "
                  f"({args.requests / t_ray / (ideal * w) * 100:.0f}%) | {load()}", flush=True)
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    one, last = rows[0][1], rows[-1][1]
    k = rows[-1][0] / rows[0][0]
    print(f"  scaling {rows[0][0]} -> {rows[-1][0]} replicas: {last / one:.2f}x ({last / one / k * 100:.0f}% of linear)"
          f" | {load()}")
    print("\n== fixed overhead ==")
    for name, v in fixed.items():
        print(f"  {name}: {v:.1f} s")


DRIVER = """
import resource, sys, time
sys.argv = ["generate"] + sys.argv[1:]
from corpus import run_cli
from generate.cli import main
t0 = time.perf_counter()
rc = run_cli("generate", main, sys.argv[1:])
print(f"DRIVER rc={rc} peak_rss_kb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss} s={time.perf_counter() - t0:.1f}")
"""


def bench_driver_memory(n: int, batch_size: int) -> None:
    """Peak RSS of the driver alone (its own getrusage; Ray's processes are not counted) for n
    requests: n/4 prompts x 4 candidates, the fake backend on 2 replicas, a private cluster."""
    import json
    import subprocess

    tmp = Path(tempfile.mkdtemp(prefix="scale-mem-"))
    try:
        prompts = tmp / "p.jsonl"
        with open(prompts, "w") as f:
            for i in range(n // 4):
                f.write(json.dumps({"prompt": f"Write a short poem about the number {i}, in four lines."}) + "\n")
        argv = ["--prompts", str(prompts), "--db", str(tmp / "c.duckdb"), "--n", "4", "--backend", "fake",
                "--max-new-tokens", "16", "--no-progress", "--executor", "ray", "--ray-workers", "2",
                "--ray-batch-size", str(batch_size), "--work-dir", str(tmp / "work")]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("RAY_ADDRESS", None)
        print(f"\n== driver peak memory, {n:,} requests (fake backend, --executor ray) | {load()} ==", flush=True)
        out = subprocess.run([sys.executable, "-c", DRIVER, *argv], env=env, capture_output=True, text=True)
        line = [x for x in out.stdout.splitlines() if x.startswith("DRIVER")]
        if not line:
            print(f"  failed (exit {out.returncode}): {out.stderr.strip().splitlines()[-1:] or ''}")
            return
        kv = dict(x.split("=") for x in line[0].split()[1:])
        peak = int(kv["peak_rss_kb"]) / 1024
        print(f"  exit {kv['rc']}, {float(kv['s']):.0f} s, driver peak RSS {peak:,.0f} MiB "
              f"({peak * 1024 * 1024 / n:,.0f} bytes per request) | {load()}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench_merge(rows: int, shard_rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from backends.ray_executor import SHARD_SCHEMA
    from corpus import Corpus
    from corpus.call_shards import merge_call_shards

    tmp = Path(tempfile.mkdtemp(prefix="scale-merge-"))
    try:
        (tmp / "work" / "results").mkdir(parents=True)
        t0 = time.perf_counter()
        for s in range(0, rows, shard_rows):
            n = min(shard_rows, rows - s)
            ids = range(s, s + n)
            req = [f'{{"messages":[{{"content":"Write a short poem about the number {i}.","role":"user"}}],'
                   f'"params":{{"max_new_tokens":256,"seed":{i},"temperature":0.7,"top_p":1.0}}}}' for i in ids]
            resp = [f'{{"completion_tokens":14,"finish_reason":"stop","latency_ms":210.0,"prompt_tokens":12,'
                    f'"text":"Number {i}, a line of verse, and then another line about it."}}' for i in ids]
            t = pa.table({"key": [f"{i:032x}" for i in ids], "backend": ["openai"] * n, "model": ["m"] * n,
                          "request": req, "response": resp, "status": ["ok"] * n, "error": [None] * n,
                          "latency_ms": [210.0] * n}, schema=SHARD_SCHEMA)
            pq.write_table(t, tmp / "work" / "results" / f"job-{s // shard_rows:05d}.parquet")
        print(f"\n== merge {rows:,} call rows ({rows // shard_rows} shards) into DuckDB ==")
        print(f"  (writing the shards took {time.perf_counter() - t0:.1f} s)")
        corpus = Corpus(tmp / "c.duckdb")
        t0 = time.perf_counter()
        n = merge_call_shards(corpus, str(tmp / "work"))
        t_merge = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = merge_call_shards(corpus, str(tmp / "work"))
        t_again = time.perf_counter() - t0
        corpus.close()
        print(f"  into an empty corpus: {n:,} rows in {t_merge:.1f} s ({n / t_merge:,.0f} rows/s) | {load()}")
        print(f"  again (all present):  {again:,} rows in {t_again:.1f} s | {load()}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=1200, help="requests per configuration (default 1200)")
    ap.add_argument("--latency", type=float, default=0.5, help="server latency per request, s (default 0.5)")
    ap.add_argument("--per-worker", type=int, default=8, help="requests in flight per replica (default 8)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="replica counts (default 1 2 4)")
    ap.add_argument("--batch-size", type=int, default=32, help="requests per part and shard (default 32)")
    ap.add_argument("--chunk", type=int, default=256, help="requests per generate call, as the job's chunks (default 256)")
    ap.add_argument("--single", action="store_true", help="also time the single-process backend per row")
    ap.add_argument("--driver-memory", type=int, default=0, help="requests for the driver peak-RSS run (0: skip)")
    ap.add_argument("--merge-rows", type=int, default=1_000_000, help="call rows to merge (default 1,000,000; 0: skip)")
    ap.add_argument("--shard-rows", type=int, default=10_000, help="rows per shard in the merge bench")
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()
    print(f"machine: {machine()}")
    if not args.skip_throughput:
        from openai_server import serve_in_subprocess

        with serve_in_subprocess(latency_s=args.latency) as base_url:
            bench_throughput(args, base_url)
    if args.merge_rows:
        bench_merge(args.merge_rows, args.shard_rows)
    if args.driver_memory:
        bench_driver_memory(args.driver_memory, 128)


if __name__ == "__main__":
    main()
