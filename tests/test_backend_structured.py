"""JSON-schema constrained decoding on the hf backend (backends/structured.py, llguidance).

The model is the tiny random Llama: its weights know nothing about JSON, so every valid reply
here is the constraint's doing (without it the same requests give no JSON at all).
"""

from __future__ import annotations

import json

import pytest

from backends import ChatRequest, SamplingParams
from backends.hf import HFBackend

POINTWISE = {
    "type": "object",
    "properties": {"rationale": {"type": "string", "maxLength": 300}, "score": {"type": "integer", "minimum": 1, "maximum": 5}},
    "required": ["rationale", "score"], "additionalProperties": False,
}
PAIRWISE = {
    "type": "object",
    "properties": {"rationale": {"type": "string", "maxLength": 300}, "winner": {"type": "string", "enum": ["A", "B", "tie"]}},
    "required": ["rationale", "winner"], "additionalProperties": False,
}
QUESTIONS = ["Hi", "Judge this answer about the capital of France, which says Paris, and say why in detail.", "2+2?",
             "Compare two essays on the printing press; one is longer and has dates, the other has none at all."]


def req(text: str, schema: dict | None, **params) -> ChatRequest:
    top = params.pop("top_logprobs", None)
    params.setdefault("max_new_tokens", 48)
    return ChatRequest(messages=[{"role": "user", "content": text}], params=SamplingParams(**params),
                       json_schema=schema, top_logprobs=top)


def valid(text: str, schema: dict) -> bool:
    """The judge schemas' rules, checked by hand: exact keys, types, enum, range, maxLength."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return False
    props = schema["properties"]
    if not isinstance(obj, dict) or set(obj) != set(props):
        return False
    for k, rule in props.items():
        v = obj[k]
        if rule["type"] == "string" and not (isinstance(v, str) and len(v) <= rule.get("maxLength", 10**9)
                                             and v in rule.get("enum", [v])):
            return False
        if rule["type"] == "integer" and not (isinstance(v, int) and rule["minimum"] <= v <= rule["maximum"]):
            return False
    return True


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    return HFBackend(str(tiny_model_dir), batch_size=8, device="cpu")


def test_random_weights_answer_schema_valid_json_in_a_mixed_left_padded_batch(hf):
    """Prompts of different lengths (left padding), two schemas and an unconstrained row in one batch."""
    reqs = [req(q, POINTWISE if i % 2 == 0 else PAIRWISE) for i, q in enumerate(QUESTIONS)] + [req("free text", None)]
    out = hf.generate(reqs)
    for r, c in zip(reqs[:-1], out[:-1]):
        assert c.ok and c.finish_reason == "stop", c
        assert valid(c.text, r.json_schema), c.text
    assert not valid(out[-1].text, POINTWISE)  # the same weights, unconstrained, write no such JSON


def test_sampled_rows_each_follow_their_own_schema(hf):
    reqs = [req(QUESTIONS[i % 4], [POINTWISE, PAIRWISE][i % 2], temperature=1.0, seed=i) for i in range(8)]
    out = hf.generate(reqs)
    assert all(c.ok and valid(c.text, r.json_schema) for r, c in zip(reqs, out)), [c.text for c in out]
    assert len({c.text for c in out}) > 1  # sampling still varies within the grammar


def test_a_small_token_budget_still_closes_the_document(hf):
    """Unconstrained, a 300-character rationale does not fit 24 tokens; the reserve closes it in time."""
    reqs = [req(q, POINTWISE, max_new_tokens=24, temperature=1.0, seed=7) for q in QUESTIONS]
    for c in hf.generate(reqs):
        assert c.completion_tokens <= 24
        assert valid(c.text, POINTWISE), c.text


def test_logprobs_of_a_constrained_row_cover_allowed_tokens_only(hf):
    enum_only = {"type": "object", "properties": {"winner": {"type": "string", "enum": ["A", "B"]}},
                 "required": ["winner"], "additionalProperties": False}
    (c,) = hf.generate([req("Which?", enum_only, top_logprobs=5, max_new_tokens=16)])
    assert valid(c.text, enum_only)
    for t in c.logprobs:
        assert all(v > float("-inf") for v in t.top.values())
        assert t.logprob > float("-inf")
    assert any(len(t.top) < 5 for t in c.logprobs)  # where the grammar allows fewer than 5 tokens


def test_a_schema_that_cannot_be_enforced_fails_that_request_alone(hf):
    bad = {"type": "object", "properties": {"x": {"type": "string", "pattern": "(?<=a)b"}}, "required": ["x"]}
    out = hf.generate([req("Hi", bad), req("Hi", POINTWISE)])
    assert not out[0].ok and out[0].permanent and "json_schema" in out[0].error
    assert out[1].ok and valid(out[1].text, POINTWISE)


def test_prefix_reuse_path_is_constrained_too(hf):
    """The judge's default hf path (PrefixReuseBackend) decodes with its own loop: same constraint."""
    from judge.prefix_cache import PrefixReuseBackend

    system = {"role": "system", "content": "You are a strict judge. " * 12}
    reqs = [ChatRequest(messages=[system, {"role": "user", "content": q}], params=SamplingParams(temperature=0, max_new_tokens=40),
                        json_schema=PAIRWISE) for q in QUESTIONS]
    pr = PrefixReuseBackend(hf)
    out = pr.generate(reqs)
    assert pr.stats["prefills"] >= 1  # the shared prefix was reused, not bypassed
    assert all(valid(c.text, PAIRWISE) for c in out), [c.text for c in out]
    assert [c.text for c in out] == [c.text for c in hf.generate(reqs)]
