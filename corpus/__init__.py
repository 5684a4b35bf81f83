"""The DuckDB corpus: schema, records, batched writes, content-addressed ids."""

from .errors import ArgumentParser, UserError, run_cli
from .ids import canonical_json, content_id
from .records import (
    Call, Failure, Flag, Generation, Judgment, ModelRecord, Pair, Prompt, Record, Release, Review, Run,
)
from .snapshot import snapshot_hash
from .store import BatchWriter, Corpus, code_version

__all__ = [
    "ArgumentParser", "BatchWriter", "Call", "Corpus", "Failure", "Flag", "Generation", "Judgment",
    "ModelRecord", "Pair", "Prompt", "Record", "Release", "Review", "Run", "UserError",
    "canonical_json", "code_version", "content_id", "run_cli", "snapshot_hash",
]
