"""The one registry of checkable instructions: the reward, the judge's verifier and the eval all
ask it, so a reply cannot pass in training and fail in evaluation.

A check is a dict from a prompt's meta["checks"], e.g. {"type": "max_words", "n": 40}. It is a
top-level package that imports nothing of ours because both judge/ (the `checkable` verifier,
hence the GRPO reward) and train/ (the eval, prompt synthesis) need it and stage packages may
not import each other. Semantics follow IFEval where IFEval defines the check; docs/howto/checks.md
lists every deliberate difference and why.
"""

from .instructions import (
    CHECK_TYPES, CHECKS, Check, CheckType, check_label, check_passes, count_words, pass_fraction, run_checks,
    validate_check, verdicts,
)

__all__ = ["CHECK_TYPES", "CHECKS", "Check", "CheckType", "check_label", "check_passes", "count_words",
           "pass_fraction", "run_checks", "validate_check", "verdicts"]
