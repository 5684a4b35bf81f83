"""A trained reward model as a scorer: (conversation, reply) -> a scalar reward.

Used by `python -m train eval` (accuracy on held-out pairs) and by the loop, where the latest
reward model joins the judge's jury through the judge's `reward_model` verifier.
"""

from __future__ import annotations

from typing import Any

from corpus import UserError


class RewardScorer:
    def __init__(self, path: str, batch_size: int = 8, max_length: int = 1024):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            self.tok = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1).eval()
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: cannot load as a reward model ({str(e).splitlines()[0]})") from e
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.model.config.pad_token_id = self.tok.pad_token_id
        self.tok.padding_side = "right"
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        self.batch_size, self.max_length = batch_size, max_length

    def score(self, conversations: list[list[dict[str, str]]]) -> list[float]:
        """Each conversation ends with the assistant reply to be scored."""
        import torch

        out: list[float] = []
        for i in range(0, len(conversations), self.batch_size):
            texts = [self.tok.apply_chat_template(c, tokenize=False) for c in conversations[i:i + self.batch_size]]
            enc = self.tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length,
                           add_special_tokens=False).to(self.device)
            with torch.no_grad():
                out += self.model(**enc).logits[:, 0].float().tolist()
        return out

    def pair_accuracy(self, pairs: list[dict[str, Any]]) -> dict[str, float]:
        """Share of pairs where chosen outscores rejected, and the mean margin."""
        if not pairs:
            return {"rm_accuracy": float("nan"), "rm_pairs": 0}
        chosen = self.score([p["prompt"] + p["chosen"] for p in pairs])
        rejected = self.score([p["prompt"] + p["rejected"] for p in pairs])
        wins = [c > r for c, r in zip(chosen, rejected)]
        return {
            "rm_accuracy": sum(wins) / len(wins),
            "rm_margin": sum(c - r for c, r in zip(chosen, rejected)) / len(wins),
            "rm_pairs": len(pairs),
        }
