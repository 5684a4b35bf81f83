"""One pydantic record type per table. Stages pass these, not dicts.

Each record knows its table and computes its content id from the fields that define it,
so two runs that produce the same thing produce the same row.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime, timezone
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .ids import content_id


def now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")

    table: ClassVar[str]
    # fields hashed into the id; empty means the id is given by the caller
    id_fields: ClassVar[tuple[str, ...]] = ()
    json_fields: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _fill_id(cls, data: Any) -> Any:
        if isinstance(data, dict) and cls.id_fields and not data.get("id"):
            data = dict(data)
            data["id"] = content_id(cls.table, {f: data.get(f) for f in cls.id_fields})
        return data


class Run(Record):
    table = "runs"
    json_fields = ("argv", "config", "summary")
    id: str = Field(default_factory=lambda: uuid.uuid4().hex[:16])
    command: str
    argv: list[str] = []
    config: dict[str, Any] = {}
    code_version: str | None = None
    started_at: datetime = Field(default_factory=now)
    ended_at: datetime | None = None
    status: str = "running"  # running | ok | failed | interrupted | killed
    summary: dict[str, Any] | None = None
    host: str | None = Field(default_factory=socket.gethostname)
    pid: int | None = Field(default_factory=os.getpid)


class Prompt(Record):
    table = "prompts"
    id_fields = ("messages",)
    json_fields = ("messages", "meta")
    id: str = ""
    messages: list[dict[str, str]]
    text: str = ""
    source: str | None = None
    meta: dict[str, Any] = {}
    run_id: str | None = None

    @model_validator(mode="after")
    def _text(self) -> "Prompt":
        if not self.text:
            users = [m["content"] for m in self.messages if m.get("role") == "user"]
            self.text = users[-1] if users else ""
        return self


class Generation(Record):
    table = "generations"
    id_fields = ("prompt_id", "backend", "model", "params", "sample_idx", "provenance", "parent_id")
    json_fields = ("params",)
    id: str = ""
    prompt_id: str
    backend: str
    model: str
    params: dict[str, Any]
    sample_idx: int = 0
    seed: int | None = None
    response: str
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: float | None = None
    provenance: str = "model"
    parent_id: str | None = None
    call_key: str | None = None
    run_id: str | None = None


class Call(Record):
    table = "calls"
    json_fields = ("request", "response")
    key: str
    backend: str
    model: str
    request: dict[str, Any]
    response: dict[str, Any] | None = None
    status: str
    error: str | None = None
    latency_ms: float | None = None
    run_id: str | None = None


class Failure(Record):
    table = "failures"
    id_fields = ("stage", "target_id", "error")
    id: str = ""
    stage: str
    target_id: str | None = None
    error: str
    run_id: str | None = None


class Judgment(Record):
    table = "judgments"
    id_fields = (
        "target_id", "generation_a", "generation_b", "judge", "rubric", "criterion",
        "criterion_hash", "sample_idx", "order",
    )
    json_fields = ("meta",)
    id: str = ""
    target_id: str
    target_kind: str = "generation"
    generation_a: str | None = None
    generation_b: str | None = None
    judge: str
    rubric: str
    rubric_version: str | None = None
    rubric_hash: str | None = None
    criterion: str
    criterion_hash: str | None = None
    sample_idx: int = 0
    score: float | None = None
    score_expected: float | None = None
    rationale: str | None = None
    raw: str | None = None
    parse_status: str = "ok"
    order: str | None = None
    meta: dict[str, Any] = {}
    run_id: str | None = None
    sandbox: str | None = None  # code_exec: 'bwrap' | 'unsafe' (m060)


class Flag(Record):
    table = "flags"
    id_fields = ("target_id", "kind", "stage", "reason", "run_id")
    json_fields = ("details",)
    id: str = ""
    target_id: str
    target_kind: str = "generation"
    kind: str
    reason: str | None = None
    stage: str
    details: dict[str, Any] = {}
    run_id: str | None = None


class Pair(Record):
    table = "pairs"
    id_fields = ("prompt_id", "chosen_id", "rejected_id", "method")
    id: str = ""
    prompt_id: str
    chosen_id: str
    rejected_id: str
    margin: float | None = None
    method: str
    run_id: str | None = None


class Review(Record):
    table = "reviews"
    id: str = Field(default_factory=lambda: uuid.uuid4().hex[:16])
    target_id: str
    reviewer: str
    verdict: str
    note: str | None = None
    edited_generation_id: str | None = None
    created_at: datetime = Field(default_factory=now)


class Release(Record):
    table = "releases"
    id_fields = ("snapshot_hash", "decision", "sample_stats")
    json_fields = ("sample_stats",)
    id: str = ""
    snapshot_hash: str
    sample_stats: dict[str, Any] = {}
    decision: str
    run_id: str | None = None


class ModelRecord(Record):
    table = "models"
    json_fields = ("config", "metrics", "reward")
    id: str = Field(default_factory=lambda: uuid.uuid4().hex[:16])
    parent_id: str | None = None
    kind: str
    path: str
    base: str | None = None
    release_id: str | None = None
    config: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    run_id: str | None = None
    algorithm: str | None = None       # m070: sft | rm | dpo | grpo | sft-rs
    reward: dict[str, Any] | None = None  # m070: what the training optimised (rubric, weights, judge)


RECORDS: dict[str, type[Record]] = {
    r.table: r for r in (Run, Prompt, Generation, Call, Failure, Judgment, Flag, Pair, Review, Release, ModelRecord)
}
