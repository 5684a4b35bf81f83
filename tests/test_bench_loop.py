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
    # no tight limit: on a loaded 2-core machine a smoke run takes minutes (it failed at 120 s, load 14);
    # the hour only stops a run that hangs
    return subprocess.run([sys.executable, str(ROOT / "bench" / "loop.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=3600)


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
    small = ("--preset", "smoke", "--rounds", "1", "--prompts", "12", "--eval-trained", "4", "--eval-heldout", "2",
             "--workdir", str(work))
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


def test_gpu_preset_plans_on_the_cpu_with_tiny_sizes(tmp_path):
    """--plan runs what a GPU call checks first (settings through LoopConfig, the prompt split) and
    loads no model; the eval's base prompts are never trained on."""
    r = _bench("--preset", "gpu", "--plan", "--workdir", str(tmp_path), "--prompts", "30", "--eval-trained", "8",
               "--eval-heldout", "4")
    assert r.returncode == 0, r.stderr[-2000:]
    plan = json.loads(r.stdout.split("plan: ", 1)[1].split("; nothing run")[0])
    assert plan == {"rollouts_per_round": 240, "rollout_token_cap": 256, "eval_prompts": 12, "eval_token_cap": 384,
                    "evals": 4, "rounds": 3}
    rows = {name: [json.loads(x) for x in (tmp_path / name).read_text().splitlines()]
            for name in ("prompts.jsonl", "eval_prompts.jsonl")}
    assert len(rows["prompts.jsonl"]) == 30 and len(rows["eval_prompts.jsonl"]) == 12
    assert not {x["base"] for x in rows["prompts.jsonl"]} & {x["base"] for x in rows["eval_prompts.jsonl"]}
    held = [x for x in rows["eval_prompts.jsonl"] if x["checks"][0]["type"] in ("include_word", "ends_with")]
    assert len(held) == 4
    assert not any(x["checks"][0]["type"] in ("include_word", "ends_with") for x in rows["prompts.jsonl"])
    assert not list(tmp_path.glob("*.duckdb"))  # nothing ran


def test_a_bad_preset_value_is_one_line_exit_2(tmp_path):
    r = _bench("--preset", "gpu", "--plan", "--workdir", str(tmp_path), "--n", "0")
    assert r.returncode == 2 and "--n 0: give a positive number" in r.stderr.strip().splitlines()[-1]
    r = _bench("--preset", "gpu", "--plan", "--workdir", str(tmp_path), "--warm-start", "rl")
    assert r.returncode == 2 and "--warm-start rl" in r.stderr.strip().splitlines()[-1] and "Traceback" not in r.stderr
    r = _bench("--preset", "gpu", "--plan", "--workdir", str(tmp_path), "--ld-alpha", "half")
    assert r.returncode == 2 and "--ld-alpha half: give a number" in r.stderr.strip().splitlines()[-1]
    assert "Traceback" not in r.stderr


def test_verdict_reads_the_length_both_ways_and_reports_finished_replies_beside_it():
    """The length target is the mean of every reply; replies run to the eval cap are reported beside it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_loop", ROOT / "bench" / "loop.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    verdict = mod.verdict

    m0 = {"words": [135.0, 120.0, 150.0], "cut_rate": 0.5, "finished_words": 70.0}
    m2 = {"words": [54.0, 50.0, 60.0], "trained_delta": [0.12, 0.05, 0.2], "heldout_delta": [0.05, -0.02, 0.1],
          "cut_rate": 0.05, "finished_words": 49.0}
    v = verdict([m0, m2])
    assert "gain>=10pt & CI>0 MET" in v and "held-out types not worse MET" in v
    assert "length x0.40 within 1.5x not met (shorter)" in v
    assert "finished replies only: x0.70" in v and "50% -> 5%" in v
    assert "finished" not in verdict([{"words": [100.0] * 3}, {**m2, "finished_words": None}])


def test_the_prompt_split_does_not_depend_on_where_the_data_lives(tmp_path, monkeypatch):
    """The eval/train split is drawn by a hash of each base prompt's file and line, not its path:
    the same data read from another folder gives the same split (it gave another one before)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_loop", ROOT / "bench" / "loop.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    s = {**mod.COMMON, **mod.PRESETS["cpu"], "prompts": 40, "eval_trained": 20, "eval_heldout": 10}
    elsewhere = tmp_path / "far" / "away" / "data"
    elsewhere.mkdir(parents=True)
    for name in ("arena_hard_prompts.jsonl", "selfinstruct_seed_tasks.jsonl"):
        (elsewhere / name).write_bytes((mod.DATA / name).read_bytes())
    splits = []
    for i, data in enumerate((mod.DATA, elsewhere)):
        monkeypatch.setattr(mod, "DATA", data)
        (tmp_path / str(i)).mkdir()
        mod.split_prompts(tmp_path / str(i), s)
        splits.append([(tmp_path / str(i) / f).read_text().replace(str(data), "DATA")
                       for f in ("prompts.jsonl", "eval_prompts.jsonl")])
    assert splits[0] == splits[1] and splits[0][0].count("\n") == 40
    assert mod.base_key("/a/b/arena_hard_prompts.jsonl:231") == mod.base_key("../shared/data/arena_hard_prompts.jsonl:231")


def test_a_checkout_without_the_shared_data_is_one_line_exit_2(tmp_path):
    """The bench reads its base prompts from ../shared/data beside the checkout: a copy of it in a
    folder with no such data, or with one of the two files missing, ends with one line naming the
    path, exit 2 (it ended with a traceback from the prompt synthesizer)."""
    import os
    import shutil

    checkout = tmp_path / "checkout"
    (checkout / "bench").mkdir(parents=True)
    shutil.copy(ROOT / "bench" / "loop.py", checkout / "bench" / "loop.py")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(checkout / "bench" / "loop.py"), "--preset", "cpu", "--plan",
                               "--workdir", str(tmp_path / "w")], capture_output=True, text=True, env=env, timeout=600)

    r = run()
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{tmp_path / 'shared' / 'data'}: no such folder" in r.stderr.strip().splitlines()[-1]
    (tmp_path / "shared" / "data").mkdir(parents=True)
    shutil.copy(ROOT.parent / "shared" / "data" / "arena_hard_prompts.jsonl", tmp_path / "shared" / "data")
    r = run()
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "selfinstruct_seed_tasks.jsonl: no such file" in r.stderr.strip().splitlines()[-1]


def _settings(r: subprocess.CompletedProcess) -> dict:
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.split("; settings ", 1)[1].split("\n", 1)[0])


def test_cpu_preset_is_the_measured_point_and_the_old_one_is_a_few_flags_away(tmp_path):
    """The cpu preset is the trade-off table's point that met the three targets (8 replies per
    prompt, a 3-pass warm start on the sparse types, length-balanced pairs); the preset before it is
    still reachable with flags, `none` giving back the trainer's default warm-start length."""
    now = _settings(_bench("--preset", "cpu", "--plan", "--workdir", str(tmp_path / "now")))
    assert (now["n"], now["warm_start_types"], now["warm_start_epochs"], now["length_balance"], now["rounds"]) == \
        (8, "sparse", 3.0, True, 2)
    assert "length_balance: true" in (tmp_path / "now" / "filters.yaml").read_text()
    old = _settings(_bench("--preset", "cpu", "--plan", "--workdir", str(tmp_path / "old"), "--n", "4",
                           "--warm-start-types", "", "--warm-start-epochs", "none", "--length-balance", "false"))
    assert (old["n"], old["warm_start_types"], old["warm_start_epochs"], old["length_balance"]) == (4, "", None, False)
    assert "length_balance: false" in (tmp_path / "old" / "filters.yaml").read_text()
    r = _bench("--preset", "cpu", "--plan", "--workdir", str(tmp_path / "bad"), "--warm-start-epochs", "many")
    assert r.returncode == 2 and "--warm-start-epochs many: give a number, e.g. 3, or none" in r.stderr.strip().splitlines()[-1]
