"""`judge eval` on a reward model: the tiny random model trained for real (TRL steps), then
measured through the rubric's reward_model verifier on exactly the pairs it held out. The figure
must be the one the training summary reports."""

from __future__ import annotations

import json

from corpus import Corpus
from corpus.import_pairs import import_pairs


def test_judge_eval_on_the_pairs_a_reward_model_held_out_matches_its_summary(tmp_path, tiny_model_dir):
    from judge.evaluate import run_judge_eval
    from train import train_model

    rows = [{"prompt": f"Name a colour, number {i}.", "chosen": "Blue " * (i % 4 + 1), "rejected": f"I will not say {i}."}
            for i in range(12)]
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    corpus = Corpus(tmp_path / "c.duckdb")
    import_pairs(corpus, f, release=True)
    mid = train_model(corpus, "rm", base=str(tiny_model_dir), out=tmp_path / "rm", max_steps=2, batch_size=2,
                      max_length=64, progress=False, eval_fraction=0.5)
    metrics = json.loads(corpus.query("SELECT metrics FROM models WHERE id = ?", [mid])[0]["metrics"])
    rubric = tmp_path / "rm.yaml"
    rubric.write_text("name: rm\ntask: reply\ncriteria:\n  - name: reward\n    kind: verifier\n"
                      f"    verifier: {{type: reward_model, model: {mid}}}\n")
    rep = run_judge_eval(corpus, str(rubric), heldout_of=mid, progress=False)
    js = {j["judge"]: j for j in rep["judges"]}
    assert rep["pairs"] == metrics["heldout_pairs"] == 6
    assert js["verifier:reward_model"]["accuracy"]["value"] == metrics["heldout_accuracy"]
    assert js["baseline:longer"]["accuracy"]["value"] == metrics["heldout_longer_wins"]
