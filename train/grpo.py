"""GRPO with TRL's GRPOTrainer: the policy samples a group of replies per prompt, reward
functions score them, and each reply is pushed up or down by how it compares with its group.

Reward functions are plain callables `fn(prompts, completions, **kw) -> list[float | None]`
(TRL's contract; None: does not apply). `train/loop.py` builds them from a rubric (verifiers,
a registered reward model, an LLM judge through any backend); this module only trains, so it
imports no other stage. Prompt metadata (the checks a checkable prompt carries, code tests)
reaches the reward functions as the `meta` keyword: one JSON string per completion.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from corpus import Corpus, UserError

from .registry import model_id_for, register_model, resolve_base
from .trainers import _bf16_ok, _callbacks, _latest_checkpoint, _load_model, _load_tokenizer, _peft_config, _save, on_gpu

RewardFn = Callable[..., list]


@dataclass
class GRPOOptions:
    """What a GRPO run may be told; the defaults suit a small model on a CPU or one GPU."""

    num_generations: int = field(default=4, metadata={"help": "replies sampled per prompt (the group)"})
    prompts_per_step: int = field(default=2, metadata={"help": "prompts per optimizer step"})
    max_completion_length: int = field(default=128, metadata={"help": "reply length cap in tokens"})
    temperature: float = field(default=0.8, metadata={"help": "sampling temperature of the rollouts"})
    lr: float | None = field(default=None, metadata={"help": "learning rate (default 1e-6; 1e-5 with LoRA)"})
    beta: float = field(default=0.0, metadata={"help": "KL weight to the starting model (0: no reference model)"})
    max_steps: int = -1
    epochs: float = 1.0
    lora: bool = False
    lora_r: int = 16
    save_steps: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_generations < 2:
            raise UserError(f"--num-generations {self.num_generations}: GRPO compares replies within a group; use 2 or more")
        if self.prompts_per_step < 1:
            raise UserError(f"--prompts-per-step {self.prompts_per_step}: must be at least 1")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise UserError("--epochs must be > 0 (or give --max-steps N)")
        if self.lr is not None and not 0 < self.lr < 1:
            raise UserError(f"--lr {self.lr}: expected a learning rate between 0 and 1, e.g. 1e-6")
        if self.max_completion_length < 1:
            raise UserError(f"--max-new-tokens {self.max_completion_length}: must be at least 1")


class RolloutTokens:
    """Counts the tokens GRPO generated (for a fair compute comparison with DPO's rollouts)."""

    def __init__(self) -> None:
        self.tokens = 0
        self.completions = 0

    def wrap(self, fn: RewardFn) -> RewardFn:
        def counted(prompts, completions, completion_ids=None, **kw):  # noqa: ANN001, ANN202
            self.tokens += sum(len(c) for c in completion_ids or [])
            self.completions += len(completions)
            return fn(prompts=prompts, completions=completions, completion_ids=completion_ids, **kw)

        counted.__name__ = getattr(fn, "__name__", "reward")
        return counted


def completion_text(completion: Any) -> str:
    """TRL hands conversational completions as [{'role': 'assistant', 'content': ...}]."""
    if isinstance(completion, list):
        return completion[-1]["content"] if completion else ""
    return str(completion)


def grpo_rows(prompts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """[{messages, meta}] -> TRL rows; meta travels as a JSON string so that rows with different
    meta shapes fit one Arrow column."""
    return [{"prompt": [{"role": m["role"], "content": m["content"]} for m in p["messages"]],
             "meta": json.dumps(p.get("meta") or {}, sort_keys=True)} for p in prompts]


def _config(opts: GRPOOptions, out: Path) -> Any:
    from trl import GRPOConfig

    gpu = on_gpu()
    lr = opts.lr if opts.lr is not None else 1e-6 * (10 if opts.lora else 1)
    return GRPOConfig(
        output_dir=str(out / "checkpoints"), num_train_epochs=opts.epochs, max_steps=opts.max_steps,
        per_device_train_batch_size=opts.num_generations * opts.prompts_per_step,
        num_generations=opts.num_generations, max_completion_length=opts.max_completion_length,
        temperature=opts.temperature, learning_rate=lr, beta=opts.beta, logging_steps=1,
        save_strategy="steps", save_steps=opts.save_steps, save_total_limit=2, report_to=[], seed=opts.seed,
        # bf16 and gradient checkpointing run 11x slower on a CPU (TRL turns them on by default)
        bf16=gpu and _bf16_ok(), gradient_checkpointing=False, use_cpu=not gpu, use_vllm=False,
        dataloader_num_workers=0, disable_tqdm=True,
    )


def train_grpo(
    corpus: Corpus, prompts: list[dict[str, Any]], reward_funcs: list[RewardFn], weights: list[float],
    reward: dict[str, Any], *, base: str | None = None, out: str | os.PathLike[str] = "grpo-out",
    release_id: str | None = None, opts: GRPOOptions | None = None, resume: bool = False, progress: bool = True,
    argv: list[str] | None = None, callbacks: list[Any] | None = None,
) -> str:
    """Train `base` with GRPO on `prompts` against `reward_funcs`; returns the registered models.id.

    `reward` is the reward definition stored with the model (rubric, criteria, weights, judge)."""
    opts = opts or GRPOOptions()
    if not prompts:
        raise UserError("GRPO needs prompts: none were given (an empty --prompts file or a release without prompts)")
    if len(reward_funcs) != len(weights) or not reward_funcs:
        raise UserError("GRPO needs at least one reward function, each with a weight")
    parent_id, base_path = resolve_base(corpus, base)
    out_dir = Path(out).expanduser().resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    checkpoint = _latest_checkpoint(out_dir) if resume else None
    if not resume and (out_dir / "checkpoints").exists():
        shutil.rmtree(out_dir / "checkpoints")
    out_dir.mkdir(parents=True, exist_ok=True)
    model_id = model_id_for("grpo", out_dir)
    counter = RolloutTokens()
    config = {"kind": "grpo", "base": base_path, "release_id": release_id, "prompts": len(prompts),
              "device": "cuda" if on_gpu() else "cpu", **asdict(opts)}
    with corpus.run("train grpo", {**config, "reward": reward}, argv=argv) as run:
        from datasets import Dataset
        from transformers.trainer_callback import PrinterCallback
        from trl import GRPOTrainer

        tok = _load_tokenizer(base_path)
        tok.padding_side = "left"  # generation pads on the left
        model = _load_model("grpo", base_path, tok)
        funcs = [counter.wrap(reward_funcs[0])] + list(reward_funcs[1:])
        args = _config(opts, out_dir)
        args.reward_weights = list(weights)
        trainer = GRPOTrainer(model=model, reward_funcs=funcs, args=args, train_dataset=Dataset.from_list(grpo_rows(prompts)),
                              processing_class=tok, peft_config=_peft_config("grpo", opts),
                              callbacks=_callbacks(corpus, model_id, run.id, progress, "grpo") + list(callbacks or []))
        trainer.remove_callback(PrinterCallback)
        result = trainer.train(resume_from_checkpoint=checkpoint)
        _save(trainer, "grpo", out_dir, opts.lora)
        metrics = _metrics(trainer, result)
        metrics.update(resumed_from=checkpoint, rollout_tokens=counter.tokens, rollouts=counter.completions)
        register_model(corpus, model_id=model_id, kind="grpo", path=str(out_dir), parent_id=parent_id, base=base_path,
                       release_id=release_id, config=config, metrics=metrics, run_id=run.id, algorithm="grpo", reward=reward)
        run.summary = {"model_id": model_id, "path": str(out_dir), **metrics}
    return model_id


def _metrics(trainer: Any, result: Any) -> dict[str, Any]:
    m: dict[str, Any] = {k: float(v) for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}
    m["steps"] = int(trainer.state.global_step)
    logs = [entry for entry in trainer.state.log_history if "reward" in entry]
    if logs:
        m["first_reward"], m["final_reward"] = float(logs[0]["reward"]), float(logs[-1]["reward"])
        m["final_loss"] = float(logs[-1].get("loss", float("nan")))
    return m
