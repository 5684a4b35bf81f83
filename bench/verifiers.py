"""code_exec speed: HumanEval's 164 canonical solutions through the sandbox, at 1 and 2 workers,
with the old sandbox (unshare + audit hook, loaded from git) and the new one (bwrap + a trusted
test runner). Prints cases/s, ms per case, how many passed, and the load average; asserts nothing.

    python bench/verifiers.py                      # both, 1 and 2 workers, all 164 tasks
    python bench/verifiers.py --limit 40 --impl new
    python bench/verifiers.py --old-rev 9d45fcf    # the commit whose judge/sandbox.py is "old"

The runs alternate old/new so that a neighbour's load hits both alike.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OLD_REV = "9d45fcf"  # main before issue 10: the unshare + audit-hook sandbox


def load_old(rev: str):
    src = subprocess.run(["git", "show", f"{rev}:judge/sandbox.py"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp(prefix="old-sandbox-")) / "old_sandbox.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("old_sandbox", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["old_sandbox"] = mod
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def run_old(mod, tasks: list[dict], workers: int) -> int:
    programs = [mod.build_program(t["prompt"] + t["canonical_solution"], t["test"], t["entry_point"]) for t in tasks]
    return sum(r.passed for r in mod.run_many(programs, workers=workers, timeout_s=10))


def run_new(tasks: list[dict], workers: int) -> int:
    from judge.sandbox import run_many

    cases = [{"code": t["prompt"] + t["canonical_solution"], "tests": t["test"], "entry_point": t["entry_point"],
              "prefix": t["prompt"]} for t in tasks]
    return sum(v.passed for v in run_many(cases, workers=workers, timeout_s=10))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "humaneval.jsonl"))
    ap.add_argument("--limit", type=int, default=None, help="first N tasks only")
    ap.add_argument("--impl", choices=("old", "new", "both"), default="both")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--old-rev", default=OLD_REV)
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    tasks = [json.loads(line) for line in open(args.data)][: args.limit]
    from judge.sandbox import sandbox_status

    old = load_old(args.old_rev) if args.impl in ("old", "both") else None
    print(f"machine: {os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
          f"new sandbox: {sandbox_status()[0] or sandbox_status()[1]}"
          + (f", old sandbox: {old.isolation_mode()}" if old else ""))
    print(f"{'impl':5} {'workers':>7} {'cases':>5} {'passed':>6} {'cases/s':>8} {'ms/case':>8}  load average (1/5/15 min)")
    rows = []
    for w in [int(x) for x in args.workers.split(",")]:
        for impl in (["old", "new"] if args.impl == "both" else [args.impl]):
            t0 = time.perf_counter()
            passed = run_old(old, tasks, w) if impl == "old" else run_new(tasks, w)
            dt = time.perf_counter() - t0
            load = os.getloadavg()
            rows.append({"impl": impl, "workers": w, "cases": len(tasks), "passed": passed, "cases_per_s": len(tasks) / dt,
                         "ms_per_case": 1000 * dt / len(tasks), "load": load})
            print(f"{impl:5} {w:>7} {len(tasks):>5} {passed:>6} {len(tasks) / dt:>8.1f} {1000 * dt / len(tasks):>8.0f}  "
                  + " ".join(f"{x:.2f}" for x in load))
    for w in sorted({r["workers"] for r in rows}):
        pair = {r["impl"]: r for r in rows if r["workers"] == w}
        if len(pair) == 2:
            print(f"workers={w}: new/old per-case time = {pair['new']['ms_per_case'] / pair['old']['ms_per_case']:.2f}x (target <= 2x)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
