"""TRL's GRPOTrainer trains a tiny model for 2 steps with the served reward as its reward function."""

from __future__ import annotations

import json

from test_judge_serve import VERIFIERS, served


def test_grpo_trains_two_steps_against_the_served_reward(tmp_path, tiny_model_dir):
    from backends.reward_client import trl_reward
    from corpus import Corpus
    from train.grpo import GRPOOptions, train_grpo

    trainer_corpus = Corpus(tmp_path / "train.duckdb")  # the trainer's own corpus, as on another machine
    prompts = [{"messages": [{"role": "user", "content": f"Greet {w}."}], "meta": {"who": w}} for w in ("Ann", "Bo")]
    opts = GRPOOptions(num_generations=2, prompts_per_step=2, max_completion_length=8, lr=1e-3, max_steps=2, save_steps=10)
    with served(tmp_path, VERIFIERS) as s:
        reward = trl_reward(s.url, run="grpo-tiny")
        mid = train_grpo(trainer_corpus, prompts, [reward], [1.0], {"served": s.url}, base=str(tiny_model_dir),
                         out=tmp_path / "g", opts=opts, progress=False)
        s.drained()
    metrics = json.loads(trainer_corpus.query("SELECT metrics FROM models WHERE id = ?", [mid])[0]["metrics"])
    assert metrics["steps"] == 2 and metrics["rollouts"] == 2 * 2 * 2
    rows = Corpus(s.db).query("SELECT step, reward, p.messages, s.scores FROM served_rewards s "
                              "JOIN prompts p ON p.id = s.prompt_id WHERE caller_run = 'grpo-tiny' ORDER BY step, slot")
    assert len(rows) == 8 and sorted({r["step"] for r in rows}) == [0, 1]  # tagged with the trainer's global step
    assert all(0.0 <= r["reward"] <= 1.0 and set(json.loads(r["scores"])) == {"hello", "short"} for r in rows)
    assert {json.loads(r["messages"])[0]["content"] for r in rows} == {"Greet Ann.", "Greet Bo."}
    logged = trainer_corpus.query("SELECT metrics FROM train_steps WHERE model_id = ? ORDER BY step", [mid])
    assert "rewards/served_reward/mean" in json.loads(logged[0]["metrics"])  # TRL logged the served reward
