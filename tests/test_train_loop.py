"""The model-trains-model loop on a tiny random model, as a real subprocess: it stops at the
review gate, is SIGKILLed in the middle of a round's training, and resumes to finish 2 rounds.

The labels come from a real programmatic verifier (a regex on the reply's first letter), not an
LLM judge: random-model replies pass it about half the time, which is all the pair builder needs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

RUBRIC = """\
name: starts_early
version: "1"
task: Reply to the user.
mode: pointwise
criteria:
  - name: starts_early
    kind: verifier
    description: the reply starts with a letter from a to m
    verifier: {type: regex, pattern: "^\\\\s*[a-mA-M]"}
judges: []
"""

# random-model replies are gibberish: only the filters that do not judge language stay on
FILTERS = """\
prompts: {exact_dedup: true, near_dedup: null, decontaminate: null}
responses: {empty: true, truncated: null, refusal: null, repetition: null, language: null,
            length: {min_words: 1}, exact_dedup: true, near_dedup: null, decontaminate: null}
sft: {min_score: 0.0}
pairs: {method: best_worst, min_margin: 0.1}
"""

PROMPTS = [
    {"prompt": "Name three fruits.", "checks": [{"type": "bullet_count", "n": 3}]},
    {"prompt": "Describe the sea.", "checks": [{"type": "lowercase"}]},
    {"prompt": "Say something kind.", "checks": [{"type": "max_words", "n": 10}]},
    {"prompt": "Explain rain.", "checks": [{"type": "no_commas"}]},
    {"prompt": "Tell a joke.", "checks": [{"type": "include_word", "word": "cat"}]},
]


@pytest.fixture
def loop_files(tmp_path):
    (tmp_path / "rubric.yaml").write_text(RUBRIC)
    (tmp_path / "filters.yaml").write_text(FILTERS)
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return tmp_path


def _loop(tmp: Path, model: Path, *extra: str, kill: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("RLAIF_LOOP_KILL_AT", None)
    if kill:
        env["RLAIF_LOOP_KILL_AT"] = kill
    cmd = [sys.executable, "-m", "train", "loop", "--db", str(tmp / "c.duckdb"), "--prompts", str(tmp / "prompts.jsonl"),
           "--rubric", str(tmp / "rubric.yaml"), "--filters-config", str(tmp / "filters.yaml"), "--base", str(model),
           "--n", "3", "--max-new-tokens", "8", "--eval-max-new-tokens", "8", "--max-steps", "2", "--batch-size", "2",
           "--max-length", "64", "--save-steps", "1", *extra]
    if "--rounds" not in extra:
        cmd += ["--rounds", "2"]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)


def test_loop_waits_for_review_survives_sigkill_and_finishes_two_rounds(loop_files, tiny_model_dir):
    from backends.embedded import model_identity
    from corpus import Corpus

    tmp = loop_files
    # 1. no reviews and no --auto-release: the gate holds the round before any training
    r = _loop(tmp, tiny_model_dir)
    assert r.returncode == 3, r.stderr[-2000:]
    assert "waits for reviewers in round 0" in r.stdout
    c = Corpus(tmp / "c.duckdb")
    assert c.query("SELECT status FROM loop_stages WHERE stage = 'review'")[0]["status"] == "waiting"
    assert c.query("SELECT count(*) AS n FROM models WHERE kind = 'dpo'")[0]["n"] == 0
    gens_round0 = c.query("SELECT count(*) AS n FROM generations")[0]["n"]
    c.close()

    # 2. auto-release; SIGKILL right after round 0's first DPO checkpoint
    r = _loop(tmp, tiny_model_dir, "--auto-release", "--train-rm", kill="0:train:1")
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    c = Corpus(tmp / "c.duckdb")
    done = {(x["round"], x["stage"]) for x in c.query("SELECT round, stage FROM loop_stages WHERE status = 'done'")}
    assert (0, "review") in done and (0, "train") not in done
    assert c.query("SELECT max(step) AS s FROM train_steps WHERE model_id LIKE 'dpo-%'")[0]["s"] == 1
    c.close()

    # 3. the same command resumes inside round 0's training and finishes both rounds
    r = _loop(tmp, tiny_model_dir, "--auto-release", "--train-rm")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "done: 2 rounds" in r.stdout
    c = Corpus(tmp / "c.duckdb")
    stages = c.query("SELECT round, stage, result FROM loop_stages WHERE status = 'done' ORDER BY round")
    assert [(s["round"], s["stage"]) for s in stages if s["stage"] == "eval"] == [(0, "eval"), (1, "eval")]
    train0 = next(json.loads(s["result"]) for s in stages if (s["round"], s["stage"]) == (0, "train"))
    m1 = c.query("SELECT * FROM models WHERE id = ?", [train0["model_id"]])[0]
    assert json.loads(m1["metrics"])["resumed_from"].endswith("checkpoint-1")
    assert json.loads(m1["metrics"])["steps"] == 2
    # lineage: M0 (base) -> M1 -> M2, each DPO model trained on its round's release
    models = {m["id"]: m for m in c.query("SELECT * FROM models")}
    m2 = next(m for m in models.values() if m["parent_id"] == m1["id"])
    assert models[m1["parent_id"]]["kind"] == "base" and m2["kind"] == "dpo"
    train1 = next(json.loads(s["result"]) for s in stages if (s["round"], s["stage"]) == (1, "train"))
    # pooled: round 1 trained on the pairs built over both rounds' candidates, each pair's rounds
    # recorded (here best and worst can still be M0's replies: then its release is round 0's)
    assert json.loads(m2["config"])["generated_by"] is None and m2["release_id"] == train1["release_id"]
    assert sum(train1["rows_by_round"].values()) == train1["rows"] > 0
    assert set(train1["rows_by_round"]) <= {"0/0", "0/1", "1/0", "1/1"}
    gen1 = next(json.loads(s["result"]) for s in stages if (s["round"], s["stage"]) == (1, "generate"))
    # round 0's generation was not redone by the two restarts; round 1 added M1's samples; each
    # model is recorded by its content (name@sha256:...), not by a path on this machine
    by_model = {r["model"]: r["n"] for r in c.query("SELECT model, count(*) AS n FROM generations GROUP BY model")}
    m0_name, m1_name = model_identity(str(tiny_model_dir)), model_identity(m1["path"])
    assert m0_name.startswith(tiny_model_dir.name + "@sha256:") and m1_name.startswith("policy@sha256:")
    # round 1 samples the prompts whose types gave a pair at M0 (3 replies each)
    assert by_model == {m0_name: gens_round0, m1_name: 3 * gen1["prompts"]} and gen1["prompts"] >= 1
    # round 0 trained a reward model; it joined round 1's jury and scored every M1 candidate
    rm0 = next(json.loads(s["result"]) for s in stages if (s["round"], s["stage"]) == (0, "rm"))["model_id"]
    assert models[rm0]["kind"] == "rm" and models[rm0]["parent_id"] == m1["parent_id"]
    scored = c.query("SELECT count(*) AS n FROM judgments j JOIN generations g ON g.id = j.target_id "
                     "WHERE j.criterion = 'reward_model' AND g.model = ?", [m1_name])[0]["n"]
    assert scored == by_model[m1_name]
    c.close()

    r = subprocess.run([sys.executable, "-m", "train", "report", "--db", str(tmp / "c.duckdb"), "--plot",
                        str(tmp / "rounds.png")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert (tmp / "rounds.png").read_bytes()[:4] == b"\x89PNG"


def test_reward_model_joins_the_jury_and_scores_candidates(corpus, tiny_model_dir, tmp_path):
    from judge import run_judge
    from tests.test_train import seed_release
    from train import train_model
    from train.loop import rubric_with_reward_model

    seed_release(corpus)
    rm = train_model(corpus, "rm", base=str(tiny_model_dir), out=tmp_path / "rm", max_steps=1, batch_size=2,
                     max_length=64, progress=False)
    (tmp_path / "r.yaml").write_text(RUBRIC)
    rubric = rubric_with_reward_model(str(tmp_path / "r.yaml"), rm, tmp_path / "with_rm.yaml")
    run_judge(corpus, rubric, progress=False)
    rows = corpus.query("SELECT target_id, score, meta FROM judgments WHERE criterion = 'reward_model'")
    n_gens = corpus.query("SELECT count(*) AS n FROM generations")[0]["n"]
    assert len(rows) == n_gens == 8
    assert all(0.0 < r["score"] < 1.0 for r in rows)
    assert len({round(r["score"], 6) for r in rows}) > 1  # it tells replies apart


def test_grpo_loop_survives_sigkill_inside_training_and_resumes(loop_files, tiny_model_dir):
    """Round 0 trains with GRPO; SIGKILL right after its first checkpoint; the same command resumes
    from that checkpoint, and the model is registered as GRPO with the rubric as its reward."""
    from corpus import Corpus

    tmp = loop_files
    args = ("--auto-release", "--algo", "grpo", "--rounds", "1", "--prompts-per-step", "1")
    r = _loop(tmp, tiny_model_dir, *args, kill="0:train:1")
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    c = Corpus(tmp / "c.duckdb")
    done = {(x["round"], x["stage"]) for x in c.query("SELECT round, stage FROM loop_stages WHERE status = 'done'")}
    assert (0, "review") in done and (0, "train") not in done
    c.close()
    r = _loop(tmp, tiny_model_dir, *args)
    assert r.returncode == 0, r.stderr[-2000:]
    c = Corpus(tmp / "c.duckdb")
    train = json.loads(c.query("SELECT result FROM loop_stages WHERE stage = 'train'")[0]["result"])
    m = c.query("SELECT * FROM models WHERE id = ?", [train["model_id"]])[0]
    assert m["kind"] == "grpo" and m["algorithm"] == "grpo"
    assert json.loads(m["metrics"])["resumed_from"].endswith("checkpoint-1")
    assert json.loads(m["metrics"])["steps"] == 2
    assert [x["criterion"] for x in json.loads(m["reward"])["criteria"]] == ["starts_early"]
