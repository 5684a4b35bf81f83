"""Checkable instructions for train's eval, heldout figures and prompt synthesis.

The definitions live in the top-level `checks` registry, which the judge's `checkable` verifier
(and so the GRPO reward) uses too: one definition per check, so training and evaluation cannot
disagree. This module keeps the names train's modules import.
"""

from checks import CHECKS, Check, check_passes, pass_fraction, run_checks, validate_check, verdicts

__all__ = ["CHECKS", "Check", "check_passes", "pass_fraction", "run_checks", "validate_check", "verdicts"]
