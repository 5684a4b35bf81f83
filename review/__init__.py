"""The human spot-check queue: sampler, terminal and web review, calibration, release gate."""

from .auth import add_reviewer
from .release import release
from .report import agreement_report
from .sampler import sample_queue
from .stats import cohen_kappa, release_gate, wilson_interval
from .verdicts import record_verdict

__all__ = [
    "add_reviewer", "agreement_report", "cohen_kappa", "record_verdict", "release", "release_gate",
    "sample_queue", "wilson_interval",
]
