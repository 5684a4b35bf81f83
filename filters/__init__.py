"""Filters and training sets: dedup, decontamination, quality heuristics, judge-based gates,
rejection-sampling SFT and preference pairs. `python -m filters --help`."""

from .base import Decision, Filter, Item, Step, run_pipeline
from .config import FilterConfig, load_config
from .dedup import ExactDedup, MinHashDedup
from .export import export
from .run import run_filters

__all__ = [
    "Decision", "ExactDedup", "Filter", "FilterConfig", "Item", "MinHashDedup", "Step", "export",
    "load_config", "run_filters", "run_pipeline",
]
