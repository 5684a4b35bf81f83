"""The model registry: every model a run trains from or produces is a `models` row.

A base model (a local folder, a hub id, the embedded default) gets a 'base' row the first time
it is used, so a trained model always has a parent id and lineage is one recursive SQL query.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from corpus import Corpus, ModelRecord, UserError, content_id


def model_id_for(kind: str, path: str | Path) -> str:
    """A model is the folder it lives in: training into the same folder again replaces the row."""
    return f"{kind}-" + content_id("model", {"kind": kind, "path": str(path)})[:12]


def get_model(corpus: Corpus, model_id: str) -> dict[str, Any] | None:
    rows = corpus.query("SELECT * FROM models WHERE id = ?", [model_id])
    return rows[0] if rows else None


def resolve_base(corpus: Corpus, base: str | None, flag: str = "--base") -> tuple[str, str]:
    """MODEL argument -> (models.id, folder or hub id), registering a 'base' row when new.

    Accepts a registered model id, a local folder, 'embedded' / None (SmolLM2-135M-Instruct),
    or a hub id ('org/name') that the user has in the local Hugging Face cache.
    """
    if base and (row := get_model(corpus, base)):
        return row["id"], row["path"]
    if base in (None, "", "embedded"):
        from backends.base import BackendError
        from backends.embedded import resolve_model

        try:
            path = resolve_model(None)
        except BackendError as e:
            raise UserError(str(e)) from e
        label = "embedded"
    else:
        p = Path(base).expanduser()
        if p.is_dir():
            if not (p / "config.json").exists():
                raise UserError(f"{flag} {base}: folder has no config.json; pass a transformers model folder")
            path, label = str(p.resolve()), str(p.resolve())
        elif base.count("/") == 1 and not base.startswith((".", "/")):
            path, label = base, base  # a hub id; loading fails later with a clear error if absent
        else:
            raise UserError(
                f"{flag} {base}: not a registered model id, a model folder or a hub id; "
                "list models with `python -m corpus sql \"SELECT id, kind, path FROM models\"`"
            )
    # a folder that a run trained is already registered under its own id: reuse it
    known = corpus.query("SELECT id FROM models WHERE path = ? ORDER BY created_at DESC LIMIT 1", [path])
    if known:
        return known[0]["id"], path
    mid = model_id_for("base", path)
    corpus.insert([ModelRecord(id=mid, kind="base", path=path, base=label)])
    return mid, path


def register_model(
    corpus: Corpus, *, model_id: str, kind: str, path: str, parent_id: str, base: str,
    release_id: str | None, config: dict[str, Any], metrics: dict[str, Any], run_id: str | None,
    algorithm: str | None = None, reward: dict[str, Any] | None = None,
) -> str:
    corpus.insert(
        [ModelRecord(id=model_id, parent_id=parent_id, kind=kind, path=path, base=base,
                     release_id=release_id, config=config, metrics=metrics, run_id=run_id,
                     algorithm=algorithm or kind, reward=reward)],
        replace=True,
    )
    return model_id


def set_training(corpus: Corpus, model_id: str, algorithm: str, reward: dict[str, Any] | None,
                 config_extra: dict[str, Any] | None = None) -> None:
    """Record how a model was trained when its trainer did not know (the loop's SFT is rejection
    sampling; a DPO model's reward is the rubric that labelled its pairs; the check types the loop
    trained on, which `train eval` uses to tell trained from held-out types). reward=None keeps
    what the trainer stored."""
    row = get_model(corpus, model_id) or {}
    cfg = json.loads(row["config"]) if isinstance(row.get("config"), str) else (row.get("config") or {})
    sets, params = ["algorithm = ?", "config = ?"], [algorithm, json.dumps({**cfg, **(config_extra or {})}, sort_keys=True)]
    if reward is not None:
        sets.append("reward = ?")
        params.append(json.dumps(reward, sort_keys=True))
    corpus.execute(f"UPDATE models SET {', '.join(sets)} WHERE id = ?", [*params, model_id])


def lineage(corpus: Corpus, model_id: str) -> list[dict[str, Any]]:
    """The model, its parent, its parent's parent ... up to the base."""
    return corpus.query(
        """
        WITH RECURSIVE chain(id, parent_id, kind, path, release_id, config, depth) AS (
            SELECT id, parent_id, kind, path, release_id, config, 0 FROM models WHERE id = ?
            UNION ALL
            SELECT m.id, m.parent_id, m.kind, m.path, m.release_id, m.config, c.depth + 1
            FROM models m JOIN chain c ON m.id = c.parent_id
        )
        SELECT * FROM chain ORDER BY depth
        """,
        [model_id],
    )
