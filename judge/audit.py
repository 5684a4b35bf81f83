"""`judge audit`: how far can this rubric's judges be trusted? One row per judge and rubric version.

- position flip rate: share of pairwise verdicts that changed when the order was swapped, and
  how often the slot shown first won (0.5 is unbiased);
- score-length correlation: Spearman's rho between a judge's normalised score and the answer's
  length in words (a judge that rewards verbosity shows a large positive rho);
- self-preference: mean score the judge gives answers from its own model family minus the mean
  it gives other families (pairwise: the own family's win rate in mixed pairs minus 0.5);
- parse failure rate: judgments stored with parse_status='failed';
- jury agreement: Krippendorff's alpha (interval) over items, between judges (or samples).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from typing import Any

from corpus import Corpus

from .jury import krippendorff_alpha
from .rubric import load_rubric


def model_family(model: str | None) -> str | None:
    """'hf:SmolLM2-135M-Instruct' -> 'smollm'; 'meta-llama/Llama-3.1-8B' -> 'llama'."""
    if not model:
        return None
    name = model.split(":", 1)[-1].rstrip("/").split("/")[-1].lower()
    m = re.match(r"[a-z]+", name)
    return m.group(0) if m else None


def _spearman(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    from scipy.stats import spearmanr

    rho = spearmanr(xs, ys).statistic
    return None if rho != rho else float(rho)


def run_audit(corpus: Corpus, rubric_path: str, plot: str | None = None) -> dict[str, Any]:
    rubric = load_rubric(rubric_path)
    rows = corpus.query(
        "SELECT j.judge, j.rubric_version, j.criterion, j.target_kind, j.target_id, j.generation_a, j.generation_b, "
        "j.sample_idx, j.\"order\", j.score, j.parse_status, j.meta, "
        "g.model AS gen_model, length(regexp_split_to_array(trim(g.response), '\\s+')) AS words, "
        "ga.model AS model_a, gb.model AS model_b "
        "FROM judgments j LEFT JOIN generations g ON j.target_kind = 'generation' AND g.id = j.target_id "
        "LEFT JOIN generations ga ON ga.id = j.generation_a LEFT JOIN generations gb ON gb.id = j.generation_b "
        "WHERE j.rubric = ? AND j.judge NOT LIKE 'verifier:%'", [rubric.name])
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        r["meta"] = json.loads(r["meta"]) if r["meta"] else {}
        groups[(r["judge"], r["rubric_version"])].append(r)
    report = [_judge_row(judge, version, rs) for (judge, version), rs in sorted(groups.items())]
    alphas = _jury_alpha(rows)
    out = {"rubric": rubric.name, "judges": report, "jury_alpha": alphas}
    if plot:
        _plot(out, plot)
        out["plot"] = plot
    return out


def _judge_row(judge: str, version: str, rs: list[dict]) -> dict[str, Any]:
    fam = model_family(judge)
    failed = sum(r["parse_status"] == "failed" for r in rs)
    row: dict[str, Any] = {"judge": judge, "rubric_version": version, "n": len(rs),
                           "parse_failure_rate": failed / len(rs) if rs else None}
    point = [r for r in rs if r["target_kind"] == "generation" and r["parse_status"] != "failed" and r["score"] is not None]
    pair = [r for r in rs if r["target_kind"] == "pair" and r["parse_status"] != "failed"]
    if point:
        norms = [r["meta"].get("score_norm", r["score"]) for r in point]
        row["length_corr"] = _spearman([float(r["words"] or 0) for r in point], [float(x) for x in norms])
        own = [n for r, n in zip(point, norms) if model_family(r["gen_model"]) == fam]
        other = [n for r, n in zip(point, norms) if model_family(r["gen_model"]) != fam]
        row["self_preference"] = (sum(own) / len(own) - sum(other) / len(other)) if own and other else None
    if pair:
        by_voter: dict[tuple, dict[str, Any]] = defaultdict(dict)
        for r in pair:
            by_voter[(r["target_id"], r["criterion"], r["sample_idx"])][r["order"]] = r["meta"].get("winner_id")
        both = [v for v in by_voter.values() if "ab" in v and "ba" in v]
        row["position_flip_rate"] = sum(v["ab"] != v["ba"] for v in both) / len(both) if both else None
        row["first_slot_win_rate"] = sum(r["meta"].get("winner") == "A" for r in pair) / len(pair)
        mixed = [(r, r["meta"].get("winner_id")) for r in pair
                 if (model_family(r["model_a"]) == fam) != (model_family(r["model_b"]) == fam) and r["meta"].get("winner_id")]
        if mixed:
            own_wins = sum(1 for r, w in mixed if model_family(r["model_a"] if w == r["generation_a"] else r["model_b"]) == fam)
            row["self_preference"] = own_wins / len(mixed) - 0.5
        else:
            row.setdefault("self_preference", None)
    return row


def _jury_alpha(rows: list[dict]) -> dict[str, float | None]:
    """Per (version, criterion): alpha over pointwise items, one rating per (judge, sample)."""
    units: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["target_kind"] == "generation" and r["parse_status"] != "failed" and r["score"] is not None:
            units[(r["rubric_version"], r["criterion"])][r["target_id"]].append(float(r["meta"].get("score_norm", r["score"])))
    return {f"v{v}:{c}": krippendorff_alpha(list(items.values())) for (v, c), items in sorted(units.items())}


def _plot(report: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("position_flip_rate", "position flip rate"), ("first_slot_win_rate", "first slot wins"),
               ("length_corr", "score-length rho"), ("self_preference", "self-preference"),
               ("parse_failure_rate", "parse failures")]
    judges = report["judges"]
    labels = [f"{j['judge']} v{j['rubric_version']}" for j in judges] or ["(no judgments)"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.6), squeeze=False)
    for ax, (key, title) in zip(axes[0], metrics):
        vals = [j.get(key) for j in judges] or [None]
        ax.barh(labels, [v if v is not None else 0 for v in vals], color=["#888" if v is None else "#3a7" for v in vals])
        for y, v in enumerate(vals):
            ax.text(0, y, " n/a" if v is None else f" {v:.2f}", va="center")
        ax.set_title(title)
        ax.set_xlim(-1, 1) if key in ("length_corr", "self_preference") else ax.set_xlim(0, 1)
        ax.axvline(0, color="black", lw=0.8)
        if key == "first_slot_win_rate":
            ax.axvline(0.5, color="red", lw=0.8, ls="--")
    alphas = ", ".join(f"{k}={v:.2f}" if v is not None else f"{k}=n/a" for k, v in report["jury_alpha"].items())
    fig.suptitle(f"judge audit: {report['rubric']}" + (f"   jury alpha: {alphas}" if alphas else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
