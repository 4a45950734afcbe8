"""Build notebooks from a compact cell list (dev tool; the committed .ipynb files are the product).

Usage from a per-notebook spec module:  build("00_world_model_token_usage", [md(...), params(...), code(...), ...])
Then `python tools/refresh_notebooks.py` executes them in place with their default parameters.
"""
from __future__ import annotations

from pathlib import Path

import nbformat

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"


def md(src: str):
    return nbformat.v4.new_markdown_cell(src.strip("\n"))


def code(src: str, ignore_output: bool = False):
    s = src.strip("\n")
    if ignore_output:
        s = "# NBVAL_IGNORE_OUTPUT\n" + s
    return nbformat.v4.new_code_cell(s)


def params(src: str):
    c = nbformat.v4.new_code_cell(src.strip("\n"))
    c.metadata["tags"] = ["parameters"]
    return c


def build(name: str, cells: list) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    path = NB_DIR / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path
