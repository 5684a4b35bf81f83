"""Why the judge's memory stays flat: what one forward pass may hold, checked on the tiny real model.

Issue 20 measured 11.9 GB for 16 judgments of 791-2,940-token prompts: the prefix-reuse path
asked the model for logits at every position (rows x tokens x 49,152 floats) and a batch held 16
long rows whatever their length. Peak RSS depends on the machine, so it is printed by
bench/judge_memory.py; these tests check the shapes that bound it: every forward keeps the last
position's logits only, and rows x padded width stays within the backend's token budget.
"""

from __future__ import annotations

import pytest
from test_judge_helpers import PROMPTS, add_candidates, write_rubric

from backends.hf import HFBackend, token_batches
from judge import load_rubric
from judge.logprob import pairwise_request
from judge.prefix_cache import PrefixReuseBackend
from judge.run import Judges


def test_token_batches_cut_by_rows_and_by_padded_tokens():
    assert token_batches([10, 9, 8, 7, 6], 2, 1000) == [(0, 2), (2, 4), (4, 5)]
    # 3,000-token rows: two fit a budget of 8,192; short rows fill the batch size
    assert token_batches([3000, 3000, 100, 100, 100], 16, 8192) == [(0, 2), (2, 5)]
    assert token_batches([9000, 50], 16, 8192) == [(0, 1), (1, 2)]  # a row over the budget goes alone
    assert token_batches([], 4, 100) == []


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    return HFBackend(str(tiny_model_dir), batch_size=16, device="cpu", max_batch_tokens=1200)


def _long_requests():
    rubric = load_rubric(PROMPTS / "pairwise_logprob.yaml")
    c = rubric.criteria[0]
    # four short prompts (about 330 tokens) and four long ones (about 850)
    return [pairwise_request(rubric, c, [{"role": "user", "content": f"question {i} " * (3 if i < 4 else 150 + i)}],
                             "short answer", "a longer answer " * (3 if i < 4 else 20)) for i in range(8)]


def _spy(model):
    seen = []

    def hook(module, args, kwargs, output):
        ids = kwargs.get("input_ids")
        seen.append((tuple(ids.shape), tuple(output.logits.shape)))

    handle = model.register_forward_hook(hook, with_kwargs=True)
    return seen, handle


@pytest.mark.parametrize("reuse", [False, True], ids=["hf", "prefix-reuse"])
def test_label_logprobs_keep_one_position_and_stay_in_the_token_budget(hf, reuse):
    reqs = _long_requests()
    lengths = sorted((len(hf.prompt_ids(r)) for r in reqs), reverse=True)
    assert lengths[3] > 600 and lengths[4] < 400  # budget 1,200: long rows go alone, short ones three at a time
    scorer = PrefixReuseBackend(hf) if reuse else hf
    seen, handle = _spy(hf.model)
    try:
        got = scorer.label_logprobs(reqs, ["A", "B"])
    finally:
        handle.remove()
    assert all(isinstance(g, dict) for g in got)
    assert seen and all(logits[1] == 1 for _, logits in seen), seen  # the last position's logits only
    assert all(rows == 1 or rows * width <= hf.max_batch_tokens for (rows, width), _ in seen), seen
    assert max(rows for (rows, _), _ in seen) > 2  # short rows still share a batch
    # splitting changes no result: the same requests one at a time give the same probabilities
    alone = [hf.label_logprobs([r], ["A", "B"])[0] for r in reqs]
    for a, b in zip(got, alone):
        assert a["A"] == pytest.approx(b["A"], abs=1e-4) and a["B"] == pytest.approx(b["B"], abs=1e-4)


def test_prefix_reuse_decoding_keeps_one_position(hf):
    from judge.render import pointwise_request
    from judge.rubric import JudgeSpec

    r = load_rubric(PROMPTS / "helpfulness.yaml")
    reqs = [pointwise_request(r, r.criteria[0], JudgeSpec(max_new_tokens=8), [{"role": "user", "content": "q " * (40 * i)}],
                              "answer " * (30 * i), 0, logprobs=False) for i in range(1, 6)]
    seen, handle = _spy(hf.model)
    try:
        comps = PrefixReuseBackend(hf).generate(reqs)
    finally:
        handle.remove()
    assert all(c.ok for c in comps)
    assert seen and all(logits[1] == 1 for _, logits in seen), seen


def test_judge_batch_size_reaches_the_rubrics_own_hf_judges(corpus, tmp_path, tiny_model_dir):
    add_candidates(corpus, [("q", ["a", "b"])])
    path = write_rubric(tmp_path / "p.yaml", "pairwise_logprob.yaml", {"model: null": f"model: {tiny_model_dir}"})
    judges = Judges(load_rubric(path), corpus, "run", None, True, {"batch_size": 3, "device": "cpu"})
    try:
        (cached,) = judges.backends()
        assert cached.inner.batch_size == 3  # the prefix-reuse wrapper takes the hf backend's
        assert cached.inner.inner.batch_size == 3
    finally:
        judges.close()
