"""One served item -> its reward: the rubric's criteria scored as `python -m judge` scores them.

The same parts as the batch judge: `pointwise_request` and the judge's parser (through
`calls.ask` / `calls.to_records`), the verifiers (code_exec only in its sandbox), the jury's
aggregation, the rubric's weights. What differs is the unit of work: one (prompt, response) at a
time, so each item can time out on its own, and records go to a writer instead of the file.

The reward is the rubric-weighted mean of the criteria that got a score, in [0, 1] (the
`generation_scores` view computes the same from `criterion_scores`). An item none of whose
criteria could be scored has no reward and carries the reason instead.
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field

from backends import Backend, CachedBackend, load_backend
from corpus import Corpus, Failure, Flag, Generation, Judgment, Prompt, Record, UserError, canonical_json, content_id

from .calls import LLMTask, ask, to_records
from .injection import find_injection
from .jury import aggregate as combine
from .jury import human_agreement_weights, item_agreement
from .records import CriterionScore
from .render import pointwise_request
from .rubric import Criterion, JudgeSpec, load_rubric
from .run import judge_name
from .serve_log import MemoryCalls, ServedReward
from .verifiers import preflight, resolve_reward_model, run_verifier


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant", "tool"]
    content: str


class ServeItem(BaseModel):
    """What a trainer sends per rollout."""

    model_config = ConfigDict(extra="forbid")
    prompt: str | list[Message] = Field(description="the prompt: text, or chat messages ending with a user turn")
    response: str = Field(description="the policy's reply to score")
    label: Any = Field(None, description="ground truth (verifiers read it as the prompt's meta.label)")
    metadata: dict[str, Any] = Field(default_factory=dict, description="the prompt's meta: tests, checks, entry_point, ...")

    def messages(self) -> list[dict[str, str]]:
        if isinstance(self.prompt, str):
            return [{"role": "user", "content": self.prompt}]
        return [m.model_dump() for m in self.prompt]

    def meta(self) -> dict[str, Any]:
        meta = dict(self.metadata)
        if self.label is not None:
            meta.setdefault("label", self.label)
        return meta


@dataclass
class Scored:
    """One item's answer, and the rows that record it."""

    reward: float | None
    scores: dict[str, float | None]
    flags: list[str]
    error: str | None = None
    transient: bool = False  # an infrastructure failure: not cached, asked again next time
    records: list[Record] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        return {"reward": self.reward, "scores": self.scores, "flags": self.flags, "error": self.error}


_THREAD_SAFE = ("openai", "fake")  # backends that may be called from several threads at once


class RubricScorer:
    """A rubric loaded once, its judges and their call cache, and a reward cache."""

    def __init__(self, corpus: Corpus, rubric_path: str, run_id: str, write: Callable[[list[Record]], None],
                 backend: Backend | None = None, limits: dict[str, Any] | None = None, unsafe_exec: bool = False,
                 cache_size: int = 100_000):
        rubric = load_rubric(rubric_path)
        if rubric.mode != "pointwise":
            raise UserError(f"{rubric_path}: mode {rubric.mode}; the reward service scores one response at a time: "
                            "serve a pointwise rubric")
        if rubric.llm_criteria() and not rubric.judges and backend is None:
            raise UserError(f"{rubric_path}: the rubric has LLM criteria but `judges: []`; add a judge or pass --judge-backend")
        if any(s.method == "logprob" for s in rubric.judges) and rubric.llm_criteria():
            raise UserError(f"{rubric_path}: method: logprob judges are not served; use method: generate")
        for c in rubric.verifier_criteria():
            if c.verifier and c.verifier.type == "reward_model":
                resolve_reward_model(corpus, c.verifier.model)  # refuse at startup, not on every request
        self.isolation = preflight([c.verifier for c in rubric.verifier_criteria() if c.verifier], unsafe_exec)
        self.rubric, self.corpus, self.run_id, self.write = rubric, corpus, run_id, write
        self.unsafe_exec = unsafe_exec
        self.calls = MemoryCalls(write)
        self.specs, self.names, self.backends = self._judges(backend, limits or {})
        serial = any(b.inner.name not in _THREAD_SAFE for b in self.backends)
        self.shared = [SharedCalls(b, senders=1 if serial else 8) for b in self.backends]
        # read once at startup: a request never reads the corpus
        self.jury_weights = human_agreement_weights(corpus, rubric.name, rubric.version) if rubric.aggregation == "weighted" else {}
        self.cache: dict[str, Scored] = {}
        self.cache_size = cache_size
        self._cache_lock = threading.Lock()
        self.hits = 0

    def _judges(self, given: Backend | None, limits: dict[str, Any]) -> tuple[list[JudgeSpec], list[str], list[CachedBackend]]:
        if not self.rubric.llm_criteria():
            return [], [], []
        if given is not None:
            spec = self.rubric.judges[0] if self.rubric.judges else JudgeSpec()
            return [spec], [f"{given.name}:{given.model_id}"], [CachedBackend(given, self.calls, run_id=self.run_id, hold_s=0)]
        specs, names, loaded = list(self.rubric.judges), [], []
        for spec in specs:
            opts = {"base_url": spec.base_url, "api_key_env": spec.api_key_env} if spec.backend == "openai" else {}
            if spec.backend == "openai" and "timeout" in limits:
                opts["timeout"] = limits["timeout"]
            inner = load_backend(spec.backend, spec.model, **opts)
            names.append(judge_name(spec))
            loaded.append(CachedBackend(inner, self.calls, run_id=self.run_id, hold_s=0))
        return specs, names, loaded

    def close(self) -> None:
        for sc in self.shared:
            sc.close()
        for b in self.backends:
            b.close()

    # -- the reward cache --------------------------------------------------------------------

    def key(self, item: ServeItem) -> str:
        return content_id("served_reward", {"rubric_hash": self.rubric.rubric_hash, "messages": item.messages(),
                                            "response": item.response, "meta": item.meta()})

    def warm(self, limit: int = 100_000) -> int:
        """Fill the reward cache from earlier served rewards of this rubric version, and the call
        cache from earlier servers' judge answers (startup only: a request never reads the file).
        The calls matter after a kill: items judged but not yet answered are not paid for twice."""
        if self.backends:
            calls = self.corpus.query(
                "SELECT key, response FROM calls WHERE status <> 'failed' AND run_id IN "
                "(SELECT id FROM runs WHERE command = 'judge serve') ORDER BY created_at DESC LIMIT ?", [limit])
            self.calls.preload([{"key": c["key"], "response": json.loads(c["response"])} for c in calls])
        rows = self.corpus.query(
            "SELECT reward_key, any_value(reward) AS reward, any_value(scores) AS scores, any_value(flags) AS flags "
            "FROM served_rewards WHERE rubric_hash = ? AND error IS NULL GROUP BY reward_key "
            "ORDER BY max(created_at) DESC LIMIT ?", [self.rubric.rubric_hash, limit])
        for r in rows:
            self.cache[r["reward_key"]] = Scored(r["reward"], json.loads(r["scores"] or "{}"), json.loads(r["flags"] or "[]"))
        return len(rows)

    def lookup(self, key: str) -> Scored | None:
        with self._cache_lock:
            hit = self.cache.get(key)
            if hit is not None:
                self.hits += 1
            return hit

    def remember(self, key: str, s: Scored) -> None:
        if s.transient or s.error:
            return
        with self._cache_lock:
            if len(self.cache) >= self.cache_size:
                self.cache.pop(next(iter(self.cache)))
            self.cache[key] = Scored(s.reward, s.scores, s.flags)

    # -- scoring -----------------------------------------------------------------------------

    def served_row(self, item: ServeItem, key: str, s: Scored, caller_run: str | None, step: int | None, slot: int,
                   cached: bool, latency_ms: float) -> ServedReward:
        prompt_id, gen_id = self._ids(item)
        r = self.rubric
        return ServedReward(reward_key=key, generation_id=gen_id, prompt_id=prompt_id, rubric=r.name,
                            rubric_version=r.version, rubric_hash=r.rubric_hash, reward=s.reward, scores=s.scores,
                            flags=s.flags, error=s.error, label=None if item.label is None else canonical_json(item.label),
                            caller_run=caller_run, step=step, slot=slot, cached=cached, latency_ms=round(latency_ms, 3),
                            run_id=self.run_id)

    def _ids(self, item: ServeItem) -> tuple[str, str]:
        prompt_id = content_id(Prompt.table, {"messages": item.messages()})
        gen_id = content_id(Generation.table, {f: v for f, v in self._generation_fields(item, prompt_id).items()
                                               if f in Generation.id_fields})
        return prompt_id, gen_id

    @staticmethod
    def _generation_fields(item: ServeItem, prompt_id: str) -> dict[str, Any]:
        # a generation's id does not hash its text; the response's hash in params keeps two
        # replies to one prompt apart
        digest = hashlib.sha256(item.response.encode("utf-8", "replace")).hexdigest()[:16]
        return {"prompt_id": prompt_id, "backend": "served", "model": str(item.metadata.get("model") or "policy"),
                "params": {"response_sha256": digest}, "sample_idx": 0, "provenance": "model", "parent_id": None}

    def score(self, item: ServeItem) -> Scored:
        """Score one item (no cache); never raises for the item's own content."""
        messages, meta = item.messages(), item.meta()
        prompt = Prompt(messages=messages, source="served", meta=meta, run_id=self.run_id)
        gen = Generation(**self._generation_fields(item, prompt.id), response=item.response, run_id=self.run_id)
        recs: list[Record] = [prompt, gen]
        base = {"target_id": gen.id, "target_kind": "generation", "rubric": self.rubric.name,
                "rubric_version": self.rubric.version, "rubric_hash": self.rubric.rubric_hash}
        per: dict[str, dict[str, list[float]]] = {}
        errors: list[str] = []
        transient = False
        if self.backends:
            transient |= self._llm(messages, item.response, base, per, recs, errors)
        transient |= self._verifiers({"messages": messages, "meta": meta}, item.response, base, per, recs, errors)
        hit = find_injection(item.response)
        if hit:
            recs.append(Flag(target_id=gen.id, kind="judge_injection", stage="judge", run_id=self.run_id,
                             reason=f"planted instruction: {hit!r}", details={"match": hit}))
        scores = self._aggregate(gen.id, prompt.id, per, recs)
        weighted = [(c.weight, scores[c.name]) for c in self.rubric.criteria if scores.get(c.name) is not None and c.weight > 0]
        total = sum(w for w, _ in weighted)
        reward = sum(w * s for w, s in weighted) / total if total else None
        low = self.rubric.flags.low_score
        if reward is not None and low is not None and reward < low:
            recs.append(Flag(target_id=gen.id, kind="low_score", stage="judge", run_id=self.run_id,
                             reason=f"overall {reward:.2f} < {low}"))
        error = None if reward is not None else ("no criterion could be scored: " + "; ".join(errors))[:500]
        flags = sorted({r.kind for r in recs if isinstance(r, Flag)})
        return Scored(None if reward is None else round(reward, 6), scores, flags, error, transient, recs)

    def _llm(self, messages: list[dict[str, str]], response: str, base: dict[str, Any], per: dict, recs: list[Record],
             errors: list[str]) -> bool:
        tasks = []
        for c in self.rubric.llm_criteria():
            chash = self.rubric.criterion_hash(c)
            for j, (spec, name) in enumerate(zip(self.specs, self.names)):
                for s in range(spec.samples):
                    req = pointwise_request(self.rubric, c, spec, messages, response, s,
                                            bool(self.backends[j].supports_logprobs))
                    fields = {**base, "judge": name, "criterion": c.name, "criterion_hash": chash, "sample_idx": s}
                    tasks.append(LLMTask(request=req, judge_idx=j, fields=fields, lo=c.lo, hi=c.hi))
        outcomes = ask(self.shared, tasks, self.rubric.retries, lambda n: None)  # type: ignore[arg-type]
        judged, counts = to_records(outcomes, self.run_id)
        recs.extend(judged)
        for r in judged:
            if isinstance(r, Judgment) and r.score is not None and r.parse_status != "failed":
                per.setdefault(r.criterion, {}).setdefault(r.judge, []).append(float(r.score))
            elif isinstance(r, Failure):
                errors.append(f"judge: {r.error[:200]}")
            elif isinstance(r, Judgment):
                errors.append(f"{r.criterion}: {str(r.meta.get('error'))[:200]}")
        return counts.get("transient", 0) > 0

    def _verifiers(self, row: dict[str, Any], response: str, base: dict[str, Any], per: dict, recs: list[Record],
                   errors: list[str]) -> bool:
        transient = False
        for c in self.rubric.verifier_criteria():
            spec = c.verifier
            assert spec is not None
            (r,) = run_verifier(spec, [(row, response)], self.corpus, self.unsafe_exec)
            if r.transient:  # the sandbox failed, not the answer: nothing stored, asked again
                errors.append(f"{c.name}: {r.error}")
                transient = True
                continue
            meta = {"detail": r.detail, "score_norm": r.score}
            if r.error:
                meta["error"] = r.error
            recs.append(Judgment(**base, judge=f"verifier:{spec.type}", criterion=c.name,
                                 criterion_hash=self.rubric.criterion_hash(c), score=r.score,
                                 parse_status="failed" if r.score is None else "ok", meta=meta, run_id=self.run_id,
                                 sandbox=r.detail.get("isolation")))
            if r.score is None:
                errors.append(f"{c.name}: {r.error}")
                recs.append(Flag(target_id=base["target_id"], kind="verifier_failed", stage="judge", run_id=self.run_id,
                                 reason=f"{c.name}: {r.error}"[:300], details={"criterion": c.name}))
            else:
                per.setdefault(c.name, {})[f"verifier:{spec.type}"] = [float(r.score)]
        return transient

    def _aggregate(self, gen_id: str, prompt_id: str, per: dict[str, dict[str, list[float]]],
                   recs: list[Record]) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for c in self.rubric.criteria:
            lo, hi = _range(c)
            by_judge = per.get(c.name, {})
            weights = {j: w for (j, crit), w in self.jury_weights.items() if crit == c.name}
            score = combine(by_judge, self.rubric.aggregation, lo, hi, weights)
            flat = [x for xs in by_judge.values() for x in xs]
            agreement = item_agreement(flat, lo, hi)
            norm = None if score is None else (score - lo) / (hi - lo)
            out[c.name] = None if norm is None else round(norm, 6)
            recs.append(CriterionScore(
                generation_id=gen_id, prompt_id=prompt_id, rubric=self.rubric.name, rubric_version=self.rubric.version,
                rubric_hash=self.rubric.rubric_hash, criterion=c.name, criterion_hash=self.rubric.criterion_hash(c),
                kind=c.kind, score=score, score_norm=norm, weight=c.weight, n_judgments=len(flat),
                agreement=None if agreement is None else round(agreement, 6),
                aggregation="weighted" if weights else ("mean" if self.rubric.aggregation == "weighted" else self.rubric.aggregation),
                run_id=self.run_id))
            threshold = self.rubric.flags.jury_disagreement
            if agreement is not None and agreement < threshold:
                recs.append(Flag(target_id=gen_id, kind="jury_disagreement", stage="judge", run_id=self.run_id,
                                 reason=f"{c.name}: agreement {agreement:.2f} < {threshold}",
                                 details={"criterion": c.name, "scores": by_judge}))
        return out


class SharedCalls:
    """One judge backend shared by the items scored at the same time: their calls go out together.

    A backend call has a fixed cost (the openai backend builds a client per call; hf pads a
    batch), which per-item calls paid per item. A sender thread takes the first waiting call
    group, gathers what else arrives within `window_s`, and sends all of it at once; each group
    gets its answers as soon as they have all arrived (the backend streams them), so a slow call
    holds up only its own item, never the items batched with it. `senders` groups may be in
    flight (1 for backends that are not thread-safe, which also serialises them).
    """

    def __init__(self, backend: CachedBackend, senders: int = 8, window_s: float = 0.005):
        self.backend, self.window_s = backend, window_s
        self._q: "queue.Queue[tuple[list, Future] | None]" = queue.Queue()
        for _ in range(senders):
            threading.Thread(target=self._loop, name="judge-calls", daemon=True).start()

    def generate(self, requests: list, progress: Any = None, on_results: Any = None) -> list:
        """What `calls.ask` calls: this group's completions, in order, also handed to `on_results`
        (ask builds its outcomes from that callback)."""
        if not requests:
            return []
        fut: Future = Future()
        self._q.put((list(requests), fut))
        comps = fut.result()
        if on_results is not None:
            on_results(list(enumerate(comps)))
        return comps

    def _loop(self) -> None:
        while True:
            first = self._q.get()
            if first is None:
                self._q.put(None)  # leave the stop mark for the other senders
                return
            groups = [first]
            end = time.monotonic() + self.window_s
            while (left := end - time.monotonic()) > 0:
                try:
                    nxt = self._q.get(timeout=left)
                except queue.Empty:
                    break
                if nxt is None:
                    self._q.put(None)
                    break
                groups.append(nxt)
            self._send(groups)

    def _send(self, groups: list[tuple[list, Future]]) -> None:
        owner, slot, got, left = [], [], [[None] * len(r) for r, _ in groups], [len(r) for r, _ in groups]
        for g, (reqs, _) in enumerate(groups):
            owner += [g] * len(reqs)
            slot += list(range(len(reqs)))
        lock = threading.Lock()

        def arrived(results: list) -> None:
            for i, comp in results:
                with lock:
                    g = owner[i]
                    got[g][slot[i]] = comp
                    left[g] -= 1
                    done = left[g] == 0
                if done:
                    groups[g][1].set_result(got[g])

        try:
            self.backend.generate([r for reqs, _ in groups for r in reqs], on_results=arrived)
        except BaseException as e:  # noqa: BLE001 - an unreachable judge fails every waiting item
            for _, fut in groups:
                if not fut.done():
                    fut.set_exception(e)

    def close(self) -> None:
        self._q.put(None)


def _range(c: Criterion) -> tuple[float, float]:
    return (c.lo, c.hi) if c.kind == "llm" else (0.0, 1.0)
