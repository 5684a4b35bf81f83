"""Training: SFT, reward model and DPO with TRL on released data; the model registry; eval;
checkable-instruction prompts; and the model-trains-model loop (train/loop.py)."""

from .trainers import KINDS, train_model

__all__ = ["KINDS", "train_model"]
