"""Programmatic criteria: checks whose truth does not need an LLM.

Each verifier maps (prompt, response) to a `VerifierResult` with a score in [0, 1] or, when it
does not apply or cannot run, `score=None` and an error (stored as a `verifier_failed` flag).
A verifier never raises for one item.
"""

from __future__ import annotations

import functools
import json
import math
import threading
from dataclasses import dataclass, field
from typing import Any

import checks as checks_registry
from corpus import Corpus, UserError

from .rubric import VerifierSpec
from .extract import defines, extract_code, fenced_blocks, read_imports, read_tests
from .sandbox import SandboxUnavailable, require_sandbox, run_many


@dataclass
class VerifierResult:
    score: float | None
    detail: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    transient: bool = False  # an infrastructure failure: nothing is stored, the next run asks again


Item = tuple[dict[str, Any], str]  # (prompt row with messages/meta, response)


def _meta_ref(value: str | None, meta: dict[str, Any]) -> Any:
    """`meta:<key>` reads the prompt's meta; anything else is the literal value."""
    if value is None:
        return None
    if value.startswith("meta:"):
        return meta.get(value[5:])
    return value


def code_exec_cases(spec: VerifierSpec, items: list[Item]) -> tuple[list[dict], list[int], list[VerifierResult]]:
    """The sandbox cases for the items that have tests, their indexes, and the results so far."""
    cases, slots, out = [], [], [VerifierResult(None) for _ in items]
    for i, (prompt, response) in enumerate(items):
        meta = prompt.get("meta") or {}
        tests = read_tests(_meta_ref(spec.tests, meta))
        if not tests:
            out[i] = VerifierResult(None, error=f"prompt has no tests ({spec.tests} is missing or not a string / list of "
                                    "asserts); add them to the prompt's meta")
            continue
        entry = _meta_ref(spec.entry_point or "meta:entry_point", meta)
        entry = entry if isinstance(entry, str) and entry.isidentifier() else None
        prefix = meta.get("code_prefix") or meta.get("prompt_code")
        if not isinstance(prefix, str) and entry:
            # HumanEval-style prompts are the code stub itself: an answer that only writes the
            # body is completed with it, as HumanEval's own harness does
            text = ((prompt.get("messages") or [{}])[-1]).get("content", "")
            prefix = text if defines(text, entry) else None
        prefix = prefix if isinstance(prefix, str) else None
        try:
            code = extract_code(response, entry)
            if prefix and entry and not defines(code, entry):
                code = prefix + code
        except Exception:  # noqa: BLE001 - the answer's text must not stop the run: it runs as written (and fails)
            code = response
        imports = read_imports(_meta_ref(spec.imports or "meta:test_imports", meta))
        if imports is False:
            out[i] = VerifierResult(None, error=f"{spec.imports or 'meta:test_imports'} is not Python: give a string or a "
                                    "list of import lines")
            continue
        cases.append({"code": code, "tests": tests, "entry_point": entry, "prefix": prefix, "imports": imports})
        slots.append(i)
    return cases, slots, out


def code_exec(spec: VerifierSpec, items: list[Item], workers: int = 2, unsafe: bool = False) -> list[VerifierResult]:
    cases, slots, out = code_exec_cases(spec, items)
    verdicts = run_many(cases, workers=workers, timeout_s=spec.timeout_s, memory_mb=spec.memory_mb, wall_s=spec.wall_s,
                        unsafe=unsafe or spec.unsafe)
    for i, v in zip(slots, verdicts):
        detail = {"reason": v.reason, "detail": v.detail, "duration_s": v.duration_s, "cpu_s": v.cpu_s,
                  "stderr_tail": v.stderr[-400:], "isolation": v.isolation}
        if v.infra:  # retried already (check_answer): stored as failed so that a rerun does not loop on it
            out[i] = VerifierResult(None, detail, error=v.detail)
        elif v.reason == "refused":
            out[i] = VerifierResult(None, detail, error=v.detail)
        else:
            out[i] = VerifierResult(1.0 if v.passed else 0.0, detail)
    return out


def unsafe_allowed(specs: list[VerifierSpec], unsafe_exec: bool) -> bool:
    """May some code_exec criterion run answers without isolation (--unsafe-exec, or `unsafe: true`)?
    What the run records as config.unsafe_exec."""
    return unsafe_exec or any(s.unsafe for s in specs if s.type == "code_exec")


def preflight(specs: list[VerifierSpec], unsafe_exec: bool) -> str | None:
    """Before any work: the isolation code_exec will use (None without code_exec criteria).
    Raises UserError naming the fix when the sandbox cannot start and unsafe was not allowed."""
    execs = [s for s in specs if s.type == "code_exec"]
    if not execs:
        return None
    try:
        return require_sandbox(unsafe_exec or all(s.unsafe for s in execs))
    except SandboxUnavailable as e:
        raise UserError(str(e)) from None


REGEX_TIMEOUT_S = 1.0
MAX_JSON_BYTES = 1 << 20


def regex(spec: VerifierSpec, items: list[Item]) -> list[VerifierResult]:
    """A match (or no match, with must_match: false); a pattern that backtracks past
    REGEX_TIMEOUT_S on an answer is a recorded failure for that answer, not a hung job."""
    import regex as re2

    pat = re2.compile(spec.pattern or "", re2.MULTILINE)
    out = []
    for _, resp in items:
        try:
            matched = pat.search(resp, timeout=REGEX_TIMEOUT_S) is not None
        except TimeoutError:
            out.append(VerifierResult(None, {"timeout_s": REGEX_TIMEOUT_S},
                                      error=f"regex {spec.pattern[:60]!r} ran over {REGEX_TIMEOUT_S:g} s on this answer"))
            continue
        out.append(VerifierResult(float(matched == spec.must_match), {"matched": matched}))
    return out


def _first_json(text: str) -> Any:
    body = text.strip()
    blocks = [code for lang, code in fenced_blocks(body) if lang in ("json", "")] if "```" in body or "~~~" in body else []
    if blocks:
        body = blocks[0].strip()
    return json.loads(body)


def _validator(schema: dict[str, Any]) -> Any:
    """Draft 2020-12 with `pattern` / `patternProperties` run by `regex` with a time limit."""
    import jsonschema
    import regex as re2
    from jsonschema import ValidationError

    def pattern(validator, patrn, instance, schema):  # noqa: ANN001 - jsonschema's signature
        if validator.is_type(instance, "string") and not re2.search(patrn, instance, timeout=REGEX_TIMEOUT_S):
            yield ValidationError(f"{instance[:80]!r} does not match {patrn!r}")

    def pattern_properties(validator, patterns, instance, schema):  # noqa: ANN001
        if not validator.is_type(instance, "object"):
            return
        for patrn, subschema in patterns.items():
            for k, v in instance.items():
                if re2.search(patrn, k, timeout=REGEX_TIMEOUT_S):
                    yield from validator.descend(v, subschema, path=k, schema_path=patrn)

    cls = jsonschema.validators.extend(jsonschema.Draft202012Validator,
                                       {"pattern": pattern, "patternProperties": pattern_properties})
    return cls(schema)


def json_schema(spec: VerifierSpec, items: list[Item]) -> list[VerifierResult]:
    """Valid JSON (and valid under the schema). Answers over MAX_JSON_BYTES, nested past
    Python's recursion limit, or whose strings make a schema pattern backtrack past the time
    limit are recorded failures for that item."""
    validator = _validator(spec.json_schema) if spec.json_schema is not None else None
    out = []
    for _, resp in items:
        if len(resp.encode("utf-8", "replace")) > MAX_JSON_BYTES:
            out.append(VerifierResult(0.0, {"valid_json": False, "error": f"answer over {MAX_JSON_BYTES} bytes"}))
            continue
        try:
            value = _first_json(resp)
        except (json.JSONDecodeError, ValueError, RecursionError) as e:
            out.append(VerifierResult(0.0, {"valid_json": False, "error": f"{type(e).__name__}: {str(e)[:200]}"}))
            continue
        if validator is None:
            out.append(VerifierResult(1.0, {"valid_json": True}))
            continue
        try:
            errors = list(validator.iter_errors(value))
        except TimeoutError:
            out.append(VerifierResult(None, {"valid_json": True}, error=f"a schema pattern ran over {REGEX_TIMEOUT_S:g} s"))
            continue
        except RecursionError:
            out.append(VerifierResult(0.0, {"valid_json": True, "errors": ["nested too deeply to validate"]}))
            continue
        out.append(VerifierResult(0.0 if errors else 1.0, {"valid_json": True, "errors": [e.message[:200] for e in errors[:3]]}))
    return out


def length(spec: VerifierSpec, items: list[Item]) -> list[VerifierResult]:
    out = []
    for _, resp in items:
        n = len(resp.split())
        ok = (spec.min_words is None or n >= spec.min_words) and (spec.max_words is None or n <= spec.max_words)
        out.append(VerifierResult(float(ok), {"words": n}))
    return out


# -- checkable instructions (train synthesizes them in prompt meta["checks"]) --------------------
# The checks themselves live in the `checks` registry, shared with train's eval.

CHECKS = checks_registry.CHECKS


def check_instruction(response: str, check: dict[str, Any]) -> bool:
    """One checkable instruction; raises ValueError on a malformed check."""
    return checks_registry.check_passes(response, check)


def checkable(spec: VerifierSpec, items: list[Item]) -> list[VerifierResult]:
    out = []
    for prompt, resp in items:
        checks = (prompt.get("meta") or {}).get("checks")
        if not isinstance(checks, list) or not checks:
            out.append(VerifierResult(None, error="prompt has no meta.checks; this verifier needs checkable instructions"))
            continue
        bad = next((f"malformed check {json.dumps(c, default=str)[:80]}: {err}" for c in checks
                    if (err := checks_registry.validate_check(c))), None)
        if bad:
            out.append(VerifierResult(None, error=bad))
        else:
            results = [{"type": c["type"], "passed": ok} for c, ok in zip(checks, checks_registry.verdicts(resp, checks))]
            out.append(VerifierResult(sum(r["passed"] for r in results) / len(results), {"checks": results}))
    return out


# -- reward model ---------------------------------------------------------------------------------

def resolve_reward_model(corpus: Corpus, ref: str | None) -> dict[str, Any]:
    if ref in (None, "latest"):
        rows = corpus.query("SELECT id, path FROM models WHERE kind = 'rm' ORDER BY created_at DESC LIMIT 1")
    else:
        rows = corpus.query("SELECT id, path FROM models WHERE id = ? AND kind = 'rm'", [ref])
    if not rows:
        raise UserError(f"reward_model verifier: no reward model {ref or 'latest'!r} in the models table; "
                        "train one with `python -m train rm ...` or set `model:` to a models.id of kind rm")
    return rows[0]


_RM_LOCK = threading.Lock()


def _stamp(path: str) -> float:
    """When the model folder last changed: a model saved again at the same path is loaded again."""
    from pathlib import Path

    p = Path(path)
    files = [p / "config.json", *p.glob("*.safetensors")] if p.is_dir() else [p]
    return max((f.stat().st_mtime for f in files if f.exists()), default=0.0)


@functools.lru_cache(maxsize=2)
def _load_reward_model(path: str, stamp: float) -> tuple[Any, Any]:
    """Tokenizer and model, loaded once per (path, stamp): a reward service or a GRPO run asks for
    every request or step, and loading takes seconds."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.pad_token_id
    return tok, model


def reward_model(spec: VerifierSpec, items: list[Item], corpus: Corpus, batch_size: int = 8) -> list[VerifierResult]:
    """Score (prompt, response) with a sequence-classification reward model; score = sigmoid(logit)."""
    import torch

    row = resolve_reward_model(corpus, spec.model)
    try:
        with _RM_LOCK:  # two request threads asking at once load it once
            tok, model = _load_reward_model(row["path"], _stamp(row["path"]))
    except Exception as e:
        raise UserError(f"reward model {row['id']} at {row['path']} cannot be loaded ({str(e).splitlines()[0][:160]}); "
                        "check the models table row") from None
    texts = []
    for prompt, resp in items:
        msgs = list(prompt.get("messages") or []) + [{"role": "assistant", "content": resp}]
        if tok.chat_template:
            texts.append(tok.apply_chat_template(msgs, tokenize=False))
        else:
            texts.append("\n".join(f"{m['role']}: {m['content']}" for m in msgs))
    out = []
    with torch.inference_mode():
        for s in range(0, len(texts), batch_size):
            enc = tok(texts[s : s + batch_size], return_tensors="pt", padding=True, truncation=True, max_length=2048)
            logits = model(**enc).logits[:, 0].float().tolist()
            for raw in logits:
                out.append(VerifierResult(1 / (1 + math.exp(-raw)), {"reward": raw, "model_id": row["id"]}))
    return out


def run_verifier(spec: VerifierSpec, items: list[Item], corpus: Corpus, unsafe_exec: bool = False) -> list[VerifierResult]:
    if spec.type == "code_exec":
        return code_exec(spec, items, unsafe=unsafe_exec)
    if spec.type == "reward_model":
        return reward_model(spec, items, corpus)
    return {"regex": regex, "json_schema": json_schema, "length": length, "checkable": checkable}[spec.type](spec, items)
