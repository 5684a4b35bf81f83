"""Verifier criteria: regex, json_schema, length, and reward_model with a tiny random
sequence-classification model saved and registered in the corpus by the test itself."""

from __future__ import annotations

import pytest
from test_judge_helpers import add_candidates

from corpus import Corpus, ModelRecord, UserError
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


def test_reward_model_is_loaded_once_per_saved_version(corpus, tiny_rm_dir, tmp_path):
    """A reward service or a GRPO run scores one item at a time: the model is loaded from disk once,
    and again only when the folder is saved anew."""
    import os
    import shutil

    from judge.rubric import VerifierSpec
    from judge.verifiers import _load_reward_model, run_verifier

    rm = tmp_path / "rm"
    shutil.copytree(tiny_rm_dir, rm)
    corpus.insert([ModelRecord(id="rm-cached", kind="rm", path=str(rm))])
    spec = VerifierSpec(type="reward_model", model="rm-cached")
    _load_reward_model.cache_clear()
    first = [run_verifier(spec, [({"messages": [{"role": "user", "content": "q"}]}, f"answer {i}")], corpus)[0]
             for i in range(3)]
    info = _load_reward_model.cache_info()
    assert (info.misses, info.hits) == (1, 2)
    again = run_verifier(spec, [({"messages": [{"role": "user", "content": "q"}]}, "answer 0")], corpus)[0]
    assert again.score == first[0].score  # the cached model scores as the loaded one did
    later = os.stat(rm / "config.json").st_mtime + 10
    os.utime(rm / "config.json", (later, later))  # saved again at the same path: loaded again
    run_verifier(spec, [({"messages": [{"role": "user", "content": "q"}]}, "answer 0")], corpus)
    assert _load_reward_model.cache_info().misses == 2


def test_reward_model_missing_is_a_user_error_before_any_write(corpus, tmp_path):
    add_candidates(corpus, [("q", ["a"])])
    path = tmp_path / "rm.yaml"
    path.write_text("name: rm\ntask: Any.\ncriteria:\n  - name: reward\n    kind: verifier\n    verifier: {type: reward_model}\njudges: []\n")
    with pytest.raises(UserError, match="no reward model"):
        run_judge(corpus, str(path), progress=False)
    assert corpus.query("SELECT count(*) AS n FROM runs")[0]["n"] == 0


# -- user-supplied patterns and pathological answers: a recorded failure, never a hung job --------

def test_regex_that_backtracks_is_a_recorded_failure(corpus, tmp_path):
    """(a|aa)+$ on 60 a's and a b backtracks for hours; the answer gets score None, an error and a
    verifier_failed flag, and the other answer is still judged."""
    add_candidates(corpus, [("q", ["a" * 60 + "b", "aaaa"])])
    path = tmp_path / "re.yaml"
    path.write_text('name: re\ntask: Any.\ncriteria:\n  - name: as\n    kind: verifier\n    verifier: {type: regex, pattern: "(a|aa)+$"}\njudges: []\n')
    s = run_judge(corpus, str(path), progress=False)
    assert s["judged"] == 2 and s["failed"] == 1 and s["flags"] == {"verifier_failed": 1}
    scores = sorted((r["score"] is None, r["score"]) for r in corpus.query("SELECT score FROM judgments"))
    assert scores == [(False, 1.0), (True, None)]
    reason = corpus.query("SELECT reason FROM flags")[0]["reason"]
    assert "ran over" in reason


def test_json_schema_limits():
    from judge.rubric import VerifierSpec
    from judge.verifiers import MAX_JSON_BYTES, json_schema

    spec = VerifierSpec(type="json_schema", schema={"type": "object", "properties": {"s": {"type": "string", "pattern": "^(a|aa)+$"}}})
    items = [({}, '{"s": "aaa"}'), ({}, '{"s": "' + "a" * 60 + 'b"}'), ({}, "[" * 100_000 + "]" * 100_000),
             ({}, '{"s": "' + "a" * MAX_JSON_BYTES + '"}'), ({}, '```json\n{"s": "aa"}\n```')]
    ok, slow, deep, big, fenced = json_schema(spec, items)
    assert ok.score == 1.0 and fenced.score == 1.0
    assert slow.score is None and "ran over" in slow.error
    assert deep.score == 0.0 and "RecursionError" in deep.detail["error"]
    assert big.score == 0.0 and "bytes" in big.detail["error"]


@pytest.mark.parametrize("verifier,msg", [
    ("{type: regex, pattern: '(unclosed'}", "pattern does not compile"),
    ("{type: json_schema, schema: {type: 12}}", "not a valid JSON Schema"),
    ("{type: code_exec, tests: 'meta:test', unsafe: maybe}", "unsafe"),
])
def test_bad_verifier_settings_are_user_errors_at_load(tmp_path, verifier, msg):
    from judge.rubric import load_rubric

    path = tmp_path / "bad.yaml"
    path.write_text(f"name: bad\ntask: Any.\ncriteria:\n  - name: c\n    kind: verifier\n    verifier: {verifier}\njudges: []\n")
    with pytest.raises(UserError, match=msg) as e:
        load_rubric(path)
    assert str(e.value).startswith(f"{path}:6:")


def test_unsafe_and_wall_s_do_not_change_the_criterion_hash(tmp_path):
    from judge.rubric import load_rubric

    hashes = []
    for extra in ("", ", unsafe: true, wall_s: 100"):
        path = tmp_path / "c.yaml"
        path.write_text(f"name: c\ntask: Any.\ncriteria:\n  - name: c\n    kind: verifier\n    verifier: {{type: code_exec, tests: 'meta:test'{extra}}}\njudges: []\n")
        r = load_rubric(path)
        hashes.append(r.criterion_hash(r.criteria[0]))
    assert hashes[0] == hashes[1]


CODE = """name: code
version: "1"
task: Write the function.
criteria:
  - name: correctness
    kind: verifier
    verifier: {type: code_exec, tests: "assert add(1, 2) == 3", entry_point: add, unsafe: true}
judges: []
"""


def test_sandbox_that_cannot_fork_is_retried_then_stored_as_failed_not_a_zero(corpus, tmp_path, monkeypatch):
    """A fork that fails with EAGAIN (simulated: Popen raising it, since the host cannot be made to
    run out of processes in a test) is the sandbox's failure, not the answer's: it is retried, then
    stored as failed with its reason (no score, a verifier_failed flag), never as a 0, and the next
    run does not ask again, so `judge` cannot exit 3 on every run (issue 20)."""
    import errno
    import subprocess

    from judge import cli
    from judge.sandbox import require_sandbox

    require_sandbox(unsafe=True)  # the probe (once per process) runs before forks start failing
    (tmp_path / "code.yaml").write_text(CODE)
    (gen,) = add_candidates(corpus, [("Write add(a, b).", ["def add(a, b):\n    return a + b\n"])])
    db = corpus.path
    corpus.close()
    forks = []

    def no_fork(*a, **k):
        forks.append(1)
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(subprocess, "Popen", no_fork)
    assert cli.main(["--rubric", str(tmp_path / "code.yaml"), "--db", str(db), "--quiet"]) == 0
    assert len(forks) >= 3  # three sandbox starts (other subprocesses of the run may also try)
    c = Corpus(db)
    [row] = c.query(f"SELECT score, parse_status, meta FROM judgments WHERE target_id = '{gen.id}'")
    assert row["score"] is None and row["parse_status"] == "failed"
    assert "failed 3 times" in row["meta"] and "Resource temporarily unavailable" in row["meta"]
    assert c.query("SELECT count(*) AS n FROM flags WHERE kind = 'verifier_failed'")[0]["n"] == 1
    c.close()
    monkeypatch.undo()
    assert cli.main(["--rubric", str(tmp_path / "code.yaml"), "--db", str(db), "--quiet"]) == 0
    c = Corpus(db)
    assert c.query("SELECT count(*) AS n FROM judgments")[0]["n"] == 1  # stored once; not asked again
