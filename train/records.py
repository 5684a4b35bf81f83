"""Record types for the tables train owns (corpus/migrations/m040_train.sql)."""

from __future__ import annotations

from typing import Any

from corpus import Record


class TrainStep(Record):
    table = "train_steps"
    id_fields = ("model_id", "step")
    json_fields = ("metrics",)
    id: str = ""
    model_id: str
    run_id: str | None = None
    step: int
    epoch: float | None = None
    loss: float | None = None
    learning_rate: float | None = None
    metrics: dict[str, Any] = {}


class ModelEval(Record):
    table = "model_evals"
    id_fields = ("model_id", "baseline_id", "prompts", "judge")
    json_fields = ("metrics",)
    id: str = ""
    model_id: str
    baseline_id: str | None = None
    prompts: str | None = None
    judge: str | None = None
    metrics: dict[str, Any] = {}
    run_id: str | None = None


class LoopStage(Record):
    table = "loop_stages"
    id_fields = ("loop_id", "round", "stage")
    json_fields = ("result",)
    id: str = ""
    loop_id: str
    round: int
    stage: str
    status: str = "done"
    result: dict[str, Any] = {}
    run_id: str | None = None


class Loop(Record):
    table = "loops"
    json_fields = ("config",)
    id: str
    config: dict[str, Any] = {}
    base_model_id: str | None = None
