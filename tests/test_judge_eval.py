"""`judge eval` against human labels, on a real DuckDB corpus. The judges are scripted
FakeBackends (backends/fake.py): no model here could play "always says A" or "knows the label"
on demand, and these scripted judges have known right answers, so each figure can be checked."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from backends.fake import FakeBackend
from corpus import Corpus
from judge.evaluate import run_judge_eval

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ROOT / "prompts"
# six labelled pairs: the chosen answer says GOOD; it is the longer one in 4 of 6
ROWS = [
    {"prompt": "What is 2+2?", "chosen": "GOOD: it is four, because two and two make four.", "rejected": "5", "category": "math"},
    {"prompt": "What is 3+3?", "chosen": "GOOD 6", "rejected": "It is seven, I think, roughly speaking.", "category": "math"},
    {"prompt": "Capital of France?", "chosen": "GOOD: Paris is the capital.", "rejected": "Lyon", "category": "geo"},
    {"prompt": "Capital of Italy?", "chosen": "GOOD Rome", "rejected": "Milan is the capital of Italy, surely.", "category": "geo"},
    {"prompt": "Say hi.", "chosen": "GOOD: hi there, nice to meet you!", "rejected": "no", "category": "chat"},
    {"prompt": "Say bye.", "chosen": "GOOD: goodbye, take care!", "rejected": "ok", "category": "chat"},
]


def _fenced(req, label: str) -> str:
    m = re.search(rf"<<<{label} \w+>>>\n(.*?)\n<<<END {label}", req.messages[-1]["content"], re.S)
    return m.group(1) if m else ""


def _pair(winner):
    return lambda req: json.dumps({"rationale": "scripted", "winner": winner(_fenced(req, "RESPONSE A"), _fenced(req, "RESPONSE B"))})


ALWAYS_A = _pair(lambda a, b: "A")
ORACLE = _pair(lambda a, b: "A" if "GOOD" in a else "B")
LONGER = _pair(lambda a, b: "A" if len(a) > len(b) else "B")


@pytest.fixture
def labels(tmp_path) -> Path:
    p = tmp_path / "labels.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return p


def _eval(tmp_path, labels, reply, rubric="pairwise.yaml", **kw):
    corpus = Corpus(tmp_path / "c.duckdb")
    rep = run_judge_eval(corpus, str(PROMPTS / rubric), labels=str(labels), backend=FakeBackend("scripted", default=reply),
                         progress=False, **kw)
    return corpus, {j["judge"]: j for j in rep["judges"]}, rep


def test_a_judge_that_always_says_a_flips_every_time_and_scores_chance(tmp_path, labels):
    corpus, js, _ = _eval(tmp_path, labels, ALWAYS_A)
    j = js["fake:scripted"]
    assert j["position_flip_rate"]["value"] == 1.0 and j["position_flip_rate"]["n"] == 6
    assert j["first_slot_win_rate"]["value"] == 1.0
    assert j["accuracy"]["value"] == 0.5 and j["ties"] == 6
    assert j["accuracy_no_ties"]["value"] is None
    assert "jury" not in js  # one judge: no jury row


def test_a_judge_that_knows_the_labels_is_right_in_both_orders(tmp_path, labels):
    corpus, js, rep = _eval(tmp_path, labels, ORACLE, plot=str(tmp_path / "eval.png"))
    j = js["fake:scripted"]
    assert j["accuracy"]["value"] == 1.0 and j["accuracy_no_ties"]["value"] == 1.0
    assert j["position_flip_rate"]["value"] == 0.0 and j["first_slot_win_rate"]["value"] == 0.5
    assert j["accuracy"]["lower"] == 1.0  # every resample is perfect
    assert set(j["by_category"]) == {"math", "geo", "chat"}
    assert (tmp_path / "eval.png").read_bytes()[:4] == b"\x89PNG"
    row = corpus.query("SELECT accuracy, n_pairs, metrics FROM judge_evals WHERE judge = 'fake:scripted'")[0]
    assert row["accuracy"] == 1.0 and row["n_pairs"] == 6 and json.loads(row["metrics"])["criteria"] == ["preference"]
    # a rerun asks the judge nothing new and replaces (not duplicates) the stored figures
    again = FakeBackend("scripted", default=ORACLE)
    run_judge_eval(corpus, str(PROMPTS / "pairwise.yaml"), labels=str(labels), backend=again, progress=False)
    assert again.history == []
    assert corpus.query("SELECT count(*) AS n FROM judge_evals")[0]["n"] == 2  # the judge and the baseline


def test_length_bias_and_the_longer_answer_baseline(tmp_path, labels):
    _, js, _ = _eval(tmp_path, labels, LONGER)
    j, base = js["fake:scripted"], js["baseline:longer"]
    assert j["accuracy"]["value"] == pytest.approx(4 / 6) == base["accuracy"]["value"]
    assert j["longer_wins_judge"]["value"] == 1.0 and j["longer_wins_labels"]["value"] == pytest.approx(4 / 6)
    assert j["length_bias"]["value"] == pytest.approx(1 / 3)
    assert j["position_flip_rate"]["value"] == 0.0
    lo, hi = j["accuracy"]["lower"], j["accuracy"]["upper"]
    assert lo < 4 / 6 < hi  # six pairs: a wide interval


def _score(fn):
    return lambda req: json.dumps({"rationale": "scripted", "score": fn(_fenced(req, "ANSWER"))})


def test_pointwise_judge_prefers_the_higher_score_and_ties_count_half(tmp_path, labels):
    _, js, _ = _eval(tmp_path, labels, _score(lambda a: 5 if "GOOD" in a else 1), rubric="helpfulness.yaml")
    j = js["fake:scripted"]
    assert j["accuracy"]["value"] == 1.0 and j["position_flip_rate"]["value"] is None
    (tmp_path / "x").mkdir()
    _, js, _ = _eval(tmp_path / "x", labels, _score(lambda a: 3), rubric="helpfulness.yaml")
    assert js["fake:scripted"]["accuracy"]["value"] == 0.5 and js["fake:scripted"]["ties"] == 6


RUBRIC_WITH_VERIFIER = """
name: helpful_short
task: Answer briefly.
mode: pointwise
aggregation: weighted
criteria:
  - name: helpfulness
    description: Is it helpful?
    scale: {1: bad, 2: fair, 3: good}
  - name: brevity
    kind: verifier
    verifier: {type: length, max_words: 4}
judges: [{backend: fake}]
"""


def test_a_jury_is_measured_member_by_member_and_weighted_by_the_figures(tmp_path, labels):
    from judge.jury import human_agreement_weights

    rubric = tmp_path / "r.yaml"
    rubric.write_text(RUBRIC_WITH_VERIFIER)
    corpus = Corpus(tmp_path / "c.duckdb")
    rep = run_judge_eval(corpus, str(rubric), labels=str(labels), progress=False,
                         backend=FakeBackend("scripted", default=_score(lambda a: 3 if "GOOD" in a else 1)))
    js = {j["judge"]: j for j in rep["judges"]}
    assert set(js) == {"fake:scripted", "verifier:length", "jury", "baseline:longer"}
    assert js["fake:scripted"]["accuracy"]["value"] == 1.0
    # the length verifier passes short answers: right only where the chosen one is the shorter
    assert js["verifier:length"]["accuracy"]["value"] < 1.0
    w = human_agreement_weights(corpus, "helpful_short", "1")
    assert w[("fake:scripted", "helpfulness")] == 1.0
    assert w[("verifier:length", "brevity")] == pytest.approx(js["verifier:length"]["accuracy"]["value"])


def test_judgebench_style_file(tmp_path):
    rows = [{"pair_id": str(i), "question": f"Q{i}?", "response_A": a, "response_B": b, "label": lab, "source": "mmlu"}
            for i, (a, b, lab) in enumerate([("GOOD yes", "no", "A>B"), ("no", "GOOD yes", "B>A"), ("x", "GOOD y", "B>A")])]
    f = tmp_path / "jb.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _, js, rep = _eval(tmp_path, f, ORACLE)
    assert rep["pairs"] == 3 and js["fake:scripted"]["accuracy"]["value"] == 1.0
    assert list(js["fake:scripted"]["by_category"]) == ["mmlu"]


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "judge", "eval", *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_cli_bad_input_is_one_line_exit_2(tmp_path, labels):
    Corpus(tmp_path / "c.duckdb").close()
    r = _cli("--rubric", str(PROMPTS / "pairwise.yaml"), "--db", str(tmp_path / "c.duckdb"))
    assert r.returncode == 2 and "no labelled pairs" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({"prompt": "x", "chosen": "y"}) + "\n")
    r = _cli("--rubric", str(PROMPTS / "pairwise.yaml"), "--db", str(tmp_path / "c.duckdb"), "--labels", str(bad))
    assert r.returncode == 2 and f"{bad}:2:" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert Corpus(tmp_path / "c.duckdb").query("SELECT count(*) AS n FROM pairs")[0]["n"] == 0
    r = _cli("--rubric", str(PROMPTS / "pairwise.yaml"), "--db", str(tmp_path / "c.duckdb"), "--heldout-of", "nope")
    assert r.returncode == 2 and "--heldout-of nope" in r.stderr


def test_logprob_verdicts_are_averaged_over_both_orders(tmp_path, labels):
    """A logprob judge (method: logprob, i13b's judge/logprob.py) stores P(shown first wins) per
    order. Written here as rows, since no backend in the tests returns logprobs: a judge that
    leans to slot A (0.9 / 0.6) still prefers the chosen answer once the orders are averaged."""
    from corpus import Judgment
    from corpus.import_pairs import import_pairs
    from judge import pairwise
    from judge.evaluate import labelled_pairs, pairwise_outcomes
    from judge.rubric import load_rubric

    corpus = Corpus(tmp_path / "c.duckdb")
    import_pairs(corpus, labels)
    rubric = load_rubric(PROMPTS / "pairwise.yaml")
    c = rubric.criteria[0]
    pairs, _ = labelled_pairs(corpus)
    rows = []
    for p in pairs:
        for order, first, second, p_first in (("ab", p["chosen_id"], p["rejected_id"], 0.9),
                                              ("ba", p["rejected_id"], p["chosen_id"], 0.6)):
            rows.append(Judgment(target_id=pairwise.pair_id(first, second), target_kind="pair", generation_a=first,
                                 generation_b=second, judge="hf:x+logprob", rubric=rubric.name, rubric_version=rubric.version,
                                 criterion=c.name, criterion_hash=rubric.criterion_hash(c), order=order, score=p_first,
                                 meta={"method": "logprob", "winner": "A", "winner_id": first}))
    corpus.insert(rows)
    from judge.eval_metrics import judge_metrics

    m = judge_metrics(pairwise_outcomes(corpus, rubric, pairs)["hf:x+logprob"])
    assert m["accuracy"]["value"] == 1.0
    assert m["position_flip_rate"]["value"] == 1.0 and m["first_slot_win_rate"]["value"] == 1.0


def test_cli_prints_the_table_and_a_judge_that_never_parses_gets_no_verdicts(tmp_path, labels):
    db = tmp_path / "c.duckdb"
    r = _cli("--rubric", str(PROMPTS / "pairwise.yaml"), "--db", str(db), "--labels", str(labels),
             "--judge-backend", "fake", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    j = {x["judge"]: x for x in rep["judges"]}["fake:fake"]
    assert j["no_verdict"] == 6 and j["accuracy"]["value"] == 0.5 and j["position_flip_rate"]["value"] is None
    r = _cli("--rubric", str(PROMPTS / "pairwise.yaml"), "--db", str(db), "--judge-backend", "fake")
    assert r.returncode == 0 and "baseline:longer" in r.stdout and "judge eval: pairwise" in r.stdout


def test_judge_calls_that_fail_transiently_make_eval_exit_3_and_a_rerun_0(tmp_path, labels, monkeypatch, capsys):
    """One judge call answers HTTP 503 (a scripted FakeBackend: the eval CLI builds its backend
    from flags, so the test hands it this one): the eval reports it as incomplete, exit 3."""
    from backends import Completion
    from judge import eval_report

    flaky = FakeBackend("scripted", replies=[Completion(error="HTTP 503", finish_reason="error")], default=ORACLE)
    monkeypatch.setattr(eval_report, "backend_from_args", lambda args, prefix: flaky)
    argv = ["--rubric", str(PROMPTS / "pairwise.yaml"), "--db", str(tmp_path / "c.duckdb"), "--labels", str(labels),
            "--judge-backend", "fake", "--json", "--quiet"]
    assert eval_report.eval_main(argv) == 3
    assert "incomplete: 1 of 12 planned judge calls" in capsys.readouterr().err
    assert eval_report.eval_main(argv) == 0


def test_the_eval_parser_is_in_the_cli_reference_list():
    from judge.cli import cli_parsers

    p = cli_parsers()["python -m judge eval"]
    assert p.prog == "python -m judge eval" and "--labels" in p.format_help()
