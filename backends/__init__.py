"""LLM backends behind one interface. `load_backend` imports a backend only when asked for,
so a user without vLLM (or without a GPU) never pays for it."""

from __future__ import annotations

from typing import Any

from .base import (
    DEFAULT_MAX_PROMPT_BYTES,
    Backend,
    BackendError,
    ChatRequest,
    Completion,
    SamplingParams,
    TokenLogprob,
    request_key,
)
from .cache import CachedBackend

BACKENDS = ("hf", "openai", "vllm", "fake")


def load_backend(name: str, model: str | None = None, **options: Any) -> Backend:
    """Build a backend by name. `model=None` means the embedded default (hf, vllm)."""
    if name == "hf":
        from .hf import HFBackend

        return HFBackend(model, **options)
    if name == "openai":
        from .openai_api import OpenAIBackend

        if not model:
            raise BackendError("--model is required with --backend openai (the name the server serves)")
        return OpenAIBackend(model, **options)
    if name == "vllm":
        from .vllm_backend import VLLMBackend

        return VLLMBackend(model, **options)
    if name == "fake":
        from .fake import FakeBackend

        return FakeBackend(model or "fake", **options)
    raise BackendError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")


__all__ = [
    "BACKENDS",
    "DEFAULT_MAX_PROMPT_BYTES",
    "Backend",
    "BackendError",
    "CachedBackend",
    "ChatRequest",
    "Completion",
    "SamplingParams",
    "TokenLogprob",
    "add_executor_args",
    "backend_limits",
    "load_backend",
    "request_key",
]


def add_backend_args(parser: Any, prefix: str = "", default: str = "hf") -> None:
    """The flags every stage uses to pick a model: --backend, --model, --base-url, ...

    `prefix="judge-"` gives --judge-backend etc. The API key is never a flag value that could
    end up in a log: it is read from the environment variable named by --api-key-env.
    """
    p = f"--{prefix}"
    parser.add_argument(f"{p}backend", default=default, choices=BACKENDS, help=f"LLM backend (default {default})")
    parser.add_argument(f"{p}model", default=None, help="model folder, hub id or served name (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument(f"{p}base-url", default=None, help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (openai backend)")
    parser.add_argument(f"{p}api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key (openai backend)")
    parser.add_argument(f"{p}concurrency", type=int, default=16, help="requests in flight (openai backend)")
    parser.add_argument(f"{p}batch-size", type=int, default=16, help="sequences per forward batch (hf backend)")
    parser.add_argument(f"{p}device", default=None, help="cpu | cuda (hf backend; default: cuda when available)")
    parser.add_argument(f"{p}static-cache", action="store_true",
                        help="hf backend on a GPU: a fixed-shape KV cache that transformers compiles (fewer kernel "
                             "launches per token; the first batch of each shape pays the compile)")
    parser.add_argument(f"{p}timeout", type=float, default=60.0,
                        help="seconds to wait for one answer before retrying it (openai backend; default 60)")
    parser.add_argument(f"{p}max-prompt-bytes", type=int, default=DEFAULT_MAX_PROMPT_BYTES,
                        help=f"a larger prompt is not sent, only recorded as a failure with its size (UTF-8 bytes; "
                             f"0: no limit; default {DEFAULT_MAX_PROMPT_BYTES:,})")


def backend_limits(args: Any, prefix: str = "") -> dict[str, Any]:
    """`--timeout` and `--max-prompt-bytes` as checked options: {"timeout": s, "max_prompt_bytes": n | None}."""
    a, p = prefix.replace("-", "_"), f"--{prefix}"
    timeout = getattr(args, f"{a}timeout", 60.0)
    limit = getattr(args, f"{a}max_prompt_bytes", DEFAULT_MAX_PROMPT_BYTES)
    if not timeout > 0:
        raise BackendError(f"{p}timeout {timeout:g}: must be more than 0 seconds, e.g. {p}timeout 120")
    if limit < 0:
        raise BackendError(f"{p}max-prompt-bytes {limit}: must be 0 (no limit) or more, e.g. {p}max-prompt-bytes 2000000")
    return {"timeout": timeout, "max_prompt_bytes": limit or None}


def add_executor_args(parser: Any) -> None:
    """--executor ray and its flags: run the stage's backend as replicas on a Ray cluster."""
    g = parser.add_argument_group("scale-out on Ray (pip install '.[ray]')")
    g.add_argument("--executor", default="local", choices=("local", "ray"),
                   help="local: this process (default); ray: replicas of the backend on a Ray cluster")
    g.add_argument("--ray-address", default=None, help="a running cluster, host:port or ray://host:10001 "
                   "(default: $RAY_ADDRESS, else a private local cluster that stops with the command)")
    g.add_argument("--work-dir", default=None, help="requests and result shards: a folder or URI (s3://...) "
                   "every node can reach; a rerun resumes from it (default: <db>.ray)")
    g.add_argument("--ray-workers", type=int, default=2, help="backend replicas (default 2)")
    g.add_argument("--num-cpus-per-worker", type=float, default=1.0, help="CPUs Ray reserves per replica (default 1)")
    g.add_argument("--num-gpus-per-worker", type=float, default=0.0, help="GPUs per replica, e.g. 1 for vllm (default 0)")
    g.add_argument("--ray-batch-size", type=int, default=128,
                   help="requests per shard; a killed run re-sends at most one per replica (default 128)")


def backend_from_args(args: Any, prefix: str = "") -> Backend:
    """Build the backend that `add_backend_args` flags describe (on Ray with --executor ray)."""
    if getattr(args, "executor", "local") == "ray":
        from .ray_executor import executor_from_args

        return executor_from_args(args, prefix)
    a = prefix.replace("-", "_")
    name = getattr(args, f"{a}backend")
    model = getattr(args, f"{a}model")
    limits = backend_limits(args, prefix)
    if name == "openai":
        backend = load_backend(
            name, model,
            base_url=getattr(args, f"{a}base_url"),
            api_key_env=getattr(args, f"{a}api_key_env"),
            concurrency=getattr(args, f"{a}concurrency"),
            timeout=limits["timeout"],
        )
    elif name == "hf":
        backend = load_backend(name, model, batch_size=getattr(args, f"{a}batch_size"), device=getattr(args, f"{a}device"),
                               static_cache=getattr(args, f"{a}static_cache", False))
    else:
        backend = load_backend(name, model)
    backend.max_prompt_bytes = limits["max_prompt_bytes"]
    return backend
