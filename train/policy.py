"""Which backend samples a policy (the loop's rollouts, `train eval`'s replies).

- hf: transformers in this process, loading the round's saved folder (the default);
- vllm: vLLM in this process, loading the round's saved folder (merged LoRA: a plain folder);
- openai: an OpenAI-compatible server that the user points at each round's model. `vllm serve
  <folder>` serves a folder under the folder's path as its model name, so the loop asks for the
  round's folder by that name; `--model NAME` names M_0 when the server calls it something else.
"""

from __future__ import annotations

from dataclasses import dataclass
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
            kept = self.__dict__.get("_kept")
            if kept is not None and kept[0] == model:
                return _Kept(kept[1])
            self.release()
            self.__dict__["_kept"] = (model, self._load(model, batch_size))
            return _Kept(self.__dict__["_kept"][1])
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

            return load_backend(self.name, model, enforce_eager=not torch.cuda.is_available())
        except BackendError as e:
            raise UserError(str(e)) from e

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "served_model": self.served_model, "base_url": self.base_url}


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
