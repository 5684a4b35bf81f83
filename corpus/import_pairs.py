"""`python -m corpus import-pairs FILE`: human preferences into the corpus, optionally released.

Each pair becomes a prompt (its `source` column names where it came from), two generations with
provenance `human` (backend `import`, model the answer's author where the file names one, else
`human`) and a pair with method `human`. Everything is content-addressed and the source name is
in no id, so importing a file twice, or again under another name, adds nothing. The whole file is read
and checked before anything is written, and then written in one transaction.

`--release` also records a release holding exactly this file's pairs (decision
`auto_released`: the labels are people's, but no review sample was drawn from them), so
`python -m train rm --db D` trains on them directly. The release is written here rather than
through `review`, because corpus imports nothing of ours: a release is a `releases` row and its
`release_items`, both corpus tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa

from .errors import ArgumentParser, UserError
from .ids import content_id
from .pair_files import LabelledPair, parse_file
from .records import Generation, Pair, Prompt, Record, Release
from .snapshot import snapshot_hash
from .store import Corpus

MULTI = ("best_worst", "all")


def pair_records(pairs: list[LabelledPair], source: str, run_id: str | None) -> tuple[list[Record], list[str]]:
    """Prompt, generation and pair records for the parsed pairs, and the pair ids in file order."""
    recs: list[Record] = []
    pair_ids: list[str] = []
    seen: set[str] = set()
    for lp in pairs:
        meta: dict[str, Any] = {"imported_from": lp.where}
        if lp.category:
            meta["category"] = lp.category
        p = Prompt(messages=lp.prompt, source=source, meta=meta, run_id=run_id)
        gens = []
        for text, author in ((lp.chosen, lp.chosen_model), (lp.rejected, lp.rejected_model)):
            # the text's hash is in the id: one prompt can have many human answers; the source is
            # not (it is on the prompt and the run), so the same file under another name adds nothing
            gens.append(Generation(
                prompt_id=p.id, backend="import", model=author or "human", provenance="human", response=text,
                params={"text": content_id("text", text)[:16]}, run_id=run_id,
                completion_tokens=len(text.split()),
            ))
        pr = Pair(prompt_id=p.id, chosen_id=gens[0].id, rejected_id=gens[1].id, margin=lp.margin, method="human",
                  run_id=run_id)
        for r in (p, *gens, pr):
            if r.id not in seen:
                seen.add(r.id)
                recs.append(r)
        if pr.id not in pair_ids:
            pair_ids.append(pr.id)
    return recs, pair_ids


def import_pairs(corpus: Corpus | str | Path, path: str | Path, *, source: str | None = None, release: bool = False,
                 split: str | None = None, multi: str = "best_worst", skip_bad: bool = False,
                 limit: int | None = None, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Import a preference file; returns counts (rows, pairs, new rows per table), skipped rows,
    bad rows (with skip_bad) and the release id (with release=True). `corpus` may be a path: it is
    opened (created if new) only once the whole file has parsed, so a bad file leaves no corpus."""
    if multi not in MULTI:
        raise UserError(f"--multi {multi}: choose one of {', '.join(MULTI)}")
    source = source or Path(path).stem or "import"
    parsed = parse_file(path, split=split, multi=multi, skip_bad=skip_bad, limit=limit)
    if not parsed.pairs:
        why = ", ".join(f"{n} {k}" for k, n in parsed.skipped.items()) or f"{len(parsed.bad)} bad rows"
        raise UserError(f"{path}: no preference pairs in {parsed.rows} rows ({why}); nothing imported")
    if not isinstance(corpus, Corpus):
        corpus = Corpus(corpus)
    config = {"file": str(path), "source": source, "release": release, "split": split, "multi": multi,
              "skip_bad": skip_bad, "limit": limit}
    with corpus.run("corpus import-pairs", config, argv=argv) as run:
        recs, pair_ids = pair_records(parsed.pairs, source, run.id)
        by_table: dict[str, list[Record]] = {}
        for r in recs:
            by_table.setdefault(r.table, []).append(r)
        new = {}
        release_id = None
        with corpus.transaction() as con:  # all or nothing, release included
            for table in ("prompts", "generations", "pairs"):
                new[table] = Corpus._insert_table(con, table, by_table.get(table, []), False) if by_table.get(table) else 0
            if release:
                release_id, fresh = _release(con, pair_ids, run.id)
                new["releases"] = int(fresh)
        summary = {"rows": parsed.rows, "pairs": len(pair_ids), "new": new, "skipped": parsed.skipped,
                   "bad": len(parsed.bad), "release_id": release_id, "source": source}
        run.summary = summary
    return {**summary, "bad_rows": parsed.bad, "pair_ids": pair_ids}


def _release(con: Any, pair_ids: list[str], run_id: str) -> tuple[str, bool]:
    """A release of exactly these pairs; the same pairs give the same release (nothing new)."""
    # no file or source name here: they are in the run's config, and the release id hashes these stats
    stats = {"pair_items": len(pair_ids), "sft_items": 0, "human_checked": False,
             "labels": "human", "note": "imported human preference pairs; no review sample was drawn"}
    rel = Release(snapshot_hash=snapshot_hash("release", [f"pair:{i}" for i in pair_ids]), sample_stats=stats,
                  decision="auto_released", run_id=run_id)
    if con.execute("SELECT 1 FROM releases WHERE id = ?", [rel.id]).fetchone():
        return rel.id, False
    Corpus._insert_table(con, "releases", [rel], False)
    items = pa.table({"release_id": [rel.id] * len(pair_ids), "kind": ["pair"] * len(pair_ids),  # noqa: F841
                      "item_id": pair_ids})
    con.execute("INSERT INTO release_items SELECT release_id, kind, item_id FROM items")
    return rel.id, True


def add_parser(sub: Any) -> None:
    p = sub.add_parser("import-pairs", help="import human preference pairs (TRL, HH-RLHF, UltraFeedback, JudgeBench shapes)")
    p.add_argument("file", help="JSONL, JSON, Parquet, or a folder saved with datasets' save_to_disk")
    p.add_argument("--source", default=None, help="name stored with the rows (default: the file's stem)")
    p.add_argument("--release", action="store_true", help="also release exactly these pairs, so `python -m train rm` runs on them")
    p.add_argument("--split", default=None, help="the split of a saved DatasetDict (default: train, or the only one)")
    p.add_argument("--multi", choices=MULTI, default="best_worst",
                   help="scored completions: best vs worst (default) or every pair with different scores")
    p.add_argument("--skip-bad", action="store_true", help="leave malformed rows out (listed) instead of stopping")
    p.add_argument("--limit", type=int, default=None, help="import the first N pairs only")


def run(args: Any, argv: Sequence[str]) -> int:
    """The CLI action: import, then a few lines of counts."""
    out = import_pairs(args.db, args.file, source=args.source, release=args.release, split=args.split,
                       multi=args.multi, skip_bad=args.skip_bad, limit=args.limit, argv=["corpus", *argv])
    for line in out["bad_rows"][:20]:
        print(f"skipped bad row {line}")
    if len(out["bad_rows"]) > 20:
        print(f"... {len(out['bad_rows']) - 20} more bad rows skipped")
    new = out["new"]
    skipped = ", ".join(f"{n} {k}" for k, n in out["skipped"].items())
    print(f"{out['rows']} rows -> {out['pairs']} pairs from {args.file} (source {out['source']}): new "
          f"{new['prompts']} prompts, {new['generations']} generations, {new['pairs']} pairs"
          + (f"; left out: {skipped}" if skipped else "") + (f"; {out['bad']} bad rows skipped" if out["bad"] else ""))
    if out["release_id"]:
        state = "new release" if new.get("releases") else "already released as"
        print(f"{state} {out['release_id']} ({out['pairs']} pairs): train with "
              f"`python -m train rm --db {args.db} --release {out['release_id']} --out rm-model`")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry (the same as `python -m corpus import-pairs`)."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    ap = ArgumentParser(prog="python -m corpus")
    ap.add_argument("--db", default="corpus.duckdb")
    add_parser(ap.add_subparsers(dest="cmd", required=True))
    return run(ap.parse_args(argv), argv)
