"""Judge-vs-human agreement and the approval rate, as a table and optionally a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from corpus import Corpus, UserError
from corpus.errors import check_figure_out

from .stats import wilson_interval


def set_score_threshold(corpus: Corpus, threshold: float) -> None:
    """The cut that binarizes judge scores in judge_human_agreement (what the judge reads)."""
    if not 0 <= threshold <= 1:
        raise UserError(f"--score-threshold {threshold}: must be between 0 and 1 (scores are normalized)")
    corpus.execute("UPDATE review_settings SET value = ? WHERE key = 'score_threshold'", [threshold])


def agreement_report(corpus: Corpus, confidence: float = 0.95) -> dict[str, Any]:
    with corpus.read_session():  # a report reads: DuckDB refuses writes here
        agreement = corpus.query(
            "SELECT * FROM judge_human_agreement ORDER BY judge, rubric, rubric_version, criterion"
        )
        q = corpus.query(
            "SELECT count(*) AS items, count(*) FILTER (WHERE n_reviews > 0) AS reviewed, "
            "count(*) FILTER (WHERE status = 'approved') AS approved, "
            "coalesce(sum(n_reviews), 0) AS verdicts FROM review_queue"
        )[0]
        threshold = corpus.query("SELECT value FROM review_settings WHERE key = 'score_threshold'")[0]["value"]
        by_reviewer = corpus.query(
            "SELECT reviewer, count(*) AS verdicts, count(*) FILTER (WHERE verdict = 'approve') AS approve, "
            "count(*) FILTER (WHERE verdict = 'reject') AS reject, count(*) FILTER (WHERE verdict = 'edit') AS edit "
            "FROM review_verdicts GROUP BY reviewer ORDER BY reviewer"
        )
    reviewed, approved = int(q["reviewed"]), int(q["approved"])
    lo, hi = wilson_interval(approved, reviewed, confidence)
    return {
        "agreement": agreement, "score_threshold": threshold, "queue_items": int(q["items"]),
        "reviewed": reviewed, "approved": approved, "verdicts": int(q["verdicts"]),
        "rate": approved / reviewed if reviewed else None, "lower": lo, "upper": hi,
        "confidence": confidence, "reviewers": by_reviewer,
    }


def print_report(rep: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title=f"judge vs human (judge score >= {rep['score_threshold']:g} counts as approve)")
    for c in ("judge", "rubric", "version", "criterion", "n", "agreement", "kappa"):
        t.add_column(c, justify="right" if c in ("n", "agreement", "kappa") else "left")
    for r in rep["agreement"]:
        t.add_row(
            r["judge"], r["rubric"], str(r["rubric_version"] or "-"), r["criterion"], str(r["n"]),
            f"{r['agreement']:.3f}", "n/a" if r["kappa"] is None else f"{r['kappa']:.3f}",
        )
    if not rep["agreement"]:
        t.add_row("(no reviewed item has judgments yet)", "", "", "", "", "", "")
    console.print(t)
    s = Table(title="approval rate of the reviewed sample")
    for c in ("queued", "reviewed", "approved", "rate", f"{rep['confidence']:.0%} Wilson CI", "verdicts"):
        s.add_column(c, justify="right")
    rate = "n/a" if rep["rate"] is None else f"{rep['rate']:.3f}"
    s.add_row(str(rep["queue_items"]), str(rep["reviewed"]), str(rep["approved"]), rate,
              f"[{rep['lower']:.3f}, {rep['upper']:.3f}]", str(rep["verdicts"]))
    console.print(s)


def plot_report(rep: dict[str, Any], out: Path) -> Path:
    """Kappa and raw agreement per judge/criterion beside the approval rate with its interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = check_figure_out("--plot", out)
    rows = rep["agreement"]
    labels = [f"{r['judge']}\n{r['criterion']} ({r['rubric_version'] or '-'})\nn={r['n']}" for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(7, 1.4 * len(rows) + 4), 4.5),
                                   gridspec_kw={"width_ratios": [max(1, len(rows)), 1]})
    x = range(len(rows))
    ax1.bar([i - 0.2 for i in x], [r["kappa"] if r["kappa"] is not None else 0 for r in rows], 0.4, label="Cohen's kappa")
    ax1.bar([i + 0.2 for i in x], [r["agreement"] for r in rows], 0.4, label="raw agreement")
    ax1.set_xticks(list(x), labels, fontsize=7)
    ax1.set_ylim(-1, 1)
    ax1.axhline(0, color="grey", lw=0.8)
    ax1.set_title(f"judge vs human (judge score >= {rep['score_threshold']:g} = approve)", fontsize=10)
    ax1.legend(loc="lower left", fontsize=8)
    if rep["rate"] is not None:
        ax2.bar([0], [rep["rate"]], color="tab:green")
        ax2.errorbar([0], [rep["rate"]], yerr=[[rep["rate"] - rep["lower"]], [rep["upper"] - rep["rate"]]],
                     color="black", capsize=8)
    ax2.set_xticks([0], [f"{rep['approved']}/{rep['reviewed']} approved"])
    ax2.set_ylim(0, 1)
    ax2.set_title(f"approval rate\n({rep['confidence']:.0%} Wilson CI)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
