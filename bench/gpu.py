"""Every GPU figure in one prepared command: prints and writes figures, passes or fails nothing.

On one GPU, in order, each part in its own process with its own time budget (10 minutes in all,
the model's load included), every figure appended to a JSON-lines file the moment it is measured:

  model   load (and on first use convert) the embedded SmolLM2-135M-Instruct
  hf      hf backend tokens/s at batch 1, 64, 256: plain eager `model.generate`, the engine's hf
          backend, and its static-KV-cache path (compiled by transformers on a GPU)
  vllm    the engine's vLLM backend against bare `vllm.LLM`, the same prompts (two processes)
  judge   judgments/s of the embedded judge: decoded (JSON schema) against logprob scoring
  loop    bench/loop.py --preset gpu, cut to fit its budget
  rm      bench/rm.py: a reward model on ../shared/data's HH pairs, held-out accuracy and the
          length baseline

A part whose budget ends is stopped (SIGTERM to its process group, SIGKILL 20 s later) and keeps
the figures it had written. The results folder gets results.json and results.md.

    python bench/gpu.py --out runs/gpu                  # on a GPU machine with the project installed
    python bench/gpu.py --smoke --out /tmp/g            # the same code at tiny sizes on a CPU (the tests run this)
    python bench/gpu.py --prepare                       # here: pack wheels, the model and data for the device
    python3 bench/gpu.py --device-step K --out $OUT     # there: the K-th call that --prepare printed

`--prepare` folds ../shared/GPU.md's recipe in: it downloads the wheels the GPU machine lacks,
splits the GGUF model and copies the data into ignored folders .gpu/c1 ... .gpu/cN of at most
48 MiB each (a device call carries 64 MiB), and prints one device call per folder; the last one
assembles the model, installs the wheels that do not import there, and runs this script.
This file imports only the standard library at the top: it runs on the device before any wheel
is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("model", "hf", "vllm", "judge", "loop", "rm")
# seconds; the parts of a GPU run add up to under 10 minutes, and the whole run is cut at --total
GPU_BUDGETS = {"model": 60, "hf": 130, "vllm": 140, "judge": 60, "loop": 120, "rm": 80}
# smoke: generous, so a busy CPU finishes every part; the stop itself is tested on its own
SMOKE_BUDGETS = {p: 900 for p in PARTS}
GRACE_S = 20
STAGE = Path(os.environ.get("RLAIF_GPU_STAGE", "/tmp/rlaif-gpu"))
CARRY = Path(os.environ.get("RLAIF_GPU_CARRY", ROOT / ".gpu"))
CARRY_MAX = 48 << 20  # a call carries 64 MiB with the working tree (about 2 MiB)
# GPU.md's verified list (what the GPU machine lacks) plus what the parts import beyond it; only
# the ones that do not import there are installed (a second numpy or pillow could break torch)
WHEELS = {
    "trl": "trl==1.16.0", "datasets": "datasets==5.2.0", "duckdb": "duckdb==2.0.0", "pydantic": "pydantic==2.14.3",
    "pydantic_core": "pydantic-core==2.50.4", "tenacity": "tenacity==9.2.1", "openai": "openai==3.54.0",
    "httpx2": "httpx2==2.16.2", "httpcore2": "httpcore2==2.16.2", "truststore": "truststore", "jiter": "jiter",
    "distro": "distro", "sniffio": "sniffio", "dill": "dill", "multiprocess": "multiprocess",
    "annotated_types": "annotated-types", "typing_inspection": "typing-inspection", "gguf": "gguf==0.19.0",
    "llguidance": "llguidance", "rich": "rich", "markdown_it": "markdown-it-py", "mdurl": "mdurl",
    "pygments": "pygments", "yaml": "pyyaml", "filelock": "filelock", "regex": "regex", "datasketch": "datasketch",
    "scipy": "scipy", "matplotlib": "matplotlib", "contourpy": "contourpy", "cycler": "cycler",
    "kiwisolver": "kiwisolver", "pyparsing": "pyparsing", "fontTools": "fonttools",
}
DATA_FILES = ("mtbench_questions.jsonl", "hh_helpful_dev.jsonl", "arena_hard_prompts.jsonl", "selfinstruct_seed_tasks.jsonl")


# -- one part, in its own process group ----------------------------------------------------------


def run_part(name: str, cmd: list[str], out: Path, budget_s: float, stop: threading.Event | None = None,
             env: dict | None = None) -> dict:
    """Run one part's command with a budget; `stop` ends it early (what the budget does, on demand).
    Figures the part wrote to out/NAME.jsonl before it was stopped are kept."""
    log = open(out / f"{name}.log", "ab")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    stop = stop or threading.Event()
    status = None
    while proc.poll() is None:
        if stop.wait(0.2) or time.monotonic() - t0 > budget_s:
            status = "stopped at budget"
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(GRACE_S)
            except subprocess.TimeoutExpired:
                status = "killed at budget"
            _signal_group(proc, signal.SIGKILL)  # the part's children (vLLM engines, trainers) too
            proc.wait()
            break
    _signal_group(proc, signal.SIGKILL)  # anything the part left running
    log.close()
    if status is None:
        status = "done" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    return {"status": status, "wall_s": round(time.monotonic() - t0, 1), "budget_s": budget_s}


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def read_figures(out: Path, name: str) -> list[dict]:
    path = out / f"{name}.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # the last line of a part killed mid-write
            pass
    return rows


def last_log_line(out: Path, name: str) -> str:
    path = out / f"{name}.log"
    lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()] if path.exists() else []
    return lines[-1][:300] if lines else ""


def write_results(out: Path, header: dict, parts: dict[str, dict]) -> None:
    (out / "results.json").write_text(json.dumps({**header, "parts": parts}, indent=2))
    md = [f"# bench/gpu.py{' --smoke' if header['smoke'] else ''}", "",
          f"{header['machine']}; started {header['started']}, {header['wall_s']} s in all "
          f"(budget {header['total_budget_s']} s).", "",
          "| part | status | what | setting | figure | note |", "|---|---|---|---|---|---|"]
    for name, p in parts.items():
        figs = [f for f in p["figures"] if "value" in f]
        if not figs:
            md.append(f"| {name} | {p['status']} ({p['wall_s']} s of {p['budget_s']:g}) | | | | {p.get('note', '')} |")
        for i, f in enumerate(figs):
            status = f"{p['status']} ({p['wall_s']} s of {p['budget_s']:g})" if i == 0 else ""
            md.append(f"| {name if i == 0 else ''} | {status} | {f['what']} | {f.get('setting', '')} | "
                      f"{f['value']} {f.get('unit', '')} | {f.get('note', '')} |")
    (out / "results.md").write_text("\n".join(md) + "\n")


def orchestrate(args: argparse.Namespace) -> int:
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    budgets = dict(SMOKE_BUDGETS if args.smoke else GPU_BUDGETS)
    budgets.update(args.budget)
    t_start, started = time.monotonic(), time.strftime("%Y-%m-%d %H:%M:%S")
    header = {"smoke": args.smoke, "started": started, "machine": machine_line(), "total_budget_s": args.total}
    parts: dict[str, dict] = {}
    model_dir = args.model
    for name in args.parts:
        left = args.total - (time.monotonic() - t_start)
        if left < 5:
            parts[name] = {"status": "not run: the total budget was spent", "wall_s": 0, "budget_s": 0, "figures": []}
            continue
        (out / f"{name}.jsonl").unlink(missing_ok=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--part", name, "--out", str(out)]
        cmd += ["--smoke"] * args.smoke + (["--model", model_dir] if model_dir else [])
        print(f"[{time.monotonic() - t_start:5.0f} s] {name}: budget {min(budgets[name], left):.0f} s", flush=True)
        res = run_part(name, cmd, out, min(budgets[name], left))
        res["figures"] = read_figures(out, name)
        if not res["status"].startswith("done"):
            res["note"] = last_log_line(out, name)
        for f in res["figures"]:
            if "model_dir" in f:
                model_dir = f["model_dir"]
            if "value" in f:
                print(f"    {f['what']} | {f.get('setting', '')} | {f['value']} {f.get('unit', '')} {f.get('note', '')}", flush=True)
        print(f"    -> {res['status']} in {res['wall_s']} s", flush=True)
        parts[name] = res
        header["wall_s"] = round(time.monotonic() - t_start, 1)
        write_results(out, header, parts)  # after every part: a run cut short keeps what it measured
    header["wall_s"] = round(time.monotonic() - t_start, 1)
    write_results(out, header, parts)
    print(f"results: {out / 'results.md'} and results.json ({header['wall_s']} s)")
    return 0


def machine_line() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    gpu = "no GPU"
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
        if q.returncode == 0 and q.stdout.strip():
            gpu = q.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return f"{os.uname().machine}, {os.cpu_count()} CPU cores, {gpu}, load average {load:.1f}"


# -- the device recipe (../shared/GPU.md), folded in ------------------------------------------------


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def prepare(args: argparse.Namespace) -> int:
    """Here, with the project installed: wheels, the model in pieces and the data, packed into
    carry folders the device calls can take one at a time."""
    sys.path.insert(0, str(ROOT))
    from backends.embedded import gguf_path

    shutil.rmtree(CARRY, ignore_errors=True)
    files = CARRY / "files"
    (files / "wheels").mkdir(parents=True)
    plat = ["--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_27_x86_64", "--platform",
            "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64", "--platform", "any"]
    base = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
            args.device_python, "--implementation", "cp", *plat, "-d", str(files / "wheels")]
    for spec in WHEELS.values():
        r = subprocess.run(base + [spec], capture_output=True, text=True)
        if r.returncode:
            print(f"prepare: could not download {spec}: {(r.stderr.strip().splitlines() or ['?'])[-1]}", file=sys.stderr)
            return 3
    data = ROOT.parent / "shared" / "data"
    (files / "data").mkdir()
    for name in DATA_FILES:
        if (data / name).exists():
            shutil.copy(data / name, files / "data" / name)
    gguf = gguf_path()
    pieces, chunk = [], 40 << 20  # the model in pieces, so each fits a call beside other files
    with open(gguf, "rb") as f:
        for i, block in enumerate(iter(lambda: f.read(chunk), b"")):
            (files / f"model.part{i:02d}").write_bytes(block)
            pieces.append(f"model.part{i:02d}")
    manifest = {"gguf_name": gguf.name, "gguf_sha256": sha256(gguf), "model_parts": pieces, "carries": []}
    # pack every file into carry folders of at most CARRY_MAX, largest first
    todo = sorted((p for p in files.rglob("*") if p.is_file()), key=lambda p: -p.stat().st_size)
    bins: list[list[Path]] = []
    sizes: list[int] = []
    for p in todo:
        size = p.stat().st_size
        k = next((i for i, s in enumerate(sizes) if s + size <= CARRY_MAX), None)
        if k is None:
            bins.append([]), sizes.append(0)
            k = len(bins) - 1
        bins[k].append(p), sizes.__setitem__(k, sizes[k] + size)
    for k, group in enumerate(bins, 1):
        for p in group:
            dest = CARRY / f"c{k}" / p.relative_to(files)
            dest.parent.mkdir(parents=True, exist_ok=True)
            p.rename(dest)
        manifest["carries"].append({"folder": f".gpu/c{k}", "bytes": sizes[k - 1],
                                    "files": {str(p.relative_to(files)): sha256(CARRY / f"c{k}" / p.relative_to(files)) for p in group}})
    shutil.rmtree(files)
    # the manifest travels with every call: it is small and each step checks its own files by it
    for k in range(1, len(bins) + 1):
        (CARRY / f"c{k}" / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(f"packed {sum(sizes) / 2**20:.0f} MiB into {len(bins)} carry folders; make sure .gpu/ is ignored by git.")
    print("device calls, back to back (the machine keeps /tmp for about 30 s after each):")
    for k in range(1, len(bins) + 1):
        print(f'  run(carry=[".gpu/c{k}"], command="python3 bench/gpu.py --device-step {k} --out $OUT/gpu", timeout_s='
              f'{600 if k == len(bins) else 120})')
    return 0


def device_step(args: argparse.Namespace) -> int:
    """There: copy this call's carry folder into the stage; the last call assembles and runs."""
    here = CARRY / f"c{args.device_step}"
    manifest = json.loads((here / "manifest.json").read_text())
    STAGE.mkdir(parents=True, exist_ok=True)
    for rel, digest in manifest["carries"][args.device_step - 1]["files"].items():
        dest = STAGE / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(here / rel, dest)
        if sha256(dest) != digest:
            print(f"device step {args.device_step}: {rel} arrived damaged (sha256 differs): run the step again", file=sys.stderr)
            return 3
    print(f"device step {args.device_step} of {len(manifest['carries'])}: staged {len(manifest['carries'][args.device_step - 1]['files'])} files")
    if args.device_step < len(manifest["carries"]):
        return 0
    missing = [p for c in manifest["carries"] for p in c["files"] if not (STAGE / p).exists()]
    if missing:
        print(f"device: {len(missing)} staged files are missing (e.g. {missing[0]}): the machine was released between "
              "calls; run every step again, back to back", file=sys.stderr)
        return 3
    gguf = STAGE / manifest["gguf_name"]
    with open(gguf, "wb") as f:
        for piece in manifest["model_parts"]:
            f.write((STAGE / piece).read_bytes())
    if sha256(gguf) != manifest["gguf_sha256"]:
        print("device: the assembled model's sha256 differs: run every step again", file=sys.stderr)
        return 3
    site = STAGE / "site"
    wheels = sorted((STAGE / "wheels").glob("*.whl"))
    need = [w for w in wheels if not _imports(_module_of(w.name))]
    if need:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(site),
                        *map(str, need)], check=True)
    print(f"device: installed {len(need)} of {len(wheels)} wheels (the rest import already)")
    shared = ROOT.parent / "shared" / "data"
    if not shared.exists():
        try:
            shared.parent.mkdir(parents=True, exist_ok=True)
            shared.symlink_to(STAGE / "data")
        except OSError as e:
            print(f"device: cannot place the data at {shared} ({e}); the loop and rm parts will say what they miss")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "RLAIF_EMBEDDED_GGUF": str(gguf), "RLAIF_CACHE": str(STAGE / "cache")}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--out", str(args.out), "--parts", ",".join(args.parts),
           "--total", str(args.total), *(["--smoke"] if args.smoke else []), *(["--model", args.model] if args.model else []),
           *(f"--budget={k}={v}" for k, v in args.budget.items())]
    return subprocess.run(cmd, env=env, cwd=ROOT).returncode


def _module_of(wheel: str) -> str:
    dist = wheel.split("-")[0].lower().replace("_", "-")
    for mod, spec in WHEELS.items():
        if spec.split("==")[0].lower() == dist:
            return mod
    return dist.replace("-", "_")


def _imports(module: str) -> bool:
    return subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True).returncode == 0


# -- command line ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu", help="results folder (default runs/gpu)")
    ap.add_argument("--smoke", action="store_true", help="tiny random model and sizes, for a CPU (the test suite runs this)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, in this order: {','.join(PARTS)}")
    ap.add_argument("--budget", action="append", default=[], metavar="PART=SECONDS",
                    help=f"one part's budget (defaults on a GPU: {', '.join(f'{k} {v}' for k, v in GPU_BUDGETS.items())})")
    ap.add_argument("--total", type=float, default=None, help="seconds for the whole run (default 600; --smoke 3600)")
    ap.add_argument("--model", default=None, help="a model folder instead of the embedded model (skips its conversion)")
    ap.add_argument("--prepare", action="store_true", help="pack wheels, model and data into .gpu/cN for the device calls")
    ap.add_argument("--device-python", default="3.12", help="--prepare: the device's Python version (default 3.12)")
    ap.add_argument("--device-step", type=int, default=None, help="on the device: stage carry folder K; the last runs")
    ap.add_argument("--part", choices=PARTS, default=None, help=argparse.SUPPRESS)  # a child: one part
    a = ap.parse_args(argv)
    a.parts = [p.strip() for p in a.parts.split(",") if p.strip()]
    bad = [p for p in a.parts if p not in PARTS]
    if bad:
        ap.error(f"--parts: unknown {', '.join(bad)}; choose from {', '.join(PARTS)}")
    budgets = {}
    for b in a.budget:
        name, _, secs = b.partition("=")
        try:
            budgets[name] = float(secs)
        except ValueError:
            ap.error(f"--budget {b}: write PART=SECONDS, e.g. --budget hf=120")
        if name not in PARTS or budgets[name] <= 0:
            ap.error(f"--budget {b}: PART is one of {', '.join(PARTS)} and SECONDS is above 0")
    a.budget = budgets
    a.total = a.total if a.total is not None else (3600.0 if a.smoke else 600.0)
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.prepare:
        return prepare(args)
    if args.device_step is not None:
        return device_step(args)
    if args.part:
        sys.path.insert(0, str(ROOT))
        sys.path.append(str(ROOT / "bench"))  # after the packages: bench/judge.py is not the judge package
        from gpu_parts import run_one

        return run_one(args)
    return orchestrate(args)


if __name__ == "__main__":  # vLLM starts its engine with spawn: this guard is required
    raise SystemExit(main())
