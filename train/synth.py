"""Checkable-instruction prompts: base prompts + instruction templates, each with its verifier.

A prompt such as "Explain DNS." becomes "Explain DNS.\\n\\nUse no more than 40 words. Do not use
any commas in your answer." with meta["checks"] = [{"type": "max_words", "n": 40},
{"type": "no_commas"}], so the judge's `checkable` verifier (and train's eval) can grade any
reply without an LLM: ground truth the loop can learn from.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator


from corpus import Corpus, Prompt, UserError
from corpus.yamlfile import line_of, load_yaml
from generate.sources import jsonl_records

from .checks import validate_check

DEFAULT_TEMPLATES = Path(__file__).resolve().parent.parent / "prompts" / "checkable_templates.yaml"


@dataclass
class Template:
    name: str
    text: str
    check: dict[str, Any]
    values: dict[str, list[Any]]
    conflicts: list[str]

    def draw(self, rng: random.Random) -> tuple[str, dict[str, Any]]:
        picked = {k: rng.choice(v) for k, v in self.values.items()}
        text = self.text.format(**picked)
        check = {}
        for k, v in self.check.items():
            if isinstance(v, str) and re.fullmatch(r"\{\w+\}", v):
                v = picked[v[1:-1]]  # keep numbers numbers: "{n}" with n=3 gives 3, not "3"
            elif isinstance(v, str):
                v = v.format(**picked)
            check[k] = v
        return text, check


def load_templates(path: str | Path = DEFAULT_TEMPLATES) -> list[Template]:
    p = Path(path)
    if not p.exists():
        raise UserError(f"--templates {p}: no such file")
    data, lines = load_yaml(p)
    if not isinstance(data, dict) or not isinstance(data.get("templates"), list) or not data["templates"]:
        raise UserError(f"{p}:1: expected `templates:` with a list of {{name, text, check}} entries")
    out = []
    for i, t in enumerate(data["templates"]):
        name = t.get("name", f"#{i}") if isinstance(t, dict) else f"#{i}"
        line = line_of(lines, ("templates", i))
        if not isinstance(t, dict) or not {"name", "text", "check"} <= set(t):
            raise UserError(f"{p}:{line}: template {name} needs name, text and check")
        values = t.get("values") or {}
        tmpl = Template(t["name"], t["text"], dict(t["check"]), {k: list(v) for k, v in values.items()},
                        list(t.get("conflicts") or []))
        try:
            _, sample = tmpl.draw(random.Random(0))
        except (KeyError, IndexError) as e:
            raise UserError(f"{p}:{line}: template {name} uses {{{e.args[0]}}} but `values:` has no list for it") from None
        if err := validate_check(sample):
            raise UserError(f"{p}:{line}: template {name}: {err}")
        out.append(tmpl)
    return out


def base_prompts(path: str | Path) -> Iterator[tuple[str, str]]:
    """(where, prompt text) from Arena-Hard ({turns}), Self-Instruct ({instruction, instances})
    or generic ({prompt} / {messages} / {text}) JSONL."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"--base {p}: no such file")
    for where, d in jsonl_records(p):
        text = _prompt_text(d)
        if not text:
            raise UserError(f"{where}: no prompt: expected turns, instruction, prompt, messages or text")
        yield where, text


def _prompt_text(d: Any) -> str | None:
    if not isinstance(d, dict):
        return None
    if d.get("turns"):
        t = d["turns"][0]
        return (t.get("content") if isinstance(t, dict) else t) or None
    if d.get("instruction"):
        inp = next((x.get("input") for x in d.get("instances") or [] if isinstance(x, dict) and x.get("input")), "")
        return d["instruction"] + (f"\n\n{inp}" if inp else "")
    if isinstance(d.get("prompt"), str):
        return d["prompt"]
    if isinstance(d.get("messages"), list) and d["messages"]:
        return d["messages"][-1].get("content")
    return d.get("text") if isinstance(d.get("text"), str) else None


def synthesize(
    bases: list[str | Path], n: int, templates: list[Template], seed: int = 0, max_checks: int = 2,
    max_base_words: int = 120,
) -> list[Prompt]:
    """n prompts: a random base prompt (short enough to leave room for the reply) plus 1..max_checks
    non-conflicting instructions. Deterministic for a seed."""
    if n < 1:
        raise UserError(f"--n {n}: ask for at least one prompt")
    pool = [(w, t) for b in bases for w, t in base_prompts(b) if len(t.split()) <= max_base_words]
    if not pool:
        raise UserError(f"--base: no prompt of at most {max_base_words} words in {', '.join(map(str, bases))}")
    rng = random.Random(seed)
    out: dict[str, Prompt] = {}
    attempts = 0
    while len(out) < n and attempts < n * 20:
        attempts += 1
        where, text = rng.choice(pool)
        k = rng.randint(1, max(1, max_checks))
        chosen: list[Template] = []
        for t in rng.sample(templates, len(templates)):
            types = {c.check["type"] for c in chosen}
            if len(chosen) < k and t.check["type"] not in types and not (set(t.conflicts) & types) \
                    and not any(t.check["type"] in c.conflicts for c in chosen):
                chosen.append(t)
        drawn = [t.draw(rng) for t in chosen]
        full = text.strip() + "\n\n" + " ".join(d[0] for d in drawn)
        meta = {"checks": [d[1] for d in drawn], "templates": [t.name for t in chosen], "base": where}
        p = Prompt(messages=[{"role": "user", "content": full}], source=f"checkable:{where}", meta=meta)
        out.setdefault(p.id, p)
    return list(out.values())


def run_prompts(
    corpus: Corpus | None, bases: list[str | Path], n: int, templates_path: str | Path = DEFAULT_TEMPLATES,
    seed: int = 0, max_checks: int = 2, out: str | Path | None = None, argv: list[str] | None = None,
) -> dict[str, Any]:
    """Synthesize, then write to the corpus (one transaction) and/or a JSONL file that
    `python -m generate --prompts` and `python -m train loop --prompts` read (checks land in meta)."""
    if corpus is None and out is None:
        raise UserError("give --db and/or --out: where should the prompts go?")
    prompts = synthesize(bases, n, load_templates(templates_path), seed, max_checks)
    written = 0
    if corpus is not None:
        with corpus.run("train prompts", {"bases": [str(b) for b in bases], "n": n, "seed": seed}, argv=argv) as run:
            for p in prompts:
                p.run_id = run.id
            written = corpus.insert(prompts)
            run.summary = {"prompts": len(prompts), "written": written}
    if out is not None:
        with open(out, "w", encoding="utf-8") as f:
            for p in prompts:
                f.write(json.dumps({"messages": p.messages, **p.meta}, ensure_ascii=False) + "\n")
    by_type: dict[str, int] = {}
    for p in prompts:
        for c in p.meta["checks"]:
            by_type[c["type"]] = by_type.get(c["type"], 0) + 1
    return {"prompts": len(prompts), "written": written, "checks_by_type": by_type, "out": str(out) if out else None}
