"""The filters config: a plain YAML file (filters/default.yaml is the default), checked by
pydantic models with extra="forbid"; a mistake is reported as file:line, what is wrong, the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from corpus import UserError
from corpus.yamlfile import line_of, load_yaml

DEFAULT_CONFIG = Path(__file__).parent / "default.yaml"
Policy = Literal["drop", "tie", "review", "keep"]
DEFAULT_POLICIES = {
    "parse_failed": "drop", "position_inconsistent": "tie", "jury_disagreement": "review",
    "judge_injection": "drop", "verifier_failed": "drop", "low_score": "keep",
    # a code answer that tried to dodge its tests: a person should see what the policy learned
    "hack_suspected": "review",
}
JUDGE_FLAG_KINDS = ("parse_failed", "position_inconsistent", "jury_disagreement", "judge_injection", "verifier_failed",
                    "hack_suspected", "low_score")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Step(Strict):
    """`true` in YAML means "on with defaults", `false` or null means off."""

    as_rejected: bool = False

    @model_validator(mode="before")
    @classmethod
    def _bool(cls, v: Any) -> Any:
        return {} if v is True else v


class NearDedup(Step):
    threshold: float = Field(0.8, gt=0, le=1)
    ngram: int = Field(3, ge=1, le=20)
    num_perm: int = Field(128, ge=16, le=1024)
    index: Literal["numpy", "datasketch"] = "datasketch"


class Decontaminate(Step):
    ngram: int = Field(13, ge=3, le=50)
    min_words: int = Field(8, ge=1)


class Repetition(Step):
    max_duplicate_line_frac: float = Field(0.3, ge=0, le=1)
    min_distinct_ngram_frac: float = Field(0.5, ge=0, le=1)
    ngram: int = Field(3, ge=1)
    min_words: int = Field(30, ge=1)


class Refusal(Step):
    patterns: list[str] | None = None
    window: int = Field(300, ge=1)

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, v: list[str] | None) -> list[str] | None:
        import re

        for p in v or []:
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(f"pattern {p!r} is not a valid regular expression ({e})") from None
        return v


class Language(Step):
    expected: list[str] = ["en", "prompt"]  # "prompt": the language the prompt is written in
    min_confidence: float = Field(0.6, ge=0, le=1)

    @field_validator("expected", mode="before")
    @classmethod
    def _one(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class Length(Step):
    min_words: int | None = Field(1, ge=0)
    max_words: int | None = Field(None, ge=1)
    max_chars: int | None = Field(None, ge=1)


class Steps(Strict):
    """A group of filter steps: `name: false` turns that step off, the same as `name: null`."""

    @model_validator(mode="before")
    @classmethod
    def _false_is_off(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: (None if x is False else x) for k, x in v.items()}
        return v


class Prompts(Steps):
    exact_dedup: Step | None = Step()
    near_dedup: NearDedup | None = NearDedup()
    decontaminate: Decontaminate | None = Decontaminate()

    @field_validator("exact_dedup", "near_dedup", "decontaminate")
    @classmethod
    def _no_as_rejected(cls, v: Step | None) -> Step | None:
        if v is not None and v.as_rejected:
            raise ValueError("as_rejected applies to responses only; a dropped prompt has no pairs")
        return v


class Responses(Steps):
    empty: Step | None = Step()
    truncated: Step | None = Step(as_rejected=True)
    refusal: Refusal | None = Refusal(as_rejected=True)
    repetition: Repetition | None = Repetition()
    language: Language | None = Language()
    length: Length | None = Length()
    exact_dedup: Step | None = Step()
    near_dedup: NearDedup | None = NearDedup()
    decontaminate: Decontaminate | None = Decontaminate()


class Judge(Strict):
    unscored: Literal["drop", "keep"] = "drop"
    human_score: float | None = Field(1.0, ge=0, le=1)  # score of an unjudged human-written reply
    min_score: float | None = Field(None, ge=0, le=1)
    thresholds: dict[str, float] = {}
    flags: dict[str, Policy] = dict(DEFAULT_POLICIES)

    @field_validator("flags")
    @classmethod
    def _merge(cls, v: dict[str, str]) -> dict[str, str]:
        return {**DEFAULT_POLICIES, **v}  # naming one kind keeps the defaults of the others

    @field_validator("thresholds")
    @classmethod
    def _unit(cls, v: dict[str, float]) -> dict[str, float]:
        for k, x in v.items():
            if not 0 <= x <= 1:
                raise ValueError(f"{k}: {x} is outside [0, 1]; thresholds are on score_norm, e.g. 0.5")
        return v


class Sft(Strict):
    min_score: float | None = Field(0.5, ge=0, le=1)
    per_prompt: int = Field(1, ge=1)


class Pairs(Strict):
    method: Literal["best_worst", "all", "west_of_n"] = "best_worst"
    min_margin: float = Field(0.1, ge=0, le=1)
    max_per_prompt: int | None = Field(None, ge=1)
    length_balance: bool = False


class FilterConfig(Strict):
    rubric: str | None = None
    rubric_version: str | None = None

    @field_validator("rubric_version", mode="before")
    @classmethod
    def _text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, (int, float)) else v  # `rubric_version: 2` means "2"

    eval_sets: list[str] = []
    prompts: Prompts = Prompts()
    responses: Responses = Responses()
    judge: Judge = Judge()
    sft: Sft = Sft()
    pairs: Pairs = Pairs()
    base_dir: str = Field(".", exclude=True)  # where relative eval_sets paths start

    def eval_paths(self, extra: list[str] | None = None) -> list[Path]:
        """Config paths relative to the config file; extra (command-line) paths as given."""
        base = Path(self.base_dir)
        out = [p if p.is_absolute() else base / p for p in map(Path, self.eval_sets)]
        return out + [Path(p) for p in extra or []]


def _fix(err: dict) -> str:
    kind, loc = err["type"], err["loc"]
    if kind == "extra_forbidden":
        parent: Any = FilterConfig
        for key in loc[:-1]:
            field = getattr(parent, "model_fields", {}).get(key)
            ann = field.annotation if field else None
            parent = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        names = [n for n in getattr(parent, "model_fields", {}) if n != "base_dir"]
        return f"unknown key; use one of: {', '.join(names)}" if names else "unknown key; remove it"
    msg = err["msg"].removeprefix("Value error, ")
    return msg[0].lower() + msg[1:]


def load_config(path: str | Path | None = None) -> FilterConfig:
    """Read and check a config file; None means filters/default.yaml."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
    if not path.exists():
        raise UserError(f"--config {path}: no such file; copy {DEFAULT_CONFIG} and edit it")
    data, lines = load_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path}:1: expected a mapping of settings (see {DEFAULT_CONFIG})")
    try:
        cfg = FilterConfig.model_validate({**data, "base_dir": str(path.resolve().parent)})
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and x.startswith(("function-", "literal["))))
        line = line_of(lines, loc)
        where = ".".join(str(x) for x in loc) or "config"
        raise UserError(f"{path}:{line}: {where}: {_fix(err)}") from None
    unknown = set(cfg.judge.flags) - set(JUDGE_FLAG_KINDS)
    if unknown:
        k = sorted(unknown)[0]
        line = line_of(lines, ("judge", "flags", k))
        raise UserError(f"{path}:{line}: judge.flags.{k}: unknown judge flag kind; use one of: {', '.join(JUDGE_FLAG_KINDS)}")
    return cfg
