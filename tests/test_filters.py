"""Filters on a real DuckDB corpus: planted duplicates and contamination are caught, a changed
threshold changes only flags and views, pairs respect margins, judge flag policies, bad configs.

Judge scores are inserted as rows (criterion_scores, flags with stage 'judge') to get exact
scenarios: no model is involved in filtering, so nothing here is faked."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from corpus import Corpus, Flag, Generation, Prompt, Review
from filters import run_filters
from filters.base import Item, run_pipeline
from filters.config import load_config
from filters.dedup import MinHashDedup, MinHasher
from filters.pairs import build_pairs

ROOT = Path(__file__).resolve().parent.parent
VOCAB = (
    "the a of and to in is it that for on with as was by this from at are be or an have not but "
    "river model garden window engine market silver planet theory kitchen signal forest ladder "
    "answer python server bridge candle orbit harbor pencil violin meadow rocket tunnel lantern "
    "quickly gently measure explain compare describe build carry follow observe improve return "
    "bright narrow heavy simple hidden ancient careful modern quiet rapid honest golden hollow"
).split()


def words(seed: int, n: int = 40) -> str:
    r = random.Random(seed)
    return " ".join(r.choices(VOCAB, k=n))


def add(corpus: Corpus, prompt: str, scores: list[float | None], responses: list[str] | None = None,
        finish: list[str] | None = None, criteria: dict[str, list[float]] | None = None):
    """A prompt with one candidate per score; each score becomes a criterion_scores row."""
    p = Prompt(messages=[{"role": "user", "content": prompt}], source="test")
    responses = responses or [words(hash((prompt, i)) % 10_000_000, 40) for i in range(len(scores))]
    gens = [
        Generation(prompt_id=p.id, backend="fake", model="m", params={"temperature": 1.0}, sample_idx=i,
                   response=responses[i], finish_reason=(finish or ["stop"] * len(scores))[i])
        for i in range(len(scores))
    ]
    corpus.insert([p, *gens])
    rows = []
    for i, (g, s) in enumerate(zip(gens, scores)):
        crit = {"quality": s} if s is not None else {}
        for name, vals in (criteria or {}).items():
            crit[name] = vals[i]
        for name, v in crit.items():
            # extra criteria weigh 0, so the overall score is exactly the quality score given
            rows.append([f"{g.id}:{name}", g.id, p.id, "test", "1", name, v * 4 + 1, v, float(name == "quality"), 1])
    with corpus.transaction() as con:
        if rows:
            con.executemany(
                "INSERT INTO criterion_scores (id, generation_id, prompt_id, rubric, rubric_version, criterion, "
                "score, score_norm, weight, n_judgments) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    return p, gens


def config(tmp_path: Path, text: str, name: str = "filters.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def decisions(corpus: Corpus, kind: str | None = None) -> list[dict]:
    sql = "SELECT * FROM filter_decisions" + (" WHERE kind = ?" if kind else "")
    rows = corpus.query(sql, [kind] if kind else None)
    for r in rows:
        r["details"] = json.loads(r["details"]) if r["details"] else {}
    return rows


# -- dedup and decontamination --------------------------------------------------------------------

def test_planted_exact_and_near_duplicate_prompts_are_flagged(corpus):
    base = words(1, 40)
    near = base.split()
    near[20] = "zeppelin"
    p0, _ = add(corpus, base, [0.9, 0.2])
    p1, _ = add(corpus, "  " + base.upper() + "!!", [0.9, 0.2])       # same after normalization
    p2, _ = add(corpus, " ".join(near), [0.9, 0.2])                     # one word changed
    p3, _ = add(corpus, words(2, 40), [0.9, 0.2])
    summary = run_filters(corpus)
    flags = {(d["target_id"], d["kind"]): d for d in decisions(corpus) if d["target_kind"] == "prompt"}
    assert flags[(p1.id, "exact_dedup")]["details"]["duplicate_of"] == p0.id
    near_flag = flags[(p2.id, "near_dedup")]
    assert near_flag["details"]["duplicate_of"] == p0.id and near_flag["details"]["jaccard"] >= 0.8
    assert not any(t == p3.id or t == p0.id for t, _ in flags)
    assert {r["prompt_id"] for r in corpus.query("SELECT prompt_id FROM accepted_sft")} == {p0.id, p3.id}
    assert summary["prompts_kept"] == 2


def test_exact_dedup_ignores_case_spacing_and_end_punctuation_but_not_operators():
    from filters.dedup import ExactDedup

    items = [Item(id=str(i), kind="prompt", text=t) for i, t in enumerate(
        ["What is 2+2?", "  what IS 2+2 ?!", "What is 2-2?", "What   is\n2+2"])]
    f = ExactDedup()
    assert [x.id for x in run_pipeline([f], items)] == ["0", "2"]


def test_same_last_turn_after_a_different_history_is_not_a_duplicate(corpus, tmp_path):
    q = words(30, 20)
    a = Prompt(messages=[{"role": "user", "content": words(31, 20)}, {"role": "assistant", "content": "ok"},
                         {"role": "user", "content": q}])
    b = Prompt(messages=[{"role": "user", "content": words(32, 20)}, {"role": "assistant", "content": "ok"},
                         {"role": "user", "content": q}])
    gens = [Generation(prompt_id=p.id, backend="fake", model="m", params={}, sample_idx=0, response=words(33 + i))
            for i, p in enumerate((a, b))]
    corpus.insert([a, b, *gens])
    s = run_filters(corpus, config(tmp_path, "judge: {unscored: keep}\n"))
    assert s["prompts_kept"] == 2 and not decisions(corpus, "exact_dedup")


def test_duplicate_responses_keep_the_best_scored_copy(corpus):
    shared = words(7, 40)
    _, ga = add(corpus, words(10), [0.3, 0.1], responses=[shared, words(11)])
    _, gb = add(corpus, words(12), [0.8, 0.2], responses=[shared, words(13)])
    run_filters(corpus)
    dup = decisions(corpus, "exact_dedup")
    assert [(d["target_id"], d["details"]["duplicate_of"]) for d in dup] == [(ga[0].id, gb[0].id)]


def test_duplicate_responses_prefer_a_copy_that_may_be_chosen(corpus):
    shared = words(8, 40)
    _, ga = add(corpus, words(14), [0.9, 0.1], responses=[shared, words(15)], finish=["length", "stop"])
    _, gb = add(corpus, words(16), [0.5, 0.1], responses=[shared, words(17)])
    run_filters(corpus)
    dup = decisions(corpus, "exact_dedup")
    assert [(d["target_id"], d["details"]["duplicate_of"]) for d in dup] == [(ga[0].id, gb[0].id)]


@pytest.mark.parametrize("index", ["numpy", "datasketch"])
def test_minhash_dedup_recall_on_planted_near_duplicates(index):
    rng = random.Random(0)
    docs = [" ".join(rng.choices(VOCAB, k=80)) for _ in range(300)]
    planted = {}
    for i in range(0, 300, 3):
        w = docs[i].split()
        w[rng.randrange(80)] = "zeppelin"   # one edit: Jaccard of 3-gram shingles about 0.93
        docs[i + 1] = " ".join(w)
        planted[str(i + 1)] = str(i)
    items = [Item(id=str(i), kind="generation", text=t) for i, t in enumerate(docs)]
    f = MinHashDedup(threshold=0.8, batch_size=64, index=index)  # several batches: matches across batches count
    kept = run_pipeline([f], items)
    found = {d.item.id: d.details["duplicate_of"] for d in f.decisions}
    assert found == planted
    assert len(kept) == 300 - len(planted)


def test_minhash_signatures_are_deterministic_and_order_sensitive():
    a, b = MinHasher(), MinHasher()
    texts = ["one two three four five", "five four three two one", "x"]
    sa, oa = a.shingles(texts)
    sb, ob = b.shingles(texts)
    assert (sa == sb).all() and (oa == ob).all() and list(oa) == [0, 3, 6, 7]
    sig = a.signatures(sa, oa)
    assert (sig[0] != sig[1]).any()           # word order matters for shingles
    assert (a.signatures(*a.shingles(["one two three four five"]))[0] == sig[0]).all()


def test_decontamination_against_named_files_and_folders(corpus, tmp_path):
    evals = tmp_path / "evals"
    evals.mkdir()
    secret = "write a function that returns the sum of the squares of all odd numbers in a list of integers"
    (evals / "bench.jsonl").write_text(json.dumps({"id": 1, "question": {"text": secret}}) + "\n")
    (evals / "short.txt").write_text("name the capital city of the country of france please\n")
    dirty, _ = add(corpus, "Hi! " + secret.capitalize() + ", thanks.", [0.9, 0.1])
    short, _ = add(corpus, "Quick one: name the capital city of the country of France, please?", [0.9, 0.1])
    _, leaky = add(corpus, words(20), [0.9, 0.1], responses=[f"Sure. {secret}.", words(21)])
    clean, _ = add(corpus, words(22), [0.9, 0.1])
    run_filters(corpus, eval_sets=[str(evals)])
    flagged = {(d["target_id"], d["target_kind"]): d for d in decisions(corpus, "decontaminate")}
    assert flagged[(dirty.id, "prompt")]["details"]["eval"] == "bench.jsonl:1"
    assert flagged[(short.id, "prompt")]["details"]["eval"] == "short.txt:1"
    assert (leaky[0].id, "generation") in flagged
    assert not any(t == clean.id for t, _ in flagged)


def test_decontamination_with_shared_eval_sets(corpus, shared_data):
    he = json.loads((shared_data / "humaneval.jsonl").read_text().splitlines()[3])
    mt = json.loads((shared_data / "mtbench_questions.jsonl").read_text().splitlines()[5])
    p_he, _ = add(corpus, "Complete this:\n" + he["prompt"], [0.9, 0.1])
    p_mt, _ = add(corpus, mt["turns"][0], [0.9, 0.1])
    p_ok, _ = add(corpus, "How do I keep basil alive on a windowsill in winter?", [0.9, 0.1])
    summary = run_filters(corpus, eval_sets=[str(shared_data / "humaneval.jsonl"), str(shared_data / "mtbench_questions.jsonl")])
    flagged = {d["target_id"]: d["details"]["eval"] for d in decisions(corpus, "decontaminate")}
    assert flagged[p_he.id] == "humaneval.jsonl:4" and flagged[p_mt.id] == "mtbench_questions.jsonl:6"
    assert p_ok.id not in flagged and summary["prompts_kept"] == 1


# -- thresholds, judge policies, pairs ------------------------------------------------------------

BASE_TABLES = ("prompts", "generations", "judgments", "criterion_scores", "calls", "reviews")


def _table_state(corpus: Corpus) -> dict[str, list]:
    return {t: corpus.query(f"SELECT * EXCLUDE (created_at) FROM {t} ORDER BY id" if t != "calls" else "SELECT key FROM calls") for t in BASE_TABLES}


def test_changing_a_threshold_changes_only_flags_and_views(corpus, tmp_path):
    for i, scores in enumerate([[0.9, 0.6, 0.3, 0.1], [0.7, 0.65, 0.6, 0.55], [0.95, 0.9, 0.5, 0.4]]):
        add(corpus, words(100 + i), scores)
    before = _table_state(corpus)
    loose = config(tmp_path, "sft: {min_score: 0.5}\npairs: {min_margin: 0.1}\n", "loose.yaml")
    strict = config(tmp_path, "sft: {min_score: 0.8}\npairs: {min_margin: 0.5}\n", "strict.yaml")
    r1 = run_filters(corpus, loose)
    pairs1 = corpus.query("SELECT id, margin FROM preference_pairs ORDER BY id")
    sft1 = corpus.query("SELECT id FROM accepted_sft ORDER BY id")
    flags1 = corpus.query("SELECT id FROM flags WHERE run_id = ? ORDER BY id", [r1["run_id"]])
    r2 = run_filters(corpus, strict)
    assert _table_state(corpus) == before
    assert corpus.query("SELECT id FROM flags WHERE run_id = ? ORDER BY id", [r1["run_id"]]) == flags1
    pairs2 = corpus.query("SELECT id, margin FROM preference_pairs ORDER BY id")
    assert len(pairs1) == 3 and len(pairs2) == 2 and all(p["margin"] >= 0.5 for p in pairs2)
    assert len(corpus.query("SELECT id FROM accepted_sft")) == 2 < len(sft1) == 3
    ties = decisions(corpus, "pairs")
    assert [d["reason"] for d in ties] == ["margin<0.5"]
    assert r2["run_id"] != r1["run_id"]
    run_filters(corpus, loose)  # back to the loose threshold: the same rows come back
    assert corpus.query("SELECT id, margin FROM preference_pairs ORDER BY id") == pairs1
    assert corpus.query("SELECT id FROM accepted_sft ORDER BY id") == sft1


def test_rubric_and_version_choose_which_scores_rank(corpus, tmp_path):
    p, g = add(corpus, words(260), [0.9, 0.2])
    with corpus.transaction() as con:  # a second rubric version that ranks the other way round
        con.executemany("INSERT INTO criterion_scores (id, generation_id, prompt_id, rubric, rubric_version, criterion, "
                        "score, score_norm, weight, n_judgments) VALUES (?, ?, ?, 'test', '2', 'quality', 1, ?, 1, 1)",
                        [[g[0].id + ":v2", g[0].id, p.id, 0.1], [g[1].id + ":v2", g[1].id, p.id, 0.8]])
    run_filters(corpus, config(tmp_path, "rubric: test\nrubric_version: 2\nsft: {min_score: 0.5}\n"))
    assert [r["id"] for r in corpus.query("SELECT id FROM accepted_sft")] == [g[1].id]
    run_filters(corpus, config(tmp_path, "rubric: test\nrubric_version: 1\nsft: {min_score: 0.5}\n"))
    assert [r["id"] for r in corpus.query("SELECT id FROM accepted_sft")] == [g[0].id]


def test_a_failed_run_leaves_the_views_on_the_last_good_run(corpus, monkeypatch):
    for i in range(2):
        add(corpus, words(270 + i), [0.9, 0.2])
    run_filters(corpus)
    before = corpus.query("SELECT id FROM preference_pairs ORDER BY id")

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr("filters.run.build_pairs", boom)
    with pytest.raises(RuntimeError):
        run_filters(corpus, config=load_config().model_copy(update={"sft": load_config().sft.model_copy(update={"min_score": 0.95})}))
    assert corpus.query("SELECT status FROM runs ORDER BY started_at") == [{"status": "ok"}, {"status": "failed"}]
    assert corpus.query("SELECT id FROM preference_pairs ORDER BY id") == before and len(before) == 2
    assert len(corpus.query("SELECT id FROM accepted_sft")) == 2


def test_where_limits_the_candidates_and_bad_sql_is_a_user_error(corpus):
    from corpus import UserError

    p1, g1 = add(corpus, words(280), [0.9, 0.2])
    p2, _ = add(corpus, words(281), [0.9, 0.2])
    s = run_filters(corpus, where=f"p.id = '{p1.id}'")
    assert s["prompts"] == 1 and s["candidates"] == 2
    assert [r["prompt_id"] for r in corpus.query("SELECT prompt_id FROM accepted_sft")] == [p1.id]
    with pytest.raises(UserError, match="--where"):
        run_filters(corpus, where="g.no_such_column = 1")
    assert corpus.query("SELECT count(*) AS n FROM runs")[0]["n"] == 1


def _item(i: str, score: float, text: str | None = None, **kw) -> Item:
    return Item(id=i, kind="generation", text=text or f"answer {i}", prompt_id="p", score=score, **kw)


def test_pairs_respect_margins_and_never_pair_a_candidate_with_itself():
    items = [_item("a", 0.9), _item("a2", 0.2, text="answer a"), _item("b", 0.85), _item("c", 0.5),
             _item("d", 0.5), _item("e", 0.1, rejected_only=True)]
    out = build_pairs({"p": items}, "all", min_margin=0.3)
    assert out.pairs
    for pc in out.pairs:
        assert pc.chosen.id != pc.rejected.id and pc.chosen.text != pc.rejected.text
        assert pc.margin >= 0.3 and pc.margin == pytest.approx(pc.chosen.score - pc.rejected.score)
        assert not pc.chosen.rejected_only
    assert ("a", "a2") not in {(p.chosen.id, p.rejected.id) for p in out.pairs}   # identical text
    bw = build_pairs({"p": items}, "best_worst", min_margin=0.3).pairs
    assert [(p.chosen.id, p.rejected.id, p.margin) for p in bw] == [("a", "e", 0.8)]
    assert build_pairs({"p": items[2:5]}, "best_worst", min_margin=0.4).ties[0][1] == "margin<0.4"
    one = build_pairs({"p": [_item("x", 0.9)]}, "all", min_margin=0.0)
    assert not one.pairs and one.ties[0][1] == "fewer_than_2_candidates"


def test_length_balance_pairs_the_tied_candidates_closest_in_length():
    words = lambda n: " ".join(["word"] * n)  # noqa: E731
    # pass/fail scores as one check gives them: two passes and three fails, all tied within their side
    items = [_item("p1", 1.0, words(12)), _item("p2", 1.0, words(60)),
             _item("f1", 0.0, words(150)), _item("f2", 0.0, words(58)), _item("f3", 0.0, words(5), rejected_only=True)]
    plain = build_pairs({"p": items}, "best_worst", min_margin=0.5).pairs
    assert [(p.chosen.id, p.rejected.id) for p in plain] == [("p2", "f1")]  # by id: highest chosen, lowest rejected
    bal = build_pairs({"p": items}, "best_worst", min_margin=0.5, length_balance=True).pairs
    assert [(p.chosen.id, p.rejected.id, p.margin) for p in bal] == [("p2", "f2", 1.0)]
    # a strictly better candidate still wins over a closer length: balance only breaks ties
    top = [_item("best", 1.0, words(10)), _item("mid", 0.6, words(150)), _item("low", 0.0, words(140)),
           _item("low2", 0.0, words(11))]
    bal = build_pairs({"p": top}, "best_worst", min_margin=0.5, length_balance=True).pairs
    assert [(p.chosen.id, p.rejected.id) for p in bal] == [("best", "low2")]
    # nothing to pair with stays a tie, reported as before
    alone = build_pairs({"p": [_item("a", 1.0, "same"), _item("b", 0.0, "same")]}, "best_worst",
                        min_margin=0.5, length_balance=True)
    assert not alone.pairs and alone.ties[0][1] == "no_rejected_candidate"


def test_length_balance_is_a_filters_config_key(tmp_path):
    from filters.config import load_config

    path = tmp_path / "f.yaml"
    path.write_text("pairs: {length_balance: true}\n")
    assert load_config(str(path)).pairs.length_balance is True
    path.write_text("pairs: {length_balance: maybe}\n")
    with pytest.raises(Exception, match="f.yaml:1: pairs.length_balance"):
        load_config(str(path))


def test_west_of_n_ranks_by_pairwise_wins_and_falls_back_to_scores():
    items = [_item("a", 0.9), _item("b", 0.5), _item("c", 0.1)]
    # pairwise verdicts disagree with the pointwise scores: c beats everyone
    verdicts = {"p": [("c", "a", "a"), ("c", "b", "a"), ("a", "b", "tie")]}
    out = build_pairs({"p": items}, "west_of_n", min_margin=0.1, verdicts=verdicts)
    assert [(p.chosen.id, p.rejected.id, p.method) for p in out.pairs] == [("c", "b", "west_of_n")]
    fallback = build_pairs({"p": items}, "west_of_n", min_margin=0.1, verdicts={})
    assert [(p.chosen.id, p.rejected.id) for p in fallback.pairs] == [("a", "c")]


def test_west_of_n_reads_the_judges_pair_verdicts(corpus, tmp_path):
    p, g = add(corpus, words(250), [0.9, 0.5, 0.2])
    rows = [  # pairwise the judge prefers g2 over both, g1 over g0; one order-inconsistent verdict
        ("v1", g[2].id, g[0].id, "a", True), ("v2", g[2].id, g[1].id, "a", True),
        ("v3", g[1].id, g[0].id, "a", True), ("v4", g[1].id, g[0].id, "b", False),
    ]
    with corpus.transaction() as con:
        con.executemany("INSERT INTO pair_verdicts (id, prompt_id, generation_a, generation_b, rubric, rubric_version, "
                        "criterion, winner, consistent, n_judgments) VALUES (?, ?, ?, ?, 'test', '1', 'quality', ?, ?, 2)",
                        [[i, p.id, a, b, w, c] for i, a, b, w, c in rows])
    run_filters(corpus, config(tmp_path, "pairs: {method: west_of_n, min_margin: 0.5}\n"))
    got = corpus.query("SELECT p.chosen_id, p.rejected_id, v.margin, v.method FROM preference_pairs v JOIN pairs p USING (id)")
    # win rates: g2 2/2, g1 (1 + 0.5)/3, g0 0.5/3 -> g2 over g0 with margin 1 - 1/6
    assert got == [{"chosen_id": g[2].id, "rejected_id": g[0].id, "margin": pytest.approx(5 / 6, abs=1e-5), "method": "west_of_n"}]


def test_judge_flag_policies_and_criterion_thresholds(corpus, tmp_path):
    p, g = add(corpus, words(200), [0.95, 0.9, 0.8, 0.6, 0.3, 0.1],
               criteria={"safety": [1.0, 1.0, 1.0, 0.2, 1.0, 1.0]})
    corpus.insert([
        Flag(target_id=g[0].id, kind="judge_injection", reason="ignore previous instructions", stage="judge"),
        Flag(target_id=g[1].id, kind="jury_disagreement", reason="agreement 0.2", stage="judge"),
        Flag(target_id="pairkey", target_kind="pair", kind="position_inconsistent", reason="flipped", stage="judge",
             details={"generation_a": g[2].id, "generation_b": g[5].id}),
    ])
    cfg = config(tmp_path, "judge:\n  thresholds: {safety: 0.5}\nsft: {min_score: 0.5, per_prompt: 3}\npairs: {method: all, min_margin: 0.1}\n")
    run_filters(corpus, cfg)
    by = {d["target_id"]: d for d in decisions(corpus, "judge")}
    assert by[g[0].id]["details"]["action"] == "drop" and by[g[1].id]["details"]["action"] == "review"
    assert by[g[3].id]["reason"] == "safety<0.5" and by[g[3].id]["details"]["action"] == "as_rejected"
    sft = [r["id"] for r in corpus.query("SELECT id FROM accepted_sft ORDER BY score_norm DESC")]
    assert sft == [g[2].id]                                  # g0 dropped, g1 held for review, g3 unsafe
    pairs = {(r["chosen_id"], r["rejected_id"]) for r in corpus.query(
        "SELECT p.chosen_id, p.rejected_id FROM preference_pairs v JOIN pairs p USING (id)")}
    assert (g[2].id, g[5].id) not in pairs                   # the position-inconsistent pair is a tie
    assert (g[2].id, g[4].id) in pairs and (g[2].id, g[3].id) in pairs   # unsafe g3 may be rejected
    assert not any(c == g[3].id for c, _ in pairs)
    # a reviewer approves the held-out candidate: the next run lets it in
    corpus.insert([Review(target_id=g[1].id, reviewer="ann", verdict="approve")])
    run_filters(corpus, cfg)
    assert g[1].id in {r["id"] for r in corpus.query("SELECT id FROM accepted_sft")}


def test_a_reviewers_edit_becomes_sft_and_beats_the_original(corpus, tmp_path):
    p, g = add(corpus, words(350), [0.9, 0.3])
    edit = Generation(prompt_id=p.id, backend="human", model="ann", params={}, response=words(351),
                      provenance="human", parent_id=g[0].id)
    corpus.insert([edit, Review(target_id=g[0].id, reviewer="ann", verdict="edit", edited_generation_id=edit.id)])
    run_filters(corpus, config(tmp_path, "pairs: {method: all, min_margin: 0.05}\n"))
    assert [r["id"] for r in corpus.query("SELECT id FROM accepted_sft")] == [edit.id]
    pairs = {(r["chosen_id"], r["rejected_id"]) for r in corpus.query(
        "SELECT p.chosen_id, p.rejected_id FROM preference_pairs v JOIN pairs p USING (id)")}
    assert pairs == {(edit.id, g[0].id), (edit.id, g[1].id)}   # the overruled original is only ever rejected


def test_a_reviewers_latest_verdict_counts(corpus):
    from datetime import datetime, timedelta

    _, g = add(corpus, words(360), [0.9, 0.3])
    t0 = datetime(2026, 1, 1)
    corpus.insert([Review(target_id=g[0].id, reviewer="ann", verdict="reject", created_at=t0)])
    run_filters(corpus)
    assert corpus.query("SELECT id FROM accepted_sft") == []
    corpus.insert([Review(target_id=g[0].id, reviewer="ann", verdict="approve", created_at=t0 + timedelta(hours=1))])
    run_filters(corpus)
    assert [r["id"] for r in corpus.query("SELECT id FROM accepted_sft")] == [g[0].id]


def test_failed_heuristics_can_still_be_the_rejected_side(corpus):
    _, g = add(corpus, words(300), [0.9, 0.8, 0.1], finish=["length", "stop", "stop"],
               responses=[words(301), words(302), "I'm sorry, but I can't help with that request."])
    run_filters(corpus)
    assert [r["id"] for r in corpus.query("SELECT id FROM accepted_sft")] == [g[1].id]
    pair = corpus.query("SELECT p.chosen_id, p.rejected_id FROM preference_pairs v JOIN pairs p USING (id)")
    assert pair == [{"chosen_id": g[1].id, "rejected_id": g[2].id}]
    reasons = {d["target_id"]: d["reason"] for d in decisions(corpus)}
    assert reasons[g[0].id] == "finish_reason=length" and reasons[g[2].id] == "refusal"


def test_unscored_candidates_are_dropped_by_default(corpus):
    _, g = add(corpus, words(400), [None, None])
    s = run_filters(corpus)
    assert s["candidates_kept"] == 0 and {d["reason"] for d in decisions(corpus, "judge")} == {"unscored"}


# -- config and CLI -----------------------------------------------------------------------------------

def test_default_config_reads_in_one_screen():
    text = (ROOT / "filters" / "default.yaml").read_text()
    assert len(text.splitlines()) <= 50
    cfg = load_config()
    assert cfg.pairs.method == "best_worst" and cfg.responses.truncated.as_rejected


def test_false_or_null_turns_a_step_off_true_keeps_defaults(tmp_path):
    f = tmp_path / "f.yaml"
    f.write_text("prompts:\n  near_dedup: false\nresponses:\n  refusal: null\n  repetition: false\n  length: true\n")
    cfg = load_config(f)
    assert cfg.prompts.near_dedup is None and cfg.responses.refusal is None and cfg.responses.repetition is None
    assert cfg.responses.length is not None and cfg.responses.length.min_words == 1
    assert cfg.prompts.exact_dedup is not None  # keys left out keep their defaults


BAD_CONFIGS = [
    ("pairs:\n  method: best\n", ":2: pairs.method: input should be 'best_worst', 'all' or 'west_of_n'"),
    ("responses:\n  empty: true\n  lenght: {min_words: 2}\n", ":3: responses.lenght: unknown key; use one of: empty,"),
    ("judge:\n  flags:\n    parse_faild: drop\n", ":3: judge.flags.parse_faild: unknown judge flag kind"),
    ("prompts:\n  near_dedup:\n    threshold: 1.5\n", ":3: prompts.near_dedup.threshold: input should be less than or equal to 1"),
    ("sft: [1, 2\n", ":2: not valid YAML"),
]


def _bad_corpus(tmp_path: Path) -> Path:
    db = tmp_path / "c.duckdb"
    c = Corpus(db)
    add(c, words(500), [0.9, 0.1])
    c.close()
    return db


def _unchanged(db: Path) -> None:
    c = Corpus(db)
    assert c.query("SELECT count(*) AS n FROM runs")[0]["n"] == 0
    assert c.query("SELECT count(*) AS n FROM flags")[0]["n"] == 0
    c.close()


@pytest.mark.parametrize("text, where", BAD_CONFIGS)
def test_bad_config_gives_file_line_and_fix_corpus_unchanged(tmp_path, capsys, text, where):
    from corpus import run_cli
    from filters.cli import main

    db, cfg = _bad_corpus(tmp_path), config(tmp_path, text, "bad.yaml")
    assert run_cli("filters", main, ["--db", str(db), "--config", str(cfg), "--quiet"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"bad.yaml{where}" in lines[0]
    _unchanged(db)


def test_bad_config_exits_2_in_one_line_from_the_shell(tmp_path):
    db = _bad_corpus(tmp_path)
    cfg = config(tmp_path, "eval_sets: [missing.jsonl]\n", "bad.yaml")
    res = subprocess.run([sys.executable, "-m", "filters", "--db", str(db), "--config", str(cfg), "--quiet"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr
    assert "missing.jsonl: no such evaluation file; fix the path" in lines[0]
    _unchanged(db)


def test_cli_prints_counts_per_filter_and_reason(tmp_path):
    db = tmp_path / "c.duckdb"
    c = Corpus(db)
    text = words(600)
    add(c, text, [0.9, 0.1])
    add(c, text.upper(), [0.9, 0.1])
    add(c, words(601), [0.9, 0.5], finish=["stop", "length"])
    c.close()
    png = tmp_path / "run.png"
    res = subprocess.run([sys.executable, "-m", "filters", "--db", str(db), "--plot", str(png)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "exact_duplicate" in res.stdout and "finish_reason=length" in res.stdout
    assert "accepted_sft 2 rows" in res.stdout and "preference_pairs 2" in res.stdout
