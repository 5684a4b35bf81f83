"""How often the engine's checks (the `checks` registry) agree with the official IFEval checker.

The official checker is IFEval's instruction code as lm-evaluation-harness ships it
(lm_eval/tasks/ifeval: google-research's instruction_following_eval, ported), run through its
strict harness `test_instruction_following_strict`. Install it beside the engine with
    pip install --no-deps lm-eval==0.4.13 && pip install 'nltk>=3.9.1' langdetect immutabledict
(`--no-deps`: only the ifeval modules are used; the rest of lm-eval is not imported).

Replies: the embedded SmolLM2-135M answers checkable prompts built by `train.synth` with the
engine's own templates from base questions written in this file (none from ../shared), or
`--replies FILE` reads JSONL rows {"reply": ..., "checks": [...]} (e.g. exported generations).
Prints, per check type, how many verdicts agree and which side passed the others.

    python bench/ifeval_agreement.py                # 60 prompts x 2 samples, about 10 min on 2 cores
    python bench/ifeval_agreement.py --replies r.jsonl --show 5
    python bench/ifeval_agreement.py --test-cases   # the test suite's tricky replies
    python bench/ifeval_agreement.py --models embedded,RUN/dpo-loop/round-1/policy --n 150
        # models compared by the official checker: greedy replies to the same prompts, pass rates
        # by IFEval and by the engine, and the paired difference to the first model with its 95% interval
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from checks import check_passes, validate_check  # noqa: E402

QUESTIONS = [
    "Explain how a bicycle's gears make climbing a hill easier.", "What should I pack for a two-day hike?",
    "Describe how bread rises.", "Why do cats purr?", "Give advice to someone starting to learn the guitar.",
    "How does a refrigerator keep food cold?", "What makes a good cup of tea?", "Explain what a budget is.",
    "Why is the sky dark at night?", "How do I keep houseplants alive?", "Describe a good morning routine.",
    "What is the difference between weather and climate?", "How do bees make honey?",
    "Explain why we have leap years.", "What are the benefits of walking every day?",
    "How does a library organize its books?", "Suggest ways to save water at home.",
    "Explain how a compass works.", "What should a beginner know about chess?", "Why do leaves change color?",
    "How do I write a polite complaint to a neighbour?", "Describe how a rainbow forms.",
    "What is a healthy breakfast?", "Explain how vaccines train the immune system.",
    "How can I sleep better?", "Describe the job of a lighthouse keeper.", "Why do we sneeze?",
    "Explain recycling to a child.", "How does a train stay on its tracks?", "What makes a story exciting?",
]


def fail(msg: str) -> None:
    print(f"ifeval_agreement: {msg}", file=sys.stderr)
    raise SystemExit(2)


def load_ifeval() -> Any:
    """lm-eval's ifeval modules without lm_eval.tasks' task manager (which needs all of lm-eval's
    dependencies). nltk's punkt data is not needed by the instructions compared here (words are
    counted with a regex tokenizer); an empty punkt_tab folder stops the import from trying the
    network for it."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        fail("the official IFEval checker is not installed: pip install --no-deps lm-eval==0.4.13 && "
             "pip install 'nltk>=3.9.1' langdetect immutabledict")
    base = Path(list(spec.submodule_search_locations)[0])
    import nltk

    data = Path(tempfile.mkdtemp(prefix="nltk-"))
    (data / "tokenizers" / "punkt_tab").mkdir(parents=True)
    nltk.data.path.insert(0, str(data))
    import lm_eval  # noqa: F401 - the real package; only its tasks/ifeval subpackage is stubbed below

    for name, path in (("lm_eval.tasks", base / "tasks"), ("lm_eval.tasks.ifeval", base / "tasks" / "ifeval")):
        mod = types.ModuleType(name)
        mod.__path__ = [str(path)]
        sys.modules.setdefault(name, mod)
    from lm_eval.tasks.ifeval import utils

    import langdetect

    langdetect.DetectorFactory.seed = 0  # langdetect samples; seeded, a rerun prints the same
    return utils


def first_word(reply: str) -> str:
    """IFEval's nth_paragraph_first_word reads the first word of paragraph 1 this way; giving it
    the reply's own first word leaves only its (blank-line) paragraph count to decide."""
    paras = [p for p in reply.split("\n\n") if p.strip()]
    word = paras[0].split()[0].strip().lstrip("'").lstrip('"') if paras else ""
    out = ""
    for ch in word:
        if ch in {".", ",", "?", "!", "'", '"'}:
            break
        out += ch.lower()
    return out


def ifeval_instruction(check: dict[str, Any], reply: str) -> tuple[str, dict[str, Any]] | None:
    """The IFEval instruction id and kwargs that state the same instruction our prompt gives."""
    t = check["type"]
    if t == "bullet_count":
        return "detectable_format:number_bullet_lists", {"num_bullets": check["n"]}
    if t == "include_word":
        return "keywords:existence", {"keywords": [check["word"]]}
    if t == "valid_json":
        return "detectable_format:json_format", {}
    if t == "max_words":  # "no more than n" is IFEval's "less than n + 1"
        return "length_constraints:number_words", {"num_words": check["n"] + 1, "relation": "less than"}
    if t == "min_words":
        return "length_constraints:number_words", {"num_words": check["n"], "relation": "at least"}
    if t == "lowercase":
        return "change_case:english_lowercase", {}
    if t == "no_commas":
        return "punctuation:no_comma", {}
    if t == "ends_with":
        return "startend:end_checker", {"end_phrase": check["text"]}
    if t == "num_paragraphs":  # our prompts separate paragraphs by blank lines, as this one does
        fw = first_word(reply)
        if not fw:
            return None
        return "length_constraints:nth_paragraph_first_word", {"num_paragraphs": check["n"], "nth_paragraph": 1,
                                                               "first_word": fw}
    return None


def official_verdict(utils: Any, check: dict[str, Any], reply: str) -> bool:
    inst = ifeval_instruction(check, reply)
    if inst is None:  # no first word: IFEval's own harness fails such a reply
        return False
    iid, kwargs = inst
    ex = utils.InputExample(key=0, instruction_id_list=[iid], prompt="", kwargs=[kwargs])
    return utils.test_instruction_following_strict(ex, reply).follow_all_instructions


def questions(n: int, seed: int, max_checks: int = 2) -> list[Any]:
    from train.synth import load_templates, synthesize

    with tempfile.TemporaryDirectory() as d:
        base = Path(d) / "questions.jsonl"
        base.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in QUESTIONS))
        return synthesize([base], n, load_templates(), seed=seed, max_checks=max_checks)


def model_replies(n: int, samples: int, max_new_tokens: int, seed: int, model: str | None = None,
                  greedy: bool = False, backend_name: str = "hf", max_checks: int = 2) -> list[dict[str, Any]]:
    from backends import ChatRequest, SamplingParams, load_backend

    prompts = questions(n, seed, max_checks)
    params = [SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)] if greedy else [
        SamplingParams(temperature=0.7, max_new_tokens=max_new_tokens, seed=seed + s) for s in range(samples)]
    reqs = [ChatRequest(messages=tuple(p.messages), params=sp) for p in prompts for sp in params]
    backend = load_backend(backend_name, model, **({"enforce_eager": True} if backend_name == "vllm" else {}))
    try:
        comps = backend.generate(reqs)
    finally:
        backend.close()
    samples = len(params)
    checks = [p.meta["checks"] for p in prompts for _ in range(samples)]
    return [{"reply": c.text or "", "checks": ch} for c, ch in zip(comps, checks)]


def read_replies(path: str) -> list[dict[str, Any]]:
    if not Path(path).is_file():
        fail(f"--replies {path}: no such file")
    rows = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except ValueError:
            d = None
        if not isinstance(d, dict) or not isinstance(d.get("reply"), str) or not isinstance(d.get("checks"), list):
            fail(f"{path}:{i}: expected a JSON object {{\"reply\": str, \"checks\": [...]}}")
        if bad := next((err for c in d["checks"] if (err := validate_check(c))), None):
            fail(f"{path}:{i}: {bad}")
        rows.append(d)
    return rows


def agreement(utils: Any, rows: list[dict[str, Any]]) -> tuple[dict[str, dict[str, int]], list[tuple]]:
    table: dict[str, dict[str, int]] = {}
    differ = []
    for row in rows:
        for c in row["checks"]:
            ours, theirs = check_passes(row["reply"], c), official_verdict(utils, c, row["reply"])
            t = table.setdefault(c["type"], {"n": 0, "agree": 0, "both_pass": 0, "only_engine": 0, "only_ifeval": 0})
            t["n"] += 1
            t["agree"] += ours == theirs
            t["both_pass"] += ours and theirs
            t["only_engine"] += ours and not theirs
            t["only_ifeval"] += theirs and not ours
            if ours != theirs:
                differ.append((c, row["reply"], ours, theirs))
    return table, differ


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replies", help="JSONL of {reply, checks} instead of generating with the embedded model")
    ap.add_argument("--test-cases", action="store_true",
                    help="the tricky replies of tests/test_checks.py instead of generating")
    ap.add_argument("--n", type=int, default=60, help="prompts to synthesize (default 60)")
    ap.add_argument("--samples", type=int, default=2, help="replies per prompt (default 2)")
    ap.add_argument("--max-new-tokens", type=int, default=256, help="reply cap in tokens (default 256)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", help="write the replies as JSONL here (reusable with --replies)")
    ap.add_argument("--show", type=int, default=3, help="disagreements to print per type (default 3)")
    ap.add_argument("--models", help="compare models (comma-separated folders or 'embedded'): greedy replies, pass "
                    "rates by the official checker and the engine, paired difference to the first")
    ap.add_argument("--backend", default="hf", choices=("hf", "vllm"), help="--models: the backend that samples (default hf)")
    ap.add_argument("--max-checks", type=int, default=2, help="instructions per prompt, 1..N (default 2)")
    a = ap.parse_args(argv)
    utils = load_ifeval()
    if a.models:
        return compare_models(utils, [m.strip() for m in a.models.split(",") if m.strip()], a)
    t0 = time.time()
    if a.test_cases:
        sys.path.insert(0, str(ROOT / "tests"))
        from test_checks import CASES

        rows = [{"reply": r, "checks": [c]} for c, r, _ in CASES]
    else:
        rows = read_replies(a.replies) if a.replies else model_replies(a.n, a.samples, a.max_new_tokens, a.seed)
    gen_s = time.time() - t0
    if a.save:
        Path(a.save).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    table, differ = agreement(utils, rows)
    source = "tests/test_checks.py" if a.test_cases else a.replies or f"embedded model, {gen_s:.0f} s"
    print(f"replies: {len(rows)} ({source}); "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'check type':16} {'n':>4} {'agree':>6} {'rate':>6} {'both pass':>10} {'only engine':>12} {'only IFEval':>12}")
    tot = {"n": 0, "agree": 0}
    for name, t in sorted(table.items()):
        tot["n"] += t["n"]
        tot["agree"] += t["agree"]
        print(f"{name:16} {t['n']:4} {t['agree']:6} {t['agree'] / t['n']:6.2f} {t['both_pass']:10} {t['only_engine']:12} "
              f"{t['only_ifeval']:12}")
    if tot["n"]:
        print(f"{'all':16} {tot['n']:4} {tot['agree']:6} {tot['agree'] / tot['n']:6.2f}")
    shown: dict[str, int] = {}
    for c, reply, ours, theirs in differ:
        if shown.get(c["type"], 0) < a.show:
            shown[c["type"]] = shown.get(c["type"], 0) + 1
            print(f"\n{json.dumps(c)}  engine={ours} IFEval={theirs}\n  {reply[:300]!r}")
    return 0


def compare_models(utils: Any, models: list[str], a: argparse.Namespace) -> int:
    """IFEval's strict verdict per prompt (every instruction followed), per model, on the same
    greedy prompts; the engine's verdict beside it; the paired difference to the first model."""
    from train.heldout import delta_ci

    for m in models:
        if m != "embedded" and not Path(m).is_dir():
            fail(f"--models {m}: no such model folder")
    print(f"{'model':48} {'prompts':>7} {'IFEval pass':>12} {'engine pass':>12} {'agree':>6}  IFEval vs first [95% CI]")
    first: list[float] | None = None
    saved: list[tuple[str, list[dict[str, Any]]]] = []
    for m in models:
        t0 = time.time()
        rows = model_replies(a.n, 1, a.max_new_tokens, a.seed, None if m == "embedded" else m, greedy=True,
                             backend_name=a.backend, max_checks=a.max_checks)
        saved.append((m, rows))
        theirs = [float(all(official_verdict(utils, c, r["reply"]) for c in r["checks"])) for r in rows]
        ours = [float(all(check_passes(r["reply"], c) for c in r["checks"])) for r in rows]
        agree = sum(x == y for x, y in zip(theirs, ours)) / len(rows)
        d = "" if first is None else _ci3(delta_ci(theirs, first))
        first = theirs if first is None else first
        name = m if len(m) <= 48 else "..." + m[-45:]
        print(f"{name:48} {len(rows):7} {sum(theirs) / len(rows):12.3f} {sum(ours) / len(rows):12.3f} {agree:6.2f}  {d}"
              f"   ({time.time() - t0:.0f} s)")
    if a.save:
        Path(a.save).write_text("".join(json.dumps({"model": m, **r}, ensure_ascii=False) + "\n"
                                        for m, rows in saved for r in rows), encoding="utf-8")
    print(f"load average {os.getloadavg()[0]:.1f}; {a.n} prompts built from this file's questions (none from ../shared), "
          f"1-{a.max_checks} instructions each, greedy, {a.max_new_tokens} tokens")
    return 0


def _ci3(v: Any) -> str:
    return f"{v[0]:+.3f} [{v[1]:+.3f}, {v[2]:+.3f}]" if v else "-"


if __name__ == "__main__":
    raise SystemExit(main())
