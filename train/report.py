"""`python -m train report`: the loop's rounds side by side, as a table and a PNG.

One row per model M_t of a loop: its win rate against M_0, verifier pass rates, mean reply
length (drift), the mean judge reward of the candidates it generated, and how far the judges
agreed with the human reviewers when its data was released.
"""

from __future__ import annotations

import json
from typing import Any

from corpus import Corpus, UserError


def _json(v: Any) -> dict[str, Any]:
    return json.loads(v) if isinstance(v, str) else (v or {})


def loop_rounds(corpus: Corpus, loop_id: str | None = None) -> tuple[str, list[dict[str, Any]]]:
    """(loop_id, rows): row t describes M_t; rows come from loop_stages results."""
    if "loops" not in corpus.tables():
        raise UserError("no loop in this corpus: run `python -m train loop ...` first")
    if loop_id is None:
        rows = corpus.query("SELECT id FROM loops ORDER BY created_at DESC LIMIT 1")
        if not rows:
            raise UserError("no loop in this corpus: run `python -m train loop ...` first")
        loop_id = rows[0]["id"]
    elif not corpus.query("SELECT 1 FROM loops WHERE id = ?", [loop_id]):
        raise UserError(f"--loop {loop_id}: no such loop; see `python -m corpus sql \"SELECT * FROM loops\"`")
    stages = {(r["round"], r["stage"]): _json(r["result"]) for r in corpus.query(
        "SELECT round, stage, result FROM loop_stages WHERE loop_id = ? AND status = 'done'", [loop_id])}
    out = []
    t = 0
    while True:
        # M_0 is measured by the 'eval_base' stage of round 0; M_t (t > 0) by round t-1's 'eval'
        ev = stages.get((0, "eval_base")) if t == 0 else stages.get((t - 1, "eval"))
        if ev is None:
            break
        judge = stages.get((t, "judge"), {})
        review = stages.get((t, "review"), {})
        out.append({
            "round": t,
            "model_id": ev.get("model_id"),
            "win_rate_vs_m0": 0.5 if t == 0 else ev.get("win_rate"),
            "pass_rate": ev.get("pass_rate"),
            "all_pass_rate": ev.get("all_pass_rate"),
            "mean_words": ev.get("mean_words"),
            "reward": judge.get("mean_score_norm"),
            "judge_agreement": review.get("judge_human_agreement"),
            "release_id": review.get("release_id"),
            "pass_rate_by_check": ev.get("pass_rate_by_check") or {},
            # [mean, low, high]: 95% bootstrap intervals over prompts (train/heldout.py)
            "trained_pass": ev.get("trained_pass"), "heldout_pass": ev.get("heldout_pass"), "words": ev.get("words"),
            "trained_delta": ev.get("trained_pass_delta"), "heldout_delta": ev.get("heldout_pass_delta"),
            "trained_n": ev.get("trained_n"), "heldout_n": ev.get("heldout_n"),
            "skipped": ev.get("skipped"),
            "algorithm": stages.get((t - 1, "train"), {}).get("algorithm") if t else "base",
        })
        t += 1
    return loop_id, out


def plot_rounds(rows: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["round"] for r in rows]
    fig, ax = plt.subplots(2, 2, figsize=(10, 7))

    def line(a, key, label):  # noqa: ANN001
        ys = [r[key] for r in rows]
        if any(y is not None for y in ys):
            a.plot(xs, [float("nan") if y is None else y for y in ys], marker="o", label=label)

    def bars(a, key, label):  # noqa: ANN001
        pts = [(r["round"], r[key]) for r in rows if r.get(key)]
        if pts:
            x = [p[0] for p in pts]
            m = [p[1][0] for p in pts]
            err = [[p[1][0] - p[1][1] for p in pts], [p[1][2] - p[1][0] for p in pts]]
            a.errorbar(x, m, yerr=err, marker="o", capsize=4, label=label)

    bars(ax[0][0], "trained_pass", "trained check types, unseen prompts")
    bars(ax[0][0], "heldout_pass", "held-out check types")
    line(ax[0][0], "win_rate_vs_m0", "verifier win rate vs M0")
    ax[0][0].set_title("held-out prompts passed (all checks), 95% CI")
    ax[0][0].set_ylim(0, 1)
    ax[0][0].legend(fontsize=7)
    line(ax[0][1], "pass_rate", "checks passed (mean)")
    line(ax[0][1], "all_pass_rate", "all checks passed")
    for ctype in sorted({k for r in rows for k in r["pass_rate_by_check"]}):
        ax[0][1].plot(xs, [r["pass_rate_by_check"].get(ctype, float("nan")) for r in rows], lw=0.8, alpha=0.6, label=ctype)
    ax[0][1].set_title("verifier pass rates")
    ax[0][1].set_ylim(0, 1)
    ax[0][1].legend(fontsize=6)
    if any(r.get("words") for r in rows):
        bars(ax[1][0], "words", "mean words")
    else:
        line(ax[1][0], "mean_words", "mean words")
    ax[1][0].set_title("mean reply length (words), 95% CI")
    line(ax[1][1], "reward", "judge reward of its candidates")
    line(ax[1][1], "judge_agreement", "judge-human agreement")
    ax[1][1].set_title("reward and judge agreement")
    ax[1][1].set_ylim(0, 1)
    ax[1][1].legend(fontsize=7)
    for a in ax.flat:
        a.set_xlabel("round (model M_t)")
        a.set_xticks(xs)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report_table(loop_id: str, rows: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    t = Table(title=f"loop {loop_id}")
    for c in ("round", "model", "algo", "trained types [95% CI]", "vs M0", "held-out types [95% CI]", "vs M0",
              "mean words", "win vs M0", "reward", "judge-human agr.", "note"):
        t.add_column(c, justify="right")

    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    def ci(v: Any, signed: bool = False) -> str:
        if not v:
            return "-"
        s = "+" if signed else ""
        return f"{v[0]:{s}.3f} [{v[1]:{s}.2f}, {v[2]:{s}.2f}]"

    for r in rows:
        words = f"{r['words'][0]:.1f}" if r.get("words") else f(r["mean_words"])
        note = "not trained: " + r["skipped"][:40] if r.get("skipped") else ""
        t.add_row(str(r["round"]), r["model_id"] or "-", r.get("algorithm") or "-", ci(r["trained_pass"]),
                  ci(r["trained_delta"], True) if r["round"] else "", ci(r["heldout_pass"]),
                  ci(r["heldout_delta"], True) if r["round"] else "", words, f(r["win_rate_vs_m0"]), f(r["reward"]),
                  f(r["judge_agreement"]), note)
    return t
