"""Exports of accepted_sft / preference_pairs: they load with datasets (json, parquet, save_to_disk),
carry a snapshot hash next to the data, and feed TRL's SFT and DPO trainers' tokenization and
data collators with the tiny random model (no training step: that is the train package's job)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from corpus import snapshot_hash
from filters import export, run_filters
from test_filters import ROOT, add, words


@pytest.fixture
def filtered(corpus):
    for i in range(4):
        add(corpus, words(700 + i, 12) + "?", [0.9, 0.6, 0.2], responses=[words(800 + 3 * i + k, 25) for k in range(3)])
    run_filters(corpus)
    return corpus


@pytest.mark.parametrize("kind", ["sft", "pairs"])
def test_exports_load_with_datasets_and_carry_the_snapshot_hash(filtered, tmp_path, kind):
    from datasets import Dataset, load_dataset, load_from_disk

    view = {"sft": "accepted_sft", "pairs": "preference_pairs"}[kind]
    ids = [r["id"] for r in filtered.query(f"SELECT id FROM {view}")]
    assert len(ids) == 4
    res = {fmt: export(filtered, kind, fmt, tmp_path / f"{kind}.{fmt}") for fmt in ("jsonl", "parquet", "datasets")}
    loaded = {
        "jsonl": load_dataset("json", data_files=str(tmp_path / f"{kind}.jsonl"), split="train"),
        "parquet": Dataset.from_parquet(str(tmp_path / f"{kind}.parquet")),
        "datasets": load_from_disk(str(tmp_path / f"{kind}.datasets")),
    }
    expected = snapshot_hash(view, ids)
    for fmt, ds in loaded.items():
        assert sorted(ds["id"]) == sorted(ids), fmt
        side = json.loads((tmp_path / f"{kind}.{fmt}.snapshot.json").read_text())
        assert side["snapshot_hash"] == res[fmt]["snapshot_hash"] == expected and side["rows"] == 4
    row = loaded["parquet"][0]
    if kind == "sft":
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
    else:
        assert row["prompt"][-1]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
        assert row["chosen"] != row["rejected"] and row["margin"] >= 0.1 and row["method"] == "best_worst"


def test_cli_export_prints_the_snapshot_and_refuses_before_a_filters_run(tmp_path):
    from corpus import Corpus

    db = tmp_path / "c.duckdb"
    c = Corpus(db)
    add(c, words(900, 12), [0.9, 0.2])
    c.close()
    out = tmp_path / "pairs.jsonl"
    cmd = [sys.executable, "-m", "filters", "--db", str(db), "export", "pairs", "--format", "jsonl", "--out", str(out)]
    early = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert early.returncode == 2 and "run `python -m filters --db" in early.stderr and not out.exists()
    assert subprocess.run(cmd[:5] + ["--quiet"], cwd=ROOT, capture_output=True, timeout=120).returncode == 0
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    snap = json.loads((tmp_path / "pairs.jsonl.snapshot.json").read_text())["snapshot_hash"]
    assert f"snapshot {snap}" in res.stdout and len(out.read_text().splitlines()) == 1


def _trl_args(cls, tmp_path, **kw):
    return cls(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, max_length=128, report_to=[],
               bf16=False, gradient_checkpointing=False, use_cpu=True, dataloader_num_workers=0, **kw)


def test_exports_feed_trl_sft_and_dpo_collators(filtered, tmp_path, tiny_model_dir):
    """The tiny random model stands in for a real one: only tokenization and collation are checked."""
    import torch
    from datasets import Dataset, load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    torch.set_num_threads(1)
    export(filtered, "sft", "jsonl", tmp_path / "sft.jsonl")
    export(filtered, "pairs", "parquet", tmp_path / "pairs.parquet")
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)

    sft_ds = load_dataset("json", data_files=str(tmp_path / "sft.jsonl"), split="train")
    sft = SFTTrainer(model=model, args=_trl_args(SFTConfig, tmp_path), train_dataset=sft_ds, processing_class=tok)
    batch = next(iter(sft.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 2 and (batch["labels"] != -100).any()

    dpo_ds = Dataset.from_parquet(str(tmp_path / "pairs.parquet"))
    dpo = DPOTrainer(model=model, args=_trl_args(DPOConfig, tmp_path), train_dataset=dpo_ds, processing_class=tok)
    batch = next(iter(dpo.get_train_dataloader()))
    # TRL stacks the chosen then the rejected sequences of the batch's 2 pairs
    assert batch["input_ids"].shape[0] == 4 and batch["completion_mask"].sum() > 0
    first = dpo.train_dataset[0]
    assert first["chosen_ids"] != first["rejected_ids"]
