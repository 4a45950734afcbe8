"""Headless execution of the notebook collection and parameter sweeps, through papermill's own API.

* :func:`run_collection` executes ``notebooks/NN_*.ipynb`` (optionally filtered) with the current
  environment's kernel (the venv's ``python3`` kernelspec, installed into the venv by ``make setup``;
  when none is registered we pass ``kernel_name=None`` and papermill uses the notebook's own), and
  writes the executed notebooks, every notebook's ``results.json`` and an ``index.md`` / ``index.html``.
* parameter sweeps live in :mod:`emolens.sweep` (``parse_grid`` and ``run_sweep`` are re-exported here).

Every notebook takes an ``out_dir`` parameter and writes ``<out_dir>/results.json`` (a flat dict of
scalars under ``"summary"`` plus anything else), which is what sweeps and the index read.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional, Sequence

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"


def notebook_paths(only: Optional[str] = None, folder: Path = NOTEBOOKS) -> list:
    """The collection in reading order (``NN_topic.ipynb``), filtered by a substring/glob ``only``."""
    import fnmatch

    nbs = sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))
    if only:
        pat = only if any(c in only for c in "*?[") else f"*{only}*"
        nbs = [p for p in nbs if fnmatch.fnmatch(p.name, pat)]
        if not nbs:
            raise ValueError(f"no notebook in {folder} matches {only!r}; available: {[p.name for p in sorted(folder.glob('[0-9][0-9]_*.ipynb'))]}")
    return nbs


def _coerce(v: str):
    """CLI strings -> Python literals where they parse (``3`` -> 3, ``0.2`` -> 0.2, ``true`` -> True)."""
    import ast

    if isinstance(v, str):
        low = v.lower()
        if low in ("true", "false"):
            return low == "true"
        try:
            return ast.literal_eval(v)
        except (ValueError, SyntaxError):
            return v
    return v


def _kernel_name() -> Optional[str]:
    try:
        from jupyter_client.kernelspec import KernelSpecManager

        specs = KernelSpecManager().find_kernel_specs()
        return "python3" if "python3" in specs else None
    except Exception:  # noqa: BLE001 - no jupyter_client: let papermill decide
        return None


def declared_parameters(path: Path) -> dict:
    """The parameters a notebook declares (papermill's own inspection)."""
    import papermill as pm

    return pm.inspect_notebook(str(path))


def execute(path: Path, out_dir: Path, params: dict, progress: bool = False) -> dict:
    """Execute one notebook into ``out_dir`` with ``params`` (+ ``out_dir``); returns a run record."""
    import papermill as pm

    declared = declared_parameters(path)
    unknown = sorted(k for k in params if k not in declared)
    if unknown:
        raise ValueError(f"{path.name} has no parameter(s) {unknown}; it declares {sorted(declared)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    p = dict(params)
    if "out_dir" in declared:
        p["out_dir"] = str(out_dir.resolve())  # the kernel runs in notebooks/: pass an absolute path
    t0 = time.time()
    pm.execute_notebook(str(path), str(out_dir / path.name), parameters=p, kernel_name=_kernel_name(),
                        cwd=str(path.parent), progress_bar=progress, log_output=False)
    seconds = time.time() - t0
    res_path = out_dir / "results.json"
    results = json.loads(res_path.read_text()) if res_path.is_file() else {}
    return {"notebook": path.name, "seconds": round(seconds, 1), "params": p, "results": results,
            "executed": str(out_dir / path.name)}


def run_collection(out: str = "runs/notebooks", only: Optional[str] = None, params: Optional[dict] = None) -> list:
    """Execute the collection headless; write executed notebooks + ``index.md``/``index.html``."""
    from tqdm.auto import tqdm

    outp = Path(out)
    params = {k: _coerce(v) for k, v in (params or {}).items()}
    records = []
    for nb in tqdm(notebook_paths(only), desc="notebooks"):
        declared = declared_parameters(nb)
        mine = {k: v for k, v in params.items() if k in declared}  # collection-wide -p applies where declared
        records.append(execute(nb, outp / nb.stem, mine))
    write_index(outp, records)
    return records


def write_index(outp: Path, records: Sequence[dict]) -> None:
    lines = ["# emolens notebook collection: results", "",
             "| notebook | seconds | key results |", "|---|---:|---|"]
    for r in records:
        summ = r["results"].get("summary", {})
        txt = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(summ.items())[:8])
        lines.append(f"| [{r['notebook']}]({Path(r['executed']).relative_to(outp)}) | {r['seconds']} | {txt} |")
    total = sum(r["seconds"] for r in records)
    lines += ["", f"Total: {total:.1f} s for {len(records)} notebooks.", ""]
    for r in records:
        figs = sorted(Path(r["executed"]).parent.glob("*.png"))
        if figs:
            lines.append(f"## {r['notebook']}")
            lines += [f"![{f.name}]({f.relative_to(outp)})" for f in figs]
            lines.append("")
    (outp / "index.md").write_text("\n".join(lines))
    (outp / "runs.json").write_text(json.dumps([{k: v for k, v in r.items() if k != "results"} | {"summary": r["results"].get("summary", {})} for r in records], indent=1, default=str))
    try:
        import markdown  # optional

        html = markdown.markdown("\n".join(lines), extensions=["tables"])
    except ImportError:  # plain fallback keeps the index readable without extra packages
        import html as _h

        html = "<pre>" + _h.escape("\n".join(lines)) + "</pre>"
    (outp / "index.html").write_text(f"<html><body>{html}</body></html>")


# The sweep moved to emolens.sweep (executors local/submitit/ray); re-exported for older callers.
from .sweep import parse_grid, run_sweep  # noqa: E402,F401
