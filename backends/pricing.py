"""What a run costs: prices per model from the user's YAML file, and the --max-cost budget.

The file (prices change; the engine ships none):

    gpt-4o-mini:            # the model name as given to --model
      input: 0.15           # USD per million prompt tokens
      output: 0.60          # USD per million completion tokens
      batch_discount: 0.5   # batch mode pays this fraction (default 0.5, the usual half price)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .base import BackendError


@dataclass(frozen=True)
class Price:
    input: float
    output: float
    batch_discount: float = 0.5

    def cost(self, prompt_tokens: int, completion_tokens: int, mode: str = "online") -> float:
        usd = (prompt_tokens * self.input + completion_tokens * self.output) / 1e6
        return usd * (self.batch_discount if mode == "batch" else 1.0)


def load_prices(path: str | Path, flag: str = "--prices") -> dict[str, Price]:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackendError(f"{flag} {path}: no such file; write one like `gpt-4o-mini: {{input: 0.15, output: 0.6}}` "
                           "(USD per million tokens)") from None
    except yaml.YAMLError as e:
        raise BackendError(f"{flag} {path}: not YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise BackendError(f"{flag} {path}: expected a mapping model -> {{input, output, batch_discount}}")
    out = {}
    for model, v in data.items():
        try:
            price = Price(**{k: float(x) for k, x in (v or {}).items()})
        except (TypeError, ValueError):
            raise BackendError(f"{flag} {path}: model {model!r}: give input and output in USD per million tokens, "
                               "and optionally batch_discount, e.g. {input: 0.15, output: 0.6}") from None
        if min(price.input, price.output) < 0 or not 0 < price.batch_discount <= 1:
            raise BackendError(f"{flag} {path}: model {model!r}: prices must be >= 0 and batch_discount in (0, 1]")
        out[str(model)] = price
    return out


class Budget:
    """Spent and reserved money of one process; `allow` says whether a send fits under --max-cost.
    A batch is reserved at its worst case (every reply at the token cap) until it is collected."""

    def __init__(self, price: Price | None, max_cost: float | None):
        self.price, self.max_cost = price, max_cost
        self.usage: dict[str, dict[str, int]] = {}
        self.reserved = 0.0
        self.stopped = False

    def add(self, mode: str, prompt_tokens: int, completion_tokens: int) -> None:
        u = self.usage.setdefault(mode, {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0})
        u["requests"] += 1
        u["prompt_tokens"] += prompt_tokens
        u["completion_tokens"] += completion_tokens

    def spent(self) -> float | None:
        if self.price is None:
            return None
        return sum(self.price.cost(u["prompt_tokens"], u["completion_tokens"], m) for m, u in self.usage.items())

    def allow(self, est_prompt: int, est_completion: int, mode: str) -> bool:
        if self.max_cost is None or self.price is None:
            return True
        est = self.price.cost(est_prompt, est_completion, mode)
        if (self.spent() or 0.0) + self.reserved + est > self.max_cost:
            self.stopped = True
            return False
        self.reserved += est
        return True

    def release(self, est_prompt: int, est_completion: int, mode: str) -> None:
        if self.max_cost is not None and self.price is not None:
            self.reserved = max(0.0, self.reserved - self.price.cost(est_prompt, est_completion, mode))

    def summary(self, model: str) -> dict[str, Any]:
        """Tokens per mode and cost, for the run summary."""
        out: dict[str, Any] = {"model": model, "modes": self.usage}
        spent = self.spent()
        out["usd"] = None if spent is None else round(spent, 6)
        return out

    def line(self, model: str) -> str:
        parts = [f"{m}: {u['requests']} requests, {u['prompt_tokens']:,} tokens in, {u['completion_tokens']:,} out"
                 for m, u in sorted(self.usage.items())]
        spent = self.spent()
        usd = f"${spent:.4f}" if spent is not None else "price unknown (--prices FILE)"
        return f"cost: {model} · " + ("; ".join(parts) or "nothing sent") + f" · {usd}"
