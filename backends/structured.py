"""JSON-schema constrained decoding for the transformers backend, with llguidance.

A request that carries `json_schema` gets a grammar matcher of its own (one per row, so a batch
can mix schemas and unconstrained rows). Before each token is chosen, the matcher's bitmask of the
tokens that keep the reply a prefix of a schema-valid document sets every other logit to -inf;
once the document is complete only end-of-turn is allowed. The reply is therefore valid JSON by
construction, whatever the weights (a random model included), unless it runs out of tokens.

Running out: a rationale string of 300 characters may need more tokens than `max_new_tokens`
leaves. When a row has `RESERVE` tokens left and is not finished, the matcher's choices are
narrowed to tokens that close what is open wherever the grammar allows one (a token starting
with `"`, else one starting with `}` or `]`), so an open string ends and the forced keys and
values that follow still fit.
This covers flat schemas like the judge's ({rationale, score|winner}); a schema that needs more
than RESERVE tokens after that point (long required arrays) can still be cut, and the completion
then says `finish_reason="length"` as it would unconstrained.

llguidance (Microsoft's guidance engine, Rust, no Python dependencies) was chosen over xgrammar,
whose package requires triton on Linux, and outlines-core, which has no logits processor of its
own. Its torch helper compiles its mask kernel with torch.compile; we unpack the bitmask with
numpy instead, which costs microseconds for a 49k vocabulary and needs no compiler.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import numpy as np

RESERVE = 32  # tokens kept for closing an open JSON document before max_new_tokens

_lock = threading.Lock()
_constraints: dict[int, "SchemaConstraint"] = {}


def constraint_for(tokenizer: Any, vocab_size: int, eos_ids: set[int]) -> "SchemaConstraint":
    """The constraint of a loaded tokenizer, built once (about 1 s for 49k tokens)."""
    with _lock:
        key = id(tokenizer)
        if key not in _constraints:
            _constraints[key] = SchemaConstraint(tokenizer, vocab_size, eos_ids)
        return _constraints[key]


class SchemaConstraint:
    """A tokenizer's view for llguidance, and the grammars compiled from schemas (cached)."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: set[int]):
        import llguidance
        import llguidance.hf

        self.tokenizer = tokenizer  # held so that its id is not reused by another while cached
        self.vocab = max(int(vocab_size), len(tokenizer))
        eos = sorted(eos_ids) or [tokenizer.eos_token_id]
        self.lltok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=self.vocab, eos_token=eos)
        pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        # closing tiers: a quote ends an open string (inside one, '}' is just text), then brackets
        self.closers = []
        for chars in ('"', "}]"):
            tier = np.zeros(self.vocab, dtype=bool)
            tier[: len(pieces)] = [bool(p) and p[0] in chars for p in pieces]
            self.closers.append(tier)
        self._grammars: dict[str, str] = {}
        self._errors: dict[str, str] = {}

    def check(self, schema: dict[str, Any]) -> str | None:
        """None when the schema compiles, else a one-line reason (the request then fails alone)."""
        self._grammar(schema)
        return self._errors.get(_key(schema))

    def _grammar(self, schema: dict[str, Any]) -> str | None:
        import llguidance

        key = _key(schema)
        if key not in self._grammars and key not in self._errors:
            try:  # compact JSON (as vLLM's disable_any_whitespace): a model cannot stall on spaces
                grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
                err = llguidance.LLMatcher.validate_grammar(grammar, self.lltok)
            except Exception as e:  # a schema llguidance cannot read at all
                grammar, err = "", str(e)
            if err and not err.startswith("WARNING"):
                self._errors[key] = "json_schema cannot be enforced: " + err.strip().splitlines()[0][:200]
            else:
                self._grammars[key] = grammar
        return self._grammars.get(key)

    def matcher(self, schema: dict[str, Any]) -> Any:
        import llguidance

        grammar = self._grammar(schema)
        if grammar is None:
            raise ValueError(self._errors[_key(schema)])
        return llguidance.LLMatcher(self.lltok, grammar, log_level=0)

    def rows(self, schemas: list[dict[str, Any] | None], budgets: list[int]) -> "SchemaRows | None":
        """Matchers for one batch (None where a row has no schema); None when no row has one."""
        if not any(s is not None for s in schemas):
            return None
        return SchemaRows(self, [None if s is None else self.matcher(s) for s in schemas], budgets)


class SchemaRows:
    """The matchers of one batch: feed each row's last token, then mask the next token's logits."""

    def __init__(self, constraint: SchemaConstraint, matchers: list[Any], budgets: list[int]):
        self.c = constraint
        self.matchers = matchers
        self.budgets = budgets
        self.ended: set[int] = set()
        self.bitmask = np.zeros((len(matchers), (constraint.vocab + 31) // 32), dtype=np.int32)

    def apply(self, scores: Any, step: int, last: list[int | None]) -> Any:
        """Mask `scores` (batch x vocab) in place for step `step` (0 = first generated token).

        `last[i]` is the token row i produced at the previous step (None: nothing to feed, as on
        the first step or for a row that has finished).
        """
        import torch

        live = []
        for i, m in enumerate(self.matchers):
            if m is None or i in self.ended or m.is_error():
                continue
            if last[i] is not None:
                if m.is_stopped():  # the document was complete and the row has taken its end token
                    self.ended.add(i)
                    continue
                if not m.consume_token(int(last[i])):
                    continue  # a row cut by a stop string kept decoding: nothing to enforce any more
            live.append(i)  # a complete document (stopped matcher) allows only the end tokens
        if not live:
            return scores
        for i in live:
            row = self.bitmask[i]
            self.matchers[i].unsafe_compute_mask_ptr(row.ctypes.data, row.size * row.itemsize)
        allowed = np.unpackbits(self.bitmask[live].view(np.uint8), axis=1, bitorder="little")[:, : self.c.vocab].astype(bool)
        for k, i in enumerate(live):
            if self.budgets[i] - step <= RESERVE:
                for tier in self.c.closers:
                    narrowed = allowed[k] & tier
                    if narrowed.any():
                        allowed[k] = narrowed
                        break
        width = scores.shape[1]
        if allowed.shape[1] < width:
            allowed = np.pad(allowed, ((0, 0), (0, width - allowed.shape[1])))
        keep = torch.from_numpy(allowed[:, :width]).to(scores.device)
        idx = torch.tensor(live, device=scores.device)
        scores[idx] = scores[idx].masked_fill(~keep, float("-inf"))
        return scores


def build_processor() -> type:
    """A transformers LogitsProcessor over `SchemaRows` (transformers is imported lazily)."""
    from transformers import LogitsProcessor

    class SchemaLogitsProcessor(LogitsProcessor):
        """Put before the token chooser in `generate`: rows are left-padded to `prompt_width`."""

        def __init__(self, rows: SchemaRows, prompt_width: int):
            self.rows = rows
            self.width = prompt_width

        def __call__(self, input_ids, scores):
            step = input_ids.shape[1] - self.width
            last = [None] * input_ids.shape[0] if step == 0 else input_ids[:, -1].tolist()
            return self.rows.apply(scores, step, last)

    return SchemaLogitsProcessor


def _key(schema: dict[str, Any]) -> str:
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))
