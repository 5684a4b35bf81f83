"""Export accepted_sft / preference_pairs in TRL's conversational formats, with the snapshot hash
(corpus.snapshot_hash of the row ids) printed and written next to the data as PATH.snapshot.json."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from corpus import Corpus, UserError, snapshot_hash

KINDS = {"sft": "accepted_sft", "pairs": "preference_pairs"}
FORMATS = ("jsonl", "parquet", "datasets")


def export_rows(corpus: Corpus, kind: str) -> list[dict[str, Any]]:
    """Rows ready for TRL: messages / prompt / chosen / rejected as lists of {role, content}."""
    if kind == "sft":
        rows = corpus.query("SELECT id, prompt_id, messages, score_norm FROM accepted_sft ORDER BY prompt_id, id")
        for r in rows:
            r["messages"] = json.loads(r["messages"])
        return rows
    rows = corpus.query(
        "SELECT id, prompt_id, prompt, chosen, rejected, margin, method FROM preference_pairs ORDER BY prompt_id, id"
    )
    for r in rows:
        for k in ("prompt", "chosen", "rejected"):
            r[k] = json.loads(r[k])
    return rows


def export(corpus: Corpus, kind: str = "sft", fmt: str = "jsonl", out: str | Path = "sft.jsonl") -> dict[str, Any]:
    """Write the latest filters run's SFT set or pairs to `out`; returns {snapshot_hash, rows, ...}."""
    if kind not in KINDS:
        raise UserError(f"export: unknown kind {kind!r}; use sft or pairs")
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: use one of {', '.join(FORMATS)}")
    out = Path(out)
    if not out.parent.exists():
        raise UserError(f"--out {out}: folder {out.parent} does not exist; create it first")
    latest = corpus.query("SELECT run_id FROM latest_filters_run")
    if not latest:
        raise UserError(f"export: no successful filters run in {corpus.path}; run `python -m filters --db {corpus.path}` first")
    rows = export_rows(corpus, kind)
    if not rows:
        raise UserError(f"export: {KINDS[kind]} is empty in the latest filters run; loosen the config "
                        f"(sft.min_score, pairs.min_margin) and run `python -m filters --db {corpus.path}` again")
    snap = snapshot_hash(KINDS[kind], [r["id"] for r in rows])
    tmp = out.with_name(out.name + ".partial")
    if tmp.is_dir():
        shutil.rmtree(tmp)
    if fmt == "jsonl":
        with tmp.open("w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), tmp)
    else:
        import datasets

        quiet = datasets.utils.are_progress_bars_disabled()
        datasets.disable_progress_bars()  # the CLI prints its own line; no tqdm bar in logs
        try:
            datasets.Dataset.from_list(rows).save_to_disk(str(tmp))
        finally:
            if not quiet:
                datasets.enable_progress_bars()
    if out.is_dir():
        shutil.rmtree(out)
    elif out.exists():
        out.unlink()
    tmp.rename(out)
    meta = {
        "snapshot_hash": snap, "kind": kind, "view": KINDS[kind], "rows": len(rows), "format": fmt,
        "filters_run_id": latest[0]["run_id"], "path": out.name,
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    sidecar = out.with_name(out.name + ".snapshot.json")
    sidecar.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return {**meta, "out": str(out), "snapshot_file": str(sidecar)}
