"""The notebook collection: every notebook declares a proper `parameters` cell, and each runs once
through papermill with small parameters (proving parameterisation works). nbval itself runs on the
committed outputs through the README's test command (pytest --nbval on notebooks/, see pyproject)."""
import ast
import json
from pathlib import Path

import nbformat
import pytest

from emolens.runner import NOTEBOOKS, execute, notebook_paths

NBS = notebook_paths()

# Small parameters per notebook: enough to exercise every cell quickly.
# device="cpu": the papermill runs stay on the CPU (fp32) on a GPU machine too, like the committed outputs.
SMALL = {"n_samples": 12, "n_eval": 12, "n_sweep": 8, "device": "cpu"}


def parameters_cell(nb):
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    return cells


def check_parameters_source(src: str) -> list:
    """Problems with a parameters cell: each non-blank line must be `name: type = <literal>  # comment`
    (papermill reads the annotation as the type and the comment as the help of `--help-notebook`)."""
    problems = []
    for i, line in enumerate(src.splitlines(), 1):
        if not line.strip() or line.strip().startswith("#"):
            continue
        code, sep, comment = line.partition("#")
        if not sep or not comment.strip():
            problems.append(f"line {i} has no comment: {line!r}")
        try:
            tree = ast.parse(code.strip())
        except SyntaxError:
            problems.append(f"line {i} is not a single assignment: {line!r}")
            continue
        if len(tree.body) != 1 or not isinstance(tree.body[0], (ast.Assign, ast.AnnAssign)) or tree.body[0].value is None:
            problems.append(f"line {i} is not a single assignment: {line!r}")
            continue
        node = tree.body[0]
        if not isinstance(node, ast.AnnAssign):
            problems.append(f"line {i} has no type annotation (write `name: int = 3  # help`): {line!r}")
        try:
            value = ast.literal_eval(node.value)
        except ValueError:
            problems.append(f"line {i} is not a literal: {line!r}")
            continue
        if isinstance(node, ast.AnnAssign) and not _annotation_fits(node.annotation, value):
            problems.append(f"line {i}: annotation {ast.unparse(node.annotation)} does not fit the value {value!r}")
    return problems


def test_collection_is_numbered_and_complete():
    names = [p.name for p in NBS]
    assert len(names) >= 8, names
    assert [n[:2] for n in names] == [f"{i:02d}" for i in range(len(names))]


@pytest.mark.parametrize("path", NBS, ids=lambda p: p.name)
def test_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    cells = parameters_cell(nb)
    assert len(cells) == 1, f"{path.name}: exactly one cell tagged 'parameters' expected, found {len(cells)}"
    problems = check_parameters_source(cells[0].source)
    assert not problems, f"{path.name}: " + "; ".join(problems)
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert first_code is cells[0], f"{path.name}: the parameters cell must be the first code cell"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), f"{path.name}: title first"
    assert "out_dir" in cells[0].source and "model" in cells[0].source and "seed" in cells[0].source
    # papermill must parse every line with its comment, so `papermill --help-notebook` documents it
    from emolens.runner import declared_parameters

    declared = declared_parameters(path)
    n_lines = sum(1 for l in cells[0].source.splitlines() if l.strip() and not l.strip().startswith("#"))
    assert len(declared) == n_lines, f"{path.name}: papermill parsed {len(declared)} of {n_lines} parameters"
    undocumented = [k for k, v in declared.items() if not v.get("help")]
    assert not undocumented, f"{path.name}: papermill found no help comment for {undocumented}"
    untyped = [k for k, v in declared.items() if v.get("inferred_type_name") in (None, "None", "")]
    assert not untyped, f"{path.name}: papermill infers no type for {untyped} (`papermill --help-notebook` says Unknown type)"


_SIMPLE = {"int": int, "float": float, "str": str, "bool": bool}


def _annotation_fits(ann, value) -> bool:
    """`int`, `float`, `str`, `bool` or `list[T]` of those, matching the literal (an int fits float)."""
    if isinstance(ann, ast.Name) and ann.id in _SIMPLE:
        t = _SIMPLE[ann.id]
        if t is float:
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        if t is int:
            return isinstance(value, int) and not isinstance(value, bool)
        return isinstance(value, t)
    if isinstance(ann, ast.Subscript) and isinstance(ann.value, ast.Name) and ann.value.id == "list":
        return isinstance(value, list) and all(_annotation_fits(ann.slice, v) for v in value)
    return False


@pytest.mark.parametrize("bad, why", [
    ("n: int = 3", "no comment"),
    ("n = 3  # count", "no type annotation"),
    ("n: int = 0.5  # ratio", "does not fit"),
    ("xs: list[int] = [1, 2.5]  # grid", "does not fit"),
    ("n: int = len([1])  # computed", "not a literal"),
    ("import os  # no", "not a single assignment"),
])
def test_parameters_checker_catches(bad, why):
    assert any(why in p for p in check_parameters_source(bad))


@pytest.mark.parametrize("path", NBS, ids=lambda p: p.name)
def test_runs_with_small_parameters(path, tmp_path):
    from emolens.runner import declared_parameters

    declared = declared_parameters(path)
    params = {k: v for k, v in SMALL.items() if k in declared}
    rec = execute(path, tmp_path, params)
    res = json.loads((tmp_path / "results.json").read_text())
    assert res.get("notebook") == path.stem and "summary" in res
    for k, v in params.items():
        if k == "device":  # not every notebook records it; it is checked through the run itself (CPU)
            continue
        assert res.get("parameters", {}).get(k) == v, f"{path.name}: parameter {k} did not reach the run"
