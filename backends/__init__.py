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
    _add_paid_api_args(parser, p)


def _add_paid_api_args(parser: Any, p: str) -> None:
    """Batch mode, client-side rate limits and cost (openai backend; docs/howto/batch.md)."""
    g = parser.add_argument_group(f"paid APIs ({p}backend openai)")
    g.add_argument(f"{p}batch", action="store_true",
                   help="send through the provider's Batch API (half price, answers within its window); a rerun "
                        "reattaches to its batches and never submits a request twice")
    g.add_argument(f"{p}no-wait", action="store_true",
                   help="with --batch: submit, print a status line and exit 0; the same command run later collects")
    g.add_argument(f"{p}batch-poll", type=float, default=30.0, help="seconds between polls of running batches (default 30)")
    g.add_argument(f"{p}batch-max-requests", type=int, default=50_000,
                   help="requests per batch file; more are split into several batches (default 50,000)")
    g.add_argument(f"{p}batch-max-bytes", type=int, default=200 * 1024 * 1024,
                   help="bytes per batch file (default 200 MiB)")
    g.add_argument(f"{p}rpm", type=float, default=None, help="requests per minute this client may send (default: no limit)")
    g.add_argument(f"{p}tpm", type=float, default=None,
                   help="tokens per minute (prompt + completion, estimated, corrected by usage; default: no limit)")
    g.add_argument(f"{p}prices", default=None,
                   help="YAML of USD per million tokens per model: `gpt-4o-mini: {input: 0.15, output: 0.6, batch_discount: 0.5}`")
    g.add_argument(f"{p}max-cost", type=float, default=None,
                   help="USD this run may spend (needs --prices); what would go over is not sent, exit 3; rerun to go on")


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
    paid = paid_api_options(args, prefix, model)
    if name != "openai" and any(paid[k] is not None for k in ("batch", "export_path", "rpm", "tpm", "max_cost")):
        flag = next(f for f, k in (("batch", "batch"), ("export-batch", "export_path"), ("rpm", "rpm"), ("tpm", "tpm"),
                                   ("max-cost", "max_cost")) if paid.get(k) is not None)
        raise BackendError(f"--{prefix}{flag} works with --{prefix}backend openai only; drop it or use the openai backend")
    if name == "openai":
        backend = load_backend(
            name, model,
            base_url=getattr(args, f"{a}base_url"),
            api_key_env=getattr(args, f"{a}api_key_env"),
            concurrency=getattr(args, f"{a}concurrency"),
            timeout=limits["timeout"],
            **paid,
        )
    elif name == "hf":
        backend = load_backend(name, model, batch_size=getattr(args, f"{a}batch_size"), device=getattr(args, f"{a}device"),
                               static_cache=getattr(args, f"{a}static_cache", False))
    else:
        backend = load_backend(name, model)
    backend.max_prompt_bytes = limits["max_prompt_bytes"]
    return backend


def paid_api_options(args: Any, prefix: str = "", model: str | None = None) -> dict[str, Any]:
    """The checked paid-API flags as OpenAIBackend options (None where not given)."""
    from .batch import BatchOptions
    from .pricing import load_prices

    a, p = prefix.replace("-", "_"), f"--{prefix}"
    get = lambda name, default=None: getattr(args, f"{a}{name}", default)  # noqa: E731
    for flag, value in (("rpm", get("rpm")), ("tpm", get("tpm")), ("batch-poll", get("batch_poll", 30.0)),
                        ("batch-max-requests", get("batch_max_requests", 1)), ("batch-max-bytes", get("batch_max_bytes", 1)),
                        ("max-cost", get("max_cost"))):
        if value is not None and not value > 0:
            raise BackendError(f"{p}{flag} {value:g}: must be more than 0")
    if get("no_wait") and not get("batch"):
        raise BackendError(f"{p}no-wait only applies to batches: add {p}batch")
    if get("batch") and get("export_batch"):
        raise BackendError(f"{p}batch and {p}export-batch: choose one (export writes a file for vllm run-batch)")
    price = None
    if get("prices"):
        prices = load_prices(get("prices"), f"{p}prices")
        price = prices.get(model or "")
        if price is None and get("max_cost") is not None:
            raise BackendError(f"{p}prices {get('prices')}: no price for model {model!r}; add it, e.g. "
                               f"`{model}: {{input: 0.15, output: 0.6}}`")
    if get("max_cost") is not None and not get("prices"):
        raise BackendError(f"{p}max-cost needs prices: add {p}prices FILE (USD per million tokens per model)")
    batch = None
    if get("batch"):
        batch = BatchOptions(poll_s=get("batch_poll", 30.0), max_requests=get("batch_max_requests", 50_000),
                             max_bytes=get("batch_max_bytes", 200 * 1024 * 1024), wait=not get("no_wait"))
    return {"batch": batch, "export_path": get("export_batch"), "rpm": get("rpm"), "tpm": get("tpm"),
            "price": price, "max_cost": get("max_cost")}


def report_paid_run(backend: Any, prog: str, pending: int, db: str) -> int | None:
    """After a stage ran on the openai backend: print the cost line and, for requests still out,
    what happens next. Returns the exit status this decides (3 at --max-cost, 0 for --no-wait
    batches still running), or None to let the stage decide."""
    import sys

    budget = getattr(backend, "budget", None)
    if budget is None:
        return None
    mode = "export" if backend.export_path else "batch" if backend.batch else "online"
    print(budget.line(backend.model_id) + f" · mode {mode}", file=sys.stderr)
    if budget.stopped:
        print(f"{prog}: stopped at --max-cost ${budget.max_cost:g}: {pending} requests not sent; rerun the same "
              "command to go on (exit status 3)", file=sys.stderr)
        return 3
    if pending and backend.export_path:
        print(f"{prog}: wrote {pending} requests to {backend.export_path}; run them with vllm run-batch, then "
              f"python -m corpus --db {db} import-batch OUTPUT_FILE, then rerun this command without --export-batch",
              file=sys.stderr)
        return 0
    if pending and backend.batch is not None:
        print(f"{prog}: {pending} requests in batches still running; see python -m corpus --db {db} batches; "
              "rerun the same command to collect them", file=sys.stderr)
        return 0
    return None
