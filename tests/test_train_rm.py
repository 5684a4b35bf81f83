"""Reward-model training: reproducible from the seed, and the summary's accuracy is on held-out
pairs. Real TRL steps on the tiny random model; the pairs come in through `corpus import-pairs`."""

from __future__ import annotations

import json

from corpus import Corpus
from corpus.import_pairs import import_pairs


def _pairs_file(tmp_path, n: int = 8):
    rows = [{"prompt": f"Name a colour, number {i}.", "chosen": f"Blue, {i}.", "rejected": "I will not."} for i in range(n)]
    p = tmp_path / "pairs.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def _train(corpus, tiny_model_dir, out, seed=0, **kw):
    from train import train_model

    opts = dict(max_steps=3, batch_size=2, max_length=64, progress=False, seed=seed)
    opts.update(kw)
    return train_model(corpus, "rm", base=str(tiny_model_dir), out=out, **opts)


def _head(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))["score.weight"]


def test_same_data_and_seed_give_the_same_head_and_losses(tmp_path, tiny_model_dir):
    corpus = Corpus(tmp_path / "c.duckdb")
    import_pairs(corpus, _pairs_file(tmp_path), release=True)
    runs = [_train(corpus, tiny_model_dir, tmp_path / f"rm{i}", seed=s) for i, s in enumerate((0, 0, 1))]
    losses = [[r["loss"] for r in corpus.query("SELECT loss FROM train_steps WHERE model_id = ? ORDER BY step", [m])]
              for m in runs]
    assert len(losses[0]) == 3 and losses[0] == losses[1]
    assert losses[2] != losses[0]  # another seed is another head: the seed is what decides
    heads = [_head(tmp_path / f"rm{i}") for i in range(3)]
    assert heads[0].equal(heads[1]) and not heads[0].equal(heads[2])


def test_summary_accuracy_is_on_held_out_pairs(tmp_path, tiny_model_dir):
    corpus = Corpus(tmp_path / "c.duckdb")
    import_pairs(corpus, _pairs_file(tmp_path), release=True)
    mid = _train(corpus, tiny_model_dir, tmp_path / "rm", eval_fraction=0.25)
    row = corpus.query("SELECT config, metrics FROM models WHERE id = ?", [mid])[0]
    config, m = json.loads(row["config"]), json.loads(row["metrics"])
    assert config["rows"] == 6 and m["heldout_pairs"] == 2 and m["train_pairs_used"] == 6
    assert m["accuracy"] == m["heldout_accuracy"] in (0.0, 0.5, 1.0)
    assert m["heldout_lower"] <= m["accuracy"] <= m["heldout_upper"]
    assert "last_batch_accuracy" in m  # TRL's batch figure survives under its own name
    assert m["heldout_longer_wins"] == 0.0  # "I will not." (rejected) is the longer answer in every pair


def test_held_out_split_is_fixed_by_seed_and_disjoint():
    from train.data import TrainingSet
    from train.rm_heldout import split_heldout

    ts = TrainingSet("r", "pair", [f"id{i}" for i in range(20)], [{"n": i} for i in range(20)], "h")
    a_train, a_rows, a_ids = split_heldout(ts, 0.2, seed=0)
    b_train, b_rows, b_ids = split_heldout(ts, 0.2, seed=0)
    _, _, c_ids = split_heldout(ts, 0.2, seed=1)
    assert a_ids == b_ids and len(a_ids) == 4 and set(a_ids) != set(c_ids)
    assert not set(a_ids) & set(a_train.ids) and len(a_train.ids) == 16
    assert [r["n"] for r in a_rows] == [int(i[2:]) for i in a_ids]
    assert a_train.snapshot_hash != ts.snapshot_hash


def test_long_dialogues_lose_early_turns_not_the_pair(embedded_dir):
    from transformers import AutoTokenizer

    from train.rm_heldout import fit_dialogues

    tok = AutoTokenizer.from_pretrained(embedded_dir)
    long = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "reply " * 200},
            {"role": "user", "content": "And now?"}]
    rows = [{"prompt": long, "chosen": [{"role": "assistant", "content": "Yes."}],
             "rejected": [{"role": "assistant", "content": "No."}]},
            {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello."}],
             "rejected": [{"role": "assistant", "content": "Go."}]}]
    out, shortened = fit_dialogues(rows, tok, 128)
    assert shortened == 1
    assert out[0]["prompt"] == [{"role": "user", "content": "And now?"}] and out[1] == rows[1]


def test_pairs_that_share_a_prompt_are_held_out_together():
    from train.data import TrainingSet
    from train.rm_heldout import split_heldout

    prompts = [f"p{i // 3}" for i in range(30)]  # 10 prompts, 3 pairs each
    ts = TrainingSet("r", "pair", [f"id{i}" for i in range(30)], [{"n": i} for i in range(30)], "h", prompts)
    for seed in range(5):
        train, _, held_ids = split_heldout(ts, 0.2, seed)
        held_prompts = {prompts[int(i[2:])] for i in held_ids}
        assert len(held_ids) == 6 and len(held_prompts) == 2
        assert not held_prompts & set(train.prompt_ids)  # no held-out prompt is trained on
    one = TrainingSet("r", "pair", ["a", "b"], [{}, {}], "h", ["p", "p"])
    assert split_heldout(one, 0.5, 0)[2] == []  # one prompt: nothing can be held out without training on nothing


def test_held_out_scoring_fits_dialogues_as_training_did_and_ties_count_half(tiny_model_dir):
    """Scored at the training --max-length with the earliest turns dropped (right truncation
    would cut both answers off and tie every long pair); a tie counts half, as in judge eval.
    The tiny causal model loads as a reward model with a fresh random head (seeded)."""
    import torch

    from train.rm_heldout import heldout_accuracy

    torch.manual_seed(0)

    same = {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello."}],
            "rejected": [{"role": "assistant", "content": "Hello."}]}
    assert heldout_accuracy(str(tiny_model_dir), [same, same], max_length=64)["heldout_accuracy"] == 0.5
    long = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "reply " * 200},
            {"role": "user", "content": "And now?"}]
    row = {"prompt": long, "chosen": [{"role": "assistant", "content": "Yes, gladly."}],
           "rejected": [{"role": "assistant", "content": "No."}]}
    m = heldout_accuracy(str(tiny_model_dir), [row], max_length=64)
    assert m["heldout_margin"] != 0.0 and m["heldout_accuracy"] in (0.0, 1.0)
