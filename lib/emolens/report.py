"""The report of a headless run: ``index.html`` over the executed notebooks, and their HTML exports.

* :func:`export_html` turns an executed notebook into a standalone page with nbconvert's
  ``HTMLExporter`` (the lab template, images embedded), so a run folder can be zipped and shared.
  Notebook content is never hand-rendered here.
* :func:`write_index` writes ``index.html`` for ``emolens notebooks``: a results table (notebook, time,
  key results), per notebook its figures inline and a link to its export, a failed notebook's error in
  one line with a link to its partial output, and the run's parameters, versions and device.
* :func:`write_sweep_index` writes the same kind of page for ``emolens sweep``: the grid table,
  ``sweep.png`` and a link to each point's notebook.

The pages are Jinja2 templates (``templates/*.html.j2``; Jinja2 ships with nbconvert) rendered with
autoescaping; ``runs.json`` beside ``index.html`` holds the same records for scripts.
"""
from __future__ import annotations

import copy
import json
import os
import platform
import time
from pathlib import Path
from typing import Optional, Sequence

TEMPLATES = Path(__file__).with_name("templates")
# Packages whose versions a report records (those installed; missing ones are left out).
VERSIONS_OF = ("emolens", "torch", "transformers", "numpy", "papermill", "nbconvert", "ipywidgets")


def export_html(ipynb: Path) -> Path:
    """``NN_topic.ipynb`` -> ``NN_topic.html`` beside it (nbconvert, lab template, images embedded).

    The saved widget state is dropped first: it would make the page fetch the widget renderer from a
    CDN, and headless runs leave the explorers inert anyway.
    """
    import nbformat
    from nbconvert import HTMLExporter

    ipynb = Path(ipynb)
    nb = nbformat.read(ipynb, as_version=4)
    nb = copy.deepcopy(nb)
    nb.metadata.pop("widgets", None)
    body, _ = HTMLExporter(template_name="lab", embed_images=True).from_notebook_node(nb)
    out = ipynb.with_suffix(".html")
    out.write_text(body, encoding="utf-8")
    return out


def environment() -> dict:
    """Versions of the stack and the device this process sees (what the kernels ran on)."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in VERSIONS_OF:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    device = f"CPU ({platform.machine()}, {os.cpu_count()} cores)"
    try:
        import torch

        if torch.cuda.is_available():
            device = f"CUDA: {torch.cuda.get_device_name(0)} (+ {device})"
    except ImportError:
        pass
    env = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES") if k in os.environ}
    return {"versions": versions, "device": device, "env": env, "host": platform.node(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _render(name: str, **ctx) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = _fmt
    return env.get_template(name).render(**ctx)


def _rel(path: Path, root: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), Path(root).resolve())).as_posix()


def _notebook_entry(r: dict, outp: Path, n_key: int = 8) -> dict:
    """One record of :func:`emolens.runner.execute` -> what the templates show of it."""
    executed = Path(r["executed"])
    html = export_html(executed) if executed.is_file() else None
    summary = r.get("results", {}).get("summary", {})
    return {
        "name": r["notebook"], "stem": Path(r["notebook"]).stem, "seconds": r["seconds"], "error": r.get("error"),
        "html": _rel(html, outp) if html else None,
        "ipynb": _rel(executed, outp) if executed.is_file() else None,
        "key": [(k, v) for k, v in summary.items() if isinstance(v, (int, float, str, bool))][:n_key],
        "figures": [_rel(f, outp) for f in sorted(executed.parent.glob("*.png"))],
        "params": {k: v for k, v in r.get("params", {}).items() if k != "out_dir"},
        "results_json": _rel(executed.parent / "results.json", outp) if (executed.parent / "results.json").is_file() else None,
    }


def write_index(outp: Path, records: Sequence[dict], params: Optional[dict] = None) -> Path:
    """Write ``<outp>/index.html`` (+ each notebook's HTML export and ``runs.json``); returns the index path."""
    outp = Path(outp)
    outp.mkdir(parents=True, exist_ok=True)
    entries = [_notebook_entry(r, outp) for r in records]
    env = environment()
    page = _render("index.html.j2", title="emolens notebook collection", entries=entries, params=params or {},
                   total=sum(r["seconds"] for r in records), n_failed=sum(1 for e in entries if e["error"]), **env)
    index = outp / "index.html"
    index.write_text(page, encoding="utf-8")
    slim = [{k: v for k, v in r.items() if k != "results"} | {"summary": r.get("results", {}).get("summary", {})}
            for r in records]
    (outp / "runs.json").write_text(json.dumps({"records": slim, **env}, indent=1, default=str))
    return index


def write_sweep_index(outp: Path, notebook: Path, grid: dict, table, records: Sequence[dict],
                      params: Optional[dict] = None) -> Path:
    """Write ``<outp>/index.html`` for a sweep: the grid table (``table``, a DataFrame with one row per
    point, in the order of ``records``), ``sweep.png`` and each point's notebook; returns its path."""
    outp = Path(outp)
    entries = [_notebook_entry(r, outp) for r in records]
    columns = [str(c) for c in table.columns]
    rows = [(e, [row[c] for c in table.columns]) for e, (_, row) in zip(entries, table.iterrows())]
    page = _render("sweep.html.j2", title=f"emolens sweep of {Path(notebook).name}", notebook=Path(notebook).name,
                   grid=grid, columns=columns, rows=rows, params=params or {},
                   figure="sweep.png" if (outp / "sweep.png").is_file() else None,
                   csv="sweep.csv" if (outp / "sweep.csv").is_file() else None, **environment())
    index = outp / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
