"""The release gate end to end on a real corpus file: blocked until the sample passes, then a
release whose release_items name exactly the accepted rows people did not reject."""

from __future__ import annotations

import subprocess
import sys

import pytest

from review import add_reviewer, record_verdict, release, sample_queue
from test_review_helpers import ROOT_DIR as ROOT, add_item, pair, standin_filter_views




@pytest.fixture
def batch(corpus):
    """10 candidates, all in the (stand-in) accepted_sft, one pair, all queued."""
    with corpus.session():
        gids = [add_item(corpus, i, {"helpful": 1 + i % 5}) for i in range(10)]
        pid = pair(corpus, gids[4], gids[0])
        standin_filter_views(corpus)
        sample_queue(corpus, size=10, population="accepted")
        add_reviewer(corpus, "ann")
    return gids, pid


def test_blocked_until_enough_approvals_then_released(corpus, batch):
    gids, pid = batch
    for g in gids[:5]:
        record_verdict(corpus, g, "ann", "approve")
    res = release(corpus, threshold=0.5, min_reviews=8)
    assert res["decision"] == "blocked"
    assert any("3 more reviewed items" in m for m in res["missing"])
    assert corpus.query("SELECT count(*) AS n FROM release_items")[0]["n"] == 0

    for g in gids[5:9]:
        record_verdict(corpus, g, "ann", "approve")
    record_verdict(corpus, gids[9], "ann", "reject", note="wrong")
    res = release(corpus, threshold=0.5, min_reviews=8)  # 9/10 approved: lower bound 0.596
    assert res["decision"] == "released", res["missing"]
    assert res["approved"] == 9 and res["reviewed"] == 10 and res["lower"] == pytest.approx(0.5958, abs=1e-3)
    items = corpus.query("SELECT kind, item_id FROM release_items WHERE release_id = ? ORDER BY kind, item_id",
                         [res["release_id"]])
    assert {(r["kind"], r["item_id"]) for r in items} == {("sft", g) for g in gids[:9]} | {("pair", pid)}
    rel = corpus.query("SELECT decision, snapshot_hash FROM releases WHERE id = ?", [res["release_id"]])[0]
    assert rel["decision"] == "released" and rel["snapshot_hash"] == res["snapshot_hash"]

    again = release(corpus, threshold=0.5, min_reviews=8)  # same state: the same release, no new rows
    assert again["release_id"] == res["release_id"]
    assert corpus.query("SELECT count(*) AS n FROM release_items")[0]["n"] == len(items)


def test_rejected_chosen_side_keeps_the_pair_out(corpus, batch):
    gids, pid = batch
    for g in gids:
        record_verdict(corpus, g, "ann", "approve")
    record_verdict(corpus, gids[4], "ann", "edit", edited_response="a better answer")  # replaces the approval
    res = release(corpus, threshold=0.5, min_reviews=5)
    ids = {r["item_id"] for r in corpus.query("SELECT item_id FROM release_items WHERE release_id = ?", [res["release_id"]])}
    assert gids[4] not in ids and pid not in ids and len(ids) == 9
    assert res["approved"] == 9


def test_auto_release_records_that_no_human_checked(corpus, batch):
    res = release(corpus, auto=True)
    assert res["decision"] == "auto_released" and res["human_checked"] is False
    row = corpus.query("SELECT decision, json_extract(sample_stats, '$.note') AS note FROM releases")[0]
    assert row["decision"] == "auto_released" and "no human checked" in row["note"]
    assert corpus.query("SELECT count(*) AS n FROM release_items")[0]["n"] == 11


def test_cli_exits_1_and_says_what_is_missing(corpus, batch):
    out = subprocess.run(
        [sys.executable, "-m", "review", "--db", corpus.path, "release", "--min-reviews", "3"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert out.returncode == 1, out.stderr
    assert "not released; missing:" in out.stdout and "3 more reviewed items" in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "review", "--db", corpus.path, "release", "--threshold", "1.5"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--threshold" in bad.stderr


def test_nothing_to_release_blocks_even_auto(corpus):
    """accepted_sft / preference_pairs are stand-ins with no rows here."""
    standin_filter_views(corpus)
    res = release(corpus, auto=True)
    assert res["decision"] == "blocked" and "accepted_sft and preference_pairs are empty" in res["missing"][0]
