"""Rubric YAML: validated with pydantic; every error names file:line and the fix.

A rubric's identity for caching is per criterion: `criterion_hash` covers exactly the text and
settings that change what a judge would answer for that criterion (the task description, the
criterion's description, scale and verifier settings). Editing one criterion changes only its
hash, so only that criterion is judged again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_serializer,
                      model_validator)

from corpus import UserError, content_id
from corpus.yamlfile import line_of, load_yaml

VERIFIER_TYPES = ("code_exec", "regex", "json_schema", "length", "checkable", "reward_model")


class LocatedError(ValueError):
    """A rubric-level error that knows which key it is about, so the message gets its line."""

    def __init__(self, msg: str, loc: tuple):
        super().__init__(msg)
        self.loc = loc


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JudgeSpec(Strict):
    """One judge of the jury: which model, how many samples per item, at what temperature."""

    backend: Literal["hf", "openai", "vllm", "fake"] = Field("hf", description="where the judge model runs; fake is scripted replies for tests")
    model: str | None = Field(None, description="None: the embedded SmolLM2-135M-Instruct")
    base_url: str | None = Field(None, description="openai backend: the endpoint, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str = Field("OPENAI_API_KEY", description="openai backend: the environment variable holding the key (never the key itself)")
    samples: int = Field(1, ge=1, le=16, description="verdicts per item from this judge (a jury of one model); more than 1 needs temperature > 0")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="sampling temperature of the judge (0: greedy)")
    max_new_tokens: int = Field(160, ge=8, le=4096, description="token budget of one verdict")
    method: Literal["generate", "logprob"] = Field(
        "generate", description="generate: a JSON verdict decoded token by token; logprob: one forward pass, the "
        "verdict's probabilities (pairwise P(A) vs P(B), pointwise the expected score over the scale's digits)")

    @model_validator(mode="after")
    def _method(self) -> "JudgeSpec":
        if self.method == "logprob" and self.samples != 1:
            raise ValueError("method: logprob reads probabilities, it does not sample: set `samples: 1`")
        if self.method == "logprob" and self.backend == "fake":
            raise ValueError("method: logprob needs a backend that returns logprobs (hf, vllm or openai)")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        # the default method stays out of the dump, so rubric hashes from before the key existed hold
        data = handler(self)
        if data.get("method") == "generate":
            data.pop("method")
        return data


class VerifierSpec(Strict):
    """Settings of a programmatic check; which keys apply depends on `type`."""

    type: Literal["code_exec", "regex", "json_schema", "length", "checkable", "reward_model"] = Field(
        description="code_exec: run the code against tests in a sandbox; regex; json_schema; length (words); checkable: the prompt's meta.checks; reward_model: a trained RM's score")
    # code_exec: where the tests are: "meta:<key>" (the prompt's meta) or inline Python
    tests: str | None = None
    entry_point: str | None = Field(None, description="code_exec: function name; default meta:entry_point")
    imports: str | None = Field(None, description="code_exec: the tests' imports (\"meta:<key>\" or inline Python), run in the "
                                "tests' namespace; default meta:test_imports (MBPP)")
    timeout_s: float = Field(10.0, gt=0, le=600, description="code_exec: CPU seconds per answer")
    memory_mb: int = Field(1024, ge=64, description="code_exec: address-space limit of the answer, in MB")
    wall_s: float | None = Field(None, gt=0, le=3600, description="code_exec: wall-clock stop; default 3 x timeout_s + 30")
    unsafe: bool = Field(False, description="code_exec: run answers without the bwrap sandbox where it cannot start")
    # regex
    pattern: str | None = None
    must_match: bool = Field(True, description="regex: true scores 1 when the pattern matches; false scores 1 when it does not")
    # json_schema: the schema candidates must satisfy (None: any valid JSON)
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    # length, in words
    min_words: int | None = Field(None, ge=0)
    max_words: int | None = Field(None, ge=1, description="length: at most this many words")
    # reward_model: a models.id of kind 'rm', or "latest"
    model: str | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        # unset `imports` stays out of the dump, so rubric hashes from before the key existed hold
        data = handler(self)
        if data.get("imports") is None:
            data.pop("imports", None)
        return data

    @model_validator(mode="after")
    def _needs(self) -> "VerifierSpec":
        if self.type == "code_exec" and not self.tests:
            raise ValueError("a code_exec verifier needs `tests:` (e.g. `tests: meta:test` or inline asserts)")
        if self.type == "regex" and not self.pattern:
            raise ValueError("a regex verifier needs `pattern:`")
        if self.type == "regex":
            import regex

            try:
                regex.compile(self.pattern or "")
            except regex.error as e:
                raise ValueError(f"pattern does not compile: {e}") from None
        if self.type == "json_schema" and self.json_schema is not None:
            import jsonschema

            try:
                jsonschema.Draft202012Validator.check_schema(self.json_schema)
            except jsonschema.SchemaError as e:
                raise ValueError(f"schema is not a valid JSON Schema: {e.message[:160]}") from None
        if self.type == "length" and self.min_words is None and self.max_words is None:
            raise ValueError("a length verifier needs `min_words:` and/or `max_words:`")
        return self


class Criterion(Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="the criterion's name, lower_snake_case; unique in the rubric")
    description: str = Field("", description="what the judge checks; required for llm criteria (shown to the judge)")
    kind: Literal["llm", "verifier"] = Field("llm", description="llm: scored by the judges; verifier: scored by a program (see `verifier`)")
    # level -> anchor text; required for llm criteria
    scale: dict[int, str] | None = None
    weight: float = Field(1.0, ge=0.0, description="weight of this criterion in the candidate's overall score")
    verifier: VerifierSpec | None = Field(None, description="settings of the check, for kind: verifier")

    @model_validator(mode="after")
    def _kind(self) -> "Criterion":
        if self.kind == "llm":
            if self.scale is not None and len(self.scale) < 2:
                raise ValueError(f"criterion {self.name!r}: a scale needs at least two levels")
            levels = sorted(self.scale or {0: "", 1: ""})
            if levels != list(range(levels[0], levels[-1] + 1)):
                raise ValueError(f"criterion {self.name!r}: scale levels must be consecutive integers, got {levels}")
            if not self.description:
                raise ValueError(f"criterion {self.name!r} needs a `description:` the judge can follow")
            if self.verifier is not None:
                raise ValueError(f"criterion {self.name!r}: `verifier:` needs `kind: verifier`")
        elif self.verifier is None:
            raise ValueError(f"criterion {self.name!r} has kind verifier but no `verifier:` settings")
        return self

    @property
    def lo(self) -> int:
        return min(self.scale) if self.scale else 0

    @property
    def hi(self) -> int:
        return max(self.scale) if self.scale else 1


class FlagThresholds(Strict):
    jury_disagreement: float = Field(0.5, ge=0.0, le=1.0, description="flag when per-item agreement is below this")
    low_score: float | None = Field(None, ge=0.0, le=1.0, description="flag items whose overall score_norm is below this")


class Rubric(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="the rubric's name; judgments and scores are stored under it")
    version: str = Field("1", description="bump it when the meaning changes; scores are kept per version")
    task: str = Field(description="what the judged responses were asked to do; shown to every judge")
    mode: Literal["pointwise", "pairwise", "ranking"] = Field("pointwise", description="pointwise: a score per candidate; pairwise: two candidates of a prompt compared, both orders always; ranking: all candidates of a prompt ranked from pairwise win rates")
    criteria: list[Criterion] = Field(min_length=1, description="what to score; at least one")
    judges: list[JudgeSpec] = Field(default_factory=lambda: [JudgeSpec()], description="the jury; default one judge: the embedded model on hf (plumbing only, not a judge to trust)")
    aggregation: Literal["mean", "majority", "weighted"] = Field("weighted", description="how a jury's verdicts combine: mean score, majority, or weighted by each judge's measured agreement with people")
    retries: int = Field(1, ge=0, le=3, description="re-asks after an unparseable answer, with the error shown")
    flags: FlagThresholds = Field(FlagThresholds(), description="when the judge flags an item (see FlagThresholds)")
    path: str | None = Field(None, exclude=True)
    _hashes: dict[str, str] = PrivateAttr(default_factory=dict)  # a rubric is not edited after loading

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, v: Any) -> Any:
        return str(v) if isinstance(v, (int, float)) else v

    @model_validator(mode="after")
    def _unique(self) -> "Rubric":
        seen = set()
        for i, c in enumerate(self.criteria):
            if c.name in seen:
                raise LocatedError(f"criterion name {c.name!r} is used twice; give each criterion its own name", ("criteria", i, "name"))
            seen.add(c.name)
        for i, c in enumerate(self.criteria):
            if self.mode == "pointwise" and c.kind == "llm" and not c.scale:
                raise LocatedError(
                    f"criterion {c.name!r} needs a `scale:` (level: anchor text, e.g. 1: poor ... 5: excellent)", ("criteria", i))
            if self.mode == "pointwise" and c.kind == "llm" and c.scale and (c.lo < 0 or c.hi > 9):
                for j, spec in enumerate(self.judges):
                    if spec.method == "logprob":
                        raise LocatedError(f"method: logprob scores pointwise criteria on one-digit scales (0-9); criterion "
                                           f"{c.name!r} goes from {c.lo} to {c.hi}: rescale it or use method: generate",
                                           ("judges", j, "method"))
            if self.mode != "pointwise" and c.kind != "llm":
                raise LocatedError(f"criterion {c.name!r}: verifiers apply to pointwise rubrics only; move it to a pointwise rubric", ("criteria", i))
        return self

    def criterion_hash(self, c: Criterion) -> str:
        key = "criterion:" + c.name
        if key not in self._hashes:
            self._hashes[key] = content_id("criterion", {
                # how code runs (wall limit, unsafe) does not change what a pass means: not hashed
                "task": self.task, "mode": self.mode, "criterion": c.model_dump(
                    mode="json", by_alias=True, exclude={"weight": True, "verifier": {"wall_s": True, "unsafe": True}}),
            })[:16]
        return self._hashes[key]

    @property
    def rubric_hash(self) -> str:
        if "rubric" not in self._hashes:
            self._hashes["rubric"] = content_id("rubric", self.model_dump(mode="json", by_alias=True, exclude={"path"}))[:16]
        return self._hashes["rubric"]

    def llm_criteria(self) -> list[Criterion]:
        return [c for c in self.criteria if c.kind == "llm"]

    def verifier_criteria(self) -> list[Criterion]:
        return [c for c in self.criteria if c.kind == "verifier"]


# -- loading with line numbers ---------------------------------------------------------------

_HINTS = {
    "extra_forbidden": "unknown key; check its spelling (allowed keys are in docs/reference/rubric.md)",
    "missing": "required key is missing; add it",
}


def load_rubric(path: str | Path) -> Rubric:
    """Read and validate a rubric; a mistake raises UserError('<file>:<line>: what; fix')."""
    p = Path(path)
    if not p.is_file():
        what = "is a folder" if p.is_dir() else "no such file"
        raise UserError(f"--rubric {p}: {what}; the shipped rubrics are in prompts/ (e.g. prompts/code.yaml)")
    data, lines = load_yaml(p, "fix the syntax")
    if not isinstance(data, dict):
        raise UserError(f"{p}:1: a rubric is a mapping with name, task, criteria; see prompts/helpfulness.yaml")
    try:
        rubric = Rubric.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(err["loc"])
        located = (err.get("ctx") or {}).get("error")
        if isinstance(located, LocatedError):
            loc = loc + located.loc
        where = ".".join(str(x) for x in loc if not (isinstance(x, str) and "[" in x))
        msg = err["msg"].removeprefix("Value error, ")
        hint = _HINTS.get(err["type"])
        key = f"`{where}`: " if where else ""
        raise UserError(f"{p}:{line_of(lines, loc)}: {key}{msg}" + (f"; {hint}" if hint else "")) from None
    rubric.path = str(p)
    return rubric
