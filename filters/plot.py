"""A PNG of what the latest filters run did: where the candidates' scores fall against the SFT
threshold, how wide the pair margins are, and which filters took what."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from corpus import Corpus
from corpus.errors import check_figure_out


def plot_run(corpus: Corpus, summary: dict[str, Any], out: str | Path, sft_min: float | None, min_margin: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = check_figure_out("--plot", out)
    scores = [r["s"] for r in corpus.query("SELECT avg(score_norm) AS s FROM generation_scores GROUP BY generation_id") if r["s"] is not None]
    sft = [r["score_norm"] for r in corpus.query("SELECT score_norm FROM accepted_sft") if r["score_norm"] is not None]
    margins = [r["margin"] for r in corpus.query("SELECT margin FROM preference_pairs")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    bins = [i / 20 for i in range(21)]
    ax.hist(scores, bins=bins, color="#bbbbbb", label=f"all scored candidates ({len(scores)})")
    ax.hist(sft, bins=bins, color="#2b8cbe", label=f"accepted_sft ({len(sft)})")
    if sft_min is not None:
        ax.axvline(sft_min, color="k", ls="--", lw=1, label=f"sft.min_score {sft_min:g}")
    ax.set(title="candidate scores (score_norm)", xlabel="score", ylabel="candidates")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.hist(margins, bins=bins, color="#31a354")
    ax.axvline(min_margin, color="k", ls="--", lw=1, label=f"pairs.min_margin {min_margin:g}")
    ax.set(title=f"preference pair margins ({len(margins)} pairs, {summary['method']})", xlabel="margin", ylabel="pairs")
    ax.legend(fontsize=8)
    ax = axes[2]
    labels, counts = [], []
    for s in summary["steps"]:
        for reason, n in s["failed"].items():
            labels.append(f"{s['stage'][0]}:{s['filter']} {reason}"[:40])
            counts.append(n)
    ax.barh(labels[::-1] or ["(nothing failed)"], counts[::-1] or [0], color="#de2d26")
    ax.set(title="items failed per filter and reason", xlabel="items")
    ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(f"filters run {summary['run_id']}: {summary['candidates_kept']}/{summary['candidates']} candidates kept")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def config_of_run(corpus: Corpus, run_id: str) -> dict[str, Any]:
    rows = corpus.query("SELECT config FROM runs WHERE id = ?", [run_id])
    return json.loads(rows[0]["config"]) if rows and rows[0]["config"] else {}
