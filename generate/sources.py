"""Prompt sources: JSONL, JSON, Parquet, a `datasets` folder saved with save_to_disk, or SQL
over the corpus. Every source becomes a list of `corpus.Prompt` records.

All of a file is read and checked before anything is written: a bad line ends the job with
one line that names file:line and the fix, and the corpus is left as it was.

A record's prompt comes from the first field present among `fields` (default: `prompt`,
`turns`, `messages`):
- `prompt`: a string, one user turn (HumanEval's code stub works as it is);
- `turns`: MT-Bench / Arena-Hard: a list of strings or of `{content}`; the first turn is the
  prompt, the whole list stays in meta for multi-turn use later;
- `messages`: chat messages `[{role, content}, ...]` ending with a user turn.
Every other field (tests, reference, entry_point, category, checks...) is kept in `meta`, so
later verifiers find it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Sequence

import duckdb

from corpus import Corpus, Prompt, UserError, content_id
from corpus.ids import canonical_json
from corpus.errors import not_utf8, read_text
from corpus.sqlcheck import one_statement
from corpus.pair_files import load_saved_dataset

DEFAULT_FIELDS = ("prompt", "turns", "messages")
ROLES = ("system", "user", "assistant")


def _turn_text(turn: Any) -> str | None:
    if isinstance(turn, str):
        return turn
    if isinstance(turn, dict) and isinstance(turn.get("content"), str):
        return turn["content"]
    return None


def _messages(where: str, field: str, value: Any) -> list[dict[str, str]]:
    """The chat messages a field's value stands for; UserError names `where` on a bad value."""
    if field == "turns":
        if not isinstance(value, list) or not value:
            raise UserError(f"{where}: 'turns' must be a non-empty list of strings or {{content}} objects")
        text = _turn_text(value[0])
        if text is None:
            raise UserError(f"{where}: 'turns'[0] must be a string or an object with a 'content' string")
        msgs = [{"role": "user", "content": text}]
    elif field == "messages":
        if not isinstance(value, list) or not value:
            raise UserError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
        msgs = []
        for i, m in enumerate(value):
            if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
                raise UserError(
                    f"{where}: messages[{i}] must be {{\"role\": one of {'/'.join(ROLES)}, \"content\": string}}"
                )
            msgs.append({"role": m["role"], "content": m["content"]})
        if msgs[-1]["role"] != "user":
            raise UserError(f"{where}: the last message must be the user's turn (the one to answer); drop the trailing {msgs[-1]['role']} message")
    else:
        if isinstance(value, (dict, list, int, float, bool)):
            raise UserError(f"{where}: field '{field}' must be a string, got {type(value).__name__}; pick another field with --field")
        if value is None:
            value = ""
        msgs = [{"role": "user", "content": str(value)}]
    for m in msgs:
        if m["role"] == "user" and not m["content"].strip():
            raise UserError(f"{where}: empty prompt in '{field}'; remove the line or fill in the prompt")
    return msgs


def record_to_prompt(record: Any, where: str, source: str, fields: Sequence[str] = DEFAULT_FIELDS) -> Prompt:
    """One source record -> a Prompt. `where` (file:line) goes into error messages."""
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(record).__name__}")
    field = next((f for f in fields if f in record), None)
    if field is None:
        found = ", ".join(sorted(record)[:8]) or "none"
        raise UserError(
            f"{where}: no prompt field: expected one of {', '.join(fields)} (found: {found}); "
            f"name the prompt field with --field NAME"
        )
    msgs = _messages(where, field, record[field])
    meta = {k: v for k, v in record.items() if k != field}
    if field == "turns":
        meta["turns"] = [_turn_text(t) for t in record["turns"]]
    elif field not in ("prompt", "messages"):
        meta["prompt_field"] = field
    return Prompt(messages=msgs, source=source, meta=_jsonable(meta))


def _jsonable(obj: Any) -> Any:
    """Parquet/Arrow rows can hold numpy values and datetimes; meta must be plain JSON."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def jsonl_records(path: Path) -> Iterator[tuple[str, Any]]:
    """("file:line", parsed JSON) for each non-blank line; a bad line is a one-line UserError."""
    try:
        f = path.open("rb")
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror or e})") from None
    with f:
        offset = 0
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise not_utf8(path, e, offset + (3 if n == 1 and raw.startswith(b"\xef\xbb\xbf") else 0)) from None
            offset += len(raw)
            if not line.strip():
                continue
            try:
                yield f"{path}:{n}", json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno}); fix or remove the line") from None
            except RecursionError:
                raise UserError(f"{path}:{n}: JSON nested too deeply; flatten the record") from None


def _json_records(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        data = json.loads(read_text(path, "prompt file"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); fix the file, or use JSONL (one object a line)") from None
    except RecursionError:
        raise UserError(f"{path}: JSON nested too deeply; flatten the records") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of objects")
    for i, rec in enumerate(data):
        yield f"{path}[{i}]", rec


def _table_records(path: Path, rows: Any) -> Iterator[tuple[str, Any]]:
    for i, rec in enumerate(rows, 1):
        yield f"{path}:row {i}", rec


def read_records(path: str | Path, split: str | None = None) -> Iterator[tuple[str, Any]]:
    """(where, record) pairs from a file or a saved dataset folder."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such file or folder; check the path given to --prompts")
    if p.is_dir():
        yield from _table_records(p, load_saved_dataset(p, split))
        return
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(p)
        except Exception as e:
            raise UserError(f"{p}: cannot read Parquet ({str(e).splitlines()[0][:160]})") from None
        yield from _table_records(p, table.to_pylist())
    elif suffix == ".json":
        yield from _json_records(p)
    else:
        yield from jsonl_records(p)


def task_id(prompt: Prompt) -> str:
    """The id of a prompt whose text another task already uses: messages and meta together."""
    return content_id(Prompt.table, {"messages": prompt.messages, "meta": prompt.meta})


def text_id(prompt: Prompt) -> str:
    """The plain id: of the messages alone, as every prompt without a same-text twin has."""
    return Prompt(messages=prompt.messages).id


def _settle(group: list[Prompt], owner_meta: dict[str, Any] | None) -> list[Prompt]:
    """The tasks that share one text, with ids that depend on no order: the task whose meta is
    `owner_meta` (the one the corpus already stores under the plain id) keeps the plain id; with
    no stored owner, the task with the smallest `task_id` does. Every other task gets its
    `task_id`. Only facts about the records themselves and the corpus decide, never file order."""
    plain = text_id(group[0])
    if owner_meta is None and len(group) > 1:
        owner_meta = min(group, key=task_id).meta
    out = []
    for p in group:
        keep = owner_meta is None or p.meta == owner_meta
        want = plain if keep else task_id(p)
        out.append(p if p.id == want else p.model_copy(update={"id": want}))
    return out


def load_prompts(
    path: str | Path, fields: Sequence[str] | None = None, limit: int | None = None, split: str | None = None,
) -> tuple[list[Prompt], int]:
    """Every prompt in the source, validated, in file order, without repeats.

    Returns (prompts, repeated). A prompt's id hashes its messages; a record with the same
    messages and the same meta is a repeat and kept once. Records with the same messages but
    other meta (MBPP tasks 71 and 141: one text, other tests) are other tasks: one keeps the
    plain id and the others get `task_id` (messages + meta), so no task's tests are dropped.
    Which one keeps the plain id does not depend on their order in the file (see `_settle`;
    `keep_tasks_apart` then lets the corpus's stored owner decide).
    """
    fields = tuple(fields or DEFAULT_FIELDS)
    seen: dict[tuple[str, str], Prompt] = {}
    repeated = 0
    for where, rec in read_records(path, split):
        prompt = record_to_prompt(rec, where, where, fields)
        key = (prompt.id, canonical_json(prompt.meta))
        if key in seen:
            repeated += 1
            continue
        seen[key] = prompt
        if limit is not None and len(seen) >= limit:
            break
    if not seen:
        raise UserError(f"{path}: no prompts in it; give a file with one JSON object a line")
    by_text: dict[str, list[Prompt]] = {}
    for p in seen.values():
        by_text.setdefault(p.id, []).append(p)
    settled = {id(p): q for group in by_text.values() for p, q in zip(group, _settle(group, None))}
    return [settled[id(p)] for p in seen.values()], repeated


def keep_tasks_apart(corpus: Corpus, prompts: Sequence[Prompt]) -> tuple[list[Prompt], int]:
    """The ids of same-text tasks, settled against the corpus: a task whose plain id the corpus
    stores with its own meta keeps it, every other task of that text gets its `task_id` instead
    of being dropped as "already there". Returns (prompts, how many carry a `task_id`)."""
    if not prompts:
        return list(prompts), 0
    plain = [text_id(p) for p in prompts]
    stored = {r["id"]: json.loads(r["meta"]) if r["meta"] else {}
              for r in corpus.query("SELECT id, meta FROM prompts WHERE id IN (SELECT unnest(?))", [sorted(set(plain))])}
    groups: dict[str, list[int]] = {}
    for i, (p, pid) in enumerate(zip(prompts, plain)):
        if p.id in (pid, task_id(p)):  # a prompt given its own id elsewhere keeps it
            groups.setdefault(pid, []).append(i)
    out = list(prompts)
    for pid, idx in groups.items():
        if pid in stored:
            for i, q in zip(idx, _settle([prompts[i] for i in idx], stored[pid])):
                out[i] = q
    return out, sum(1 for p, pid in zip(out, plain) if p.id != pid)


def prompts_from_sql(corpus: Corpus, sql: str, limit: int | None = None) -> list[Prompt]:
    """Prompts named by a query over the corpus: it returns prompt ids (`id` or `prompt_id`)
    or chat `messages`."""
    one_statement(sql, "--from-sql", select=True)
    try:
        with corpus.reader() as con:  # DuckDB refuses writes on it: reading prompts never changes the corpus
            cur = con.execute(sql)
            cols = [d[0] for d in cur.description or []]
            rows = [dict(zip(cols, r)) for r in cur.fetchall()]
    except duckdb.Error as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"--from-sql: the query failed ({first[:200]}); test it with `python -m corpus --db {corpus.path} sql \"...\"`") from None
    if not rows:
        raise UserError("--from-sql: the query returned no rows; nothing to generate")
    cols = set(rows[0])
    if "messages" in cols:
        prompts, seen = [], set()
        for i, r in enumerate(rows, 1):
            msgs = r["messages"]
            if isinstance(msgs, str):
                try:
                    msgs = json.loads(msgs)
                except json.JSONDecodeError:
                    raise UserError(f"--from-sql: row {i}: 'messages' is not JSON") from None
            p = Prompt(messages=_messages(f"--from-sql: row {i}", "messages", msgs), source="sql")
            if p.id not in seen:
                seen.add(p.id)
                prompts.append(p)
        return prompts[:limit] if limit else prompts
    key = "prompt_id" if "prompt_id" in cols else "id" if "id" in cols else None
    if key is None:
        raise UserError(f"--from-sql: the query must return prompt ids (a column 'id' or 'prompt_id') or 'messages'; it returned {', '.join(sorted(cols))}")
    ids = list(dict.fromkeys(r[key] for r in rows))
    if limit:
        ids = ids[:limit]
    found = {
        r["id"]: r
        for r in corpus.query(
            "SELECT id, messages, text, source, meta, run_id FROM prompts WHERE id IN (SELECT unnest(?))", [ids]
        )
    }
    missing = [i for i in ids if i not in found]
    if missing:
        raise UserError(f"--from-sql: {len(missing)} id(s) are not in the prompts table (first: {missing[0]}); select ids from prompts")
    return [
        Prompt(
            id=i, messages=json.loads(found[i]["messages"]), text=found[i]["text"], source=found[i]["source"],
            meta=json.loads(found[i]["meta"]) if found[i]["meta"] else {}, run_id=found[i]["run_id"],
        )
        for i in ids
    ]
