"""transformers backend: the embedded default, on the CPU or a CUDA GPU.

Requests are sorted by prompt length and cut into batches, so a batch pads little; prompts are
padded on the LEFT so every row's next token sits in the last column. Results come back in
request order.

Sampling is done by our own logits processor, not by transformers' sampler, so that one
request's sample does not depend on which batch it lands in: for each row and step we add
Gumbel noise drawn from a generator seeded by (request seed, step) to the temperature-scaled,
top-p-masked logits and take the argmax. The argmax of logits + Gumbel noise is an exact sample
from softmax(logits) (the Gumbel-max trick), and `generate` runs with do_sample=False so it just
takes the token we chose.
"""

from __future__ import annotations

import os
import secrets
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

from .base import Backend, BackendError, ChatRequest, Completion, Deliver, Progress, TokenLogprob
from .embedded import EMBEDDED_NAME, model_identity, resolve_model

_MASK64 = (1 << 64) - 1
# padded tokens (rows x widest row) one forward batch may hold. Why: memory is per token, not per
# request; 16 judge prompts of 3,000 tokens in one batch took 9-12 GB on the 135M model, so long
# prompts go in fewer rows a batch and short ones still fill --batch-size
MAX_BATCH_TOKENS = 8192


def token_batches(lengths: list[int], batch_size: int, max_tokens: int) -> list[tuple[int, int]]:
    """(start, end) slices of rows sorted longest first: at most `batch_size` rows, and rows x
    the first (widest) row's length at most `max_tokens`; a row longer than that goes alone."""
    out, start = [], 0
    while start < len(lengths):
        width = max(lengths[start], 1)
        n = max(1, min(batch_size, max_tokens // width))
        out.append((start, min(start + n, len(lengths))))
        start += n
    return out


def step_seed(seed: int, step: int) -> int:
    """A 63-bit seed per (request seed, step): splitmix64, so nearby seeds give unrelated streams."""
    z = (seed * 0x9E3779B97F4A7C15 + (step + 1) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


@dataclass
class _Row:
    """One request inside a batch, and what generation has produced for it so far."""

    request: ChatRequest
    prompt_tokens: int
    max_new_tokens: int
    seed: int
    finish: str | None = None  # "stop" | "length" once done
    n_tokens: int = 0  # generated tokens that count (EOS excluded)
    stop_cut: int | None = None  # char offset where a stop string starts
    logprobs: list[TokenLogprob] = field(default_factory=list)


def _build_helpers():
    """The processor and stopping criterion subclass transformers classes: import lazily."""
    import torch
    from transformers import LogitsProcessor, StoppingCriteria

    class SeededSampler(LogitsProcessor):
        """Chooses each row's next token (greedy or a seeded exact sample); records logprobs."""

        def __init__(self, rows: list[_Row], prompt_width: int, tokenizer: Any):
            self.rows = rows
            self.width = prompt_width
            self.tok = tokenizer

        def __call__(self, input_ids, scores):
            step = input_ids.shape[1] - self.width
            logits = scores.float()
            chosen = logits.argmax(dim=-1)
            live = [i for i, r in enumerate(self.rows) if r.finish is None]
            for i in live:
                r = self.rows[i]
                p = r.request.params
                if p.temperature > 0:
                    chosen[i] = self._sample(logits[i], p.temperature, p.top_p, step_seed(r.seed, step))
            wants = [i for i in live if self.rows[i].request.top_logprobs is not None]
            if wants:
                lp = torch.log_softmax(logits[wants], dim=-1)
                for j, i in enumerate(wants):
                    self._record(self.rows[i], lp[j], int(chosen[i]))
            out = torch.full_like(scores, float("-inf"))
            out.scatter_(1, chosen.unsqueeze(1), 0.0)
            return out

        @staticmethod
        def _sample(logits, temperature: float, top_p: float, seed: int) -> int:
            x = logits / temperature
            if top_p < 1.0:
                probs, order = torch.sort(torch.softmax(x, dim=-1), descending=True)
                # keep the smallest prefix whose mass reaches top_p (always at least one token)
                drop = (probs.cumsum(-1) - probs) >= top_p
                x = x.clone()
                x[order[drop]] = float("-inf")
            gen = torch.Generator(device=x.device).manual_seed(seed)
            u = torch.rand(x.shape, generator=gen, device=x.device, dtype=torch.float32)
            gumbel = -torch.log(-torch.log(u.clamp_(min=1e-20)))
            return int((x + gumbel).argmax())

        def _record(self, row: _Row, lp, token: int) -> None:
            k = row.request.top_logprobs or 0
            top: dict[str, float] = {}
            if k:
                vals, ids = lp.topk(k)
                for v, t in zip(vals.tolist(), ids.tolist()):
                    if v == float("-inf"):  # a token the schema forbids at this step
                        break
                    top.setdefault(self.tok.decode([t]), v)
            row.logprobs.append(TokenLogprob(token=self.tok.decode([token]), logprob=float(lp[token]), top=top))

    class RowStops(StoppingCriteria):
        """Per-row end: EOS, a stop string, or the row's own max_new_tokens."""

        def __init__(self, rows: list[_Row], prompt_width: int, eos_ids: set[int], tokenizer: Any):
            self.rows = rows
            self.width = prompt_width
            self.eos = eos_ids
            self.tok = tokenizer

        def __call__(self, input_ids, scores, **kwargs):
            n = input_ids.shape[1] - self.width
            done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            # one device-to-host copy per step: a read per row stalls a GPU batch of 256 rows 256 times
            lasts = input_ids[:, -1].tolist()
            for i, r in enumerate(self.rows):
                if r.finish is None:
                    last = lasts[i]
                    if last in self.eos:
                        r.finish = "stop"
                    else:
                        r.n_tokens = n
                        stops = r.request.params.stop
                        if stops:
                            text = self.tok.decode(input_ids[i, self.width:].tolist(), skip_special_tokens=True)
                            cuts = [text.find(s) for s in stops if s and s in text]
                            if cuts:
                                r.finish, r.stop_cut = "stop", min(cuts)
                        if r.finish is None and n >= r.max_new_tokens:
                            r.finish = "length"
                done[i] = r.finish is not None
            return done

    return SeededSampler, RowStops


class HFBackend(Backend):
    """Chat generation with transformers. `.model` and `.tokenizer` are the loaded objects, so
    other stages (the judge's prefix-cache scoring) can reuse them without loading twice."""

    name = "hf"
    supports_json_schema = True  # enforced by backends/structured.py (llguidance)
    supports_logprobs = True
    streams_results = True  # each finished sub-batch is delivered (saved) before the next runs

    def __init__(self, model: str | None = None, batch_size: int = 16, device: str | None = None, dtype: Any = None,
                 max_batch_tokens: int = MAX_BATCH_TOKENS, static_cache: bool = False):
        """`static_cache`: decode with a preallocated KV cache of fixed shape, which transformers
        compiles (torch.compile, CUDA graphs) on a GPU: fewer kernel launches per token, paid for by a
        compile on the first batch of each shape. Off by default: on a CPU it only adds the compile."""
        import torch

        if batch_size < 1:
            raise BackendError(f"--batch-size must be at least 1, got {batch_size}")
        if max_batch_tokens < 1:
            raise BackendError(f"max_batch_tokens must be at least 1, got {max_batch_tokens}")
        embedded = model in (None, "", "embedded", EMBEDDED_NAME)
        # a local folder is recorded by its content, not by a path that only this machine has
        self._model_id = EMBEDDED_NAME if embedded else model_identity(model)
        super().__init__(self._model_id)
        self.path = resolve_model(model)
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendError(f"--device {device}: no CUDA GPU is visible here; use --device cpu")
        self.dtype = _dtype(dtype, self.device)
        self.tokenizer, self.model = _load(self.path, str(model), self.device, self.dtype)
        self.max_positions = int(getattr(self.model.config, "max_position_embeddings", 0) or 1 << 30)
        self.eos_ids = _eos_ids(self.tokenizer, self.model)
        self._helpers = _build_helpers()
        self._schema = None  # backends.structured.SchemaConstraint, built on the first json_schema
        # a CPU pays for every pad position; a GPU pays more for 16 small launches than for padding
        self._split_prefill = self.device.type == "cpu" and not static_cache
        self.static_cache = static_cache

    @property
    def model_id(self) -> str:
        return self._model_id

    def close(self) -> None:
        import torch

        self.model = None  # type: ignore[assignment]
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- generation ------------------------------------------------------------------------

    def prompt_ids(self, request: ChatRequest) -> list[int]:
        """The chat-templated prompt as token ids (what the model sees before its reply)."""
        messages = [dict(m) for m in request.messages]
        if self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        else:  # a base model without a template: a plain transcript the model can continue
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _generate(self, requests: list[ChatRequest], progress: Progress, deliver: Deliver | None = None) -> list[Completion]:  # type: ignore[override]
        out: list[Completion | None] = [None] * len(requests)
        rows: list[tuple[int, _Row, list[int]]] = []
        for i, req in enumerate(requests):
            ids = self.prompt_ids(req)
            room = self.max_positions - len(ids)
            if room < 1:
                out[i] = Completion(
                    finish_reason="error", prompt_tokens=len(ids), permanent=True,
                    error=f"prompt has {len(ids)} tokens; the model takes at most {self.max_positions}: shorten it",
                )
                progress(1)
                continue
            bad = self.schema_error(req)
            if bad:
                out[i] = Completion(finish_reason="error", prompt_tokens=len(ids), permanent=True, error=bad)
                progress(1)
                continue
            seed = req.params.seed if req.params.seed is not None else secrets.randbits(62)
            rows.append((i, _Row(req, len(ids), min(req.params.max_new_tokens, room), seed), ids))
        # longest first: a batch that runs out of memory does so at once, not after an hour
        rows.sort(key=lambda r: (-len(r[2]), r[0]))
        for start, end in token_batches([len(r[2]) for r in rows], self.batch_size, self.max_batch_tokens):
            batch = rows[start:end]
            for (i, _, _), comp in zip(batch, self._run_batch([r for _, r, _ in batch], [ids for _, _, ids in batch])):
                out[i] = comp
            progress(len(batch))
            if deliver is not None:
                deliver([(i, out[i]) for i, _, _ in batch])  # type: ignore[misc]
        return out  # type: ignore[return-value]

    def _run_batch(self, rows: list[_Row], prompts: list[list[int]]) -> list[Completion]:
        import torch

        try:
            t0 = time.perf_counter()
            texts = self._decode_batch(rows, prompts)
            # the batch ran as one: each request carries its share of the wall time
            share = (time.perf_counter() - t0) * 1000 / len(rows)
        except torch.OutOfMemoryError:
            if len(rows) == 1:
                return [Completion(finish_reason="error", error="out of GPU memory on a single request", prompt_tokens=rows[0].prompt_tokens)]
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            half = len(rows) // 2
            return self._run_batch(rows[:half], prompts[:half]) + self._run_batch(rows[half:], prompts[half:])
        except Exception as e:  # one bad batch must not end a job of thousands
            err = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            return [Completion(finish_reason="error", error=err, prompt_tokens=r.prompt_tokens) for r in rows]
        return [
            Completion(
                text=text,
                finish_reason=r.finish or "length",
                prompt_tokens=r.prompt_tokens,
                completion_tokens=r.n_tokens,
                latency_ms=share,
                logprobs=r.logprobs[: r.n_tokens] if r.request.top_logprobs is not None else None,
            )
            for r, text in zip(rows, texts)
        ]

    def _decode_batch(self, rows: list[_Row], prompts: list[list[int]]) -> list[str]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        for r in rows:  # a retry after OOM starts the rows afresh
            r.finish, r.n_tokens, r.stop_cut, r.logprobs = None, 0, None, []
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        sampler_cls, stops_cls = self._helpers
        config = GenerationConfig(
            do_sample=False, max_new_tokens=max(r.max_new_tokens for r in rows),
            pad_token_id=pad, eos_token_id=sorted(self.eos_ids), bos_token_id=self.tokenizer.bos_token_id,
            **({"cache_implementation": "static"} if self.static_cache else {}),
        )
        processors = LogitsProcessorList([sampler_cls(rows, width, self.tokenizer)])
        schema_rows = self.schema_rows([r.request for r in rows], [r.max_new_tokens for r in rows])
        if schema_rows is not None:  # masks first, so the sampler (and its logprobs) sees allowed tokens only
            from .structured import build_processor

            processors.insert(0, build_processor()(schema_rows, width))
        with torch.inference_mode():
            cache = self._prefill_unpadded(prompts, width)
            seqs = self.model.generate(
                input_ids=ids, attention_mask=mask, generation_config=config,
                **({"past_key_values": cache} if cache is not None else {}),
                logits_processor=processors,
                stopping_criteria=StoppingCriteriaList([stops_cls(rows, width, self.eos_ids, self.tokenizer)]),
            )
        texts = []
        for r, seq in zip(rows, seqs.tolist()):
            text = self.tokenizer.decode(seq[width : width + r.n_tokens], skip_special_tokens=True)
            texts.append(text[: r.stop_cut] if r.stop_cut is not None else text)
        return texts

    # -- scoring without decoding (judge/logprob.py) --------------------------------------------

    def label_logprobs(self, requests: list[ChatRequest], labels: list[str]) -> list[dict[str, float] | str]:
        """log P(label) of each label as the first token of each request's reply: one forward pass
        per batch, no decoding loop. A label's probability sums its spellings' first tokens ("A",
        " A"), over the whole vocabulary (no top-k cut). In place of a dict, a string says why that
        request could not be scored."""
        import torch

        tok = self.tokenizer
        first = self.label_token_ids(labels)
        out: list[dict[str, float] | str] = [""] * len(requests)
        rows = []
        for i, req in enumerate(requests):
            ids = self.prompt_ids(req)
            if len(ids) >= self.max_positions:
                out[i] = f"prompt has {len(ids)} tokens; the model takes at most {self.max_positions}: shorten it"
            else:
                rows.append((i, ids))
        rows.sort(key=lambda r: -len(r[1]))
        for start, end in token_batches([len(r[1]) for r in rows], self.batch_size, self.max_batch_tokens):
            batch = rows[start:end]
            width = max(len(ids) for _, ids in batch)
            ids = torch.tensor([[tok.pad_token_id] * (width - len(x)) + x for _, x in batch], device=self.device)
            mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for _, x in batch], device=self.device)
            try:
                with torch.inference_mode():  # explicit positions: left padding must not shift a row
                    logits = self.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                                        logits_to_keep=1).logits[:, -1].float()
                lp = torch.log_softmax(logits, dim=-1)
            except Exception as e:  # one bad batch must not end a job
                for i, _ in batch:
                    out[i] = f"{type(e).__name__}: {str(e)[:200]}"
                continue
            for k, (i, _) in enumerate(batch):
                out[i] = {lab: float(torch.logsumexp(lp[k, v], dim=0)) for lab, v in first.items()}
        return out

    def label_token_ids(self, labels: list[str]) -> dict[str, list[int]]:
        """The first token of each label's spellings as a reply's first token ("A", " A")."""
        enc = self.tokenizer.encode
        return {lab: sorted({ids[0] for ids in (enc(v, add_special_tokens=False) for v in (lab, " " + lab)) if ids})
                for lab in labels}

    # -- structured output (backends/structured.py) ----------------------------------------------

    def _constraint(self) -> Any:
        """The tokenizer's grammar view; False where it cannot be built (a slow, Python-only
        tokenizer): schemas are then not enforced, as before structured output, with a warning."""
        from .structured import constraint_for

        if self._schema is None:
            try:
                self._schema = constraint_for(self.tokenizer, self.model.config.vocab_size, self.eos_ids)
            except Exception as e:
                warnings.warn(f"json_schema will not be enforced for {self.model_id}: {str(e)[:200]}", stacklevel=2)
                self._schema = False
        return self._schema

    def schema_error(self, req: ChatRequest) -> str | None:
        """Why the request's json_schema cannot be enforced (it then fails alone), or None."""
        return None if req.json_schema is None or not self._constraint() else self._constraint().check(req.json_schema)

    def schema_rows(self, requests: list[ChatRequest], budgets: list[int]) -> Any:
        """Grammar matchers for a batch (one per row with a json_schema), or None."""
        if not any(r.json_schema is not None for r in requests) or not self._constraint():
            return None
        return self._constraint().rows([r.json_schema for r in requests], budgets)

    def _prefill_unpadded(self, prompts: list[list[int]], width: int) -> Any:
        """The KV cache of every prompt but its last token, each computed alone, left-padded
        with zeros (masked out) and stacked; `generate` then only runs the last column.

        Why: one padded prefill computes every pad position. On 32 MT-Bench prompts of 49-243
        tokens that is 7,776 token positions for 2,731 real ones, and on a CPU the prefill is
        compute-bound. Returns None (padded prefill in `generate`) for caches other than plain
        full-attention layers (sliding windows, linear attention) and one-token prompts.
        """
        import torch
        from transformers.cache_utils import DynamicCache, DynamicLayer

        if len(prompts) == 1 or min(len(p) for p in prompts) < 2 or not self._split_prefill:
            return None
        rows = []
        for p in prompts:
            out = self.model(input_ids=torch.tensor([p[:-1]], device=self.device), use_cache=True, logits_to_keep=1)
            kv = out.past_key_values
            if not isinstance(kv, DynamicCache) or any(type(layer) is not DynamicLayer for layer in kv.layers):
                self._split_prefill = False  # this architecture caches differently: let generate pad
                return None
            rows.append((width - len(p), kv))
        stacked = []
        for i in range(len(rows[0][1].layers)):
            keys = [torch.nn.functional.pad(kv.layers[i].keys, (0, 0, pad, 0)) for pad, kv in rows]
            values = [torch.nn.functional.pad(kv.layers[i].values, (0, 0, pad, 0)) for pad, kv in rows]
            stacked.append((torch.cat(keys), torch.cat(values)))
        return DynamicCache(stacked, config=self.model.config)


def _dtype(dtype: Any, device: Any) -> Any:
    import torch

    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise BackendError(f"unknown dtype {dtype!r}: use one of {', '.join(names)}")
    return names[dtype]


def _load(path: str, given: str, device: Any, dtype: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    looks_local = os.path.isabs(path) or path.startswith((".", "~")) or os.path.exists(path)
    local = os.path.expanduser(path)
    if looks_local and not os.path.isdir(local):
        raise BackendError(f"model folder {path} does not exist: pass --model with a transformers model folder, or omit --model for the embedded default")
    # the caller shows its own progress bar: transformers' "Loading weights" bar would break it up
    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        tok = AutoTokenizer.from_pretrained(local)
        model = AutoModelForCausalLM.from_pretrained(local, dtype=dtype)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise BackendError(
            f"cannot load model {given!r} ({first[:200]}): pass --model with a local transformers folder "
            "(config.json, weights, tokenizer), or omit --model for the embedded default"
        ) from None
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.to(device).eval()
    # sampling is ours (SeededSampler): defaults such as temperature in the saved config must not apply
    model.generation_config.do_sample = False
    return tok, model


def _eos_ids(tokenizer: Any, model: Any) -> set[int]:
    ids: set[int] = set()
    for source in (tokenizer.eos_token_id, model.generation_config.eos_token_id, model.config.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(int(x) for x in source)
    # chat models end a turn with their end-of-turn token even where config names another eos
    for marker in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
        tid = tokenizer.convert_tokens_to_ids(marker)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid >= 0:
            ids.add(tid)
    return ids
