"""Logprob judging (`method: logprob`): verdicts from one forward pass, stored like other judgments.

On hf the tiny random model gives real (meaningless) probabilities: the tests check the plumbing
and the arithmetic against the model's own logits. On the loopback OpenAI server the first-token
distribution is scripted (`first_logprobs=`), so verdicts are predictable: that is where the
position debiasing is checked.
"""

from __future__ import annotations

import json
import math

import pytest
import openai_server
from test_judge_helpers import PROMPTS, add_candidates, answer_of, shown, write_rubric

from backends.hf import HFBackend
from backends.openai_api import OpenAIBackend
from corpus import UserError
from judge import logprob, run_judge
from judge.rubric import load_rubric

PAIRWISE_LOGPROB = {"    temperature: 0": "    temperature: 0\n    method: logprob"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    return HFBackend(str(tiny_model_dir), batch_size=4, device="cpu")


def test_hf_label_logprobs_match_the_models_own_logits_in_a_padded_batch_and_with_prefix_reuse(hf):
    import torch

    rubric = load_rubric(PROMPTS / "pairwise.yaml")
    c = rubric.criteria[0]
    reqs = [logprob.pairwise_request(rubric, c, [{"role": "user", "content": q}], "short", "a much longer answer " * k)
            for k, q in enumerate(["Hi", "What is the capital of France, and why?", "2+2?"])]
    batched = hf.label_logprobs(reqs, ["A", "B"])
    from judge.prefix_cache import PrefixReuseBackend

    reuse = PrefixReuseBackend(hf)
    shared = reuse.label_logprobs(reqs, ["A", "B"])  # the judge's hf path: rubric prefix computed once
    assert reuse.stats["prefills"] == 1
    for req, got, also in zip(reqs, batched, shared):
        assert also == pytest.approx(got, abs=1e-4)
        ids = torch.tensor([hf.prompt_ids(req)])
        with torch.inference_mode():
            lp = torch.log_softmax(hf.model(input_ids=ids).logits[0, -1].float(), -1)
        for label in ("A", "B"):
            variants = {hf.tokenizer.encode(v, add_special_tokens=False)[0] for v in (label, " " + label)}
            assert got[label] == pytest.approx(float(torch.logsumexp(lp[sorted(variants)], 0)), abs=1e-4)


def test_hf_pairwise_logprob_rubric_stores_probabilities_and_debiased_verdicts(corpus, tmp_path, tiny_model_dir):
    gens = add_candidates(corpus, [("Name a prime.", ["7", "9", "eleven is a prime"])])
    path = write_rubric(tmp_path / "pw.yaml", "pairwise.yaml", {"model: null": f"model: {tiny_model_dir}", **PAIRWISE_LOGPROB})
    s = run_judge(corpus, str(path), progress=False)
    assert s["judged"] == 6 and s["ok"] == 6 and s["failed"] == 0  # 3 pairs x both orders, no decoding to fail
    rows = corpus.query("SELECT judge, score, raw, meta, \"order\", generation_a, generation_b FROM judgments")
    assert {r["judge"] for r in rows} == {f"hf:{tiny_model_dir}+logprob"}
    p_first = {}
    for r in rows:
        meta, probs = json.loads(r["meta"]), json.loads(r["raw"])
        assert meta["method"] == "logprob" and set(probs) == {"A", "B"}
        assert r["score"] == pytest.approx(probs["A"] / (probs["A"] + probs["B"]), rel=1e-4)
        p_first[(r["generation_a"], r["generation_b"])] = r["score"]
    for v in corpus.query("SELECT generation_a, generation_b, winner FROM pair_verdicts"):
        a, b = v["generation_a"], v["generation_b"]  # sorted ids: a is shown first in order 'ab'
        p_a = (p_first[(a, b)] + 1 - p_first[(b, a)]) / 2
        assert v["winner"] == ("a" if p_a > 0.5 else "b")
    assert len(corpus.query("SELECT * FROM judge_scores")) == len(gens)
    again = run_judge(corpus, str(path), progress=False)
    assert again["judged"] == 0 and again["cached"] == 6


def test_hf_pointwise_logprob_gives_the_expected_score(corpus, tmp_path, tiny_model_dir):
    add_candidates(corpus, [("How do I boil an egg?", ["Boil it.", "Eight minutes in boiling water."])])
    path = write_rubric(tmp_path / "h.yaml", "helpfulness.yaml", {"model: null": f"model: {tiny_model_dir}\n    method: logprob"})
    s = run_judge(corpus, str(path), progress=False)
    assert s["ok"] == 2
    for r in corpus.query("SELECT score, score_expected, raw FROM judgments"):
        probs = {int(k): p for k, p in json.loads(r["raw"]).items()}
        assert sorted(probs) == [0, 1, 2, 3, 4, 5]
        assert r["score"] == r["score_expected"] == pytest.approx(sum(k * p for k, p in probs.items()) / sum(probs.values()), rel=1e-4)
        assert 0 < r["score"] < 5  # a random model spreads its mass: an expectation, not a level


def _slot_biased(body):
    """Prefers slot A strongly, and the answer containing 'good' a little: position decides the
    argmax in both orders, only the average over both orders recovers the preference."""
    from backends import ChatRequest

    req = ChatRequest(messages=[{"role": m["role"], "content": m["content"]} for m in body["messages"]])
    if "Answer with the single letter" in req.messages[1]["content"]:
        a, b = shown(req)
        p_a = 0.9 + (0.05 if "good" in a else -0.05 if "good" in b else 0.0)
        return {"A": math.log(p_a * 0.5), " A": math.log(p_a * 0.5), "B": math.log(1 - p_a), "The": math.log(0.001)}
    score = 5 if "good" in answer_of(req) else 2
    return {str(score): math.log(0.6), str(score - 1): math.log(0.3), "x": math.log(0.1)}


def test_openai_server_logprob_pairwise_is_position_debiased(corpus, tmp_path):
    gens = add_candidates(corpus, [("Pick one.", ["a good answer", "a poor answer"])])
    path = write_rubric(tmp_path / "pw.yaml", "pairwise.yaml", PAIRWISE_LOGPROB)
    with openai_server.OpenAIServer(first_logprobs=_slot_biased) as srv:
        backend = OpenAIBackend("served", base_url=srv.base_url, max_retries=0, timeout=10)
        s = run_judge(corpus, str(path), backend=backend, progress=False)
        bodies = [r.body for r in srv.requests]
    assert s["ok"] == 2 and all(b["max_tokens"] == 1 and b["top_logprobs"] == 20 for b in bodies)
    rows = corpus.query("SELECT score, meta FROM judgments")
    assert all(json.loads(r["meta"])["winner"] == "A" for r in rows)  # slot A wins in both orders...
    assert sorted(round(r["score"], 4) for r in rows) == [0.85, 0.95]  # " A" and "A" add up
    (v,) = corpus.query("SELECT generation_a, generation_b, winner FROM pair_verdicts")
    good = gens[0].id
    assert (v["generation_a"] if v["winner"] == "a" else v["generation_b"]) == good  # ...the average picks 'good'
    flag = corpus.query("SELECT reason FROM flags WHERE kind = 'position_inconsistent'")
    assert len(flag) == 1 and "averaged over both orders" in flag[0]["reason"]


def test_openai_server_logprob_pointwise_and_missing_labels_fail_with_a_flag(corpus, tmp_path):
    gens = add_candidates(corpus, [("Q?", ["good", "meh"]), ("Unscorable?", ["x"])])
    path = write_rubric(tmp_path / "h.yaml", "helpfulness.yaml", {"model: null": "model: null\n    method: logprob"})

    def script(body):
        return {"Sure": 0.0} if "Unscorable?" in body["messages"][1]["content"] else _slot_biased(body)

    with openai_server.OpenAIServer(first_logprobs=script) as srv:
        s = run_judge(corpus, str(path), backend=OpenAIBackend("served", base_url=srv.base_url, max_retries=0, timeout=10),
                      progress=False)
    assert s["ok"] == 2 and s["failed"] == 1
    by = {r["target_id"]: r for r in corpus.query("SELECT target_id, score, parse_status FROM judgments")}
    assert by[gens[0].id]["score"] == pytest.approx((5 * 0.6 + 4 * 0.3) / 0.9)
    assert by[gens[1].id]["score"] == pytest.approx((2 * 0.6 + 1 * 0.3) / 0.9)
    assert by[gens[2].id]["parse_status"] == "failed" and by[gens[2].id]["score"] is None
    assert corpus.query("SELECT target_id FROM flags WHERE kind = 'parse_failed'")[0]["target_id"] == gens[2].id


@pytest.mark.parametrize("replace, words", [
    ({"    temperature: 0": "    temperature: 0\n    method: logprob\n    samples: 2"}, "set `samples: 1`"),
    ({"backend: hf": "backend: fake\n    method: logprob"}, "needs a backend that returns logprobs"),
    ({"    temperature: 0": "    temperature: 0\n    method: guess"}, "'generate' or 'logprob'"),
])
def test_bad_logprob_judge_spec_names_the_line(tmp_path, replace, words):
    path = write_rubric(tmp_path / "bad.yaml", "pairwise.yaml", replace)
    with pytest.raises(UserError, match=words) as e:
        load_rubric(path)
    assert str(e.value).startswith(f"{path}:")


def test_logprob_on_a_two_digit_scale_is_refused_at_the_judges_line(tmp_path):
    five = "      5: Impeccable, expert and tailored to the question."
    path = write_rubric(tmp_path / "h.yaml", "helpfulness.yaml", {
        "model: null": "model: null\n    method: logprob", five: five + "".join(f"\n      {k}: level {k}" for k in range(6, 11))})
    with pytest.raises(UserError, match="one-digit scales") as e:
        load_rubric(path)
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if "method: logprob" in t)
    assert str(e.value).startswith(f"{path}:{line}:")


def test_default_method_leaves_rubric_hashes_unchanged():
    """`method` is new: rubrics that do not set it must keep the hash they had (their judgments' key)."""
    r = load_rubric(PROMPTS / "pairwise.yaml")
    assert "method" not in json.dumps(r.model_dump(mode="json"))
    assert r.judges[0].method == "generate"


def test_logprob_judge_on_a_backend_without_logprobs_is_refused_before_anything_is_written(corpus, tmp_path):
    from backends.fake import FakeBackend

    add_candidates(corpus, [("Pick one.", ["x", "y"])])
    path = write_rubric(tmp_path / "pw.yaml", "pairwise.yaml", PAIRWISE_LOGPROB)
    with pytest.raises(UserError, match="returns no logprobs: use the hf, vllm or openai backend, or method: generate"):
        run_judge(corpus, str(path), backend=FakeBackend("f", default="A"), progress=False)
    assert corpus.query("SELECT count(*) AS n FROM judgments")[0]["n"] == 0
