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
        try:
            if self.name == "openai":
                return load_backend("openai", model, base_url=self.base_url, api_key_env=self.api_key_env,
                                    concurrency=self.concurrency)
            if self.name == "hf":
                return load_backend("hf", model, batch_size=batch_size or self.batch_size, device=self.device)
            return load_backend(self.name, model)
        except BackendError as e:
            raise UserError(str(e)) from e

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "served_model": self.served_model, "base_url": self.base_url}


def serve_hint(path: str) -> str:
    return (f"serve it and rerun: `python -m vllm.entrypoints.openai.api_server --model {path} "
            "--port 8000` (GPU: `vllm serve PATH`); the loop resumes at this stage")
