"""The Python code in a model's answer, and the tests in a prompt's metadata.

Answers are Markdown: fenced blocks (``` or ~~~, indented inside list items, info strings like
`python`, `python3`, `py`) among prose and blocks in other languages. CommonMark parsing is
markdown-it-py's job, not a regex's: it pairs fences correctly, so a ```bash block before the
```python block is not read as code.
"""

from __future__ import annotations

import ast
import re
from typing import Any

from markdown_it import MarkdownIt

from .sandbox import parse_python

_MD = MarkdownIt("commonmark")
PYTHON_INFO = {"python", "python3", "py", "py3", "python2", "pycon", "ipython"}


# What ast.parse raises on text that is not Python it can build a tree of: a syntax error, a NUL
# byte, or (an answer's `x = a.b.b.b...` or `- - - ... 1`, 200,000 deep) the parser's own
# recursion and memory limits. An answer must never crash the verifier with them: such a block
# simply does not parse (and fails in the sandbox, as written).
_UNPARSABLE = (SyntaxError, ValueError, RecursionError, MemoryError)


def _parse(code: str) -> ast.Module | None:
    try:
        return parse_python(code)
    except _UNPARSABLE:
        return None


def _defines(code: str, name: str) -> bool:
    tree = _parse(code)
    if tree is None:
        return re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.name == name for n in ast.walk(tree))


def _parses(code: str) -> bool:
    return _parse(code) is not None


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of every fenced block, in order; language is the info string's first word."""
    out = []
    for tok in _MD.parse(text):
        if tok.type == "fence":
            lang = (tok.info.split() or [""])[0].lower().strip("{}.")
            out.append((lang, tok.content))
    return out


def extract_code(response: str, entry_point: str | None = None) -> str:
    """The answer's Python: its Python blocks assembled in order (helpers, then the solution; a
    later definition replaces an earlier one, as in a module), without usage blocks (blocks that
    define nothing) and without blocks that do not parse, unless nothing else is left. Tagged
    blocks count; untagged ones when they parse. No fences: the whole answer."""
    blocks = fenced_blocks(response)
    if not blocks:
        return response
    tagged = [code for lang, code in blocks if lang in PYTHON_INFO and code.strip()]
    untagged = [code for lang, code in blocks if lang == "" and code.strip() and _parses(code)]
    pool = tagged or untagged
    if not pool:
        return ""
    usable = [c for c in pool if _parses(c)]
    defining = [c for c in usable if _top_level_defs(c)]
    if entry_point and not any(_defines(c, entry_point) for c in defining):
        # the block meant to hold the solution does not parse: keep it, so the answer fails as written
        broken = [c for c in pool if not _parses(c) and _defines(c, entry_point)]
        if broken:
            return broken[-1]
    chosen = defining or usable or pool[-1:]
    return "\n\n".join(c.rstrip("\n") for c in chosen) + "\n"


def _top_level_defs(code: str) -> bool:
    """Does a (parsing) block define anything at module level: a def, class, import or assignment?"""
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom, ast.Assign, ast.AnnAssign)
    # `try: import numpy ... except ImportError:` and `if sys.version_info ...: def f()` define too
    return any(isinstance(n, kinds) or (isinstance(n, (ast.If, ast.Try, ast.With))
                                        and any(isinstance(m, kinds[:5]) for m in ast.walk(n)))
               for n in (_parse(code) or ast.Module(body=[], type_ignores=[])).body)


def read_tests(tests: Any) -> str | None:
    """Tests as given: a string of Python, or a list of assert statements (MBPP's test_list)."""
    if isinstance(tests, str):
        return tests if tests.strip() else None
    if isinstance(tests, list) and tests and all(isinstance(t, str) for t in tests):
        return "\n".join(t.rstrip() for t in tests) + "\n"
    return None


def read_imports(imports: Any) -> str | None | bool:
    """The tests' imports (MBPP's test_imports: a list of lines, or one string); None when absent,
    False when present but not Python."""
    if imports is None or imports == [] or imports == "":
        return None
    text = read_tests(imports)
    return text if text is not None and _parses(text) else False


def defines(code: str, name: str) -> bool:
    """Does the code define a function or class called `name` (anywhere in it)?"""
    return _defines(code, name)
