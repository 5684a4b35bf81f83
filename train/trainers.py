"""SFT, reward-model and DPO training with TRL on a released snapshot.

`train_model` is the one entry point: it reads the release's rows, trains, saves a plain
transformers folder (LoRA adapters are merged, so every later stage loads it like any model),
writes the loss curve to `train_steps` and registers the model with its parent and release.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from corpus import Corpus, UserError, snapshot_hash

from .data import TrainingSet, training_set
from .records import TrainStep
from .registry import model_id_for, register_model, resolve_base

KINDS = ("sft", "rm", "dpo")


@dataclass
class TrainOptions:
    """What a training run may be told; the defaults suit a small model on one GPU or a CPU."""

    epochs: float = field(default=1.0, metadata={"help": "passes over the release's rows"})
    max_steps: int = field(default=-1, metadata={"help": "stop after N optimizer steps (-1: epochs decide)"})
    lr: float | None = field(default=None, metadata={"help": "learning rate (default: 2e-5 sft, 1e-5 rm, 5e-6 dpo; x10 with LoRA)"})
    batch_size: int = field(default=4, metadata={"help": "rows per optimizer step"})
    max_length: int = field(default=512, metadata={"help": "tokens per row; longer rows are truncated"})
    lora: bool = field(default=False, metadata={"help": "train LoRA adapters (peft), merged into the saved model"})
    lora_r: int = 16
    # with lora: when the base folder holds the LoRA adapter it was saved with (adapter/), train that
    # adapter further on the adapter's own base instead of a new adapter on the merged weights. Every
    # model of a chain then stays root + one adapter, which one vLLM engine on the root serves
    continue_adapter: bool = False
    beta: float = field(default=0.1, metadata={"help": "DPO beta: how far the policy may move from the reference"})
    # LD-DPO (TRL's ld_alpha): the tokens of the longer reply past the shorter one's length count
    # with this weight in the log-probabilities, so a pair's length gap weighs less; None: plain DPO
    ld_alpha: float | None = None
    save_steps: int = field(default=50, metadata={"help": "checkpoint every N steps (for --resume)"})
    seed: int = 0
    eval_fraction: float = field(default=0.1, metadata={"help": "rm: share of the release's pairs held out to measure accuracy"})

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise UserError(f"--batch-size {self.batch_size}: must be at least 1")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise UserError("--epochs must be > 0 (or give --max-steps N)")
        if self.lr is not None and not 0 < self.lr < 1:
            raise UserError(f"--lr {self.lr}: expected a learning rate between 0 and 1, e.g. 1e-5")
        if self.max_length < 16:
            raise UserError(f"--max-length {self.max_length}: too short to hold a prompt and a reply")
        if self.ld_alpha is not None and not 0 <= self.ld_alpha <= 1:
            raise UserError(f"--ld-alpha {self.ld_alpha}: expected a weight in [0, 1], e.g. 0.5 (1: plain DPO)")
        if not 0 <= self.eval_fraction < 1:
            raise UserError(f"--eval-fraction {self.eval_fraction}: expected a share in [0, 1), e.g. 0.1")


DEFAULT_LR = {"sft": 2e-5, "rm": 1e-5, "dpo": 5e-6}


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _trainer_args(kind: str, opts: TrainOptions, out: Path, progress: bool) -> Any:
    from trl import DPOConfig, RewardConfig, SFTConfig

    gpu = on_gpu()
    lr = opts.lr if opts.lr is not None else DEFAULT_LR[kind] * (10 if opts.lora else 1)
    common: dict[str, Any] = dict(
        output_dir=str(out / "checkpoints"),
        num_train_epochs=opts.epochs,
        max_steps=opts.max_steps,
        per_device_train_batch_size=opts.batch_size,
        learning_rate=lr,
        max_length=opts.max_length,
        logging_steps=1,
        save_strategy="steps",
        save_steps=opts.save_steps,
        save_total_limit=2,
        report_to=[],
        seed=opts.seed,
        # TRL defaults to bf16 and gradient checkpointing even on a CPU, which runs 11x slower there
        bf16=gpu and _bf16_ok(),
        gradient_checkpointing=False,
        use_cpu=not gpu,
        dataloader_num_workers=0,
        disable_tqdm=True,  # the rich bar below shows progress instead
        dataset_num_proc=None,
    )
    if kind == "sft":
        # prompt/completion rows: the loss covers the reply only (the chat template has no
        # generation markers, so assistant_only_loss cannot work)
        return SFTConfig(completion_only_loss=True, **common)
    if kind == "rm":
        return RewardConfig(**common)
    return DPOConfig(beta=opts.beta, ld_alpha=opts.ld_alpha, **common)


def _bf16_ok() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _peft_config(kind: str, opts: TrainOptions) -> Any:
    if not opts.lora:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=opts.lora_r, lora_alpha=2 * opts.lora_r, lora_dropout=0.0,
        target_modules="all-linear",
        task_type="SEQ_CLS" if kind == "rm" else "CAUSAL_LM",
        # the reward head is new: it must train and be saved in full
        modules_to_save=["score"] if kind == "rm" else None,
    )


def _load_model(kind: str, path: str, tok: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    dtype = torch.bfloat16 if _bf16_ok() else torch.float32
    try:
        if kind == "rm":
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype)
            model.config.pad_token_id = tok.pad_token_id
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as e:
        raise UserError(f"--base {path}: cannot load the model ({str(e).splitlines()[0]})") from e
    return model


def _load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise UserError(f"--base {path}: cannot load its tokenizer ({str(e).splitlines()[0]})") from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not tok.chat_template:
        raise UserError(f"--base {path}: the tokenizer has no chat template; TRL's conversational rows need one")
    return tok


def _callbacks(corpus: Corpus, model_id: str, run_id: str, progress: bool, kind: str) -> list[Any]:
    from transformers import TrainerCallback

    class CorpusLog(TrainerCallback):
        """Each logged step becomes a train_steps row, so the loss curve is one SQL query."""

        def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
            logs = dict(logs or {})
            if "loss" not in logs or not state.global_step:
                return
            row = TrainStep(
                model_id=model_id, run_id=run_id, step=state.global_step, epoch=logs.pop("epoch", None),
                loss=logs.pop("loss", None), learning_rate=logs.pop("learning_rate", None),
                metrics={k: float(v) for k, v in logs.items() if isinstance(v, (int, float))},
            )
            corpus.insert([row], replace=True)  # a resumed run re-logs a step: keep the latest

    class RichBar(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn(f"train {kind}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn())
            self.task = self.bar.add_task(kind, total=state.max_steps, completed=state.global_step, loss="-")
            self.bar.start()

        def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
            if logs and "loss" in logs:
                self.bar.update(self.task, loss=f"{logs['loss']:.4f}")

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            self.bar.update(self.task, completed=state.global_step)

        def on_train_end(self, args, state, control, **kw):  # noqa: ANN001
            self.bar.stop()

    return [CorpusLog()] + ([RichBar()] if progress else [])


def continued_adapter(kind: str, base_path: str, opts: TrainOptions) -> tuple[str, str] | None:
    """(adapter folder, its root model folder) when this run trains the base's own adapter further."""
    if not (opts.lora and opts.continue_adapter and kind != "rm"):
        return None
    from .policy import adapter_of

    return adapter_of(base_path)


def _build_trainer(kind: str, model_path: str, ts: TrainingSet, opts: TrainOptions, out: Path,
                   callbacks: list[Any], progress: bool, cont: tuple[str, str] | None = None) -> Any:
    from datasets import Dataset
    from trl import DPOTrainer, RewardTrainer, SFTTrainer

    from transformers import set_seed

    tok = _load_tokenizer(model_path)
    set_seed(opts.seed)  # before the model: a reward head (and LoRA weights) start from the seed
    peft_config = _peft_config(kind, opts)
    if cont:
        from peft import PeftModel

        # the root's weights + the base's adapter, trainable: the same model as the merged base folder.
        # DPO: TRL copies the loaded adapter as a frozen "ref" adapter, so the reference is still M_t
        model = PeftModel.from_pretrained(_load_model(kind, cont[1], tok), cont[0], is_trainable=True)
        peft_config = None
    else:
        model = _load_model(kind, model_path, tok)
    rows = ts.rows
    if kind == "rm":  # keep long dialogues (TRL drops pairs over max_length) by dropping early turns
        from .rm_heldout import fit_dialogues

        rows, _ = fit_dialogues(rows, tok, opts.max_length)
    args = _trainer_args(kind, opts, out, progress)
    ds = Dataset.from_list(rows)
    cls = {"sft": SFTTrainer, "rm": RewardTrainer, "dpo": DPOTrainer}[kind]
    # DPO without ref_model: TRL copies the starting model as the frozen reference (M_t), or,
    # with LoRA, uses the model with its adapters switched off, which is the same thing
    trainer = cls(model=model, args=args, train_dataset=ds, processing_class=tok,
                  peft_config=peft_config, callbacks=callbacks)
    from transformers.trainer_callback import PrinterCallback

    # with tqdm off, transformers prints every log dict; the rich bar and train_steps carry them
    trainer.remove_callback(PrinterCallback)
    return trainer


def _latest_checkpoint(out: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    ck = out / "checkpoints"
    return get_last_checkpoint(str(ck)) if ck.is_dir() else None


def _save(trainer: Any, kind: str, out: Path, lora: bool) -> None:
    model = trainer.model
    if lora:
        # a merged plain folder loads anywhere (hf, vLLM, the next round) without peft; the adapter
        # beside it (the trained one only, not DPO's frozen "ref" copy) serves it on vLLM as a LoRA
        if "ref" in getattr(model, "peft_config", {}):
            model.delete_adapter("ref")
        model.save_pretrained(out / "adapter", selected_adapters=["default"])
        model = model.merge_and_unload()
    model.save_pretrained(out)
    trainer.processing_class.save_pretrained(out)


def train_model(
    corpus: Corpus,
    kind: str = "sft",
    base: str | None = None,
    out: str | os.PathLike[str] = "model-out",
    release: str | None = None,
    lora: bool = False,
    *,
    max_steps: int = -1,
    epochs: float = 1.0,
    lr: float | None = None,
    batch_size: int = 4,
    max_length: int = 512,
    beta: float = 0.1,
    ld_alpha: float | None = None,
    save_steps: int = 50,
    eval_fraction: float = 0.1,
    resume: bool = False,
    seed: int = 0,
    progress: bool = True,
    argv: list[str] | None = None,
    generated_by: str | None = None,
    callbacks: list[Any] | None = None,
    continue_adapter: bool = False,
    check_types: list[str] | None = None,
) -> str:
    """Train `kind` from `base` on a release's rows; returns the registered models.id.
    `check_types` (SFT) trains only on replies to prompts carrying one of those checks."""
    if kind not in KINDS:
        raise UserError(f"unknown kind {kind!r}: choose one of {', '.join(KINDS)}")
    opts = TrainOptions(epochs=epochs, max_steps=max_steps, lr=lr, batch_size=batch_size, max_length=max_length,
                        lora=lora, beta=beta, ld_alpha=ld_alpha, save_steps=save_steps, seed=seed, eval_fraction=eval_fraction,
                        continue_adapter=continue_adapter)
    # validate everything before anything is written or trained
    ts = training_set(corpus, "sft" if kind == "sft" else "pair", release, generated_by, check_types)
    heldout: list[dict[str, Any]] = []
    if kind == "rm":  # the reported accuracy is on pairs the model never trained on
        from .rm_heldout import split_heldout

        ts, heldout, heldout_ids = split_heldout(ts, opts.eval_fraction, opts.seed)
    parent_id, base_path = resolve_base(corpus, base)
    out_dir = Path(out).expanduser().resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    checkpoint = _latest_checkpoint(out_dir) if resume else None
    if not resume and out_dir.is_dir() and (out_dir / "checkpoints").exists():
        shutil.rmtree(out_dir / "checkpoints")  # a fresh run must not mix with an old run's checkpoints
    out_dir.mkdir(parents=True, exist_ok=True)
    model_id = model_id_for(kind, out_dir)
    config = {
        "kind": kind, "base": base_path, "release_id": ts.release_id, "snapshot_hash": ts.snapshot_hash,
        "rows": len(ts.rows), "generated_by": generated_by, **({"check_types": check_types} if check_types is not None else {}),
        "device": "cuda" if on_gpu() else "cpu", **asdict(opts),
    }
    cont = continued_adapter(kind, base_path, opts)
    if cont:
        config["continued_adapter"], config["adapter_root"] = cont
    if kind == "rm":
        config["heldout_snapshot_hash"] = snapshot_hash("heldout:pair", heldout_ids)
        config["heldout_pair_ids"] = heldout_ids  # `judge eval --heldout-of MODEL` measures on exactly these
    with corpus.run(f"train {kind}", config, argv=argv) as run:
        trainer = _build_trainer(kind, base_path, ts, opts, out_dir,
                                 _callbacks(corpus, model_id, run.id, progress, kind) + list(callbacks or []), progress,
                                 cont)
        result = trainer.train(resume_from_checkpoint=checkpoint)
        _save(trainer, kind, out_dir, lora)
        metrics = _final_metrics(trainer, result)
        metrics["resumed_from"] = checkpoint
        if kind == "rm":
            metrics.update(_rm_metrics(trainer, metrics, str(out_dir), heldout, opts.max_length))
        register_model(corpus, model_id=model_id, kind=kind, path=str(out_dir), parent_id=parent_id,
                       base=base_path, release_id=ts.release_id, config=config, metrics=metrics, run_id=run.id)
        run.summary = {"model_id": model_id, "path": str(out_dir), **metrics}
    return model_id


def _rm_metrics(trainer: Any, metrics: dict[str, Any], out_dir: str, heldout: list[dict[str, Any]],
                max_length: int) -> dict[str, Any]:
    """Held-out accuracy becomes `accuracy`; TRL's figure for the last batch keeps its own name."""
    from .rm_heldout import heldout_accuracy

    m: dict[str, Any] = {"train_pairs_used": len(trainer.train_dataset)}  # after TRL's length filter
    if "accuracy" in metrics:
        m["last_batch_accuracy"] = metrics.pop("accuracy")
    m.update(heldout_accuracy(out_dir, heldout, max_length))  # fitted as the training rows were
    if heldout:
        m["accuracy"] = m["heldout_accuracy"]
    return m


def _final_metrics(trainer: Any, result: Any) -> dict[str, Any]:
    m: dict[str, Any] = {k: float(v) for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
    m["steps"] = int(trainer.state.global_step)
    logs = [l for l in trainer.state.log_history if "loss" in l]
    if logs:
        last = logs[-1]
        m["final_loss"] = float(last["loss"])
        for key in ("accuracy", "margin", "rewards/accuracies", "rewards/margins", "mean_token_accuracy"):
            if key in last:
                m[key] = float(last[key])
    return m
