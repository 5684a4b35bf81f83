"""YAML files whose mistakes are reported at their line: rubrics, filter configs, templates."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError, read_text


def load_yaml(path: Path, fix: str = "fix the indentation or quoting") -> tuple[Any, dict[tuple, int]]:
    """(data, key path -> 1-based line). Bad YAML is a UserError naming file:line and `fix`."""
    text = read_text(path, "YAML file")
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise UserError(f"{path}:{line}: not valid YAML ({getattr(e, 'problem', None) or str(e).splitlines()[0]}); {fix}") from None
    except RecursionError:
        raise UserError(f"{path}: YAML nested too deeply; {fix}") from None
    return data, (_line_map(node, (), {}) if node is not None else {})


def _line_map(node: yaml.Node, path: tuple, out: dict[tuple, int]) -> dict[tuple, int]:
    """Every key path (as pydantic reports it in an error's `loc`) -> the line of its key."""
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key: Any = k.value if isinstance(k, yaml.ScalarNode) else str(k.start_mark)  # a complex key (`? [a]`)
            _line_map(v, path + (key,), out)
            out[path + (key,)] = k.start_mark.line + 1
            if isinstance(key, str) and re.fullmatch(r"-?[0-9]+", key):  # `1:` in a scale is the int 1 (not `¹:`)
                out[path + (int(key),)] = k.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _line_map(v, path + (i,), out)
    return out


def line_of(lines: dict[tuple, int], loc: tuple) -> int:
    """The line of `loc`, or of its nearest ancestor in the file; pydantic's own loc parts
    (`function-after[...]`, `literal[...]`) are skipped."""
    loc = tuple(x for x in loc if not (isinstance(x, str) and ("[" in x or x.startswith("function-"))))
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return 1
