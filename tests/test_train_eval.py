"""Checkable instructions, prompt synthesis and `train eval` on tiny real models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from backends.fake import FakeBackend
from corpus import UserError

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("check,good,bad", [
    ({"type": "bullet_count", "n": 3}, "- a\n- b\n* c", "- a\n- b"),
    ({"type": "include_word", "word": "because"}, "Because it rains.", "Since it rains."),
    ({"type": "valid_json"}, '```json\n{"a": 1}\n```', "{'a': 1}"),
    ({"type": "max_words", "n": 3}, "one two three", "one two three four"),
    ({"type": "min_words", "n": 3}, "one two three", "one two"),
    ({"type": "lowercase"}, "all small here", "Not small"),
    ({"type": "no_commas"}, "no commas here", "a, b"),
    ({"type": "ends_with", "text": "That is all."}, "Done. That is all.  ", "That is all. Done."),
    ({"type": "num_paragraphs", "n": 2}, "one\n\n  \n\ntwo", "one\ntwo"),
])
def test_each_check_passes_good_and_fails_bad(check, good, bad):
    from train.checks import pass_fraction

    assert pass_fraction(good, [check]) == 1.0
    assert pass_fraction(bad, [check]) == 0.0


def test_synthesized_prompts_carry_checks_and_are_deterministic(shared_data, corpus, tmp_path):
    from train.synth import run_prompts

    bases = [shared_data / "arena_hard_prompts.jsonl", shared_data / "selfinstruct_seed_tasks.jsonl"]
    out = tmp_path / "p.jsonl"
    s = run_prompts(corpus, bases, 30, out=out, seed=3)
    assert s["prompts"] == s["written"] == 30
    rows = corpus.query("SELECT text, meta FROM prompts")
    for r in rows:
        checks = json.loads(r["meta"])["checks"]
        types = [c["type"] for c in checks]
        assert 1 <= len(checks) <= 2 and len(set(types)) == len(types)
        assert not ({"valid_json", "bullet_count"} <= set(types))  # conflicting instructions never combine
        if "max_words" in types:
            n = next(c["n"] for c in checks if c["type"] == "max_words")
            assert isinstance(n, int) and f"no more than {n} words" in r["text"]
    again = tmp_path / "q.jsonl"
    run_prompts(None, bases, 30, out=again, seed=3)
    assert out.read_text() == again.read_text()
    assert run_prompts(corpus, bases, 30, seed=3)["written"] == 0  # same prompts, same ids


def test_bad_template_names_file_and_line(tmp_path):
    from train.synth import load_templates

    bad = tmp_path / "t.yaml"
    bad.write_text("templates:\n  - name: ok\n    text: x\n    check: {type: lowercase}\n"
                   "  - name: broken\n    text: 'Use {n} words'\n    check: {type: max_words, n: '{n}'}\n")
    with pytest.raises(UserError, match=r"t.yaml:5: template broken uses \{n\}"):
        load_templates(bad)


@pytest.mark.parametrize("line, needle", [
    ('{"messages": [1, 2]}', "messages[0] must be"),
    ('{"messages": [{"role": "user"}]}', "messages[0] must be"),
    ('{"prompt": "hi", "meta": 3}', "'meta' must be an object"),
    ('{"prompt": "hi", "checks": "notalist"}', "checks must be a list"),
    ('{"prompt": "hi", "checks": [{"type": "nope"}]}', "unknown check"),
    ('[1, 2]', "expected a JSON object"),
])
def test_bad_eval_prompt_lines_name_file_and_line(tmp_path, line, needle):
    from train.evaluate import load_eval_prompts

    f = tmp_path / "e.jsonl"
    f.write_text('{"prompt": "fine"}\n' + line + "\n")
    with pytest.raises(UserError) as e:
        load_eval_prompts(f)
    assert f"e.jsonl:2: " in str(e.value) and needle in str(e.value)


def _eval_prompts(tmp_path: Path) -> Path:
    p = tmp_path / "eval.jsonl"
    rows = [
        {"prompt": "List three fruits.", "checks": [{"type": "bullet_count", "n": 3}]},
        {"prompt": "Say hi.", "checks": [{"type": "max_words", "n": 5}, {"type": "lowercase"}]},
        {"messages": [{"role": "user", "content": "Tell me a fact."}]},
    ]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_eval_against_base_with_a_scripted_judge(corpus, tiny_model_dir, tmp_path):
    """The pairwise judge is a FakeBackend that always answers "A" (a judge with pure position
    bias): asking in both orders must turn that into ties, a win rate of exactly 0.5."""
    from tests.test_train import seed_release
    from train import train_model
    from train.evaluate import run_eval

    seed_release(corpus)
    mid = train_model(corpus, "sft", base=str(tiny_model_dir), out=tmp_path / "m", max_steps=1, batch_size=2,
                      max_length=64, lr=1e-2, progress=False)
    judge = FakeBackend("always-a", default="A")
    m = run_eval(corpus, mid, _eval_prompts(tmp_path), judge=judge, max_new_tokens=8, progress=False)
    assert m["judge_win_rate"] == 0.5 and m["win_rate"] == 0.5 and len(judge.history) == 6
    assert m["prompts"] == 3 and 0.0 <= m["pass_rate"] <= 1.0
    assert set(m["pass_rate_by_check"]) == {"bullet_count", "max_words", "lowercase"}
    row = corpus.query("SELECT model_id, baseline_id, metrics FROM model_evals")[0]
    base_id = corpus.query("SELECT parent_id FROM models WHERE id = ?", [mid])[0]["parent_id"]
    assert (row["model_id"], row["baseline_id"]) == (mid, base_id)


def test_reward_model_accuracy_on_held_out_pairs(corpus, tiny_model_dir, tmp_path, shared_data):
    from tests.test_train import seed_release
    from train import train_model
    from train.evaluate import run_eval

    seed_release(corpus)
    mid = train_model(corpus, "rm", base=str(tiny_model_dir), out=tmp_path / "rm", max_steps=1, batch_size=2,
                      max_length=64, progress=False)
    m = run_eval(corpus, mid, pairs=str(shared_data / "hh_helpful_dev.jsonl"), limit=6, progress=False)
    assert m["rm_pairs"] == 6 and 0.0 <= m["rm_accuracy"] <= 1.0


def test_cli_prompts_writes_jsonl(shared_data, tmp_path):
    out = tmp_path / "p.jsonl"
    r = subprocess.run([sys.executable, "-m", "train", "prompts", "--base", str(shared_data / "arena_hard_prompts.jsonl"),
                        "--n", "5", "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert len(rows) == 5 and all(r["checks"] and r["messages"][0]["role"] == "user" for r in rows)


def test_eval_groups_trained_and_heldout_types_with_intervals(corpus, tiny_model_dir, tmp_path):
    """hf on the tiny model: the groups follow the trained types, every figure has an interval."""
    from train.evaluate import run_eval

    m = run_eval(corpus, str(tiny_model_dir), _eval_prompts(tmp_path), max_new_tokens=8, progress=False,
                 trained_types={"bullet_count"})
    assert (m["trained_n"], m["heldout_n"], m["all_n"]) == (1, 1, 2)  # the no-check prompt is in neither
    for key in ("trained_pass", "heldout_pass", "words"):
        lo_mid_hi = m[key]
        assert lo_mid_hi[1] <= lo_mid_hi[0] <= lo_mid_hi[2]
    assert len(m["per_prompt"]) == 3 and m["per_prompt"][2]["group"] is None
    # every reply says whether it ran to the cap; a random model of 49k tokens almost never ends
    # a reply within 8 tokens, so most are cut, and the finished-reply mean covers only the others
    cuts = [r["cut"] for r in m["per_prompt"]]
    assert all(isinstance(c, bool) for c in cuts) and sum(cuts) >= 2
    assert m["cut_rate"] == sum(cuts) / 3
    done = [r["words"] for r in m["per_prompt"] if not r["cut"]]
    assert m["finished_words"] == (sum(done) / len(done) if done else None)


def test_bootstrap_interval_and_paired_delta():
    from train.heldout import delta_ci, group_metrics, mean_ci

    m, lo, hi = mean_ci([1.0] * 30 + [0.0] * 70)
    assert m == 0.3 and 0.2 < lo < 0.3 < hi < 0.4
    assert mean_ci([1.0, 1.0]) == (1.0, 1.0, 1.0)
    # a model that fixes 20 of 100 prompts and breaks none: the paired interval is above 0
    d = delta_ci([1.0] * 20 + [0.0] * 80, [0.0] * 100)
    assert d[0] == 0.2 and d[1] > 0.1
    rows = [{"group": "trained", "pass": 1.0, "frac": 1.0, "words": 10}, {"group": "heldout", "pass": 0.0, "frac": 0.0, "words": 30}]
    base = [{"group": "trained", "pass": 0.0, "frac": 0.0, "words": 5}, {"group": "heldout", "pass": 0.0, "frac": 0.0, "words": 30}]
    g = group_metrics(rows, base)
    assert g["trained_pass_delta"][0] == 1.0 and g["heldout_pass_delta"] == [0.0, 0.0, 0.0]
    assert g["trained_words_ratio"] == 2.0 and g["verifier_win_rate"] == 0.75
    assert "cut_rate" not in g  # rows without the flag (an older eval): no cut figures
    g = group_metrics([{**rows[0], "cut": False}, {**rows[1], "cut": True}])
    assert g["cut_rate"] == 0.5 and g["finished_words"] == 10.0


def test_a_reply_in_a_degenerate_loop_is_counted():
    """The eval counts replies stuck in a loop (the filters' repetition check), so a length drop that
    is really loops going away can be told from replies that say less."""
    from train.heldout import group_metrics, per_prompt

    loop = "He is a legendary martial arts figure in the world of D&D. " * 20
    lines = "\n".join(["#include <glm/glm.hpp>"] * 12)
    prose = ("Sleep in a dark room lowers the heart rate at night, and a study of young adults found that one "
             "night with a dim light raised their blood sugar. The authors suggest turning off screens.")
    ps = [{"messages": [{"role": "user", "content": "q"}], "checks": []}] * 3
    rows = per_prompt(ps, [loop, lines, prose], None)
    assert [r["looping"] for r in rows] == [True, True, False]
    assert group_metrics(rows)["looping_rate"] == 2 / 3


def test_cli_eval_through_a_served_endpoint(tiny_model_dir, tmp_path):
    """`train eval --backend openai`: the real loopback server (echo replies) serves the model
    under the name --served-model gives; nothing is loaded locally."""
    from openai_server import serve_in_subprocess

    from corpus import Corpus

    Corpus(tmp_path / "c.duckdb").close()
    p = tmp_path / "e.jsonl"
    p.write_text(json.dumps({"prompt": "say hi", "checks": [{"type": "lowercase"}]}) + "\n"
                 + json.dumps({"prompt": "Say, HI", "checks": [{"type": "no_commas"}]}) + "\n")
    with serve_in_subprocess() as url:
        r = subprocess.run([sys.executable, "-m", "train", "eval", "--db", str(tmp_path / "c.duckdb"), "--model",
                            str(tiny_model_dir), "--prompts", str(p), "--backend", "openai", "--base-url", url,
                            "--served-model", "served-m0", "--api-key-env", "NO_SUCH_KEY", "--trained-types", "lowercase"],
                           capture_output=True, text=True, cwd=ROOT, env={**__import__("os").environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr[-1500:]
    # echo replies: "echo: say hi" is lowercase (trained type passes); "echo: Say, HI" has a comma
    assert "trained_pass" in r.stdout and "1.000 [1.000, 1.000]" in r.stdout
    assert "heldout_pass" in r.stdout and "0.000 [0.000, 0.000]" in r.stdout
    row = Corpus(tmp_path / "c.duckdb").query("SELECT metrics FROM model_evals")[0]
    assert json.loads(row["metrics"])["trained_n"] == 1


def test_cli_eval_openai_without_base_url_is_one_line_exit_2(tiny_model_dir, tmp_path):
    from corpus import Corpus

    Corpus(tmp_path / "c.duckdb").close()
    (tmp_path / "e.jsonl").write_text('{"prompt": "hi"}\n')
    r = subprocess.run([sys.executable, "-m", "train", "eval", "--db", str(tmp_path / "c.duckdb"), "--model",
                        str(tiny_model_dir), "--prompts", str(tmp_path / "e.jsonl"), "--backend", "openai"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "--base-url" in r.stderr and "Traceback" not in r.stderr


def test_a_generation_records_a_local_model_by_content_not_path(tiny_model_dir, tmp_path):
    """generations.model is the folder's name and a hash of what decides its replies: a copy at
    another path is the same model, changed weights are another one."""
    import shutil

    from backends import load_backend
    from backends.embedded import model_identity
    from corpus import Corpus
    from generate import run_generate
    from generate.sources import load_prompts

    copy = tmp_path / "elsewhere" / tiny_model_dir.name
    shutil.copytree(tiny_model_dir, copy)
    assert model_identity(str(copy)) == model_identity(str(tiny_model_dir))
    assert model_identity("embedded") == "SmolLM2-135M-Instruct" and model_identity("org/name") == "org/name"
    (tmp_path / "p.jsonl").write_text('{"prompt": "Say hi."}\n')
    corpus = Corpus(tmp_path / "c.duckdb")
    with load_backend("hf", str(copy)) as b:
        run_generate(corpus, prompts=load_prompts(str(tmp_path / "p.jsonl"))[0], backend=b, n=1, progress=False)
    (model,) = [r["model"] for r in corpus.query("SELECT DISTINCT model FROM generations")]
    assert model == model_identity(str(tiny_model_dir)) and str(tmp_path) not in model
    weights = next(copy.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    assert model_identity(str(copy)) != model_identity(str(tiny_model_dir))
