"""Helpers for the judge tests (no tests here): small corpora and scripted judges."""

from __future__ import annotations

import json
import re
from pathlib import Path

from backends import ChatRequest
from corpus import Corpus, Generation, Prompt

ROOT_DIR = Path(__file__).resolve().parent.parent
PROMPTS = ROOT_DIR / "prompts"


def add_candidates(corpus: Corpus, items: list[tuple[str, list[str]]], model: str = "gen-model",
                   meta: dict | None = None) -> list[Generation]:
    """items: (question, [responses]); returns the generations in order."""
    recs, gens = [], []
    for question, responses in items:
        p = Prompt(messages=[{"role": "user", "content": question}], meta=meta or {})
        recs.append(p)
        for i, r in enumerate(responses):
            g = Generation(prompt_id=p.id, backend="fake", model=model, params={}, sample_idx=i, response=r)
            gens.append(g)
            recs.append(g)
    corpus.insert(recs)
    return gens


def answer_of(req: ChatRequest) -> str:
    """The fenced ANSWER a pointwise judge request shows."""
    m = re.search(r"<<<ANSWER \w+>>>\n(.*)\n<<<END ANSWER \w+>>>", req.messages[1]["content"], re.DOTALL)
    return m.group(1) if m else ""


def shown(req: ChatRequest) -> tuple[str, str]:
    """The two responses a pairwise request shows, in order."""
    text = req.messages[1]["content"]
    a = re.search(r"<<<RESPONSE A \w+>>>\n(.*?)\n<<<END RESPONSE A", text, re.DOTALL).group(1)
    b = re.search(r"<<<RESPONSE B \w+>>>\n(.*?)\n<<<END RESPONSE B", text, re.DOTALL).group(1)
    return a, b


def verdict(score: int, rationale: str = "scripted") -> str:
    return json.dumps({"rationale": rationale, "score": score})


def write_rubric(path: Path, source: str, replace: dict[str, str] | None = None) -> Path:
    """A copy of a shipped rubric with exact text replacements."""
    text = (PROMPTS / source).read_text()
    for old, new in (replace or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    path.write_text(text)
    return path
