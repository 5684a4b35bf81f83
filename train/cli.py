"""`python -m train sft|rm|dpo|eval|prompts|loop|report`: thin wrappers over plain functions."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from backends import BackendError, add_backend_args, backend_from_args
from corpus import ArgumentParser, Corpus, UserError


def _add_train_parser(sub, kind: str, help: str) -> None:  # noqa: ANN001
    p = sub.add_parser(kind, help=help)
    p.add_argument("--db", required=True, help="corpus file")
    p.add_argument("--base", default=None, help="model folder, registered model id, hub id, or 'embedded' (default)")
    p.add_argument("--out", required=True, help="folder for the trained model (and its checkpoints)")
    p.add_argument("--release", default=None, help="release id (default: the latest released one)")
    p.add_argument("--lora", action="store_true", help="train LoRA adapters (merged into the saved model)")
    p.add_argument("--max-steps", type=int, default=-1, help="stop after N optimizer steps (default: --epochs decide)")
    p.add_argument("--epochs", type=float, default=1.0, help="passes over the data (default 1)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: 2e-5 sft, 1e-5 rm, 5e-6 dpo; x10 with --lora)")
    p.add_argument("--batch-size", type=int, default=4, help="rows per step (default 4)")
    p.add_argument("--max-length", type=int, default=512, help="tokens per row (default 512)")
    p.add_argument("--save-steps", type=int, default=50, help="checkpoint every N steps (default 50)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    if kind == "dpo":
        p.add_argument("--beta", type=float, default=0.1, help="DPO beta (default 0.1)")
        p.add_argument("--ld-alpha", type=float, default=None,
                       help="LD-DPO: weight of the longer reply's tokens past the shorter one's length, in [0, 1] "
                            "(default: none, plain DPO); lower counts a pair's length gap less")
    if kind == "rm":
        p.add_argument("--eval-fraction", type=float, default=0.1,
                       help="share of the pairs held out; the summary's accuracy is measured on them (default 0.1)")
        p.add_argument("--seed", type=int, default=0, help="seed of the reward head, data order and held-out split (default 0)")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m train", description="Train on released data; run the model-trains-model loop.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    _add_train_parser(sub, "sft", "supervised fine-tuning on a release's accepted SFT rows")
    _add_train_parser(sub, "rm", "a reward model on a release's preference pairs")
    _add_train_parser(sub, "dpo", "DPO on a release's preference pairs (the base is the reference)")
    p = sub.add_parser("grpo", help="GRPO (TRL) with a rubric's criteria as reward functions")
    p.add_argument("--db", required=True, help="corpus file")
    p.add_argument("--rubric", required=True, help="rubric YAML: verifiers, a reward_model criterion, LLM criteria, weighted")
    p.add_argument("--prompts", default=None, help="prompts JSONL (meta.checks etc. reach the verifiers); default: the release's pair prompts")
    p.add_argument("--release", default=None, help="release id whose pair prompts to train on (default: the latest released)")
    p.add_argument("--base", default=None, help="model folder, registered model id, hub id, or 'embedded' (default)")
    p.add_argument("--out", required=True, help="folder for the trained model (and its checkpoints)")
    p.add_argument("--num-generations", type=int, default=4, help="replies per prompt, the group (default 4)")
    p.add_argument("--prompts-per-step", type=int, default=2, help="prompts per optimizer step (default 2)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="reply length cap (default 128)")
    p.add_argument("--temperature", type=float, default=0.8, help="rollout temperature (default 0.8)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-6; 1e-5 with --lora)")
    p.add_argument("--beta", type=float, default=0.0, help="KL weight to the starting model (default 0)")
    p.add_argument("--lora", action="store_true", help="train LoRA adapters (merged into the saved model)")
    p.add_argument("--max-steps", type=int, default=-1, help="stop after N steps (default: --epochs decide)")
    p.add_argument("--epochs", type=float, default=1.0, help="passes over the prompts (default 1)")
    p.add_argument("--save-steps", type=int, default=50, help="checkpoint every N steps (default 50)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    add_backend_args(p, prefix="judge-")  # the LLM judge for the rubric's LLM criteria

    p = sub.add_parser("prompts", help="synthesize checkable-instruction prompts from base prompts + templates")
    p.add_argument("--base", nargs="+", required=True, help="base prompt JSONL file(s): Arena-Hard, Self-Instruct, {prompt} or {messages}")
    p.add_argument("--n", type=int, required=True, help="how many prompts to make")
    p.add_argument("--db", default=None, help="corpus to add the prompts to")
    p.add_argument("--out", default=None, help="also write them as JSONL (for --prompts of generate, eval, loop)")
    p.add_argument("--templates", default=None, help="instruction templates YAML (default prompts/checkable_templates.yaml)")
    p.add_argument("--max-checks", type=int, default=2, help="instructions per prompt, at most (default 2)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    # resolve: eval's own --model (the model to measure) and --batch-size replace the backend flags' ones
    p = sub.add_parser("eval", help="held-out pass rates (trained / held-out check types) with 95%% CIs, length, win rate; rm accuracy",
                       conflict_handler="resolve")
    add_backend_args(p)  # how the model's replies are generated: hf (default), vllm, or openai
    p.add_argument("--served-model", default=None, help="openai backend: the name the server serves the base model under "
                   "(default: its folder path, as `vllm serve FOLDER` names it)")
    p.add_argument("--db", required=True, help="corpus file")
    p.add_argument("--model", required=True, help="registered model id (or a model folder)")
    p.add_argument("--prompts", default=None, help="eval prompts JSONL (checks in 'checks' or meta.checks)")
    p.add_argument("--baseline", default=None, help="model to compare with (default: the model's base)")
    p.add_argument("--pairs", default=None, help="reward model: held-out pairs JSONL {prompt, chosen, rejected} (default: corpus pairs outside its release)")
    p.add_argument("--limit", type=int, default=None, help="use the first N prompts / pairs")
    p.add_argument("--max-new-tokens", type=int, default=384,
                   help="reply length cap (default 384: above the longest reply a check needs)")
    p.add_argument("--trained-types", default=None, help="check types the model was trained on, comma-separated "
                   "(default: from the model's lineage); the rest are reported as held-out types")
    add_backend_args(p, prefix="judge-")  # name --judge-model/--judge-backend for an LLM win-rate judge

    # resolve: the loop's --batch-size is the training batch; the backend's is --gen-batch-size
    p = sub.add_parser("loop", help="generate -> judge -> filter -> review -> DPO|GRPO|SFT -> eval, K rounds; resumable",
                       conflict_handler="resolve")
    add_backend_args(p)  # rollouts and eval: hf (default), vllm, or openai (a server the user points at each round's model)
    p.add_argument("--gen-batch-size", type=int, default=16, help="sequences per forward batch for rollouts/eval (hf)")
    p.add_argument("--algo", default="dpo", choices=("dpo", "grpo", "sft", "sft+dpo"),
                   help="dpo (default), grpo (rubric as reward functions), sft (rejection sampling), "
                        "sft+dpo (= dpo --warm-start sft)")
    p.add_argument("--warm-start", default=None, choices=("sft",),
                   help="before round 0's DPO: SFT on M0's passing replies (rejection sampling)")
    p.add_argument("--warm-start-types", default=None, metavar="sparse|TYPE,...",
                   help="the warm start's SFT rows: only replies to prompts of these check types; 'sparse' = the "
                        "types whose M0 rollouts gave a released pair on under 10%% of their prompts (default: all)")
    p.add_argument("--warm-start-epochs", type=float, default=None,
                   help="passes over the warm start's rows (default: the training's --max-steps / --epochs)")
    p.add_argument("--eval-max-new-tokens", type=int, default=384,
                   help="the eval's reply cap, separate from the rollouts' (default 384)")
    p.add_argument("--eval-every-round", action="store_true", help="evaluate every M_t (default: M0 and the last)")
    p.add_argument("--no-pool-rounds", action="store_true",
                   help="train on M_t's own pairs only (default: every round's released pairs, round recorded)")
    p.add_argument("--keep-barren-types", action="store_true",
                   help="keep sampling check types that gave no pair at M0 (default: left out after round 0)")
    p.add_argument("--heldout-types", default=None, help="check types never trained on, comma-separated: held out for eval")
    p.add_argument("--prompts-per-step", type=int, default=2, help="GRPO: prompts per step (--n replies each)")
    p.add_argument("--db", required=True, help="corpus file")
    p.add_argument("--prompts", required=True, help="training prompts JSONL (e.g. from `python -m train prompts --out`)")
    p.add_argument("--rubric", required=True, help="judge rubric YAML, e.g. prompts/instructions.yaml")
    p.add_argument("--rounds", type=int, default=2, help="rounds to run (default 2); rerun with more to continue")
    p.add_argument("--base", default=None, help="M_0: model folder, registered id, or 'embedded' (default)")
    p.add_argument("--workdir", default=None, help="where round models go (default: <db>-loop/)")
    p.add_argument("--eval-prompts", default=None, help="held-out eval prompts (default: a fifth of --prompts, by id)")
    p.add_argument("--eval-limit", type=int, default=None, help="evaluate on at most N prompts")
    p.add_argument("--n", type=int, default=4, help="candidates per prompt per round (default 4)")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (default 0.8)")
    p.add_argument("--max-new-tokens", type=int, default=192, help="rollout reply cap (default 192)")
    p.add_argument("--auto-release", action="store_true", help="release without human review (recorded as auto_released)")
    p.add_argument("--threshold", type=float, default=None, help="review gate: approval lower bound needed (review's default)")
    p.add_argument("--min-reviews", type=int, default=None, help="review gate: reviewed items needed (review's default)")
    p.add_argument("--filters-config", default=None, help="filters YAML (default: the filters package's default)")
    p.add_argument("--train-rm", action="store_true", help="also train a reward model each round; it joins the next round's jury")
    p.add_argument("--lora", action="store_true", help="LoRA for the DPO (and RM) steps")
    p.add_argument("--serve-adapters", action="store_true",
                   help="with --backend vllm --lora: one engine on M0 for the whole loop, each round's model served "
                        "as its LoRA adapter (every round trains the one adapter further)")
    p.add_argument("--max-steps", type=int, default=-1, help="DPO steps per round (default: --epochs decide)")
    p.add_argument("--epochs", type=float, default=1.0, help="DPO epochs per round (default 1)")
    p.add_argument("--batch-size", type=int, default=4, help="DPO batch size (default 4)")
    p.add_argument("--lr", type=float, default=None, help="DPO learning rate (default 5e-6; 5e-5 with --lora)")
    p.add_argument("--beta", type=float, default=None, help="DPO beta (default 0.1); GRPO KL weight (default 0)")
    p.add_argument("--ld-alpha", type=float, default=None,
                   help="DPO rounds: LD-DPO weight of the longer reply's tokens past the shorter one's length, in [0, 1] "
                        "(default: none, plain DPO)")
    p.add_argument("--max-length", type=int, default=512, help="tokens per training row (default 512)")
    p.add_argument("--save-steps", type=int, default=50, help="checkpoint every N training steps (default 50)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    add_backend_args(p, prefix="judge-")  # name --judge-model/--judge-backend for an LLM win-rate judge

    p = sub.add_parser("report", help="per-round table and PNG: win rate vs M0, pass rates, length, reward, agreement")
    p.add_argument("--db", required=True, help="corpus file")
    p.add_argument("--loop", default=None, help="loop id (default: the latest loop)")
    p.add_argument("--plot", default=None, help="write the PNG here, e.g. rounds.png")
    return parser


def check_args(args) -> None:  # noqa: ANN001
    """Flags checked before anything opens the corpus: a refused command writes no row (not even
    the base model's registry row) and trains no step."""
    steps = getattr(args, "max_steps", -1)
    if steps is not None and steps != -1 and steps < 1:
        raise UserError(f"--max-steps {steps}: give a positive number of steps, or leave it out to let --epochs decide")
    if getattr(args, "save_steps", 1) < 1:
        raise UserError(f"--save-steps {args.save_steps}: give a positive number of steps, e.g. 50")
    out = getattr(args, "out", None)
    if args.cmd in ("sft", "rm", "dpo", "grpo") and out is not None:
        path = Path(out).expanduser()
        if path.exists() and not path.is_dir():
            raise UserError(f"--out {out}: exists and is not a folder; give a new folder for the trained model")
        if not path.exists() and path.parent.exists() and not path.parent.is_dir():
            raise UserError(f"--out {out}: {path.parent} is not a folder")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    check_args(args)
    if args.cmd in ("sft", "rm", "dpo"):
        return _train(args, argv)
    if args.cmd == "prompts":
        return _prompts(args, argv)
    if args.cmd == "grpo":
        return _grpo(args, argv)
    if args.cmd == "eval":
        return _eval(args, argv)
    if args.cmd == "loop":
        return _loop(args, argv)
    if args.cmd == "report":
        return _report(args)
    raise AssertionError(args.cmd)


def _train(args, argv: list[str]) -> int:  # noqa: ANN001
    from rich.console import Console
    from rich.table import Table

    from .registry import get_model
    from .trainers import train_model

    corpus = Corpus(args.db, create=False)
    model_id = train_model(
        corpus, args.cmd, base=args.base, out=args.out, release=args.release, lora=args.lora,
        max_steps=args.max_steps, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
        max_length=args.max_length, beta=getattr(args, "beta", 0.1), save_steps=args.save_steps,
        resume=args.resume, **({"ld_alpha": args.ld_alpha} if args.cmd == "dpo" else {}), argv=["train", *argv],
        **({"eval_fraction": args.eval_fraction, "seed": args.seed} if args.cmd == "rm" else {}),
    )
    row = get_model(corpus, model_id)
    assert row is not None
    import json

    metrics = json.loads(row["metrics"]) if isinstance(row["metrics"], str) else row["metrics"]
    table = Table(title=f"train {args.cmd}: {model_id}")
    table.add_column("field")
    table.add_column("value")
    for k in ("parent_id", "release_id", "path"):
        table.add_row(k, str(row[k]))
    for k in ("steps", "final_loss", "train_runtime", "train_samples_per_second", "accuracy", "rewards/accuracies"):
        if k in metrics:
            v = metrics[k]
            table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    if "heldout_accuracy" in metrics:  # rm: accuracy above is on held-out pairs; say so, with its interval
        table.add_row("held-out accuracy (95%)", f"{metrics['heldout_accuracy']:.3f} ({metrics['heldout_lower']:.3f}-"
                      f"{metrics['heldout_upper']:.3f}), {metrics['heldout_pairs']} pairs")
        table.add_row("longer answer wins (same pairs)", f"{metrics['heldout_longer_wins']:.3f}")
    Console().print(table)
    print(f"model {model_id} saved to {row['path']}")
    return 0


def _grpo(args, argv: list[str]) -> int:  # noqa: ANN001
    from .grpo import GRPOOptions
    from .loop import run_grpo
    from .registry import get_model

    opts = GRPOOptions(num_generations=args.num_generations, prompts_per_step=args.prompts_per_step,
                       max_completion_length=args.max_new_tokens, temperature=args.temperature, lr=args.lr,
                       beta=args.beta, max_steps=args.max_steps, epochs=args.epochs, lora=args.lora,
                       save_steps=args.save_steps)
    corpus = Corpus(args.db, create=False)
    model_id = run_grpo(corpus, args.rubric, prompts=args.prompts, release=args.release, base=args.base, out=args.out,
                        judge=_judge_if_named(args, argv), opts=opts, resume=args.resume, argv=["train", *argv])
    row = get_model(corpus, model_id) or {}
    import json

    m = json.loads(row["metrics"]) if isinstance(row.get("metrics"), str) else (row.get("metrics") or {})
    print(f"grpo {model_id}: {m.get('steps')} steps, reward {m.get('first_reward', float('nan')):.3f} -> "
          f"{m.get('final_reward', float('nan')):.3f}, {m.get('rollout_tokens')} rollout tokens; saved to {row.get('path')}")
    return 0


def _policy(args) -> "PolicyBackend":  # noqa: ANN001, F821
    from .policy import PolicyBackend

    # eval: --model is the model to measure, so M0's served name is --served-model
    served = getattr(args, "served_model", None) if hasattr(args, "served_model") else args.model
    return PolicyBackend(name=args.backend, served_model=served if args.backend == "openai" else None,
                         base_url=args.base_url, api_key_env=args.api_key_env, concurrency=args.concurrency,
                         batch_size=getattr(args, "gen_batch_size", args.batch_size), device=args.device)


def _prompts(args, argv: list[str]) -> int:  # noqa: ANN001
    from rich.console import Console
    from rich.table import Table

    from .synth import DEFAULT_TEMPLATES, run_prompts

    corpus = Corpus(args.db) if args.db else None
    summary = run_prompts(corpus, args.base, args.n, args.templates or DEFAULT_TEMPLATES, seed=args.seed,
                          max_checks=args.max_checks, out=args.out, argv=["train", *argv])
    table = Table(title=f"{summary['prompts']} prompts, {summary['written']} new")
    table.add_column("check")
    table.add_column("prompts", justify="right")
    for k, v in sorted(summary["checks_by_type"].items()):
        table.add_row(k, str(v))
    Console().print(table)
    if summary["out"]:
        print(f"wrote {summary['out']}")
    return 0


def _eval(args, argv: list[str]) -> int:  # noqa: ANN001
    from rich.console import Console
    from rich.table import Table

    from .evaluate import run_eval

    corpus = Corpus(args.db, create=False)
    # an LLM win-rate judge only when named: the default model is the usual label judge
    judge = _judge_if_named(args, argv) if args.prompts else None
    types = {t.strip() for t in args.trained_types.split(",") if t.strip()} if args.trained_types else None
    m = run_eval(corpus, args.model, args.prompts, baseline=args.baseline, judge=judge, pairs=args.pairs,
                 limit=args.limit, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                 argv=["train", *argv], policy=_policy(args), trained_types=types)
    table = Table(title=f"eval {m['model_id']} vs {m['baseline_id']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in m.items():
        if k in ("model_id", "baseline_id", "per_prompt"):
            continue
        if isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v):
            v = f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"
        elif isinstance(v, dict):
            v = ", ".join(f"{a} {b:.2f}" for a, b in v.items())
        table.add_row(k, f"{v:.3f}" if isinstance(v, float) else str(v))
    Console().print(table)
    return 0


def _judge_if_named(args, argv: list[str]):  # noqa: ANN001, ANN202
    if not any(a.startswith(("--judge-model", "--judge-backend")) for a in argv):
        return None
    try:
        return backend_from_args(args, prefix="judge-")
    except BackendError as e:
        raise UserError(str(e)) from e


def _loop(args, argv: list[str]) -> int:  # noqa: ANN001
    from rich.console import Console

    from .loop import LoopConfig, ModelLoop
    from .report import budget_table, loop_rounds, report_table

    if getattr(args, "judge_no_wait", False):  # a round cannot go on without the judgments it asked for
        raise UserError("--judge-no-wait: the loop needs its judgments to go on; drop it (--judge-batch waits for them)")
    # every setting is checked before the corpus file is opened: a refused loop leaves no new file behind
    cfg = LoopConfig(
        prompts=args.prompts, rubric=args.rubric, rounds=args.rounds,
        base=args.base, workdir=args.workdir, eval_prompts=args.eval_prompts, eval_limit=args.eval_limit,
        n=args.n, temperature=args.temperature, max_new_tokens=args.max_new_tokens, auto_release=args.auto_release,
        threshold=args.threshold, min_reviews=args.min_reviews, filters_config=args.filters_config,
        train_rm=args.train_rm, lora=args.lora, max_steps=args.max_steps, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, beta=args.beta, ld_alpha=args.ld_alpha, max_length=args.max_length, save_steps=args.save_steps,
        seed=args.seed, algo=args.algo, prompts_per_step=args.prompts_per_step, policy=_policy(args), warm_start=args.warm_start,
        warm_start_types=args.warm_start_types, warm_start_epochs=args.warm_start_epochs,
        eval_max_new_tokens=args.eval_max_new_tokens, eval_every_round=args.eval_every_round,
        pool_rounds=not args.no_pool_rounds, drop_barren_types=not args.keep_barren_types,
        serve_adapters=args.serve_adapters,
        heldout_types=[t.strip() for t in args.heldout_types.split(",") if t.strip()] if args.heldout_types else None,
    )
    judge = _judge_if_named(args, argv)
    corpus = Corpus(args.db)
    out = ModelLoop(corpus, cfg, judge=judge).run()
    console = Console()
    loop_id, rows = loop_rounds(corpus, out["loop_id"])
    if rows:
        console.print(report_table(loop_id, rows))
    if out["status"] == "waiting":
        missing = "; ".join(out.get("missing") or [])
        print(f"loop {loop_id} waits for reviewers in round {out['round']}: {missing}. Review with "
              f"`python -m review ... --db {args.db}`, then rerun this command (or add --auto-release).")
        return 3
    if out.get("budget"):
        console.print(budget_table(out["budget"]))
    starts = f", {out['engine_starts']} vLLM engine start(s)" if out.get("engine_starts") else ""
    print(f"loop {loop_id} done: {out['rounds']} rounds, final model {out['model_id']}{starts}")
    return 0


def _report(args) -> int:  # noqa: ANN001
    from rich.console import Console

    from .report import loop_rounds, plot_rounds, report_table

    corpus = Corpus(args.db, create=False)
    loop_id, rows = loop_rounds(corpus, args.loop)
    if not rows:
        raise UserError(f"loop {loop_id} has no evaluated round yet: run `python -m train loop ...` on")
    Console().print(report_table(loop_id, rows))
    if args.plot:
        plot_rounds(rows, args.plot)
        print(f"wrote {args.plot}")
    return 0


def cli_parsers() -> dict[str, ArgumentParser]:
    """The parser of `python -m train`, for the generated CLI reference."""
    return {"python -m train": build_parser()}
