"""Batch generation jobs and prompt synthesis: `python -m generate ...`."""

from .job import candidate_seed, run_generate
from .sources import load_prompts, prompts_from_sql, record_to_prompt
from .synth import run_synth

__all__ = ["candidate_seed", "load_prompts", "prompts_from_sql", "record_to_prompt", "run_generate", "run_synth"]
