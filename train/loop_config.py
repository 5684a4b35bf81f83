"""The loop's settings (`train loop`'s flags), each checked before anything runs: a refused
setting is one line, exit 2, and no corpus file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from corpus import UserError

from .checks import CHECKS
from .policy import PolicyBackend

ALGOS = ("dpo", "grpo", "sft", "sft+dpo")
WARM_STARTS = ("sft",)
# --warm-start-types sparse: the check types whose M_0 rollouts gave a released pair on fewer than
# this share of their prompts (too few pairs for DPO to learn them from)
SPARSE_PAIR_SHARE = 0.10


@dataclass
class LoopConfig:
    prompts: str = field(metadata={"help": "training prompts (JSONL; checks in meta give the verifiers ground truth)"})
    rubric: str = field(metadata={"help": "the judge's rubric YAML"})
    rounds: int = 2
    base: str | None = None
    workdir: str | None = None
    eval_prompts: str | None = None
    n: int = 4
    temperature: float = 0.8
    max_new_tokens: int = 192
    # the eval's own cap: well above the longest reply a check needs (120 words ~ 180 tokens), so a
    # verdict is never decided by where the reply was cut
    eval_max_new_tokens: int = 384
    eval_every_round: bool = False
    auto_release: bool = False
    threshold: float | None = None
    min_reviews: int | None = None
    filters_config: str | None = None
    train_rm: bool = False
    lora: bool = False
    max_steps: int = -1
    epochs: float = 1.0
    batch_size: int = 4
    lr: float | None = None
    beta: float | None = None
    ld_alpha: float | None = None  # DPO rounds: LD-DPO's weight of a longer reply's excess tokens
    max_length: int = 512
    save_steps: int = 50
    eval_limit: int | None = None
    seed: int = 0
    algo: str = "dpo"
    heldout_types: list[str] | None = None
    prompts_per_step: int = 2
    # DPO/SFT train on all of the release's rows, which the filters build over every round's
    # candidates (each pair's rounds are recorded), not only rows holding M_t's own samples: a round
    # whose samples give few pairs still learns from the earlier rounds' replies
    pool_rounds: bool = True
    # types whose prompts gave no pair at M_0 are left out of later rollouts (reported in the budget)
    drop_barren_types: bool = True
    warm_start: str | None = None
    # the warm start's SFT rows: None = every passing reply of M_0; "sparse" = replies to prompts of
    # the types DPO gets almost no pair for at M_0 (SPARSE_PAIR_SHARE); or a comma list of types
    warm_start_types: str | None = None
    # the warm start's length in passes over its rows (None: the training's --max-steps/--epochs):
    # a narrow warm start holds few rows, and 40 steps over 6 rows is 27 passes
    warm_start_epochs: float | None = None
    # vLLM + LoRA: every round trains the one adapter further on M_0 (DPO's reference is still
    # M_t: TRL keeps a frozen copy of the loaded adapter), so one engine started on M_0 serves every
    # round's model as a LoRA adapter, kept through judging and training instead of restarted
    serve_adapters: bool = False
    policy: PolicyBackend = field(default_factory=PolicyBackend)

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise UserError(f"--rounds {self.rounds}: run at least one round")
        if self.algo not in ALGOS:
            raise UserError(f"--algo {self.algo}: choose one of {', '.join(ALGOS)}")
        if self.algo == "sft+dpo":  # the same as --algo dpo --warm-start sft
            self.algo, self.warm_start = "dpo", "sft"
        if self.warm_start is not None and self.warm_start not in WARM_STARTS:
            raise UserError(f"--warm-start {self.warm_start}: choose one of {', '.join(WARM_STARTS)}")
        if self.warm_start and self.algo != "dpo":
            raise UserError(f"--warm-start {self.warm_start}: a warm start comes before DPO; use it with --algo dpo")
        if self.warm_start_types is not None:
            if not self.warm_start:
                raise UserError(f"--warm-start-types {self.warm_start_types}: narrows a warm start; add --warm-start sft")
            named = [t for t in self.warm_start_types.split(",") if t.strip()]
            if self.warm_start_types != "sparse" and (not named or any(t.strip() not in CHECKS for t in named)):
                raise UserError(f"--warm-start-types {self.warm_start_types}: give 'sparse' or check types separated by commas, "
                                f"from {', '.join(CHECKS)}")
        if self.warm_start_epochs is not None and (not self.warm_start or not self.warm_start_epochs > 0):
            raise UserError(f"--warm-start-epochs {self.warm_start_epochs}: passes over the warm start's rows, a number above 0 "
                            "with --warm-start sft")
        if self.ld_alpha is not None and (self.algo != "dpo" or not 0 <= self.ld_alpha <= 1):
            raise UserError(f"--ld-alpha {self.ld_alpha}: a weight in [0, 1] for the DPO rounds; use it with --algo dpo "
                            "(or sft+dpo)")
        if self.serve_adapters:
            if self.policy.name != "vllm" or not self.lora or self.algo == "grpo":
                raise UserError("--serve-adapters: serves each round's LoRA adapter from one vLLM engine; "
                                "use it with --backend vllm --lora and --algo dpo, sft or sft+dpo")
        for flag, v in (("--max-new-tokens", self.max_new_tokens), ("--eval-max-new-tokens", self.eval_max_new_tokens)):
            if v < 1:
                raise UserError(f"{flag} {v}: give a positive token cap")
        if self.algo == "grpo" and self.n < 2:
            raise UserError(f"--n {self.n}: GRPO compares a group of replies per prompt; use 2 or more")
        bad = [t for t in self.heldout_types or [] if t not in CHECKS]
        if bad:
            raise UserError(f"--heldout-types {','.join(bad)}: unknown check type; types are {', '.join(CHECKS)}")
        for flag, path in (("--prompts", self.prompts), ("--rubric", self.rubric), ("--eval-prompts", self.eval_prompts),
                           ("--filters-config", self.filters_config)):
            if path is not None and not Path(path).exists():
                raise UserError(f"{flag} {path}: no such file")
