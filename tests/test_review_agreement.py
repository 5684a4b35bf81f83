"""The view judge_human_agreement (what the judge reads) against kappa computed by hand."""

from __future__ import annotations

import pytest

from review import add_reviewer, agreement_report, cohen_kappa, record_verdict, sample_queue
from review.report import plot_report, set_score_threshold
from test_review_helpers import add_item

# jury score per item (1-5); judge-b scores the opposite way; the human verdicts
JURY = [5, 5, 4, 1, 2, 2]
HUMAN = ["approve", "approve", "reject", "reject", "reject", "approve"]


@pytest.fixture
def reviewed(corpus):
    with corpus.session():
        gids = [
            add_item(corpus, i, {"helpful": s}, judge_scores={"fake:judge-b": {"helpful": 6 - s}})
            for i, s in enumerate(JURY)
        ]
        sample_queue(corpus, size=10, population="judged")
        add_reviewer(corpus, "ann")
        for g, v in zip(gids, HUMAN):
            record_verdict(corpus, g, "ann", v, note="no" if v == "reject" else None)
    return gids


def rows(corpus):
    return {r["judge"]: r for r in corpus.query("SELECT * FROM judge_human_agreement")}


def test_view_matches_kappa_on_the_hand_built_tables(corpus, reviewed):
    got = rows(corpus)
    # judge-a (= jury, cut at 0.5): approves items 0-2. Table [[j1h1, j1h0], [j0h1, j0h0]]
    assert cohen_kappa([[2, 1], [1, 2]]) == pytest.approx(1 / 3)
    assert got["fake:judge-a"]["n"] == 6
    assert got["fake:judge-a"]["agreement"] == pytest.approx(4 / 6)
    assert got["fake:judge-a"]["kappa"] == pytest.approx(1 / 3)
    # judge-b (6 - s) approves items 3-5
    assert got["fake:judge-b"]["kappa"] == pytest.approx(cohen_kappa([[1, 2], [2, 1]])) == pytest.approx(-1 / 3)
    assert got["fake:judge-b"]["rubric_version"] == "v1" and got["fake:judge-b"]["criterion"] == "helpful"


def test_a_second_verdict_replaces_the_first_but_history_stays(corpus, reviewed):
    record_verdict(corpus, reviewed[2], "ann", "approve")  # was reject: now judge-a agrees on all
    assert rows(corpus)["fake:judge-a"]["agreement"] == pytest.approx(5 / 6)
    assert corpus.query("SELECT count(*) AS n FROM reviews WHERE target_id = ?", [reviewed[2]])[0]["n"] == 2
    assert corpus.query("SELECT verdict FROM review_verdicts WHERE target_id = ?", [reviewed[2]])[0]["verdict"] == "approve"


def test_each_reviewer_is_an_observation(corpus, reviewed):
    add_reviewer(corpus, "bob")
    record_verdict(corpus, reviewed[0], "bob", "approve")
    assert rows(corpus)["fake:judge-a"]["n"] == 7


def test_threshold_setting_moves_the_cut(corpus, reviewed):
    set_score_threshold(corpus, 0.8)  # judge-a now approves only the two 5s: perfect agreement but item 5
    assert rows(corpus)["fake:judge-a"]["agreement"] == pytest.approx(5 / 6)


def test_report_and_plot(corpus, reviewed, tmp_path):
    rep = agreement_report(corpus)
    assert rep["reviewed"] == 6 and rep["approved"] == 3 and rep["rate"] == 0.5
    assert 0 < rep["lower"] < 0.5 < rep["upper"] < 1
    out = plot_report(rep, tmp_path / "agreement.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
