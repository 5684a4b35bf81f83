"""Which backend samples a policy (the loop's rollouts, `train eval`'s replies).

- hf: transformers in this process, loading the round's saved folder (the default);
- vllm: vLLM in this process, loading the round's saved folder (merged LoRA: a plain folder);
  with `serve_adapters`, one engine on M_0 serves every round's model as M_0 plus the round's
  LoRA adapter (a vLLM LoRARequest), so no round restarts the engine;
- openai: an OpenAI-compatible server that the user points at each round's model. `vllm serve
  <folder>` serves a folder under the folder's path as its model name, so the loop asks for the
  round's folder by that name; `--model NAME` names M_0 when the server calls it something else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from backends import BACKENDS, Backend, BackendError, load_backend
from corpus import UserError


@dataclass
class PolicyBackend:
    name: str = "hf"
    served_model: str | None = None       # openai: the served name of M_0 (default: its folder path)
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 16
    batch_size: int = 16
    device: str | None = None
    # vllm: keep the engine open between stages that sample the same model (round t's eval of
    # M_{t+1} and round t+1's rollouts), instead of paying its start (30-300 s on a CPU) twice
    keep_engine: bool = False
    # vllm: a model folder holding a LoRA adapter (its adapter/ folder, trained on the model its
    # adapter_config.json names) is served as that base model + the adapter, by a kept engine on the
    # base; the loop's --serve-adapters trains every round's adapter on M_0, so one engine serves all
    serve_adapters: bool = False
    lora_rank: int = 16
    engine_starts: int = field(default=0, compare=False)  # vLLM engines started by this object

    def __post_init__(self) -> None:
        if self.name not in BACKENDS or self.name == "fake":
            raise UserError(f"--backend {self.name}: choose hf, vllm or openai")
        if self.name == "openai" and not self.base_url:
            raise UserError("--backend openai needs --base-url, e.g. http://127.0.0.1:8000/v1 (a `vllm serve` endpoint)")

    def model_name(self, path: str, first: bool = False) -> str:
        """The name the backend is asked for: the folder, or for openai what the server serves."""
        return self.served_model if self.name == "openai" and first and self.served_model else path

    def open(self, path: str, first: bool = False, batch_size: int | None = None) -> Backend:
        model = self.model_name(path, first)
        if self.keep_engine and self.name == "vllm":
            adapter = adapter_of(model) if self.serve_adapters else None
            engine_model = adapter[1] if adapter else model
            kept = self.__dict__.get("_kept")
            if kept is None or not _same_model(kept[0], engine_model):
                self.release()
                self.__dict__["_kept"] = kept = (engine_model, self._load(engine_model, batch_size))
                self.engine_starts += 1
            if adapter:
                from backends.embedded import model_identity

                # recorded as the round's own model (name + content hash), as a plain open would
                return _Kept(kept[1].with_adapter(adapter[0], model_identity(model)))
            return _Kept(kept[1])
        return self._load(model, batch_size)

    def release(self) -> None:
        """Close a kept engine (before training needs the memory and cores, and at the end)."""
        kept = self.__dict__.pop("_kept", None)
        if kept is not None:
            kept[1].close()

    def _load(self, model: str, batch_size: int | None) -> Backend:
        try:
            if self.name == "openai":
                return load_backend("openai", model, base_url=self.base_url, api_key_env=self.api_key_env,
                                    concurrency=self.concurrency)
            if self.name == "hf":
                return load_backend("hf", model, batch_size=batch_size or self.batch_size, device=self.device)
            # on a CPU, vLLM's torch.compile at start costs minutes on 2 cores for every round's model
            # (its cache missed each time here), more than it saves on a round's rollouts: eager there
            import torch

            gpu = torch.cuda.is_available()
            kw: dict[str, Any] = {}
            if self.serve_adapters:
                # the engine stays up while the loop trains in this process: leave the GPU half free
                kw = {"max_lora_rank": self.lora_rank, **({"gpu_memory_utilization": 0.5} if gpu else {})}
            return load_backend(self.name, model, enforce_eager=not gpu, **kw)
        except BackendError as e:
            raise UserError(str(e)) from e

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "served_model": self.served_model, "base_url": self.base_url}


def adapter_of(path: str) -> tuple[str, str] | None:
    """(adapter folder, its base model folder) when `path` is a model folder saved with its LoRA
    adapter (train/trainers.py keeps it in adapter/) and the base folder is on this machine."""
    import json
    from pathlib import Path

    cfg = Path(path) / "adapter" / "adapter_config.json"
    if not cfg.is_file():
        return None
    try:
        base = json.loads(cfg.read_text()).get("base_model_name_or_path")
    except ValueError:
        return None
    return (str(cfg.parent), base) if isinstance(base, str) and Path(base).is_dir() else None


def _same_model(a: str, b: str) -> bool:
    from backends.embedded import resolve_model

    return os.path.realpath(resolve_model(a)) == os.path.realpath(resolve_model(b))


def serve_hint(path: str) -> str:
    return (f"serve it and rerun: `python -m vllm.entrypoints.openai.api_server --model {path} "
            "--port 8000` (GPU: `vllm serve PATH`); the loop resumes at this stage")


class _Kept:
    """A kept backend as the callers see it: `with ... as b` and `close()` leave the engine open
    (PolicyBackend.release closes it); everything else is the backend's own."""

    def __init__(self, inner: Backend):
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __enter__(self) -> Backend:
        return self._inner

    def __exit__(self, *exc: object) -> None:
        pass

    def close(self) -> None:
        pass
