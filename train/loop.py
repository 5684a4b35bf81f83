"""The model-trains-model loop: round t turns M_t into M_{t+1}.

    generate (M_t samples) -> judge (rubric; the latest reward model joins the jury) -> filter
    -> review gate (stops for reviewers unless auto-release) -> [rm] -> DPO (M_t is the reference)
    -> eval (win rate vs M_0, verifier pass rates, length) -> next round

This is the one module of a stage package allowed to call the other stages (their public
functions). Every finished stage is a `loop_stages` row, and every stage is idempotent (content
ids, the call cache, training checkpoints), so a restart after a crash or a SIGKILL resumes at
the first unfinished stage of the unfinished round and redoes nothing that finished.
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from backends import Backend, SamplingParams, load_backend
from corpus import Corpus, UserError, content_id

from .evaluate import run_eval
from .records import Loop, LoopStage
from .registry import get_model, resolve_base
from .trainers import train_model

# The fault-injection hook of the SIGKILL test: "ROUND:STAGE" kills this process just before the
# stage starts, "ROUND:train:STEP" right after training step STEP is checkpointed.
KILL_ENV = "RLAIF_LOOP_KILL_AT"


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
    max_new_tokens: int = 128
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
    beta: float = 0.1
    max_length: int = 512
    save_steps: int = 50
    eval_limit: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise UserError(f"--rounds {self.rounds}: run at least one round")
        for flag, path in (("--prompts", self.prompts), ("--rubric", self.rubric), ("--eval-prompts", self.eval_prompts),
                           ("--filters-config", self.filters_config)):
            if path is not None and not Path(path).exists():
                raise UserError(f"{flag} {path}: no such file")


def _kill_point() -> tuple[int, str, int | None] | None:
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return None
    parts = spec.split(":")
    return int(parts[0]), parts[1], int(parts[2]) if len(parts) > 2 else None


def _kill_callback(step: int) -> Any:
    from transformers import TrainerCallback

    class KillAfterCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kw):  # noqa: ANN001
            if state.global_step >= step:
                os.kill(os.getpid(), signal.SIGKILL)

    return KillAfterCheckpoint()


def rubric_with_reward_model(rubric: str, rm_id: str, out: Path) -> str:
    """A copy of the rubric with a `reward_model` verifier criterion for models.id `rm_id`:
    the judge's jury gains the reward model as one more (weighted) criterion."""
    data = yaml.safe_load(Path(rubric).read_text())
    data["criteria"] = [c for c in data["criteria"] if c.get("name") != "reward_model"] + [{
        "name": "reward_model", "kind": "verifier", "weight": 1.0,
        "description": "The latest trained reward model's score of the reply (sigmoid of its logit).",
        "verifier": {"type": "reward_model", "model": rm_id},
    }]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(out)


class ModelLoop:
    def __init__(self, corpus: Corpus, cfg: LoopConfig, judge: Backend | None = None, progress: bool = True,
                 say: Callable[[str], None] = print):
        self.corpus, self.cfg, self.judge, self.progress, self.say = corpus, cfg, judge, progress, say
        self.m0_id, self.m0_path = resolve_base(corpus, cfg.base)
        self.workdir = Path(cfg.workdir or Path(corpus.path).with_suffix("").as_posix() + "-loop").resolve()
        ident = {"prompts": str(Path(cfg.prompts).resolve()), "rubric": str(Path(cfg.rubric).resolve()),
                 "base": self.m0_id, "workdir": str(self.workdir)}
        self.loop_id = "loop-" + content_id("loop", ident)[:12]
        corpus.insert([Loop(id=self.loop_id, config={**asdict(cfg), **ident}, base_model_id=self.m0_id)])
        self.train_prompts, self.eval_set = self._split_prompts()

    # -- state ---------------------------------------------------------------------------------

    def done(self) -> dict[tuple[int, str], dict[str, Any]]:
        rows = self.corpus.query("SELECT round, stage, result FROM loop_stages WHERE loop_id = ? AND status = 'done'",
                                 [self.loop_id])
        return {(r["round"], r["stage"]): json.loads(r["result"]) for r in rows}

    def _mark(self, t: int, stage: str, result: dict[str, Any], status: str = "done") -> None:
        self.corpus.insert([LoopStage(loop_id=self.loop_id, round=t, stage=stage, status=status,
                                      result=json.loads(json.dumps(result, default=str)))], replace=True)

    def stages(self, t: int) -> list[str]:
        return (["eval_base"] if t == 0 else []) + ["generate", "judge", "filter", "review"] + \
            (["rm"] if self.cfg.train_rm else []) + ["train", "eval"]

    # -- prompts -------------------------------------------------------------------------------

    def _split_prompts(self) -> tuple[list[Any], list[dict[str, Any]]]:
        """Train on most prompts, measure on the rest: a held-out fifth, by prompt id, unless
        --eval-prompts names a separate file."""
        from generate import load_prompts

        prompts, _ = load_prompts(self.cfg.prompts)
        if self.cfg.eval_prompts:
            held, _ = load_prompts(self.cfg.eval_prompts)
            train = prompts
        else:
            held = [p for p in prompts if int(p.id[:8], 16) % 5 == 0] or prompts[:1]
            ids = {p.id for p in held}
            train = [p for p in prompts if p.id not in ids] or prompts
        ev = [{"messages": p.messages, "checks": p.meta.get("checks") or []} for p in held][: self.cfg.eval_limit]
        return train, ev

    # -- the stages ----------------------------------------------------------------------------

    def model_at(self, t: int, done: dict) -> tuple[str, str]:
        if t == 0:
            return self.m0_id, self.m0_path
        mid = done[(t - 1, "train")]["model_id"]
        row = get_model(self.corpus, mid)
        if row is None:
            raise UserError(f"model {mid} of round {t - 1} is missing from the models table")
        return mid, row["path"]

    def _rubric_for_round(self, t: int) -> str:
        """The rubric, plus the latest reward model as one more juror when there is one."""
        rms = self.corpus.query("SELECT id FROM models WHERE kind = 'rm' ORDER BY created_at DESC LIMIT 1")
        if not rms:
            return self.cfg.rubric
        return rubric_with_reward_model(self.cfg.rubric, rms[0]["id"], self.workdir / f"round-{t}" / "rubric.yaml")

    def run_stage(self, t: int, stage: str, done: dict) -> dict[str, Any]:
        from filters import run_filters
        from generate import run_generate
        from judge import run_judge
        from review import release

        cfg = self.cfg
        mid, mpath = self.model_at(t, done)
        where = f"g.model = '{mpath.replace(chr(39), chr(39) * 2)}'"
        if stage == "eval_base":
            return run_eval(self.corpus, self.m0_id, self.eval_set, baseline=self.m0_id,
                            max_new_tokens=cfg.max_new_tokens, progress=self.progress)
        if stage == "generate":
            with load_backend("hf", mpath) as backend:
                params = SamplingParams(temperature=cfg.temperature, top_p=0.95, max_new_tokens=cfg.max_new_tokens)
                return run_generate(self.corpus, prompts=self.train_prompts, backend=backend, n=cfg.n, params=params,
                                    seed=cfg.seed + 1000 * t, progress=self.progress)
        if stage == "judge":
            rubric = self._rubric_for_round(t)
            summary = run_judge(self.corpus, rubric, where=where, progress=self.progress)
            name = yaml.safe_load(Path(rubric).read_text())["name"]
            mean = self.corpus.query(
                "SELECT avg(s.score_norm) AS m FROM generation_scores s JOIN generations g ON g.id = s.generation_id "
                f"WHERE s.rubric = ? AND {where}", [name])
            return {**summary, "rubric_path": rubric, "mean_score_norm": mean[0]["m"] if mean else None}
        if stage == "filter":
            return run_filters(self.corpus, cfg.filters_config)
        if stage == "review":
            out = release(self.corpus, threshold=cfg.threshold, min_reviews=cfg.min_reviews, auto=cfg.auto_release)
            out["judge_human_agreement"] = self._agreement()
            return out
        if stage == "rm":
            rel = done[(t, "review")]["release_id"]
            rm = train_model(self.corpus, "rm", base=self.m0_id, out=self.workdir / f"round-{t}" / "rm", release=rel,
                             lora=cfg.lora, max_steps=cfg.max_steps, epochs=cfg.epochs, batch_size=cfg.batch_size,
                             max_length=cfg.max_length, save_steps=cfg.save_steps, resume=True, progress=self.progress)
            return {"model_id": rm}
        if stage == "train":
            rel = done[(t, "review")]["release_id"]
            kill = _kill_point()
            cbs = [_kill_callback(kill[2])] if kill and kill[0] == t and kill[1] == "train" and kill[2] else []
            opts = dict(lora=cfg.lora, max_steps=cfg.max_steps, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                        max_length=cfg.max_length, beta=cfg.beta, save_steps=cfg.save_steps, resume=True,
                        progress=self.progress, callbacks=cbs)
            out = self.workdir / f"round-{t}" / "policy"
            try:
                new = train_model(self.corpus, "dpo", base=mid, out=out, release=rel, generated_by=mpath, **opts)
                on_policy = True
            except UserError:
                # the pair builder ranks every candidate of a prompt, so when M_t's samples all
                # tie with each other and with older ones, the round has no pair of its own:
                # learn from the whole released snapshot instead, and say so in the round's state
                new = train_model(self.corpus, "dpo", base=mid, out=out, release=rel, **opts)
                on_policy = False
            return {"model_id": new, "parent_id": mid, "release_id": rel, "on_policy": on_policy}
        if stage == "eval":
            new = done[(t, "train")]["model_id"]
            return run_eval(self.corpus, new, self.eval_set, baseline=self.m0_id, judge=self.judge,
                            max_new_tokens=cfg.max_new_tokens, progress=self.progress)
        raise AssertionError(stage)

    def _agreement(self) -> float | None:
        if "judge_human_agreement" not in self.corpus.tables():
            return None
        name = yaml.safe_load(Path(self.cfg.rubric).read_text()).get("name")
        r = self.corpus.query("SELECT sum(agreement * n) / nullif(sum(n), 0) AS a FROM judge_human_agreement "
                              "WHERE rubric = ? AND agreement IS NOT NULL", [name])
        return r[0]["a"] if r else None

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        kill = _kill_point()
        for t in range(self.cfg.rounds):
            for stage in self.stages(t):
                done = self.done()
                if (t, stage) in done:
                    continue
                if kill and kill[:2] == (t, stage) and kill[2] is None:
                    os.kill(os.getpid(), signal.SIGKILL)
                self.say(f"[loop {self.loop_id}] round {t}: {stage}")
                result = self.run_stage(t, stage, done)
                if stage == "review" and result["decision"] not in ("released", "auto_released"):
                    self._mark(t, stage, result, status="waiting")
                    return {"loop_id": self.loop_id, "status": "waiting", "round": t, "missing": result.get("missing"),
                            "release_id": result.get("release_id")}
                self._mark(t, stage, result)
        final = self.done()[(self.cfg.rounds - 1, "train")]["model_id"]
        return {"loop_id": self.loop_id, "status": "done", "rounds": self.cfg.rounds, "model_id": final}


def run_loop(corpus: Corpus, prompts: str, rubric: str, rounds: int = 2, *, judge: Backend | None = None,
             progress: bool = True, **options: Any) -> dict[str, Any]:
    """Run (or resume) the loop; returns {loop_id, status 'done' | 'waiting', ...}."""
    cfg = LoopConfig(prompts=prompts, rubric=rubric, rounds=rounds, **options)
    return ModelLoop(corpus, cfg, judge=judge, progress=progress).run()
