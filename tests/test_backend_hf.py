"""The hf backend on a real (tiny, random) Llama with the SmolLM2 tokenizer and chat template.

Random weights make for nonsense text but real numerics: left padding, batching, seeds and stop
handling are exercised exactly as with the real model, in seconds.
"""

from __future__ import annotations

import pytest

from backends import BackendError, CachedBackend, ChatRequest, SamplingParams, load_backend
from backends.hf import HFBackend

QUESTIONS = [
    "Hi",
    "What is the capital of France? Answer in one word, please.",
    "Write a very long and detailed essay about the history of the printing press in Europe, with dates.",
    "2+2?",
    "Name three colours of the rainbow and explain where each one comes from in the spectrum.",
]


def req(text: str, **params) -> ChatRequest:
    top = params.pop("top_logprobs", None)
    params.setdefault("max_new_tokens", 6)
    return ChatRequest(messages=[{"role": "user", "content": text}], params=SamplingParams(**params), top_logprobs=top)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Matrices this small gain nothing from a second thread, and on a shared 2-core machine
    OpenMP threads waiting for each other make every step 10x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def hf(tiny_model_dir) -> HFBackend:
    return HFBackend(str(tiny_model_dir), batch_size=4, device="cpu")


def texts(backend, requests):
    return [c.text for c in backend.generate(requests)]


def test_batched_greedy_equals_one_at_a_time(hf):
    """Left padding is right: a padded row decodes exactly as it does alone."""
    requests = [req(q, temperature=0) for q in QUESTIONS]
    batched = hf.generate(requests)
    alone = [hf.generate([r])[0] for r in requests]
    assert [c.text for c in batched] == [c.text for c in alone]
    assert [c.completion_tokens for c in batched] == [c.completion_tokens for c in alone]
    assert all(c.ok and c.text for c in batched)


def test_length_sorted_batches_return_in_request_order(hf):
    """Batches are cut by prompt length, yet completion i answers request i."""
    requests = [req(q, temperature=0) for q in QUESTIONS]
    out = hf.generate(requests)
    assert [c.prompt_tokens for c in out] == [len(hf.prompt_ids(r)) for r in requests]
    assert len({c.prompt_tokens for c in out}) == len(QUESTIONS)  # the check above can tell them apart
    ticks = []
    hf.generate(requests, progress=ticks.append)
    assert sum(ticks) == len(requests)


def test_same_seed_same_sample_in_any_batch(tiny_model_dir, hf):
    """A seeded sample depends on the request, not on its neighbours or the batch size."""
    target = req(QUESTIONS[1], temperature=1.0, top_p=0.9, seed=7, max_new_tokens=8)
    alone = hf.generate([target])[0].text
    mixed = hf.generate([req(QUESTIONS[2], temperature=0.7, seed=1), target, req(QUESTIONS[0], seed=2)])[1].text
    wide = HFBackend(str(tiny_model_dir), batch_size=16, device="cpu")
    crowd = [req(q, temperature=1.0, seed=100 + i) for i, q in enumerate(QUESTIONS * 2)]
    in_crowd = wide.generate(crowd[:5] + [target] + crowd[5:])[5].text
    assert alone == mixed == in_crowd
    assert alone


def test_different_seeds_give_different_samples(hf):
    out = texts(hf, [req(QUESTIONS[1], temperature=1.0, seed=s, max_new_tokens=8) for s in range(4)])
    assert len(set(out)) == 4


def test_tiny_top_p_is_greedy(hf):
    """top_p keeps the smallest set reaching p: at p -> 0 only the most likely token is left."""
    greedy = texts(hf, [req(q, temperature=0) for q in QUESTIONS[:3]])
    nucleus = texts(hf, [req(q, temperature=1.5, top_p=1e-6, seed=3) for q in QUESTIONS[:3]])
    assert nucleus == greedy


def test_finish_length_and_token_counts_per_request(hf):
    """Each request stops at its own max_new_tokens, even inside one batch."""
    out = hf.generate([req(QUESTIONS[0], temperature=0, max_new_tokens=3), req(QUESTIONS[1], temperature=0, max_new_tokens=7)])
    assert [c.finish_reason for c in out] == ["length", "length"]
    assert [c.completion_tokens for c in out] == [3, 7]
    assert all(c.latency_ms > 0 for c in out)


def test_stop_string_cuts_text_and_finishes_with_stop(hf):
    sample = dict(temperature=1.0, seed=11, max_new_tokens=12)
    full = hf.generate([req(QUESTIONS[1], **sample)])[0]
    middle = full.text[len(full.text) // 2 :].strip()
    assert len(middle) >= 2, full.text
    stop = middle[:2]
    cut = hf.generate([req(QUESTIONS[1], stop=(stop, "never-seen-xyz"), **sample)])[0]
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.find(stop)]
    assert cut.completion_tokens < full.completion_tokens


def test_logprobs_only_when_asked(hf):
    with_lp, without = hf.generate([req(QUESTIONS[1], temperature=0, top_logprobs=3), req(QUESTIONS[1], temperature=0)])
    assert without.logprobs is None
    assert len(with_lp.logprobs) == with_lp.completion_tokens == 6
    assert "".join(t.token for t in with_lp.logprobs) == with_lp.text
    for t in with_lp.logprobs:
        assert 1 <= len(t.top) <= 3 and t.logprob <= 0
        # greedy picks the most likely token, so its logprob is the best of the alternatives
        assert t.logprob == pytest.approx(max(t.top.values()))


def test_prompt_longer_than_context_is_a_permanent_error(hf):
    long, short = hf.generate([req("word " * 2100, temperature=0), req(QUESTIONS[0], temperature=0)])
    assert not long.ok and long.permanent and "shorten" in long.error
    assert short.ok


def test_missing_model_folder_is_backend_error(tmp_path):
    with pytest.raises(BackendError, match="does not exist"):
        HFBackend(str(tmp_path / "nope"))


def test_folder_that_is_no_model_is_backend_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(BackendError, match="cannot load model") as e:
        HFBackend(str(tmp_path))
    assert "\n" not in str(e.value)


def test_load_backend_and_call_cache(tiny_model_dir, corpus):
    """The registered name builds the backend; the cache replays its completions."""
    b = load_backend("hf", str(tiny_model_dir), batch_size=2, device="cpu")
    # a local folder is recorded by its name and a hash of its contents, never by a path on this machine
    assert b.model_id.startswith(f"{tiny_model_dir.name}@sha256:") and str(tiny_model_dir.parent) not in b.model_id
    assert b.tokenizer is not None and hasattr(b.model, "generate")
    cached = CachedBackend(b, corpus)
    first = cached.generate([req(QUESTIONS[3], temperature=0.8, seed=5)])
    again = cached.generate([req(QUESTIONS[3], temperature=0.8, seed=5)])
    assert again[0].cached and again[0].text == first[0].text
    assert (cached.hits, cached.misses) == (1, 1)


def test_bad_batch_size_is_backend_error(tiny_model_dir):
    with pytest.raises(BackendError, match="batch-size"):
        HFBackend(str(tiny_model_dir), batch_size=0)


def test_unpadded_prefill_matches_padded_and_skips_pad_positions(tiny_model_dir):
    """Each prompt is prefilled alone and the caches stacked: same tokens as one padded prefill,
    and no forward pass ever sees a pad column."""
    split = HFBackend(str(tiny_model_dir), batch_size=8, device="cpu")
    padded = HFBackend(str(tiny_model_dir), batch_size=8, device="cpu")
    padded._split_prefill = False
    requests = [req(q, temperature=0.9, seed=i, max_new_tokens=5) for i, q in enumerate(QUESTIONS)]
    shapes = []
    hook = split.model.register_forward_pre_hook(lambda m, a, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    try:
        out = split.generate(requests)
    finally:
        hook.remove()
    assert [c.text for c in out] == [c.text for c in padded.generate(requests)]
    lengths = sorted((len(split.prompt_ids(r)) for r in requests), reverse=True)
    assert shapes[: len(requests)] == [(1, n - 1) for n in lengths]  # one prefill per prompt
    assert all(s == (len(requests), 1) for s in shapes[len(requests) :])  # then one column at a time
