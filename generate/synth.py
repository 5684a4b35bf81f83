"""Prompt synthesis, Self-Instruct style (Wang et al. 2022).

Each request shows the model a few instructions sampled from the seed tasks and asks for a
new one. Replies are parsed into instructions, and an instruction is dropped (the reason is
counted) when it is empty, cut off at max_new_tokens, too short, too long, asks for something a
text model cannot do (images, files, ...), is chatter instead of a task ("Sure, ..."), or is a
near-copy of a seed, of a prompt already in the corpus, or of
another instruction from this run. Near-copies are found with MinHash LSH over word 1- and
2-grams (datasketch), confirmed with the exact Jaccard similarity.

Requests are derived from the job seed, the round and the request index only, so a rerun sends
the same requests first and the call cache answers them; their instructions are now in the
corpus, so they count as near-copies, and the rerun goes on to new rounds until it has `n` new
prompts. Each run adds up to `n` new prompts.
"""

from __future__ import annotations

import hashlib
import random
import re
import time
from pathlib import Path
from typing import Any, Sequence

from datasketch import MinHash, MinHashLSH
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from backends import Backend, CachedBackend, ChatRequest, SamplingParams
from corpus import BatchWriter, Corpus, Prompt, UserError

from .sources import load_prompts

SEED_FIELDS = ("instruction", "prompt", "turns", "messages")
TEMPLATE = (
    "Here are some examples of tasks that a user could ask an AI assistant to do:\n\n{examples}\n\n"
    "Come up with one new task, different from all of the examples. "
    "Reply with the task instruction only."
)
# Self-Instruct drops instructions a text-only model cannot carry out.
UNSUITABLE = re.compile(
    r"\b(image|images|picture|pictures|photo|photos|graph|graphs|draw|diagram|flowchart|video|audio|"
    r"file|files|map|maps|go to|click|attached)\b", re.I,
)
_LABEL = re.compile(r"^\s*(?:(?:new\s+)?(?:task|instruction)\s*\d*\s*[:.)\-]\s*|\d+\s*[.):]\s+|[-*•]\s+)", re.I)
_NUMBERED = re.compile(r"^\s*(?:\d+\s*[.):]|(?:task|instruction)\s*\d+\s*[:.])\s*", re.I)
_WORD = re.compile(r"\w+")
# small chat models often answer the meta-request instead of writing a task
_CHATTER = re.compile(r"^(i'm|i am|i will|i'll|i can|i'd|let me|sure|here is|here are|here's|certainly|of course|as an ai|okay|ok)\b", re.I)


def parse_instructions(reply: str) -> list[str]:
    """The instruction(s) in a reply: each item of a numbered list, else the first paragraph."""
    text = reply.strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    numbered = [ln for ln in lines if _NUMBERED.match(ln)]
    items = numbered if len(numbered) >= 2 else [text.split("\n\n")[0]] if text else []
    out = []
    for item in items:
        s = _LABEL.sub("", item, count=1).strip()
        s = " ".join(s.split())
        if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'`":
            s = s[1:-1].strip()
        out.append(s)
    return out or [""]


def shingles(text: str) -> set[str]:
    words = [w.lower() for w in _WORD.findall(text)]
    return set(words) | {f"{a} {b}" for a, b in zip(words, words[1:])}


class NearDuplicateIndex:
    """MinHash LSH for candidates, exact Jaccard to confirm: no false drops from hashing."""

    def __init__(self, threshold: float = 0.7, num_perm: int = 128):
        self.threshold, self.num_perm = threshold, num_perm
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.sets: dict[str, set[str]] = {}

    def _minhash(self, sh: set[str]) -> MinHash:
        m = MinHash(num_perm=self.num_perm)
        m.update_batch([s.encode() for s in sh])
        return m

    def match(self, text: str) -> str | None:
        """The key of an indexed text at least `threshold` similar, or None."""
        sh = shingles(text)
        if not sh:
            return None
        for key in self.lsh.query(self._minhash(sh)):
            other = self.sets[key]
            if len(sh & other) / len(sh | other) >= self.threshold:
                return key
        return None

    def add(self, key: str, text: str) -> None:
        sh = shingles(text)
        if sh and key not in self.sets:
            self.sets[key] = sh
            self.lsh.insert(key, self._minhash(sh))


def drop_reason(text: str, min_words: int, max_words: int, index: NearDuplicateIndex) -> str | None:
    if not text.strip():
        return "empty"
    words = len(text.split())
    if words < min_words:
        return "too_short"
    if words > max_words:
        return "too_long"
    if UNSUITABLE.search(text):
        return "unsuitable"
    if not text[0].isalnum():
        return "starts_with_punctuation"
    if _CHATTER.match(text):
        return "not_an_instruction"
    hit = index.match(text)
    if hit is not None:
        return {"s": "near_copy_of_seed", "c": "near_copy_in_corpus", "r": "near_copy_in_run"}[hit[0]]
    return None


def _rng(seed: int, round_: int, i: int) -> random.Random:
    return random.Random(hashlib.sha256(f"synth\x00{seed}\x00{round_}\x00{i}".encode()).digest())


def run_synth(
    corpus: Corpus,
    seeds: str | Path,
    backend: Backend | None = None,
    n: int = 200,
    params: SamplingParams | None = None,
    examples: int = 3,
    seed: int = 0,
    min_words: int = 3,
    max_words: int = 150,
    threshold: float = 0.7,
    max_requests: int | None = None,
    progress: bool = True,
    *,
    seed_records: Sequence[Prompt] | None = None,
    fields: Sequence[str] | None = None,
    argv: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Synthesize up to `n` new prompts from seed tasks; return the run's summary."""
    if n < 1:
        raise UserError(f"--n {n}: ask for at least 1 prompt")
    if examples < 1:
        raise UserError(f"--examples {examples}: show the model at least 1 seed task")
    if not 0 < threshold <= 1:
        raise UserError(f"--threshold {threshold}: a Jaccard similarity in (0, 1]")
    if min_words > max_words:
        raise UserError(f"--min-words {min_words} is above --max-words {max_words}")
    seed_prompts = list(seed_records) if seed_records is not None else load_prompts(seeds, fields or SEED_FIELDS)[0]
    params = params or SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=96)
    max_requests = max_requests or 10 * n
    if backend is None:
        from backends import load_backend

        backend = load_backend("hf", None)
    t_start = time.perf_counter()
    config = {"seeds": str(seeds), "n": n, "examples": examples, "seed": seed, "params": params.model_dump(mode="json"),
              "min_words": min_words, "max_words": max_words, "threshold": threshold, "backend": backend.name, "model": backend.model_id}
    with corpus.run("generate.prompts", config, argv) as run:
        index = NearDuplicateIndex(threshold)
        for i, p in enumerate(seed_prompts):
            index.add(f"s{i}", p.text)
        for row in corpus.query("SELECT id, text FROM prompts"):
            index.add(f"c{row['id']}", row["text"])
        cached = CachedBackend(backend, corpus, run.id)
        produced, sent, round_, failures = 0, 0, 0, 0
        dropped: dict[str, int] = {}
        source = f"synth:{run.id}"
        bar = Progress(TextColumn("[bold]synthesize"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       console=Console(stderr=True), disable=not progress)
        with bar, BatchWriter(corpus) as writer:
            job = bar.add_task("synth", total=n)
            while produced < n and sent < max_requests:
                k = min(max(2 * (n - produced), 4), 64, max_requests - sent)
                requests, shown = [], []
                for i in range(k):
                    rng = _rng(seed, round_, i)
                    picks = rng.sample(range(len(seed_prompts)), min(examples, len(seed_prompts)))
                    listing = "\n".join(f"{j + 1}. {seed_prompts[s].text.strip()}" for j, s in enumerate(picks))
                    msgs = [{"role": "user", "content": TEMPLATE.format(examples=listing)}]
                    requests.append(ChatRequest(messages=msgs, params=params.model_copy(update={"seed": rng.getrandbits(62)})))
                    shown.append([seed_prompts[s].meta.get("id", s) for s in picks])
                comps = cached.generate(requests)
                sent += k
                new = []
                for req, comp, ex in zip(requests, comps, shown):
                    if not comp.ok:
                        failures += 1
                        continue
                    reply = comp.text
                    if comp.finish_reason == "length":
                        # cut at max_new_tokens: the last line is half-written; what comes before it
                        # (often the instruction, then the model's own answer) is whole
                        head, newline, _ = reply.rstrip().rpartition("\n")
                        reply = head if newline else ""
                        if not reply.strip():
                            dropped["truncated"] = dropped.get("truncated", 0) + 1
                            continue
                    for text in parse_instructions(reply):
                        reason = "over_quota" if produced >= n else drop_reason(text, min_words, max_words, index)
                        if reason:
                            dropped[reason] = dropped.get(reason, 0) + 1
                            continue
                        p = Prompt(messages=[{"role": "user", "content": text}], source=source, run_id=run.id,
                                   meta={"synth": {"examples": ex, "model": backend.model_id, "round": round_, "call_key": cached.key(req)}})
                        index.add(f"r{p.id}", text)
                        new.append(p)
                        produced += 1
                        bar.advance(job, 1)
                writer.add(new)
                round_ += 1
        run.summary = {
            "asked": n, "produced": produced, "dropped": dropped, "requests": sent, "rounds": round_,
            "calls_cached": cached.hits, "failures": failures, "elapsed_s": round(time.perf_counter() - t_start, 2),
            "source": source, "backend": backend.name, "model": backend.model_id, "run_id": run.id,
        }
    return dict(run.summary)


def synth_table(summary: dict[str, Any]) -> Table:
    t = Table(title=f"generate prompts · run {summary['run_id']}", show_header=False)
    t.add_column("what", style="bold")
    t.add_column("value", justify="right")
    t.add_row("model", f"{summary['backend']}:{summary['model']}")
    t.add_row("asked", str(summary["asked"]))
    t.add_row("produced", str(summary["produced"]))
    for reason, count in sorted(summary["dropped"].items(), key=lambda kv: -kv[1]):
        t.add_row(f"dropped: {reason}", str(count))
    t.add_row("requests (from cache)", f"{summary['requests']} ({summary['calls_cached']})")
    t.add_row("failures", str(summary["failures"]))
    t.add_row("elapsed", f"{summary['elapsed_s']:.1f} s")
    t.add_row("stored as source", summary["source"])
    return t
