"""The sampler on a real corpus file with judgments, jury scores and flags written directly."""

from __future__ import annotations

import pytest

from corpus import Judgment, UserError
from review.sampler import sample_queue
from test_review_helpers import add_item, flag

# helpful / correct on a 1-5 scale; with 2 buckets, score_norm < 0.5 is bucket 0, else bucket 1
ITEMS = {
    "lowlow": {"helpful": 1, "correct": 1},
    "lowhigh": {"helpful": 2, "correct": 5},
    "highlow": {"helpful": 5, "correct": 2},
    "highhigh": {"helpful": 5, "correct": 5},
    "highhigh2": {"helpful": 4, "correct": 5},
    "disagree": {"helpful": 5, "correct": 4},
    "posinc": {"helpful": 1, "correct": 2},
    "near": {"helpful": 3, "correct": 3},       # overall 0.5: at the threshold
}


@pytest.fixture
def items(corpus):
    with corpus.session():
        ids = {name: add_item(corpus, i, s) for i, (name, s) in enumerate(ITEMS.items())}
    flag(corpus, ids["disagree"], "jury_disagreement")
    flag(corpus, ids["near"], "jury_disagreement")  # two reasons: near threshold + flag
    # a pairwise judgment's flag names the pair, not the generation: both sides are disputed
    pair_key = "pair:" + ids["posinc"] + ":" + ids["lowlow"]
    corpus.insert([Judgment(target_id=pair_key, target_kind="pair", generation_a=ids["posinc"],
                            generation_b=ids["lowlow"], judge="fake:judge-a", rubric="general",
                            criterion="helpful", score=1, order="ab")])
    flag(corpus, pair_key, "position_inconsistent")
    return ids


def queue(corpus):
    return corpus.query("SELECT target_id, priority, stratum, disputed, reason FROM review_queue ORDER BY priority")


def test_disputed_items_come_first_most_disputed_first(corpus, items):
    res = sample_queue(corpus, size=6, population="judged", buckets=2, threshold=0.5, margin=0.05, disputed_share=0.5)
    q = queue(corpus)
    assert res["added"] == 6 and [r["priority"] for r in q] == list(range(6))
    disputed = q[:3]
    assert all(r["disputed"] and r["stratum"] == "disputed" for r in disputed)
    assert disputed[0]["target_id"] == items["near"]
    assert disputed[0]["reason"] == "jury_disagreement,near_threshold"
    assert {r["target_id"] for r in disputed[1:]} <= {items["disagree"], items["posinc"], items["lowlow"]}
    # the rest were drawn for a stratum (a disputed item may still land there, marked as such)
    assert all(r["stratum"] != "disputed" for r in q[3:])


def test_rest_is_round_robin_over_criterion_and_bucket_strata(corpus, items):
    sample_queue(corpus, size=4, population="judged", buckets=2, disputed_share=0.0)
    q = queue(corpus)
    # one item per stratum, strata in name order
    assert [r["stratum"] for r in q] == [
        "general/correct/0", "general/correct/1", "general/helpful/0", "general/helpful/1",
    ]
    scores = {r["generation_id"] + r["criterion"]: r["score_norm"] for r in corpus.query("SELECT * FROM judge_scores")}
    for r in q:
        _, crit, bucket = r["stratum"].split("/")
        s = scores[r["target_id"] + crit]
        assert (s >= 0.5) == (bucket == "1"), (r, s)
    assert len({r["target_id"] for r in q}) == 4


def test_rerun_adds_only_new_items_after_the_queue(corpus, items):
    sample_queue(corpus, size=5, population="judged", buckets=2)
    again = sample_queue(corpus, size=100, population="judged", buckets=2)
    q = queue(corpus)
    assert again["added"] == len(ITEMS) - 5
    assert len(q) == len(ITEMS) and len({r["target_id"] for r in q}) == len(ITEMS)
    assert [r["priority"] for r in q] == list(range(len(ITEMS)))
    assert sample_queue(corpus, size=3, population="judged")["added"] == 0


def test_same_seed_same_sample_other_seed_may_differ(tmp_path, items, corpus):
    from corpus import Corpus

    sample_queue(corpus, size=3, population="judged", buckets=2, disputed_share=0, seed=7)
    first = [r["target_id"] for r in queue(corpus)]
    other = Corpus(tmp_path / "other.duckdb")
    with other.session():
        for i, (name, s) in enumerate(ITEMS.items()):
            add_item(other, i, s)
    sample_queue(other, size=3, population="judged", buckets=2, disputed_share=0, seed=7)
    assert [r["target_id"] for r in queue(other)] == first


def test_accepted_population_draws_only_from_accepted_sft(corpus, items):
    """accepted_sft here is a stand-in view (the filters stage owns the real one)."""
    keep = [items["lowlow"], items["highhigh"]]
    corpus.execute(
        "CREATE OR REPLACE VIEW accepted_sft AS SELECT id, prompt_id, '[]' AS messages, 0.5 AS score_norm "
        f"FROM generations WHERE id IN ('{keep[0]}', '{keep[1]}')"
    )
    res = sample_queue(corpus, size=10, population="auto")
    assert res["added"] == 2 and {r["target_id"] for r in queue(corpus)} == set(keep)


def test_bad_size_is_a_user_error(corpus):
    with pytest.raises(UserError, match="--size"):
        sample_queue(corpus, size=0)
