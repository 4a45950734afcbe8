"""The package layout reads top-down: the CLI sits on the library, never the other way round.

* Importing :mod:`emolens.evaluate` (what a notebook or a script uses) loads no ``emolens.cli`` module
  (checked in a fresh interpreter, so nothing imported by other tests hides an upward import).
* No module outside ``emolens/cli/`` imports the CLI, at the top or inside a function (static check of
  every file's imports; ``emolens/__main__.py`` is the ``python -m emolens`` entry point and may).
* The files the layout replaced are gone: no ``nbhelpers_*``, ``cli.py``/``cli_extra.py``, or
  single-file ``data.py``.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "lib" / "emolens"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, source: str = None) -> set:
    """Absolute names of every module ``path`` imports (relative imports resolved), anywhere in the file."""
    name = _module_name(path)
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source, str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = pkg.split(".")
                mod = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def _is_cli(module: str) -> bool:
    return module == "emolens.cli" or module.startswith("emolens.cli.")


def test_importing_evaluate_does_not_import_the_cli():
    code = ("import sys, emolens.evaluate, emolens.data, emolens.methods, emolens.analysis.wetr; "
            "bad = sorted(m for m in sys.modules if m == 'emolens.cli' or m.startswith('emolens.cli.')); "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


def test_no_library_module_imports_the_cli():
    offenders = []
    for path in sorted(PKG.rglob("*.py")):
        name = _module_name(path)
        if name.startswith("emolens.cli") or name == "emolens.__main__":
            continue
        hits = sorted(m for m in _imports(path) if _is_cli(m))
        if hits:
            offenders.append(f"{path.relative_to(PKG.parent)} imports {hits}")
    assert not offenders, offenders


def test_import_checker_sees_relative_and_lazy_imports():
    # the static check is not blind: lazy relative imports of the CLI, at any depth, are found
    base = PKG / "methods" / "base.py"
    assert "emolens.cli" in _imports(base, "def f():\n    from ..cli import main\n")
    assert "emolens.cli.eval" in _imports(base, "def f():\n    from ..cli import eval\n")
    assert "emolens.cli" in _imports(PKG / "evaluate.py", "from . import cli\n")
    assert "emolens.cli" in _imports(PKG / "data" / "__init__.py", "from ..cli import main\n")
    assert not any(_is_cli(m) for m in _imports(base, "from ..client import x\nimport emolens.clinic\n"))


@pytest.mark.parametrize("gone", ["nbhelpers_wetr.py", "nbhelpers_sepm_ar.py", "usage.py", "cli.py", "cli_extra.py", "data.py"])
def test_replaced_files_are_gone(gone):
    assert not (PKG / gone).exists(), f"lib/emolens/{gone} was replaced by a package; remove it"
