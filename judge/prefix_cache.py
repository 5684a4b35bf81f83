"""Judge prompts share a long rubric prefix: compute its KV cache once and decode only the rest.

`PrefixReuseBackend` wraps the hf backend (reusing its loaded `.model` and `.tokenizer`). For a
batch of requests it finds the token prefix they all share (the system message with the rubric
and the start of the user turn), runs the model over that prefix once, copies the resulting
DynamicCache for a batch (`batch_repeat_interleave`), and feeds each row only its own suffix.
Suffixes of different lengths are padded *between* the prefix and the suffix: the attention
mask hides the padding and explicit position ids keep every real token at its true position,
so each row computes exactly what it would alone.

Greedy requests without stop strings take this path; sampled requests and stop strings go to
the wrapped backend unchanged (judges run at temperature 0 by default).

A request's `json_schema` is enforced with the hf backend's own grammar matchers
(backends/structured.py), so both paths give the same constrained answers and share cache entries.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from backends import Backend, ChatRequest, Completion, TokenLogprob
from backends.base import Deliver, Progress
from backends.hf import MAX_BATCH_TOKENS, token_batches

MIN_PREFIX = 32  # below this many shared tokens, reuse saves less than the copy costs


class PrefixReuseBackend(Backend):
    name = "hf"
    supports_json_schema = True
    supports_logprobs = True

    streams_results = True  # each finished batch is delivered (saved) before the next runs

    def __init__(self, inner: Any):
        super().__init__(inner.model_id)
        self.inner = inner
        self.max_prompt_bytes = inner.max_prompt_bytes
        self.batch_size = getattr(inner, "batch_size", 16)
        self.max_batch_tokens = getattr(inner, "max_batch_tokens", MAX_BATCH_TOKENS)
        self.stats = {"prefix_tokens_saved": 0, "prefills": 0}

    @property
    def model_id(self) -> str:
        # answers equal the hf backend's, so they share its cache entries
        return self.inner.model_id

    def close(self) -> None:
        self.inner.close()

    def _generate(self, requests: list[ChatRequest], progress: Progress, deliver: Deliver | None = None) -> list[Completion]:  # type: ignore[override]
        out: list[Completion | None] = [None] * len(requests)
        fast: dict[str, list[int]] = {}
        slow: list[int] = []
        for i, r in enumerate(requests):
            if r.params.temperature == 0 and not r.params.stop and not self.inner.schema_error(r):
                fast.setdefault(r.messages[0]["content"], []).append(i)
            else:
                slow.append(i)
        for idxs in fast.values():
            ids = [self.inner.prompt_ids(requests[i]) for i in idxs]
            room = [self.inner.max_positions - len(x) for x in ids]
            too_long = [k for k, r in enumerate(room) if r < 1]
            for k in too_long:
                slow.append(idxs[k])
            keep = sorted((k for k in range(len(idxs)) if k not in too_long), key=lambda k: -len(ids[k]))
            for start, end in token_batches([len(ids[k]) for k in keep], self.batch_size, self.max_batch_tokens):
                part = keep[start:end]
                comps = self._batch([requests[idxs[k]] for k in part], [ids[k] for k in part])
                for k, c in zip(part, comps):
                    out[idxs[k]] = c
                progress(len(part))
                if deliver is not None:
                    deliver([(idxs[k], c) for k, c in zip(part, comps)])
        if slow:
            passed = (lambda rs: deliver([(slow[k], c) for k, c in rs])) if deliver is not None else None
            for i, c in zip(slow, self.inner.generate([requests[i] for i in slow], progress, on_results=passed)):
                out[i] = c
        return out  # type: ignore[return-value]

    def _batch(self, reqs: list[ChatRequest], ids: list[list[int]]) -> list[Completion]:
        import torch

        t0 = time.perf_counter()
        shared = _common_prefix(ids)
        shared = min(shared, min(len(x) for x in ids) - 1)  # every row keeps at least one token to feed
        try:
            if shared < MIN_PREFIX:
                texts = self._decode(reqs, ids, 0)
            else:
                texts = self._decode(reqs, ids, shared)
                self.stats["prefix_tokens_saved"] += shared * (len(reqs) - 1)
        except torch.OutOfMemoryError:
            if len(reqs) == 1:
                return [Completion(finish_reason="error", error="out of memory on a single request")]
            h = len(reqs) // 2
            return self._batch(reqs[:h], ids[:h]) + self._batch(reqs[h:], ids[h:])
        except Exception as e:  # one bad batch must not end a job of thousands
            return [Completion(finish_reason="error", error=f"{type(e).__name__}: {str(e)[:200]}") for _ in reqs]
        share = (time.perf_counter() - t0) * 1000 / len(reqs)
        return [Completion(text=t, finish_reason=f, prompt_tokens=len(x), completion_tokens=n, latency_ms=share, logprobs=lp)
                for (t, f, n, lp), x in zip(texts, ids)]

    def _prefill(self, ids: list[list[int]], shared: int) -> tuple[Any, Any, Any]:
        """Next-token logits of every row (batch x vocab), the KV cache and the attention mask, with
        the first `shared` tokens computed once for the batch. Call under torch.inference_mode."""
        import torch
        from transformers import DynamicCache

        model, tok, dev = self.inner.model, self.inner.tokenizer, self.inner.device
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        b = len(ids)
        cache = DynamicCache(config=model.config)
        if shared:
            prefix = torch.tensor([ids[0][:shared]], device=dev)
            # logits_to_keep=1: only the KV cache is wanted here, and full logits are
            # tokens x vocab floats (2,900 x 49,152 x 4 bytes: 570 MB a row on the 135M model)
            model(input_ids=prefix, past_key_values=cache, use_cache=True, logits_to_keep=1)
            self.stats["prefills"] += 1
            if b > 1:
                cache = copy.deepcopy(cache)
                cache.batch_repeat_interleave(b)
        suffixes = [x[shared:] for x in ids]
        width = max(len(s) for s in suffixes)
        inp = torch.full((b, width), pad, dtype=torch.long, device=dev)
        mask = torch.zeros((b, shared + width), dtype=torch.long, device=dev)
        mask[:, :shared] = 1
        pos = torch.zeros((b, width), dtype=torch.long, device=dev)
        for r, s in enumerate(suffixes):
            inp[r, width - len(s):] = torch.tensor(s, device=dev)
            mask[r, shared + width - len(s):] = 1
            pos[r, width - len(s):] = torch.arange(shared, shared + len(s), device=dev)
            pos[r, : width - len(s)] = shared  # padding: hidden by the mask, any valid position
        logits = model(input_ids=inp, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True,
                       logits_to_keep=1).logits[:, -1]
        return logits, cache, mask

    def label_logprobs(self, requests: list[ChatRequest], labels: list[str]) -> list[dict[str, float] | str]:
        """The hf backend's `label_logprobs` (one forward pass, no decoding), with the rubric prefix
        that a batch shares computed once: most of a judge prompt is that prefix."""
        import torch

        first = self.inner.label_token_ids(labels)
        out: list[dict[str, float] | str] = [""] * len(requests)
        ids = [self.inner.prompt_ids(r) for r in requests]
        groups: dict[str, list[int]] = {}
        alone = []
        for i, r in enumerate(requests):
            if len(ids[i]) >= self.inner.max_positions or len(ids[i]) < 2:
                alone.append(i)  # the hf backend says why, or scores it unshared
            else:
                groups.setdefault(r.messages[0]["content"], []).append(i)
        for idxs in groups.values():
            idxs.sort(key=lambda i: -len(ids[i]))
            for start, end in token_batches([len(ids[i]) for i in idxs], self.batch_size, self.max_batch_tokens):
                part = idxs[start:end]
                rows = [ids[i] for i in part]
                shared = min(_common_prefix(rows), min(len(x) for x in rows) - 1)
                try:
                    with torch.inference_mode():
                        lp = torch.log_softmax(self._prefill(rows, shared if shared >= MIN_PREFIX else 0)[0].float(), dim=-1)
                except Exception as e:  # one bad batch must not end a job
                    for i in part:
                        out[i] = f"{type(e).__name__}: {str(e)[:200]}"
                    continue
                for k, i in enumerate(part):
                    out[i] = {lab: float(torch.logsumexp(lp[k, v], dim=0)) for lab, v in first.items()}
        if alone:
            for i, r in zip(alone, self.inner.label_logprobs([requests[i] for i in alone], labels)):
                out[i] = r
        return out

    def _decode(self, reqs: list[ChatRequest], ids: list[list[int]], shared: int) -> list[tuple[str, str, int, Any]]:
        import torch

        model, tok, dev = self.inner.model, self.inner.tokenizer, self.inner.device
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        b = len(reqs)
        with torch.inference_mode():
            logits, cache, mask = self._prefill(ids, shared)
            next_pos = torch.tensor([len(x) for x in ids], device=dev)
            limit = [min(r.params.max_new_tokens, self.inner.max_positions - len(x)) for r, x in zip(reqs, ids)]
            tokens: list[list[int]] = [[] for _ in range(b)]
            lps: list[list[TokenLogprob]] = [[] for _ in range(b)]
            done = [False] * b
            finish = ["length"] * b
            eos = self.inner.eos_ids
            schema_rows = self.inner.schema_rows(reqs, limit)
            n_out = 0  # tokens generated so far (the same for every row still decoding)
            while True:
                logits = logits.float()
                if schema_rows is not None:
                    schema_rows.apply(logits, n_out, [None if n_out == 0 or done[r] else tokens[r][-1] for r in range(b)])
                n_out += 1
                lp = torch.log_softmax(logits, dim=-1)
                chosen = lp.argmax(dim=-1).tolist()
                for r in range(b):
                    if done[r]:
                        continue
                    t = chosen[r]
                    if t in eos:
                        done[r], finish[r] = True, "stop"
                        continue
                    tokens[r].append(t)
                    k = reqs[r].top_logprobs
                    if k is not None:
                        top: dict[str, float] = {}
                        if k:
                            vals, alts = lp[r].topk(k)
                            for v, a in zip(vals.tolist(), alts.tolist()):
                                if v == float("-inf"):  # forbidden by the schema
                                    break
                                top.setdefault(tok.decode([a]), v)
                        lps[r].append(TokenLogprob(token=tok.decode([t]), logprob=float(lp[r, t]), top=top))
                    if len(tokens[r]) >= limit[r]:
                        done[r] = True
                if all(done):
                    break
                step = torch.tensor([[tokens[r][-1] if tokens[r] else pad] for r in range(b)], device=dev)
                mask = torch.cat([mask, torch.ones((b, 1), dtype=torch.long, device=dev)], dim=1)
                logits = model(input_ids=step, attention_mask=mask, position_ids=next_pos.unsqueeze(1),
                               past_key_values=cache, use_cache=True).logits[:, -1]
                next_pos = next_pos + 1
        return [(tok.decode(tokens[r], skip_special_tokens=True), finish[r], len(tokens[r]),
                 lps[r] if reqs[r].top_logprobs is not None else None) for r in range(b)]


def _common_prefix(seqs: list[list[int]]) -> int:
    first = seqs[0]
    n = len(first)
    for s in seqs[1:]:
        m = min(n, len(s))
        i = 0
        while i < m and s[i] == first[i]:
            i += 1
        n = i
    return n
