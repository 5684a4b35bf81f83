"""Trainers on a tiny random model: a few real TRL steps each, then the registry row.

The release is written here the way the review stage writes one (releases + release_items),
so these tests do not depend on the review package's code.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from corpus import Generation, Pair, Prompt, Release, UserError
from corpus.snapshot import snapshot_hash

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def seed_release(corpus, n: int = 4, decision: str = "auto_released") -> str:
    """n prompts, two replies each, one pair per prompt; release all of it."""
    corpus.execute(
        "CREATE TABLE IF NOT EXISTS release_items (release_id VARCHAR, kind VARCHAR, item_id VARCHAR)"
    )
    prompts, gens, pairs = [], [], []
    for i in range(n):
        p = Prompt(messages=[{"role": "user", "content": f"Name a colour, number {i}."}], source="test")
        good = Generation(prompt_id=p.id, backend="fake", model="m", params={}, sample_idx=0, response=f"Blue, {i}.")
        bad = Generation(prompt_id=p.id, backend="fake", model="m", params={}, sample_idx=1, response="I will not.")
        prompts.append(p)
        gens += [good, bad]
        pairs.append(Pair(prompt_id=p.id, chosen_id=good.id, rejected_id=bad.id, margin=0.5, method="test"))
    items = [("sft", g.id) for g in gens[::2]] + [("pair", pr.id) for pr in pairs]
    rel = Release(snapshot_hash=snapshot_hash("release", [i for _, i in items]), decision=decision)
    corpus.insert(prompts + gens + pairs + [rel])
    with corpus.transaction() as con:
        for kind, item in items:
            con.execute("INSERT INTO release_items (release_id, kind, item_id) VALUES (?, ?, ?)", [rel.id, kind, item])
    return rel.id


@pytest.mark.parametrize("kind", ["sft", "rm", "dpo"])
def test_trainer_registers_model_with_parent_and_release(corpus, tiny_model_dir, tmp_path, kind):
    from train import train_model

    rel = seed_release(corpus)
    mid = train_model(corpus, kind, base=str(tiny_model_dir), out=tmp_path / kind, max_steps=2,
                      batch_size=2, max_length=64, progress=False)
    row = corpus.query("SELECT * FROM models WHERE id = ?", [mid])[0]
    base = corpus.query("SELECT * FROM models WHERE id = ?", [row["parent_id"]])[0]
    assert (row["kind"], row["release_id"]) == (kind, rel)
    assert base["kind"] == "base" and base["path"] == str(tiny_model_dir.resolve())
    config, metrics = json.loads(row["config"]), json.loads(row["metrics"])
    assert config["snapshot_hash"] and config["rows"] == (3 if kind == "rm" else 4)  # rm holds out 1 of 4 to measure
    assert metrics["steps"] == 2
    steps = corpus.query("SELECT step, loss FROM train_steps WHERE model_id = ? ORDER BY step", [mid])
    assert [s["step"] for s in steps] == [1, 2] and all(s["loss"] is not None for s in steps)
    assert (tmp_path / kind / "config.json").exists()
    # the trained folder is a model the next stage can load as-is
    if kind == "rm":
        from transformers import AutoModelForSequenceClassification

        assert AutoModelForSequenceClassification.from_pretrained(tmp_path / kind).config.num_labels == 1


def test_lora_dpo_saves_merged_model_and_chains_parent(corpus, tiny_model_dir, tmp_path):
    from train import train_model

    seed_release(corpus)
    first = train_model(corpus, "sft", base=str(tiny_model_dir), out=tmp_path / "m1", max_steps=1,
                        batch_size=2, max_length=64, progress=False)
    second = train_model(corpus, "dpo", base=first, out=tmp_path / "m2", lora=True, max_steps=1,
                         batch_size=2, max_length=64, progress=False)
    row = corpus.query("SELECT parent_id FROM models WHERE id = ?", [second])[0]
    assert row["parent_id"] == first
    assert (tmp_path / "m2" / "adapter" / "adapter_config.json").exists()
    cfg = json.loads((tmp_path / "m2" / "config.json").read_text())
    assert "peft" not in json.dumps(cfg).lower()  # merged: loads without peft


def test_ld_alpha_reaches_trl_and_the_models_record(corpus, tiny_model_dir, tmp_path):
    """--ld-alpha is TRL's LD-DPO weight: it reaches DPOConfig, and the model's config records it."""
    from train import train_model
    from train.trainers import TrainOptions, _trainer_args

    assert _trainer_args("dpo", TrainOptions(ld_alpha=0.5), tmp_path, False).ld_alpha == 0.5
    assert _trainer_args("dpo", TrainOptions(), tmp_path, False).ld_alpha is None  # plain DPO by default
    with pytest.raises(UserError, match="--ld-alpha 1.5"):
        TrainOptions(ld_alpha=1.5)
    seed_release(corpus)
    mid = train_model(corpus, "dpo", base=str(tiny_model_dir), out=tmp_path / "ld", max_steps=1, batch_size=2,
                      max_length=64, ld_alpha=0.5, progress=False)
    cfg = corpus.query("SELECT config FROM models WHERE id = ?", [mid])[0]["config"]
    assert json.loads(cfg)["ld_alpha"] == 0.5


def test_resume_continues_from_checkpoint(corpus, tiny_model_dir, tmp_path):
    from train import train_model

    seed_release(corpus)
    out = tmp_path / "r"
    train_model(corpus, "sft", base=str(tiny_model_dir), out=out, max_steps=2, save_steps=2, batch_size=2,
                max_length=64, progress=False)
    mid = train_model(corpus, "sft", base=str(tiny_model_dir), out=out, max_steps=3, save_steps=2, batch_size=2,
                      max_length=64, resume=True, progress=False)
    metrics = json.loads(corpus.query("SELECT metrics FROM models WHERE id = ?", [mid])[0]["metrics"])
    assert metrics["resumed_from"].endswith("checkpoint-2") and metrics["steps"] == 3
    assert corpus.query("SELECT count(*) AS n FROM models WHERE kind = 'sft'")[0]["n"] == 1


def test_unreleased_data_does_not_train(corpus, tiny_model_dir, tmp_path):
    from train import train_model

    rel = seed_release(corpus, decision="held")
    with pytest.raises(UserError, match="released"):
        train_model(corpus, "sft", base=str(tiny_model_dir), out=tmp_path / "x", release=rel, progress=False)
    with pytest.raises(UserError, match="no release"):
        train_model(corpus, "sft", base=str(tiny_model_dir), out=tmp_path / "x", progress=False)
    assert corpus.query("SELECT count(*) AS n FROM models")[0]["n"] == 0


def test_cli_bad_base_is_one_line_exit_2(corpus, tmp_path):
    seed_release(corpus)
    path = corpus.path
    corpus.close()
    r = subprocess.run([sys.executable, "-m", "train", "sft", "--db", path, "--base", "no-such-model",
                        "--out", str(tmp_path / "o")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "--base no-such-model" in r.stderr


def test_continue_adapter_keeps_one_adapter_on_the_root_and_m_t_as_reference(corpus, tiny_model_dir, tmp_path):
    """--serve-adapters' training: DPO from an SFT model trained with LoRA goes on training that
    model's adapter on the root (tiny) model, so the saved adapter still names the root and the
    root + adapter is the merged model; DPO's reference is the starting model M_t (TRL's frozen
    copy of the loaded adapter), so the first step's loss is log 2, and the copy is not saved."""
    import math

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from train import train_model

    seed_release(corpus)
    # a large learning rate: the SFT adapter moves the model far from the root, so a reference
    # taken with the adapter switched off (the root) would not give log 2 at the first step
    sft = train_model(corpus, "sft", base=str(tiny_model_dir), out=tmp_path / "sft", lora=True, max_steps=3, lr=0.05,
                      batch_size=2, max_length=64, progress=False)
    dpo = train_model(corpus, "dpo", base=sft, out=tmp_path / "dpo", lora=True, max_steps=2, lr=0.05,
                      batch_size=2, max_length=64, progress=False, continue_adapter=True)
    root = str(tiny_model_dir.resolve())
    for name in ("sft", "dpo"):
        cfg = json.loads((tmp_path / name / "adapter" / "adapter_config.json").read_text())
        assert cfg["base_model_name_or_path"] == root
    assert not (tmp_path / "dpo" / "adapter" / "ref").exists()
    config = json.loads(corpus.query("SELECT config FROM models WHERE id = ?", [dpo])[0]["config"])
    assert config["adapter_root"] == root and config["continued_adapter"].endswith("sft/adapter")

    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    rooted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(root), tmp_path / "dpo" / "adapter")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "dpo")
    sft_model = AutoModelForCausalLM.from_pretrained(tmp_path / "sft")
    with torch.no_grad():
        a, b, s = rooted(ids).logits, merged(ids).logits, sft_model(ids).logits
    assert torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(b, s, atol=1e-3)  # DPO trained the adapter further
    first = corpus.query("SELECT loss FROM train_steps WHERE model_id = ? ORDER BY step LIMIT 1", [dpo])[0]["loss"]
    assert abs(first - math.log(2)) < 1e-3
    # without continue_adapter, the same DPO starts a new adapter on the merged SFT model (its base)
    fresh = train_model(corpus, "dpo", base=sft, out=tmp_path / "fresh", lora=True, max_steps=1,
                        batch_size=2, max_length=64, progress=False)
    fcfg = json.loads((tmp_path / "fresh" / "adapter" / "adapter_config.json").read_text())
    assert fcfg["base_model_name_or_path"] == str((tmp_path / "sft").resolve())
    assert "continued_adapter" not in json.loads(corpus.query("SELECT config FROM models WHERE id = ?", [fresh])[0]["config"])
