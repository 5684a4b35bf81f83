"""The model-trains-model loop: round t turns M_t into M_{t+1}.

    generate (M_t samples, on any backend) -> judge (rubric; the latest reward model joins the
    jury) -> filter -> review gate (stops for reviewers unless auto-release) -> [rm]
    -> train (--algo dpo: M_t's pairs, M_t the reference | grpo: the rubric as reward functions,
       on the prompts whose candidates the judge told apart | sft: rejection sampling, M_t's
       accepted replies) -> eval (held-out prompts: trained and unseen check types, length)

This is the one module of a stage package allowed to call the other stages (their public
functions). Every finished stage is a `loop_stages` row, and every stage is idempotent (content
ids, the call cache, training checkpoints), so a restart after a crash or a SIGKILL resumes at
the first unfinished stage of the unfinished round and redoes nothing that finished.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import yaml

from backends import Backend, BackendError, SamplingParams, load_backend
from corpus import Corpus, UserError, content_id

from .data import release_prompts, training_set
from .evaluate import run_eval
from .grpo import GRPOOptions, completion_text, train_grpo
from .loop_config import ALGOS, SPARSE_PAIR_SHARE, WARM_STARTS, LoopConfig  # noqa: F401 - re-exported
from .policy import PolicyBackend, serve_hint
from .records import Loop, LoopStage
from .registry import get_model, resolve_base, set_training
from .trainers import train_model

SAMPLING_STAGES = ("eval_base", "generate", "eval")

# The fault-injection hook of the SIGKILL test: "ROUND:STAGE" kills this process just before the
# stage starts, "ROUND:train:STEP" right after training step STEP is checkpointed.
KILL_ENV = "RLAIF_LOOP_KILL_AT"


def _file_id(path: str) -> str:
    """A file's SHA-256 (LoopConfig.check has made sure it exists); the loop's config keeps the paths too."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


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


def rubric_rewards(corpus: Corpus, rubric_path: str, judge: Backend | None = None
                   ) -> tuple[list[Callable[..., list]], list[float], dict[str, Any], Callable[[], None]]:
    """A rubric as GRPO reward functions `fn(prompts, completions, meta=..., **kw) -> [float | None]`,
    one per criterion, weighted as the rubric says (weights scaled to sum to 1, so the total is
    the rubric's weighted score in [0, 1]): verifiers through the judge's own verifier functions,
    a reward_model criterion through the registered model (sigmoid of its logit), LLM criteria
    through `judge` or the rubric's first judge, on any backend. Returns (funcs, weights,
    definition to store with the model, close)."""
    from judge import load_rubric
    from judge.parse import parse_pointwise
    from judge.render import pointwise_request
    from judge.verifiers import resolve_reward_model, run_verifier

    from .reward import RewardScorer

    rubric = load_rubric(rubric_path)
    crits = [c for c in rubric.criteria if c.weight > 0]
    if not crits:
        raise UserError(f"{rubric_path}: every criterion has weight 0; GRPO needs something to reward")
    owned: list[Backend] = []
    llm: Backend | None = judge

    def items(prompts: list, meta: list | None) -> list[tuple[dict[str, Any], str]]:
        metas = [json.loads(m) if isinstance(m, str) else (m or {}) for m in (meta or [None] * len(prompts))]
        return [{"messages": p, "meta": m} for p, m in zip(prompts, metas)]  # type: ignore[misc]

    def verifier_fn(c: Any) -> Callable[..., list]:
        def fn(prompts, completions, meta=None, **kw):  # noqa: ANN001, ANN202
            rows = [(p, completion_text(x)) for p, x in zip(items(prompts, meta), completions)]
            return [r.score for r in run_verifier(c.verifier, rows, corpus)]
        return fn

    def rm_fn(c: Any) -> Callable[..., list]:
        row = resolve_reward_model(corpus, c.verifier.model)
        scorer = RewardScorer(row["path"])

        def fn(prompts, completions, **kw):  # noqa: ANN001, ANN202
            convs = [list(p) + [{"role": "assistant", "content": completion_text(x)}] for p, x in zip(prompts, completions)]
            return [1 / (1 + math.exp(-v)) for v in scorer.score(convs)]
        return fn

    def llm_fn(c: Any) -> Callable[..., list]:
        nonlocal llm
        spec = rubric.judges[0] if rubric.judges else None
        if llm is None:
            if spec is None:
                raise UserError(f"{rubric_path}: criterion {c.name} is an LLM criterion but the rubric has no judges "
                                "and no --judge-model was given")
            opts = {"base_url": spec.base_url, "api_key_env": spec.api_key_env} if spec.backend == "openai" else {}
            llm = load_backend(spec.backend, spec.model, **opts)
            owned.append(llm)
        from judge.rubric import JudgeSpec

        jspec = spec or JudgeSpec()

        def fn(prompts, completions, **kw):  # noqa: ANN001, ANN202
            reqs = [pointwise_request(rubric, c, jspec, list(p), completion_text(x)) for p, x in zip(prompts, completions)]
            out: list[float | None] = []
            for comp in llm.generate(reqs):  # type: ignore[union-attr]
                parsed = parse_pointwise(comp.text, c.lo, c.hi) if comp.ok else None
                ok = parsed is not None and parsed.ok and parsed.verdict
                out.append((parsed.verdict["score"] - c.lo) / (c.hi - c.lo) if ok else None)  # type: ignore[union-attr,index]
            return out
        return fn

    funcs, parts = [], []
    for c in crits:
        if c.kind == "verifier" and c.verifier.type == "reward_model":
            fn = rm_fn(c)
        elif c.kind == "verifier":
            fn = verifier_fn(c)
        else:
            fn = llm_fn(c)
        fn.__name__ = c.name
        funcs.append(fn)
        parts.append({"criterion": c.name, "kind": c.kind, "type": c.verifier.type if c.verifier else "llm", "weight": c.weight})
    total = sum(p["weight"] for p in parts)
    weights = [p["weight"] / total for p in parts]
    definition = {"rubric_name": rubric.name, "rubric_hash": rubric.rubric_hash, "criteria": parts,
                  "judge": f"{llm.name}:{llm.model_id}" if llm is not None else None}

    def close() -> None:
        for b in owned:
            b.close()

    return funcs, weights, definition, close


class ModelLoop:
    def __init__(self, corpus: Corpus, cfg: LoopConfig, judge: Backend | None = None, progress: bool = True,
                 say: Callable[[str], None] = print):
        self.corpus, self.cfg, self.judge, self.progress, self.say = corpus, cfg, judge, progress, say
        self.m0_id, self.m0_path = resolve_base(corpus, cfg.base)
        self.workdir = Path(cfg.workdir or Path(corpus.path).with_suffix("").as_posix() + "-loop").resolve()
        # the prompts and rubric by content, not path: the same command from another checkout resumes,
        # and an edited rubric starts a new loop instead of mixing its judgments with the old one's
        ident = {"prompts_sha256": _file_id(cfg.prompts), "rubric_sha256": _file_id(cfg.rubric),
                 "base": self.m0_id, "workdir": str(self.workdir), "algo": cfg.algo}
        if cfg.warm_start:  # a warm-started loop trains other models: its own id (unset: ids as before)
            ident["warm_start"] = cfg.warm_start
        if cfg.warm_start_types is not None:
            ident["warm_start_types"] = cfg.warm_start_types
        if cfg.warm_start_epochs is not None:
            ident["warm_start_epochs"] = cfg.warm_start_epochs
        if cfg.ld_alpha is not None:  # the same for a length-desensitized DPO
            ident["ld_alpha"] = cfg.ld_alpha
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
        """Train on most prompts, measure on prompts never trained on: prompts with a check type in
        --heldout-types are all held out (forgetting shows there), and a fifth of the base
        prompts (meta.base, else the prompt id) is held out with every instruction attached to
        it, so the trained-type eval asks about unseen base prompts. --eval-prompts replaces the
        fifth with a separate file."""
        from generate import load_prompts

        prompts, _ = load_prompts(self.cfg.prompts)
        hold_types = set(self.cfg.heldout_types or [])

        def types(p: Any) -> set[str]:
            return {c["type"] for c in (p.meta.get("checks") or [])}

        def held_base(p: Any) -> bool:
            key = str(p.meta.get("base") or p.id)
            return int(content_id("heldout", key)[:8], 16) % 5 == 0

        if self.cfg.eval_prompts:
            held, _ = load_prompts(self.cfg.eval_prompts)
            train = [p for p in prompts if not types(p) & hold_types]
        else:
            held = [p for p in prompts if held_base(p) or types(p) & hold_types]
            held = held or sorted(prompts, key=lambda p: p.id)[:1]  # a tiny file: measure on one prompt
            ids = {p.id for p in held}
            train = [p for p in prompts if p.id not in ids]
            if not train:
                raise UserError(f"--prompts {self.cfg.prompts}: every prompt is held out; give more prompts or fewer --heldout-types")
        self.trained_types = sorted(set().union(*(types(p) for p in train)))
        ev = [{"messages": p.messages, "checks": p.meta.get("checks") or []} for p in held]
        limit = self.cfg.eval_limit
        if limit:  # cap each group, so the held-out types are not crowded out
            from .heldout import prompt_group

            groups: dict[Any, list[dict[str, Any]]] = {}
            for e in ev:
                groups.setdefault(prompt_group(e["checks"], set(self.trained_types)), []).append(e)
            ev = [e for g in groups.values() for e in g[:limit]]
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

    def _eval(self, t: int, model_id: str, done: dict) -> dict[str, Any]:
        """M_t on the held-out set, paired with M_0's replies from the round-0 'eval_base' stage
        (t = -1: that stage itself)."""
        base = None if t < 0 else done[(0, "eval_base")].get("per_prompt")
        return run_eval(self.corpus, model_id, self.eval_set, baseline=self.m0_id, judge=self.judge,
                        max_new_tokens=self.cfg.eval_max_new_tokens, progress=self.progress, policy=self.cfg.policy,
                        trained_types=set(self.trained_types), baseline_per_prompt=base)

    def run_stage(self, t: int, stage: str, done: dict) -> dict[str, Any]:
        from filters import run_filters
        from generate import run_generate
        from judge import run_judge
        from review import release

        cfg = self.cfg
        mid, mpath = self.model_at(t, done)
        if stage == "eval_base":
            return {**self._eval(-1, self.m0_id, done), "trained_types": self.trained_types}
        if stage == "generate":
            prompts, left_out = self.rollout_prompts(t, done)
            with cfg.policy.open(mpath, first=t == 0) as backend:
                params = SamplingParams(temperature=cfg.temperature, top_p=0.95, max_new_tokens=cfg.max_new_tokens)
                out = run_generate(self.corpus, prompts=prompts, backend=backend, n=cfg.n, params=params,
                                   seed=cfg.seed + 1000 * t, progress=self.progress)
            out["left_out_types"] = left_out
            if out["candidates_new"] + out["candidates_existing"] == 0:
                hint = serve_hint(mpath) if cfg.policy.name == "openai" else "see the failures table"
                raise UserError(f"round {t}: no candidate from {backend.model_id} ({out['failure_reasons']}); {hint}")
            return out
        gen_model = done[(t, "generate")]["model"]
        where = f"g.model = '{gen_model.replace(chr(39), chr(39) * 2)}'"
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
        rel = done[(t, "review")]["release_id"]
        if stage == "rm":
            rm = train_model(self.corpus, "rm", base=self.m0_id, out=self.workdir / f"round-{t}" / "rm", release=rel,
                             lora=cfg.lora, max_steps=cfg.max_steps, epochs=cfg.epochs, batch_size=cfg.batch_size,
                             max_length=cfg.max_length, save_steps=cfg.save_steps, resume=True, progress=self.progress)
            return {"model_id": rm}
        if stage == "train":
            return self._train(t, mid, gen_model, rel, done)
        if stage == "eval":
            tr = done[(t, "train")]
            if not tr.get("trained", True):  # M_{t+1} is M_t: its eval is the last one
                last = done[(t - 1, "eval")] if t else done[(0, "eval_base")]
                return {**last, "skipped": tr["reason"]}
            if not (self.cfg.eval_every_round or t == self.cfg.rounds - 1):
                return {"model_id": tr["model_id"], "not_evaluated": "only M0 and the last model are evaluated "
                                                                      "(--eval-every-round measures each)"}
            return self._eval(t, tr["model_id"], done)
        raise AssertionError(stage)

    def rollout_prompts(self, t: int, done: dict) -> tuple[list[Any], list[str]]:
        """Round t's rollout prompts: after round 0, without the check types that gave no released
        pair at M_0 (their samples would spend the budget and teach nothing)."""
        if t == 0 or not self.cfg.drop_barren_types or (0, "review") not in done:
            return self.train_prompts, []
        from .report import round_budget

        per_type = round_budget(self.corpus, done, 0)["per_type"]
        barren = sorted(k for k, v in per_type.items() if v["prompts_with_pair"] == 0)
        keep = [p for p in self.train_prompts
                if not {c["type"] for c in p.meta.get("checks") or []} & set(barren)]
        return (keep, barren) if keep else (self.train_prompts, [])

    def warm_start_types(self, done: dict) -> list[str] | None:
        """The check types the warm start's SFT rows answer (None: all). 'sparse': the trained types
        whose M_0 rollouts gave a released pair on under SPARSE_PAIR_SHARE of their prompts, the
        ones DPO cannot learn from M_0's samples, without teaching the other types M_0's short
        passing replies (the warm start's length cost)."""
        spec = self.cfg.warm_start_types
        if spec is None:
            return None
        if spec != "sparse":
            return sorted({t.strip() for t in spec.split(",") if t.strip()})
        from .report import round_budget

        per_type = round_budget(self.corpus, done, 0)["per_type"]
        return sorted(k for k, v in per_type.items()
                      if k in self.trained_types and v["prompts"] and v["prompts_with_pair"] / v["prompts"] < SPARSE_PAIR_SHARE)

    def _train(self, t: int, mid: str, gen_model: str, rel: str, done: dict) -> dict[str, Any]:
        """Train M_{t+1} on the round's release (pooled over rounds, or M_t's own samples with
        pool_rounds off); with nothing to learn from the round says so and M_{t+1} = M_t."""
        cfg = self.cfg
        kill = _kill_point()
        cbs = [_kill_callback(kill[2])] if kill and kill[0] == t and kill[1] == "train" and kill[2] else []
        out = self.workdir / f"round-{t}" / "policy"
        rubric = done[(t, "judge")]["rubric_path"]
        reward = {"rubric": rubric, "rubric_name": yaml.safe_load(Path(rubric).read_text())["name"], "release_id": rel}
        skip = {"model_id": mid, "parent_id": mid, "release_id": rel, "trained": False}
        if cfg.algo == "grpo":
            _, prompts = release_prompts(self.corpus, rel, generated_by=gen_model)
            if not prompts:
                return {**skip, "reason": f"release {rel} holds no prompt whose {gen_model} replies the judge told apart: "
                                          "no reward signal for GRPO this round; not trained"}
            funcs, weights, definition, close = rubric_rewards(self.corpus, rubric, self.judge)
            opts = GRPOOptions(num_generations=cfg.n, prompts_per_step=cfg.prompts_per_step,
                               max_completion_length=cfg.max_new_tokens, temperature=cfg.temperature, lr=cfg.lr,
                               beta=cfg.beta if cfg.beta is not None else 0.0, max_steps=cfg.max_steps, epochs=cfg.epochs,
                               lora=cfg.lora, save_steps=cfg.save_steps, seed=cfg.seed + t)
            try:
                new = train_grpo(self.corpus, prompts, funcs, weights, {**reward, **definition}, base=mid, out=out,
                                 release_id=rel, opts=opts, resume=True, progress=self.progress, callbacks=cbs)
            finally:
                close()
            extra = {"prompts": len(prompts)}
        else:
            kind = "dpo" if cfg.algo == "dpo" else "sft"
            # pooled: every released row, built over all rounds' candidates; else M_t's own samples only
            by = None if cfg.pool_rounds else gen_model
            try:
                ts = training_set(self.corpus, "pair" if kind == "dpo" else "sft", rel, by)
            except UserError as e:
                return {**skip, "reason": f"{e}; not trained"}
            extra = {"rows": len(ts.rows), "rows_by_round": self._rows_by_round(ts.ids, kind, done)}
            train_kw = dict(release=rel, generated_by=by, lora=cfg.lora, max_steps=cfg.max_steps, epochs=cfg.epochs,
                            lr=cfg.lr, batch_size=cfg.batch_size, max_length=cfg.max_length, save_steps=cfg.save_steps,
                            resume=True, progress=self.progress, continue_adapter=cfg.serve_adapters)
            start = mid
            if cfg.warm_start == "sft" and t == 0:
                # rejection sampling: SFT on M_0's passing replies first, then DPO from there (its own
                # reference), so the pairs are judged against a policy that already tries the format
                types = self.warm_start_types(done)
                try:
                    sft_rows = len(training_set(self.corpus, "sft", rel, by, types).rows)
                except UserError:
                    sft_rows = 0
                if sft_rows:
                    dose = {"max_steps": -1, "epochs": cfg.warm_start_epochs} if cfg.warm_start_epochs is not None else {}
                    start = train_model(self.corpus, "sft", base=mid, out=self.workdir / f"round-{t}" / "warm-sft",
                                        **{**train_kw, "callbacks": None, **dose}, check_types=types)
                    set_training(self.corpus, start, "sft-rs", reward, config_extra={"loop_id": self.loop_id, "warm_start": True})
                extra["warm_start"] = {"kind": "sft", "rows": sft_rows, "model_id": start if sft_rows else None,
                                       **({"types": types} if types is not None else {})}
            new = train_model(self.corpus, kind, base=start, out=out, beta=cfg.beta if cfg.beta is not None else 0.1,
                              callbacks=cbs, **train_kw, **({"ld_alpha": cfg.ld_alpha} if kind == "dpo" else {}))
        warmed = cfg.algo != "grpo" and (extra.get("warm_start") or {}).get("model_id")
        algo = {"sft": "sft-rs", "dpo": "sft+dpo" if warmed else "dpo", "grpo": "grpo"}[cfg.algo]
        set_training(self.corpus, new, algo, reward if cfg.algo != "grpo" else None,
                     config_extra={"trained_types": self.trained_types, "loop_id": self.loop_id})
        return {"model_id": new, "parent_id": mid, "release_id": rel, "trained": True, "algorithm": algo,
                "on_policy": cfg.algo == "grpo" or not cfg.pool_rounds, **extra}

    def _rows_by_round(self, ids: list[str], kind: str, done: dict) -> dict[str, int]:
        """Training rows by the rounds whose samples they hold: 'chosen round/rejected round' for a
        pair (pooled candidates can pair M_0's reply with M_1's), the reply's round for SFT."""
        rounds = {v["model"]: t for (t, st), v in done.items() if st == "generate" and "model" in v}
        if not ids:
            return {}
        if kind == "dpo":
            rows = self.corpus.query(
                "SELECT c.model AS a, r.model AS b FROM pairs pr JOIN generations c ON c.id = pr.chosen_id "
                "JOIN generations r ON r.id = pr.rejected_id WHERE pr.id IN (SELECT unnest(?))", [ids])
            keys = [f"{rounds.get(r['a'], '?')}/{rounds.get(r['b'], '?')}" for r in rows]
        else:
            rows = self.corpus.query("SELECT model AS a FROM generations WHERE id IN (SELECT unnest(?))", [ids])
            keys = [str(rounds.get(r["a"], "?")) for r in rows]
        return {k: keys.count(k) for k in sorted(set(keys))}

    def _agreement(self) -> float | None:
        if "judge_human_agreement" not in self.corpus.tables():
            return None
        name = yaml.safe_load(Path(self.cfg.rubric).read_text()).get("name")
        r = self.corpus.query("SELECT sum(agreement * n) / nullif(sum(n), 0) AS a FROM judge_human_agreement "
                              "WHERE rubric = ? AND agreement IS NOT NULL", [name])
        return r[0]["a"] if r else None

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        # vLLM: one engine per model, kept from M_t's eval to its rollouts; with --serve-adapters one
        # engine on M_0 for the whole loop (policy.py)
        self.cfg.policy.keep_engine = self.cfg.policy.name == "vllm"
        self.cfg.policy.serve_adapters = self.cfg.serve_adapters
        try:
            return self._run()
        finally:
            self.cfg.policy.release()

    def _run(self) -> dict[str, Any]:
        kill = _kill_point()
        for t in range(self.cfg.rounds):
            for stage in self.stages(t):
                done = self.done()
                if (t, stage) in done:
                    continue
                if kill and kill[:2] == (t, stage) and kill[2] is None:
                    os.kill(os.getpid(), signal.SIGKILL)
                self.say(f"[loop {self.loop_id}] round {t}: {stage}")
                if stage not in SAMPLING_STAGES and not self.cfg.serve_adapters:
                    self.cfg.policy.release()  # training and judging want the memory and the cores
                try:
                    result = self.run_stage(t, stage, done)
                except BackendError as e:
                    # nothing of this stage is marked done, and what it generated is in the call cache:
                    # the same command resumes here and redoes only the missing calls
                    raise UserError(f"loop {self.loop_id} round {t} {stage}: --backend {self.cfg.policy.name} failed: "
                                    f"{e}; fix the cause and rerun the same command to resume at this stage") from e
                if result.get("trained") is False:
                    self.say(f"[loop {self.loop_id}] round {t}: {result['reason']}")
                if stage == "review" and result["decision"] not in ("released", "auto_released"):
                    self._mark(t, stage, result, status="waiting")
                    return {"loop_id": self.loop_id, "status": "waiting", "round": t, "missing": result.get("missing"),
                            "release_id": result.get("release_id")}
                self._mark(t, stage, result)
        done = self.done()
        final = done[(self.cfg.rounds - 1, "train")]["model_id"]
        from .report import loop_budget

        return {"loop_id": self.loop_id, "status": "done", "rounds": self.cfg.rounds, "model_id": final,
                "budget": loop_budget(self.corpus, done, self.cfg.rounds),
                # vLLM engines this invocation started (a resumed loop counts only its own)
                "engine_starts": self.cfg.policy.engine_starts}


def run_grpo(corpus: Corpus, rubric: str, *, prompts: str | None = None, release: str | None = None,
             base: str | None = None, out: str = "grpo-out", judge: Backend | None = None, opts: GRPOOptions | None = None,
             resume: bool = False, progress: bool = True, argv: list[str] | None = None) -> str:
    """`python -m train grpo`: GRPO on a prompt file, or on a release's pair prompts, with the
    rubric's criteria as reward functions. Returns the registered models.id."""
    if prompts:
        from generate import load_prompts

        if not Path(prompts).exists():
            raise UserError(f"--prompts {prompts}: no such file")
        loaded, _ = load_prompts(prompts)
        rows, rel = [{"messages": p.messages, "meta": p.meta} for p in loaded], None
    else:
        rel, rows = release_prompts(corpus, release)
        if not rows:
            raise UserError(f"release {rel} holds no preference pairs, so no prompt with a reward spread: "
                            "pass --prompts FILE.jsonl or another --release")
    funcs, weights, definition, close = rubric_rewards(corpus, rubric, judge)
    try:
        return train_grpo(corpus, rows, funcs, weights, {"rubric": str(rubric), **definition}, base=base, out=out,
                          release_id=rel, opts=opts, resume=resume, progress=progress, argv=argv)
    finally:
        close()


def run_loop(corpus: Corpus, prompts: str, rubric: str, rounds: int = 2, *, judge: Backend | None = None,
             progress: bool = True, **options: Any) -> dict[str, Any]:
    """Run (or resume) the loop; returns {loop_id, status 'done' | 'waiting', ...}."""
    cfg = LoopConfig(prompts=prompts, rubric=rubric, rounds=rounds, **options)
    return ModelLoop(corpus, cfg, judge=judge, progress=progress).run()
