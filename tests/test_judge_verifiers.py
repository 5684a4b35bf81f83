"""Verifier criteria: regex, json_schema, length, and reward_model with a tiny random
sequence-classification model saved and registered in the corpus by the test itself."""

from __future__ import annotations

import pytest
from test_judge_helpers import add_candidates

from corpus import ModelRecord, UserError
from judge import run_judge

VERIFIERS = """name: checks
version: "1"
task: Answer in JSON.
criteria:
  - name: has_digit
    kind: verifier
    verifier: {type: regex, pattern: "[0-9]"}
  - name: schema
    kind: verifier
    verifier:
      type: json_schema
      schema: {type: object, required: [answer], properties: {answer: {type: integer}}}
  - name: short
    kind: verifier
    weight: 2
    verifier: {type: length, max_words: 5}
judges: []
"""


def test_regex_json_schema_and_length(corpus, tmp_path):
    gens = add_candidates(corpus, [("q", ['{"answer": 4}', '```json\n{"answer": "four"}\n```', "no json here at all, sorry"])])
    path = tmp_path / "checks.yaml"
    path.write_text(VERIFIERS)
    s = run_judge(corpus, str(path), progress=False)
    assert s["judged"] == 9 and s["failed"] == 0
    got = {(r["generation_id"], r["criterion"]): r["score"] for r in corpus.query("SELECT * FROM judge_scores")}
    assert [got[(g.id, "has_digit")] for g in gens] == [1.0, 0.0, 0.0]
    assert [got[(g.id, "schema")] for g in gens] == [1.0, 0.0, 0.0]
    assert [got[(g.id, "short")] for g in gens] == [1.0, 1.0, 0.0]
    overall = {r["generation_id"]: r["score_norm"] for r in corpus.query("SELECT * FROM generation_scores")}
    assert overall[gens[1].id] == pytest.approx(2 / 4)


@pytest.fixture(scope="module")
def tiny_rm_dir(tmp_path_factory, embedded_dir):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    out = tmp_path_factory.mktemp("tiny-rm")
    tok = AutoTokenizer.from_pretrained(embedded_dir)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, num_labels=1, pad_token_id=tok.pad_token_id or tok.eos_token_id)
    torch.manual_seed(0)
    LlamaForSequenceClassification(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_reward_model_verifier(corpus, tmp_path, tiny_rm_dir):
    gens = add_candidates(corpus, [("Say something.", ["Hello there.", "Goodbye!"])])
    corpus.insert([ModelRecord(id="rm-tiny", kind="rm", path=str(tiny_rm_dir))])
    path = tmp_path / "rm.yaml"
    path.write_text("name: rm\ntask: Any.\ncriteria:\n  - name: reward\n    kind: verifier\n    verifier: {type: reward_model, model: latest}\njudges: []\n")
    run_judge(corpus, str(path), progress=False)
    rows = {r["generation_id"]: r["score"] for r in corpus.query("SELECT * FROM judge_scores")}
    assert set(rows) == {g.id for g in gens}
    assert all(0.0 < v < 1.0 for v in rows.values()) and rows[gens[0].id] != rows[gens[1].id]
    import json

    detail = json.loads(corpus.query("SELECT meta FROM judgments LIMIT 1")[0]["meta"])["detail"]
    assert detail["model_id"] == "rm-tiny"


def test_reward_model_missing_is_a_user_error_before_any_write(corpus, tmp_path):
    add_candidates(corpus, [("q", ["a"])])
    path = tmp_path / "rm.yaml"
    path.write_text("name: rm\ntask: Any.\ncriteria:\n  - name: reward\n    kind: verifier\n    verifier: {type: reward_model}\njudges: []\n")
    with pytest.raises(UserError, match="no reward model"):
        run_judge(corpus, str(path), progress=False)
    assert corpus.query("SELECT count(*) AS n FROM runs")[0]["n"] == 0
