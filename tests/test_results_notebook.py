"""Notebook 06 and the README show the same verdict table, number for number (issue 14's acceptance).

The table is ``benchmarks/results/verdicts.json`` rendered by ``benchmarks/verdicts.py``'s own
``to_markdown`` (06 calls it; ``verdicts.py --readme`` writes it into the README). The checks: the
README's block is that rendering of the committed JSON, row for row; the committed 06 notebook's
rendered table (once executed) is the README's; and the row comparison notices one changed digit.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- verdicts:start -->", "<!-- verdicts:end -->"


def _verdicts_module():
    spec = importlib.util.spec_from_file_location("verdicts", ROOT / "benchmarks" / "verdicts.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    assert START in text and END in text, "README.md lost its verdict markers"
    return text.split(START, 1)[1].split(END, 1)[0]


def _rows(md: str) -> list:
    """The table's rows (header and separator included), as the README and the notebook print them."""
    return [line.rstrip() for line in md.splitlines() if line.startswith("|")]


def _json():
    return json.loads((ROOT / "benchmarks" / "results" / "verdicts.json").read_text())


def test_readme_verdict_block_is_the_rendering_of_verdicts_json():
    data = _json()
    assert not data.get("partial"), "verdicts.json is from an unfinished run; rerun python benchmarks/verdicts.py"
    rendered = _rows(_verdicts_module().to_markdown(data["claims"]))
    readme = _rows(_readme_block())
    assert len(rendered) == len(data["claims"]) + 2
    assert readme == rendered, ("README's verdict table differs from benchmarks/results/verdicts.json; rerun "
                                "python benchmarks/verdicts.py --readme README.md")
    assert f"(n = {data['n']} test samples per cell" in _readme_block()


def test_row_comparison_notices_one_changed_number():
    data = _json()
    V = _verdicts_module()
    claims = json.loads(json.dumps(data["claims"]))
    p = claims[0]["parts"][0]
    p["ci"] = [round(p["ci"][0] - 0.01, 2), p["ci"][1]]  # one digit of one interval
    assert _rows(V.to_markdown(claims)) != _rows(V.to_markdown(data["claims"]))
    assert sum(a != b for a, b in zip(_rows(V.to_markdown(claims)), _rows(V.to_markdown(data["claims"])))) == 1


def test_notebook_06_renders_the_readme_table():
    """06 renders the table with verdicts.py's renderer; its executed output is the README's block."""
    src = (ROOT / "notebooks" / "06_results.py").read_text()
    assert "V.to_markdown(claims)" in src, "06 must render the table with benchmarks/verdicts.py's to_markdown"
    nb = nbformat.read(ROOT / "notebooks" / "06_results.ipynb", as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and "V.to_markdown(claims)" in c.source]
    assert len(cells) == 1
    shown = [o["data"]["text/markdown"] for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
             if "text/markdown" in o.get("data", {}) and "| claim | paper |" in o["data"]["text/markdown"]]
    if not shown:
        pytest.skip("notebooks/06_results.ipynb has not been executed since its table cell changed "
                    "(make notebooks); the README side is checked above")
    assert _rows(shown[0]) == _rows(_readme_block()), "06's committed table differs from the README's: re-execute 06"
