"""`python -m judge eval` from the shell: the parser, the table and the PNG."""

from __future__ import annotations

import json
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table

from backends import BackendError, add_backend_args, backend_from_args, backend_limits
from corpus import ArgumentParser, Corpus, UserError
from corpus.errors import report_incomplete


def eval_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m judge eval", description="Measure a rubric's judges against human preference "
                       "labels: accuracy, position flips, first-slot wins, length bias, per category, 95% intervals.")
    p.add_argument("--rubric", required=True, help="rubric YAML whose judges to measure, e.g. prompts/pairwise.yaml")
    p.add_argument("--db", required=True, help="the corpus DuckDB file (created if missing when --labels is given)")
    p.add_argument("--labels", default=None, help="labelled pairs file (any `corpus import-pairs` shape, JudgeBench "
                   "too); imported first. Default: the corpus's human pairs")
    p.add_argument("--source", default=None, help="only human pairs of this source (the import's --source / file stem)")
    p.add_argument("--heldout-of", default=None, help="the pairs a reward model (models.id) held out of its training")
    p.add_argument("--split", default=None, help="the split of a saved DatasetDict given to --labels")
    p.add_argument("--limit", type=int, default=None, help="measure on the first N pairs (by pair id)")
    p.add_argument("--plot", default=None, help="write the figures as a PNG here")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_backend_args(p, prefix="judge-", default=None)  # type: ignore[arg-type]
    return p


def eval_main(argv: Sequence[str]) -> int:
    from .evaluate import run_judge_eval

    argv = list(argv)
    args = eval_parser().parse_args(argv)
    if sum(x is not None for x in (args.labels, args.heldout_of)) > 1:
        raise UserError("--labels and --heldout-of name different labelled sets; give one")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit {args.limit}: give a positive number of pairs")
    corpus = Corpus(args.db, create=bool(args.labels))
    backend = None
    try:
        # the rubric's own judges get --judge-batch-size, --judge-timeout, ... too
        limits = {**backend_limits(args, prefix="judge-"), "batch_size": args.judge_batch_size, "device": args.judge_device}
        if args.judge_backend:
            backend = backend_from_args(args, prefix="judge-")
    except BackendError as e:
        raise UserError(str(e)) from None
    report = run_judge_eval(corpus, args.rubric, labels=args.labels, source=args.source, heldout_of=args.heldout_of,
                            split=args.split, limit=args.limit, backend=backend, seed=args.seed, plot=args.plot, limits=limits,
                            progress=not args.quiet and not args.json, argv=["judge", "eval", *argv])
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_eval(report)
    run = report.get("judge_run") or {}
    transient = int(run.get("transient") or 0)  # figures over the pairs judged; the rest retried next run
    return report_incomplete("judge eval", transient, int(run.get("judged") or 0) + transient, "judge calls")


def _ci(m: dict[str, Any] | None) -> str:
    if not m or m.get("value") is None:
        return "-"
    return f"{m['value']:.3f} ({m['lower']:.2f}-{m['upper']:.2f})"


def print_eval(report: dict[str, Any]) -> None:
    console = Console(width=max(Console().width, 140))
    t = Table(title=f"judge eval: {report['rubric']} v{report['rubric_version']} ({report['mode']}) on "
                    f"{report['pairs']} pairs of {report['labels']}; 95% bootstrap intervals")
    cols = [("accuracy", "accuracy (tie = 1/2)"), ("accuracy_no_ties", "accuracy, no ties"),
            ("position_flip_rate", "flip rate"), ("first_slot_win_rate", "first slot wins"),
            ("longer_wins_judge", "longer wins: judge"), ("length_bias", "length bias")]
    t.add_column("judge", no_wrap=True)
    for _, label in cols:
        t.add_column(label, justify="right")
    t.add_column("ties / no verdict", justify="right")
    for j in report["judges"]:
        t.add_row(j["judge"], *[_ci(j.get(k)) for k, _ in cols], f"{j['ties']} / {j['no_verdict']}")
    console.print(t)
    labels = next((j for j in report["judges"] if j["kind"] == "baseline"), None)
    if labels:
        console.print(f"under the labels the longer answer wins {_ci(labels['longer_wins_labels'])}")
    main = next((j for j in report["judges"] if j["kind"] == "jury"), None) or report["judges"][0]
    if len(main["by_category"]) > 1:
        c = Table(title=f"accuracy per category: {main['judge']}")
        c.add_column("category")
        c.add_column("pairs", justify="right")
        c.add_column("accuracy (95%)", justify="right")
        for cat, m in main["by_category"].items():
            c.add_row(cat, str(m["n"]), _ci(m))
        console.print(c)
    if report.get("plot"):
        console.print(f"wrote {report['plot']}")


def plot_eval(report: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("accuracy", "accuracy (tie = 1/2)", (0, 1), 0.5), ("accuracy_no_ties", "accuracy, no ties", (0, 1), 0.5),
               ("position_flip_rate", "position flip rate", (0, 1), None),
               ("first_slot_win_rate", "first slot wins", (0, 1), 0.5), ("length_bias", "length bias", (-1, 1), 0.0)]
    judges = report["judges"]
    labels = [j["judge"] for j in judges]
    # pointwise judges see one answer at a time: no order to flip, no slot to prefer
    metrics = [m for m in metrics if any((j.get(m[0]) or {}).get("value") is not None for j in judges)] or metrics[:1]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 0.5 * len(judges) + 2), squeeze=False)
    for ax, (key, title, lim, ref) in zip(axes[0], metrics):
        for y, j in enumerate(judges):
            m = j.get(key) or {}
            v = m.get("value")
            if v is None:
                ax.text(lim[0], y, " n/a", va="center")
                continue
            color = "#888" if j["kind"] == "baseline" else "#37a" if j["kind"] == "jury" else "#3a7"
            origin = 0.0 if lim[0] < 0 else lim[0]
            ax.barh(y, v - origin, left=origin, color=color)
            ax.errorbar(v, y, xerr=[[v - m["lower"]], [m["upper"] - v]], fmt="none", ecolor="black", capsize=3)
            ax.text(v, y, f" {v:.2f}", va="bottom", fontsize=8)
        ax.set_yticks(range(len(judges)))
        ax.set_yticklabels(labels if ax is axes[0][0] else [""] * len(judges))
        ax.set_xlim(*lim)
        ax.set_title(title, fontsize=10)
        if ref is not None:
            ax.axvline(ref, color="red", lw=0.8, ls="--")
    fig.suptitle(f"judge eval: {report['rubric']} v{report['rubric_version']} on {report['pairs']} pairs "
                 f"({report['labels']}); bars: 95% bootstrap intervals", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
