"""A client of the reward service (`python -m judge serve`), with nothing but the standard library.

It lives in backends/ because backends import nothing of ours: train/ (and any trainer's own
code: TRL, verl, a Ray worker) can import it without importing the judge, and it can be copied
into a project that does not install the engine at all.

- `RewardClient(url).score(items, step=...)`: the JSON batch endpoint, with retries on dropped
  connections and 5xx, and on 429 after the server's Retry-After.
- `trl_reward(url)`: a TRL `reward_funcs` entry (None where the item could not be scored).
- `compute_score(data_source, solution_str, ground_truth, extra_info=None)`: verl's custom
  reward function; the URL comes from $RLAIF_REWARD_URL.

The bearer token is read from an environment variable (default RLAIF_REWARD_TOKEN) and sent
only in the Authorization header; no error text carries it.
"""

from __future__ import annotations

import json
import os
import random
import time
import urllib.error
import urllib.request
from typing import Any


class RewardServiceError(RuntimeError):
    """The service refused the request (4xx other than 429) or stayed unreachable."""


class RewardClient:
    def __init__(self, url: str, *, run: str | None = None, token_env: str = "RLAIF_REWARD_TOKEN",
                 timeout_s: float = 600.0, retries: int = 8, backoff_s: float = 0.5):
        self.url = url.rstrip("/")
        self.run, self.timeout_s, self.retries, self.backoff_s = run, timeout_s, retries, backoff_s
        self._token = os.environ.get(token_env) or None

    def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        last = ""
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(self.url + path, data=body, headers=headers, method="POST")
            wait = min(30.0, self.backoff_s * 2 ** attempt) * random.uniform(0.5, 1.0)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as e:
                reason = _reason(e)
                if e.code == 429:
                    wait = float(e.headers.get("Retry-After") or wait)
                elif e.code < 500:
                    raise RewardServiceError(f"{self.url}{path}: HTTP {e.code}: {reason}") from None
                last = f"HTTP {e.code}: {reason}"
            except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            if attempt < self.retries:
                time.sleep(wait)
        raise RewardServiceError(f"{self.url}{path}: no answer after {self.retries + 1} tries ({last})")

    def score(self, items: list[dict[str, Any]], step: int | None = None) -> list[dict[str, Any]]:
        """items: [{"prompt": str | messages, "response": str, "label"?: any, "metadata"?: {}}] ->
        [{"reward", "scores", "flags", "error", "cached"}], in order."""
        payload: dict[str, Any] = {"items": items}
        if self.run is not None:
            payload["run"] = self.run
        if step is not None:
            payload["step"] = int(step)
        return self._post("/v1/rewards", payload)["items"]

    def rewards(self, items: list[dict[str, Any]], step: int | None = None) -> list[float | None]:
        return [r["reward"] for r in self.score(items, step)]


def _reason(e: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(e.read()).get("error"))[:300]
    except Exception:  # noqa: BLE001 - a proxy's HTML page: the status is enough
        return e.reason or ""


def _text(x: Any) -> Any:
    """TRL's conversational completions are [{'role': 'assistant', 'content': ...}]."""
    if isinstance(x, list):
        return x[-1]["content"] if x else ""
    return x


def trl_reward(url: str, *, run: str | None = None, label_key: str = "label", meta_key: str = "meta",
               **client_options: Any):
    """A TRL GRPO reward function backed by the service: `GRPOTrainer(reward_funcs=[trl_reward(url)])`.

    Dataset columns reach it as keywords: `label_key` becomes each item's label, `meta_key` (a
    dict or a JSON string) its metadata; the trainer's global step tags the rewards."""
    client = RewardClient(url, run=run, **client_options)

    def served_reward(prompts: list, completions: list, trainer_state: Any = None, **kw: Any) -> list[float | None]:
        labels = kw.get(label_key) or [None] * len(prompts)
        metas = kw.get(meta_key) or [None] * len(prompts)
        items = []
        for p, c, lb, m in zip(prompts, completions, labels, metas):
            item: dict[str, Any] = {"prompt": p, "response": _text(c)}
            if lb is not None:
                item["label"] = lb
            meta = json.loads(m) if isinstance(m, str) else m
            if meta:
                item["metadata"] = meta
            items.append(item)
        step = getattr(trainer_state, "global_step", None)
        return client.rewards(items, step=step)

    return served_reward


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict[str, Any] | None = None) -> float:
    """verl's custom reward function (custom_reward_function.path = this file, name = compute_score).

    The service is named by $RLAIF_REWARD_URL (and $RLAIF_REWARD_RUN tags the run); extra_info's
    "prompt" (text or messages) and "metadata" are sent when present, and extra_info's "step"
    tags the step. An item the service could not score gets 0.0: verl needs a number."""
    url = os.environ.get("RLAIF_REWARD_URL")
    if not url:
        raise RewardServiceError("set RLAIF_REWARD_URL to the reward service, e.g. http://127.0.0.1:8100")
    info = extra_info or {}
    item: dict[str, Any] = {"prompt": info.get("prompt") or "", "response": solution_str,
                            "metadata": {"data_source": data_source, **(info.get("metadata") or {})}}
    if ground_truth is not None:
        item["label"] = ground_truth
    client = RewardClient(url, run=os.environ.get("RLAIF_REWARD_RUN"))
    (reward,) = client.rewards([item], step=info.get("step"))
    return 0.0 if reward is None else float(reward)
