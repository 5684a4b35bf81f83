"""LLM backends behind one interface. `load_backend` imports a backend only when asked for,
so a user without vLLM (or without a GPU) never pays for it."""

from __future__ import annotations

from typing import Any

from .base import Backend, BackendError, ChatRequest, Completion, SamplingParams, TokenLogprob, request_key
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
    "Backend",
    "BackendError",
    "CachedBackend",
    "ChatRequest",
    "Completion",
    "SamplingParams",
    "TokenLogprob",
    "load_backend",
    "request_key",
]
