"""bench/loop.py --from-corpus: the DPO-vs-GRPO comparison reuses a corpus that holds round 0's replies
alone; a corpus with a later round's replies, a missing file or a file that is not a corpus is refused
with exit 2 and one line, before any model loads (replies written through the corpus API); and a real
smoke run shows the second algorithm trains on the first one's round-0 replies, verdicts and release."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from corpus import Corpus, Generation, Prompt

ROOT = Path(__file__).resolve().parent.parent


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "loop.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def _corpus(path: Path, models: list[str]) -> Path:
    c = Corpus(path)
    p = Prompt(messages=[{"role": "user", "content": "Answer in lowercase: what is a corpus?"}], source="test")
    c.insert([p, *(Generation(prompt_id=p.id, backend="hf", model=m, params={}, sample_idx=i, response=f"reply {i}")
                   for i, m in enumerate(models))])
    c.close()
    return path


def test_from_corpus_refuses_a_corpus_with_a_later_rounds_replies(tmp_path):
    db = _corpus(tmp_path / "two.duckdb", ["base", "round-0/policy"])
    r = _bench("--preset", "cpu", "--from-corpus", str(db), "--workdir", str(tmp_path / "w"))
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()[-1]
    assert "holds replies of 2 models" in err and "--rounds 1" in err
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "w").exists(), "nothing is written before the corpus is accepted"


def test_from_corpus_refuses_missing_and_non_corpus_files(tmp_path):
    r = _bench("--from-corpus", str(tmp_path / "nope.duckdb"))
    assert r.returncode == 2 and "no such corpus" in r.stderr.splitlines()[-1] and "--from-corpus" in r.stderr
    junk = tmp_path / "notes.txt"
    junk.write_text("not a database\n")
    r = _bench("--from-corpus", str(junk))
    assert r.returncode == 2 and "not a DuckDB corpus" in r.stderr.splitlines()[-1] and "Traceback" not in r.stderr


def test_grpo_from_a_dpo_round_zero_trains_on_the_same_replies_and_release(tmp_path):
    # the smoke preset: a tiny random model and a regex judge, so the numbers mean nothing; what is checked
    # is that the second algorithm generates and judges nothing new for round 0 and trains on the same release
    work = tmp_path / "w"
    small = ("--preset", "smoke", "--rounds", "1", "--prompts", "12", "--eval-limit", "4", "--workdir", str(work))
    first = _bench(*small, "--algos", "dpo")
    assert first.returncode == 0, first.stderr[-2000:]
    second = _bench(*small, "--algos", "grpo", "--from-corpus", str(work / "dpo.duckdb"))
    assert second.returncode == 0, second.stderr[-2000:]
    dpo, grpo = Corpus(work / "dpo.duckdb"), Corpus(work / "grpo.duckdb")
    stage = "SELECT stage, result FROM loop_stages WHERE round = 0 AND stage IN ('generate', 'judge', 'train')"
    d = {r["stage"]: json.loads(r["result"]) for r in dpo.query(stage)}
    g = {r["stage"]: json.loads(r["result"]) for r in grpo.query(stage + " AND loop_id <> ?",
                                                                  [dpo.query("SELECT id FROM loops")[0]["id"]])}
    assert d["generate"]["candidates_new"] > 0
    assert g["generate"]["candidates_new"] == 0 and g["generate"]["candidates_existing"] == d["generate"]["candidates_new"]
    assert g["judge"]["judged"] == 0
    assert g["train"]["algorithm"] == "grpo" and d["train"]["algorithm"] == "dpo"
    assert g["train"]["release_id"] == d["train"]["release_id"]
