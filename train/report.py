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
            # share of eval replies that ran to the eval cap, and the mean length of the others
            "cut_rate": ev.get("cut_rate"), "finished_words": ev.get("finished_words"),
            "looping_rate": ev.get("looping_rate"),  # replies in a degenerate loop (the filters' repetition check)
            "skipped": ev.get("skipped"), "not_evaluated": ev.get("not_evaluated"),
            "n_by_check": ev.get("n_by_check") or {},
            # the sampling budget spent before M_t existed: rollout tokens of rounds 0..t-1
            "tokens_spent": sum(stages.get((k, "generate"), {}).get("tokens", 0) or 0 for k in range(t)),
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
    # the sampling budget under each model, so the panels read as pass rate against compute
    labels = [f"M{r['round']}\n{r.get('tokens_spent', 0) / 1000:.0f}k tok" for r in rows]
    for a in ax.flat:
        a.set_xlabel("model M_t and the rollout tokens spent before it")
        a.set_xticks(xs, labels, fontsize=7)
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


def round_budget(corpus: Corpus, done: dict[tuple[int, str], dict[str, Any]], t: int) -> dict[str, Any]:
    """Where round t's sampling budget went: completion tokens on prompts whose samples gave a
    released pair vs none, the share of replies cut at the token cap, and both per check type.
    A prompt 'gave a pair' when a released pair holds one of this round's samples on it."""
    model = done[(t, "generate")]["model"]
    rel = (done.get((t, "review")) or {}).get("release_id")
    gens = corpus.query(
        "SELECT g.prompt_id, g.completion_tokens AS tok, g.finish_reason AS fin, p.meta FROM generations g "
        "JOIN prompts p ON p.id = g.prompt_id WHERE g.model = ? AND g.provenance = 'model'", [model])
    paired = {r["prompt_id"] for r in corpus.query(
        "SELECT DISTINCT pr.prompt_id FROM pairs pr JOIN release_items ri ON ri.item_id = pr.id AND ri.kind = 'pair' "
        "JOIN generations c ON c.id = pr.chosen_id JOIN generations r ON r.id = pr.rejected_id "
        "WHERE ri.release_id = ? AND (c.model = ? OR r.model = ?)", [rel, model, model])} if rel else set()

    def tally(rows: list[dict[str, Any]]) -> dict[str, Any]:
        tok = sum(r["tok"] or 0 for r in rows)
        with_pair = sum(r["tok"] or 0 for r in rows if r["prompt_id"] in paired)
        prompts = {r["prompt_id"] for r in rows}
        return {"prompts": len(prompts), "prompts_with_pair": len(prompts & paired), "tokens": tok,
                "tokens_on_prompts_with_pair": with_pair, "tokens_on_prompts_without_pair": tok - with_pair,
                "share_without_pair": round((tok - with_pair) / tok, 3) if tok else None,
                "truncated_share": round(sum(r["fin"] == "length" for r in rows) / len(rows), 3) if rows else None}

    by_type: dict[str, list[dict[str, Any]]] = {}
    for r in gens:
        for c in _json(r["meta"]).get("checks") or [{"type": "(no check)"}]:
            by_type.setdefault(c["type"], []).append(r)
    return {**tally(gens), "per_type": {k: tally(v) for k, v in sorted(by_type.items())},
            "left_out_types": done[(t, "generate")].get("left_out_types") or []}


def loop_budget(corpus: Corpus, done: dict[tuple[int, str], dict[str, Any]], rounds: int) -> list[dict[str, Any]]:
    return [{"round": t, **round_budget(corpus, done, t),
             "next_left_out": (done.get((t + 1, "generate")) or {}).get("left_out_types") or []}
            for t in range(rounds) if (t, "generate") in done]


def budget_table(budget: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    t = Table(title="sampling budget: completion tokens per round and check type")
    for c in ("round", "check type", "prompts", "with a pair", "tokens", "on prompts without a pair", "cut at the cap"):
        t.add_column(c, justify="right")

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.0f}%"

    for b in budget:
        for name, v in [("all", b), *b["per_type"].items()]:
            t.add_row(str(b["round"]), name + (" (left out next)" if name in b.get("next_left_out", []) else ""),
                      str(v["prompts"]), str(v["prompts_with_pair"]), str(v["tokens"]), pct(v["share_without_pair"]),
                      pct(v["truncated_share"]))
    return t


def type_table(rows: list[dict[str, Any]], trained: set[str]) -> list[dict[str, Any]]:
    """Per check type: M_0 and the last evaluated model's pass rate on the eval prompts."""
    ev = [r for r in rows if r.get("trained_pass") is not None]
    if not ev:
        return []
    first, last = ev[0], ev[-1]
    out = []
    for ctype in sorted(set(first["pass_rate_by_check"]) | set(last["pass_rate_by_check"])):
        out.append({"type": ctype, "group": "trained" if ctype in trained else "held-out",
                    "n": last["n_by_check"].get(ctype), "m0": first["pass_rate_by_check"].get(ctype),
                    "last": last["pass_rate_by_check"].get(ctype), "last_round": last["round"]})
    return out
