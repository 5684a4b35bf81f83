"""The judge: YAML rubrics, LLM judges that resist known biases, verifiers, juries, a bias audit.

Public: `run_judge(corpus, rubric_path, where=None, backend=None, progress=True)`,
`run_audit(corpus, rubric_path, plot=None)`, `load_rubric(path)`.
"""

from .rubric import Rubric, load_rubric
from .run import run_judge

__all__ = ["Rubric", "load_rubric", "run_judge"]
