"""Decontamination: drop prompts or responses that share a word n-gram with an evaluation set.

Evaluation sets are files or folders the user names (.jsonl, .json, .txt, .parquet); every string
field of every record counts (HumanEval's prompt, solution and tests; MT-Bench's turns), so
nothing about a particular benchmark's layout is assumed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from corpus import UserError

from .base import Filter, Item
from .dedup import words_of

EVAL_SUFFIXES = (".jsonl", ".json", ".txt", ".parquet")


def _strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def eval_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in EVAL_SUFFIXES and p.is_file())
        if not files:
            raise UserError(f"{path}: no {'/'.join(EVAL_SUFFIXES)} files in this folder; name evaluation files or a folder holding them")
        return files
    if not path.exists():
        raise UserError(f"{path}: no such evaluation file; fix the path in decontaminate.eval_sets or --eval-set")
    return [path]


def eval_texts(path: Path) -> Iterator[tuple[str, str]]:
    """(where, text) for every string in an evaluation file; where = file:line."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist(), 1):
            for s in _strings(row):
                yield f"{path.name}:row{i}", s
        return
    with path.open(encoding="utf-8", errors="replace") as f:
        if path.suffix == ".json":
            for s in _strings(json.load(f)):
                yield path.name, s
            return
        for i, line in enumerate(f, 1):
            if path.suffix == ".jsonl":
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{i}: not valid JSON ({e.msg}); fix the line or drop the file from eval_sets") from None
                for s in _strings(obj):
                    yield f"{path.name}:{i}", s
            else:
                yield f"{path.name}:{i}", line


class EvalIndex:
    """Word n-grams of the evaluation texts, and whole texts for ones shorter than n words
    (indexed by their length, so a lookup is a set probe per window, not a scan)."""

    def __init__(self, paths: list[Path], ngram: int = 13, min_words: int = 8):
        self.ngram, self.min_words = ngram, min_words
        self.grams: dict[str, str] = {}
        self.whole: dict[int, dict[str, str]] = {}   # length in words -> text -> where
        self.files: list[str] = []
        for root in paths:
            for f in eval_files(Path(root)):
                self.files.append(str(f))
                for where, text in eval_texts(f):
                    words = words_of(text)
                    if len(words) < self.min_words:
                        continue
                    if len(words) < ngram:
                        self.whole.setdefault(len(words), {}).setdefault(" ".join(words), where)
                    for g in self.windows(words, ngram):
                        self.grams.setdefault(g, where)

    @staticmethod
    def windows(words: list[str], n: int) -> Iterator[str]:
        for i in range(len(words) - n + 1):
            yield " ".join(words[i:i + n])

    def match(self, text: str) -> tuple[str, str] | None:
        """(where in the eval set, the overlapping text) of the first hit, or None."""
        words = words_of(text)
        if len(words) < self.min_words:
            return None
        for g in self.windows(words, self.ngram):
            where = self.grams.get(g)
            if where is not None:
                return where, g
        # an evaluation text shorter than n words, contained whole in this text
        for length, texts in self.whole.items():
            for g in self.windows(words, length):
                where = texts.get(g)
                if where is not None:
                    return where, g
        return None


class Decontaminate(Filter):
    """Drops an item that shares a word n-gram (or a whole short text) with an evaluation set."""

    name = "decontaminate"

    def __init__(self, index: EvalIndex, as_rejected: bool = False):
        super().__init__(as_rejected)
        self.index = index

    def filter(self, item: Item):
        hit = self.index.match(item.text)
        if hit is None:
            return True
        where, overlap = hit
        return False, f"{self.index.ngram}-gram overlap", {"eval": where, "overlap": overlap[:200]}
