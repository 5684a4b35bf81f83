"""Prefix KV-cache reuse and the hf judge path, on the tiny random model (real transformers code,
real tokenizer and chat template; its verdicts are noise, which exercises the failure paths)."""

from __future__ import annotations

import pytest
from test_judge_helpers import PROMPTS, add_candidates, write_rubric

from judge import load_rubric, run_judge
from judge.render import pointwise_request
from judge.rubric import JudgeSpec


@pytest.fixture(scope="module")
def tiny_hf(tiny_model_dir):
    from backends.hf import HFBackend

    return HFBackend(str(tiny_model_dir), batch_size=4, device="cpu")


def _requests(n: int, max_new_tokens: int = 10):
    r = load_rubric(PROMPTS / "helpfulness.yaml")
    spec = JudgeSpec(max_new_tokens=max_new_tokens)
    return [pointwise_request(r, r.criteria[0], spec, [{"role": "user", "content": f"question {i} " * (i + 1)}],
                              f"answer {i} " * (2 * i + 1), 0, logprobs=True) for i in range(n)]


def test_prefix_reuse_gives_the_same_greedy_answers(tiny_hf):
    from judge.prefix_cache import PrefixReuseBackend

    reqs = _requests(6)
    plain = tiny_hf.generate(reqs)
    reuse = PrefixReuseBackend(tiny_hf)
    fast = reuse.generate(reqs)
    assert [c.text for c in fast] == [c.text for c in plain]
    assert [c.completion_tokens for c in fast] == [c.completion_tokens for c in plain]
    assert all(a.logprobs[0].logprob == pytest.approx(b.logprobs[0].logprob, abs=1e-4) for a, b in zip(fast, plain))
    assert reuse.stats["prefills"] == 2 and reuse.stats["prefix_tokens_saved"] > 300  # 6 requests in batches of 4


def test_sampled_requests_go_to_the_wrapped_backend(tiny_hf):
    from backends import ChatRequest, SamplingParams
    from judge.prefix_cache import PrefixReuseBackend

    reuse = PrefixReuseBackend(tiny_hf)
    req = ChatRequest(messages=({"role": "user", "content": "hi"},), params=SamplingParams(temperature=1.0, max_new_tokens=4, seed=1))
    assert reuse.generate([req])[0].text == tiny_hf.generate([req])[0].text
    assert reuse.stats["prefills"] == 0


def test_hf_judge_end_to_end_on_tiny_model(corpus, tmp_path, tiny_model_dir):
    """The rubric names an hf judge (a local folder); its random answers fail to parse, are
    retried, stored as failed with flags: nothing crashes and nothing is silently None."""
    add_candidates(corpus, [("How do I boil an egg?", ["Boil it for 8 minutes.", "No idea."])])
    path = write_rubric(tmp_path / "h.yaml", "helpfulness.yaml", {"    model: null\n": f"    model: {tiny_model_dir}\n    max_new_tokens: 12\n"})
    s = run_judge(corpus, str(path), progress=False)
    assert s["judged"] == 2 and s["ok"] + s["retried"] + s["failed"] == 2
    rows = corpus.query("SELECT judge, parse_status, score, raw FROM judgments")
    assert all(r["judge"] == f"hf:{tiny_model_dir}" for r in rows)
    assert all((r["score"] is None) == (r["parse_status"] == "failed") for r in rows)
    assert corpus.query("SELECT count(*) AS n FROM calls")[0]["n"] >= 2  # every call went through the cache
    again = run_judge(corpus, str(path), progress=False)
    assert again["judged"] == 0


@pytest.mark.slow
def test_code_rubric_on_the_embedded_model(corpus, shared_data, embedded_dir):
    """Done-when check: prompts/code.yaml as shipped (embedded SmolLM2 judge) over a small generated corpus."""
    import json

    t = json.loads(next(open(shared_data / "humaneval.jsonl")))
    add_candidates(corpus, [(t["prompt"], [t["prompt"] + t["canonical_solution"], "def f():\n    pass"])],
                   meta={"test": t["test"], "entry_point": t["entry_point"]})
    s = run_judge(corpus, str(PROMPTS / "code.yaml"), progress=False)
    assert s["judged"] == 8  # 2 candidates x (3 LLM criteria + correctness)
    correct = sorted(r["score"] for r in corpus.query("SELECT score FROM judge_scores WHERE criterion = 'correctness'"))
    assert correct == [0.0, 1.0]
