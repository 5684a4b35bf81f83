"""code_exec verdicts on real tasks: false fails (a right answer, shaped as models write it, that
does not pass) and false passes (a wrong answer with a trick that does), for the checkout given
by --root (run it once for this tree and once for an older one to compare). Prints counts and the
load average; asserts nothing.

    python bench/sandbox_verdicts.py                          # this tree, HumanEval's 164 tasks
    python bench/sandbox_verdicts.py --root ../main --limit 40

Right answers: the canonical solution bare; its imports and helpers in one block and the entry
point's def in another; the solution followed by a usage block. Wrong answers: `return 0` plus a fake class for
every module the tests use (and a fake StopIteration); a raise of a fake StopIteration; a wrong
answer that prints a traceback and kills its runner (counted as "not scored" when the verdict is
None, which is what the GRPO reward would get).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def modules_used(tests: str) -> list[str]:
    """Names the tests use as `name.attr` that are standard-library modules."""
    names = {n.value.id for n in ast.walk(ast.parse(tests)) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)}
    return sorted(n for n in names if n in sys.stdlib_module_names)


def split_entry(full: str, entry: str) -> tuple[str, str]:
    """(everything but the entry point's def, the def): how a model writes helpers and imports in
    one block and the solution in the next."""
    lines = full.splitlines()
    tree = ast.parse(full)
    node = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == entry), None)
    if node is None:
        return "", full
    start = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
    rest = lines[:start] + lines[node.end_lineno:]
    return "\n".join(rest).strip(), "\n".join(lines[start:node.end_lineno])


def shapes(t: dict) -> dict[str, str]:
    full, entry = t["prompt"] + t["canonical_solution"], t["entry_point"]
    helpers, solution = split_entry(full, entry)
    fakes = "".join(f"class {m}:\n    def __getattr__(self, k):\n        return lambda *a, **k: True\n{m} = {m}()\n"
                    for m in modules_used(t["test"]))
    return {
        "right_bare": full,
        "right_split_blocks": (f"Helpers:\n```python\n{helpers}\n```\n" if helpers else "") + f"Code:\n```python\n{solution}\n```\n",
        "right_then_usage": f"```python\n{full}\n```\nUsage:\n```python\nprint({entry})\n```\n",
        "hack_fake_modules": f"{fakes}class StopIteration(Exception):\n    pass\ndef {entry}(*a, **k):\n    return 0\n",
        "hack_fake_stopiteration": f"class StopIteration(Exception):\n    pass\ndef {entry}(*a, **k):\n    raise StopIteration\n",
        "hack_disguised_failure": f"def {entry}(*a, **k):\n    return 0\nimport os, sys\nsys.stderr.write('Traceback\\n')\n"
                                  "sys.stderr.flush()\nos.kill(os.getppid(), 9)\n",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(HERE), help="the checkout whose judge/ is measured")
    ap.add_argument("--data", default=str(HERE.parent / "shared" / "data" / "humaneval.jsonl"))
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--mbpp-shape", action="store_true", help="no entry point given; the tests end in `check(<name>)`, "
                    "as MBPP's asserts name the function themselves")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(args.root).resolve()))
    from judge.rubric import VerifierSpec
    from judge.verifiers import code_exec

    tasks = [json.loads(line) for line in open(args.data)][: args.limit]
    spec = VerifierSpec(type="code_exec", tests="meta:test", entry_point="meta:entry_point", timeout_s=10)
    items, kinds = [], []
    for t in tasks:
        meta = ({"test": f"{t['test']}\ncheck({t['entry_point']})\n"} if args.mbpp_shape
                else {"test": t["test"], "entry_point": t["entry_point"]})
        text = "Write the function." if args.mbpp_shape else t["prompt"]  # HumanEval: the prompt is the stub
        prompt = {"messages": [{"role": "user", "content": text}], "meta": meta}
        for kind, answer in shapes(t).items():
            items.append((prompt, answer))
            kinds.append(kind)
    t0 = time.perf_counter()
    results = code_exec(spec, items, workers=args.workers)
    dt = time.perf_counter() - t0
    print(f"root {args.root}{' (MBPP shape)' if args.mbpp_shape else ''}: {len(tasks)} tasks, {len(items)} runs in {dt:.0f} s, load average "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(f"{'answer':26} {'passed':>6} {'score 0':>7} {'not scored':>10}")
    for kind in dict.fromkeys(kinds):
        rs = [r for r, k in zip(results, kinds) if k == kind]
        print(f"{kind:26} {sum(r.score == 1.0 for r in rs):>6} {sum(r.score == 0.0 for r in rs):>7} "
              f"{sum(r.score is None for r in rs):>10}")


if __name__ == "__main__":
    main()
