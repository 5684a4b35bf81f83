"""GRPO on a tiny random model, with a rubric's criteria as reward functions.

Reward functions are the real thing: the judge's own verifier functions (checkable, regex,
JSON schema, code_exec in the sandbox), a reward model trained here, and an LLM criterion through
the judge's real prompt and parser (its replies scripted: no model that can judge runs here).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from corpus import UserError

ROOT = Path(__file__).resolve().parent.parent

RUBRIC = """\
name: mixed
version: "1"
task: Follow the user's instructions.
mode: pointwise
criteria:
  - name: follows
    kind: verifier
    weight: 2
    verifier: {type: checkable}
  - name: starts_early
    kind: verifier
    weight: 1
    verifier: {type: regex, pattern: "^\\\\s*[a-mA-M]"}
  - name: json_ok
    kind: verifier
    weight: 1
    verifier: {type: json_schema, schema: {type: object, required: [a]}}
judges: []
"""

LLM_RUBRIC = """\
name: with_llm
version: "1"
task: Answer well.
mode: pointwise
criteria:
  - name: helpful
    description: How helpful the answer is.
    weight: 1
    scale: {1: useless, 2: weak, 3: fair, 4: good, 5: excellent}
  - name: passes_tests
    kind: verifier
    weight: 1
    verifier: {type: code_exec, tests: "meta:test", entry_point: f}
judges: []
"""


def _msgs(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _done(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def test_verifier_criteria_become_weighted_reward_functions(corpus, tmp_path):
    from train.loop import rubric_rewards

    (tmp_path / "r.yaml").write_text(RUBRIC)
    funcs, weights, definition, close = rubric_rewards(corpus, str(tmp_path / "r.yaml"))
    close()
    assert [f.__name__ for f in funcs] == ["follows", "starts_early", "json_ok"]
    assert weights == [0.5, 0.25, 0.25]  # as the rubric weighs them, scaled to sum to 1
    assert [c["weight"] for c in definition["criteria"]] == [2, 1, 1] and definition["rubric_name"] == "mixed"
    meta = [json.dumps({"checks": [{"type": "lowercase"}, {"type": "no_commas"}]}), json.dumps({})]
    prompts = [_msgs("a"), _msgs("b")]
    comps = [_done("all lower, but a comma"), _done('{"a": 1}')]
    follows, starts, js = (f(prompts=prompts, completions=comps, meta=meta) for f in funcs)
    assert follows == [0.5, None]  # lowercase passes, no_commas fails; no checks: does not apply
    assert starts == [1.0, 0.0]  # 'a' starts early, '{' does not
    assert js == [0.0, 1.0]


def test_llm_criterion_through_a_judge_backend_and_code_exec(corpus, tmp_path):
    """The judge here is the scripted fake backend: no model that can judge runs in a test. The
    request it gets is the judge's real pointwise prompt, and its reply goes through the
    judge's real parser."""
    from backends.fake import FakeBackend
    from train.loop import rubric_rewards

    def reply(req):  # scores by content; one reply is not JSON at all
        text = req.messages[-1]["content"]
        if "return 3" in text:
            return "I cannot say."
        return json.dumps({"rationale": "r", "score": 5 if "return 1" in text else 2})

    (tmp_path / "r.yaml").write_text(LLM_RUBRIC)
    judge = FakeBackend("judge-model", default=reply)
    funcs, weights, definition, close = rubric_rewards(corpus, str(tmp_path / "r.yaml"), judge)
    meta = [json.dumps({"test": "assert f() == 1"})] * 3
    comps = [_done("def f():\n    return 1\n"), _done("def f():\n    return 2\n"), _done("def f():\n    return 3\n")]
    helpful = funcs[0](prompts=[_msgs("write f")] * 3, completions=comps, meta=meta)
    tests = funcs[1](prompts=[_msgs("write f")] * 3, completions=comps, meta=meta)
    close()
    assert helpful == [1.0, 0.25, None]  # (5-1)/4, (2-1)/4, unparseable: no reward
    assert tests == [1.0, 0.0, 0.0]
    assert definition["judge"] == "fake:judge-model" and weights == [0.5, 0.5]
    assert "ANSWER" in judge.history[0].messages[-1]["content"] and judge.history[0].json_schema


def test_reward_model_criterion_scores_with_the_registered_model(corpus, tiny_model_dir, tmp_path):
    from tests.test_train import seed_release
    from train import train_model
    from train.loop import rubric_rewards

    seed_release(corpus)
    rm = train_model(corpus, "rm", base=str(tiny_model_dir), out=tmp_path / "rm", max_steps=1, batch_size=2,
                     max_length=64, progress=False)
    (tmp_path / "r.yaml").write_text(
        "name: rmr\ntask: t\ncriteria:\n  - name: rm\n    kind: verifier\n    verifier: {type: reward_model, model: %s}\n"
        "judges: []\n" % rm)
    funcs, _, definition, close = rubric_rewards(corpus, str(tmp_path / "r.yaml"))
    close()
    scores = funcs[0](prompts=[_msgs("hi")] * 2, completions=[_done("Blue."), _done("I will not.")])
    assert all(0 < s < 1 for s in scores) and scores[0] != scores[1]
    assert definition["criteria"][0]["type"] == "reward_model"


def test_grpo_trains_and_registers_algorithm_and_reward(corpus, tiny_model_dir, tmp_path):
    from train.grpo import GRPOOptions
    from train.loop import run_grpo

    (tmp_path / "r.yaml").write_text(RUBRIC)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Say {w}.", "checks": [{"type": "lowercase"}]}) + "\n"
                               for w in ("hello", "goodbye", "yes")))
    opts = GRPOOptions(num_generations=4, prompts_per_step=2, max_completion_length=8, lr=1e-3, max_steps=2, save_steps=1)
    mid = run_grpo(corpus, str(tmp_path / "r.yaml"), prompts=str(prompts), base=str(tiny_model_dir),
                   out=str(tmp_path / "g"), opts=opts, progress=False)
    row = corpus.query("SELECT * FROM models WHERE id = ?", [mid])[0]
    assert row["kind"] == "grpo" and row["algorithm"] == "grpo"
    parent = corpus.query("SELECT * FROM models WHERE id = ?", [row["parent_id"]])[0]
    assert parent["path"] == str(tiny_model_dir)
    reward = json.loads(row["reward"])
    assert [c["criterion"] for c in reward["criteria"]] == ["follows", "starts_early", "json_ok"]
    metrics = json.loads(row["metrics"])
    assert metrics["steps"] == 2
    assert metrics["rollouts"] == 2 * 4 * 2 and 0 < metrics["rollout_tokens"] <= 2 * 4 * 2 * 8
    steps = corpus.query("SELECT step, metrics FROM train_steps WHERE model_id = ? ORDER BY step", [mid])
    assert [s["step"] for s in steps] == [1, 2]
    assert "rewards/follows/mean" in json.loads(steps[0]["metrics"])  # each criterion's reward is logged
    assert (tmp_path / "g" / "config.json").exists()


@pytest.mark.parametrize("args, needle", [
    (["--num-generations", "1"], "--num-generations 1"),
    (["--prompts", "nope.jsonl"], "--prompts nope.jsonl: no such file"),
])
def test_grpo_cli_bad_input_is_one_line_exit_2(tmp_path, args, needle):
    (tmp_path / "r.yaml").write_text(RUBRIC)
    from corpus import Corpus

    Corpus(tmp_path / "c.duckdb").close()
    r = subprocess.run([sys.executable, "-m", "train", "grpo", "--db", str(tmp_path / "c.duckdb"), "--rubric",
                        str(tmp_path / "r.yaml"), "--out", str(tmp_path / "o"), *args],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_grpo_rubric_with_only_zero_weights_is_refused(corpus, tmp_path):
    from train.loop import rubric_rewards

    (tmp_path / "r.yaml").write_text(RUBRIC.replace("weight: 2", "weight: 0").replace("weight: 1", "weight: 0"))
    with pytest.raises(UserError, match="every criterion has weight 0"):
        rubric_rewards(corpus, str(tmp_path / "r.yaml"))
