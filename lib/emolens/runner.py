"""Headless execution of the notebook collection and parameter sweeps, through papermill's own API.

* :func:`run_collection` executes ``notebooks/NN_*.ipynb`` (optionally filtered) with the current
  environment's kernel (the venv's ``python3`` kernelspec, installed into the venv by ``make setup``;
  when none is registered we pass ``kernel_name=None`` and papermill uses the notebook's own), and
  writes the executed notebooks, every notebook's ``results.json`` and the report (``index.html``).
* parameter sweeps live in :mod:`emolens.sweep` (``parse_grid`` and ``run_sweep`` are re-exported here).
* :func:`refresh` executes the committed notebooks in place (``emolens notebooks --refresh``,
  ``make notebooks``), then :func:`clean_notebook` strips what an execution leaves that is not content
  (papermill's timings, widget state, execution-count gaps); :func:`notebook_noise` and
  :func:`pair_problems` are the checks the tests run on the committed notebooks.

The report pages (``index.html``, the nbconvert HTML export of each notebook) come from :mod:`emolens.report`.

Every notebook takes an ``out_dir`` parameter and writes ``<out_dir>/results.json`` (a flat dict of
scalars under ``"summary"`` plus anything else), which is what sweeps and the index read.
"""
from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Optional

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


class NotebooksFailed(ValueError):
    """Some notebooks of a run raised; the report is written, this names them (one line for the CLI)."""


def execute(path: Path, out_dir: Path, params: dict, progress: bool = False, keep_going: bool = False) -> dict:
    """Execute one notebook into ``out_dir`` with ``params`` (+ ``out_dir``); returns a run record.

    With ``keep_going`` a failing notebook does not raise: the record's ``error`` is the exception in
    one line and ``executed`` is the partial output papermill wrote up to the failing cell.
    """
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    declared = declared_parameters(path)
    unknown = sorted(k for k in params if k not in declared)
    if unknown:
        raise ValueError(f"{path.name} has no parameter(s) {unknown}; it declares {sorted(declared)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    p = dict(params)
    if "out_dir" in declared:
        p["out_dir"] = str(out_dir.resolve())  # the kernel runs in notebooks/: pass an absolute path
    res_path = out_dir / "results.json"
    res_path.unlink(missing_ok=True)  # a stale results.json from an earlier run must not pass for this one
    t0 = time.time()
    error = None
    try:
        pm.execute_notebook(str(path), str(out_dir / path.name), parameters=p, kernel_name=_kernel_name(),
                            cwd=str(path.parent), progress_bar=progress, log_output=False)
    except PapermillExecutionError as e:
        if not keep_going:
            raise
        first = str(e.evalue).strip().splitlines()[0] if str(e.evalue).strip() else ""
        error = f"In [{e.exec_count}]: {e.ename}: {first}" if first else f"In [{e.exec_count}]: {e.ename}"
    seconds = time.time() - t0
    results = json.loads(res_path.read_text()) if res_path.is_file() else {}
    return {"notebook": path.name, "seconds": round(seconds, 1), "params": p, "results": results,
            "executed": str(out_dir / path.name), "error": error}


#: Each notebook's seconds in the last ``--refresh`` (committed): with ``--jobs`` > 1 the longest start
#: first (LPT scheduling), so a long notebook does not start last and idle the other core.
DURATIONS = NOTEBOOKS / "durations.json"


def _longest_first(paths: list) -> list:
    """Indices of ``paths`` ordered by their last measured duration, longest first (unknown ones first)."""
    try:
        known = json.loads(DURATIONS.read_text())
    except (OSError, ValueError):
        known = {}
    return sorted(range(len(paths)), key=lambda i: -known.get(Path(paths[i]).name, float("inf")))


def _parallel(fn, jobs: int, arglists: list, desc: str, order: Optional[list] = None) -> list:
    """``[fn(*args) for args in arglists]``, with up to ``jobs`` of them at once, started in ``order``
    (indices; default: as given); results come back in the order of ``arglists``.

    Processes, not threads: each papermill run drives its own kernel and asyncio loop; ``spawn`` so no
    lock held by a thread of this process is copied into a child. Hand-written over ``concurrent.futures``
    (not joblib/ray) because the children only wait on kernels: no pickled models, no shared memory.
    """
    from tqdm.auto import tqdm

    if jobs < 1:
        raise ValueError(f"--jobs must be a positive integer, got {jobs}")
    if jobs == 1 or len(arglists) < 2:
        return [fn(*a) for a in tqdm(arglists, desc=desc)]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    out = [None] * len(arglists)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as ex:
        futs = {ex.submit(fn, *arglists[i]): i for i in (order if order is not None else range(len(arglists)))}
        for f in tqdm(as_completed(futs), total=len(futs), desc=desc):
            out[futs[f]] = f.result()
    return out


def run_collection(out: str = "runs/notebooks", only: Optional[str] = None, params: Optional[dict] = None,
                   jobs: int = 1) -> list:
    """Execute the collection headless into ``out``: executed notebooks, their HTML exports, ``index.html``.

    A failing notebook does not stop the others; the report shows its error and partial output, and
    :class:`NotebooksFailed` is raised at the end so that the command exits non-zero.

    The kernels share one evaluation cache (:mod:`emolens.cache`): ``$EMOLENS_CACHE_DIR`` when set,
    else ``<out>/cache`` (absolute; the kernels run in notebooks/), set for this run only. ``jobs``
    notebooks run at once (``make run`` uses 2, one per core of the reference machine, each kernel on
    one thread); the cache's writes are atomic, so concurrent kernels can share it.
    """
    import os

    from . import report

    outp = Path(out)
    params = {k: _coerce(v) for k, v in (params or {}).items()}
    set_cache = "EMOLENS_CACHE_DIR" not in os.environ
    if set_cache:  # papermill's kernels (and spawned workers) inherit this process's environment
        os.environ["EMOLENS_CACHE_DIR"] = str((outp / "cache").resolve())
    try:
        args = []
        for nb in notebook_paths(only):
            declared = declared_parameters(nb)
            mine = {k: v for k, v in params.items() if k in declared}  # collection-wide -p applies where declared
            args.append((nb, outp / nb.stem, mine, False, True))
        records = _parallel(execute, jobs, args, "notebooks", order=_longest_first([a[0] for a in args]))
    finally:
        if set_cache:
            os.environ.pop("EMOLENS_CACHE_DIR", None)
    index = report.write_index(outp, records, params=params)
    failed = [r for r in records if r["error"]]
    if failed:
        names = "; ".join(f"{r['notebook']} ({r['error']})" for r in failed)
        raise NotebooksFailed(f"{len(failed)} of {len(records)} notebooks failed: {names}; report: {index}")
    return records


# ---------------------------------------------------------------------------------------------
# The committed notebooks: refreshed in place, cleaned, and the checks the tests run on them.

# What a committed .ipynb keeps. Cell metadata: tags, and "jupyter" (source_hidden: an exercise's
# collapsed solution cell), as notebooks/jupytext.toml pairs them.
NB_METADATA_KEEP = ("kernelspec", "language_info")
CELL_METADATA_KEEP = ("tags", "jupyter")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
IGNORE_MARK = "NBVAL_IGNORE_OUTPUT"


def clean_notebook(nb):
    """Strip execution noise from an executed notebook, in place; returns it.

    Removes papermill's notebook and cell records (durations, timestamps, status), nbclient's
    ``execution`` timestamps, the saved widget state (random model ids), papermill's injected-parameters
    cell, and renumbers execution counts 1..n in cell order. Sources and outputs are untouched.
    """
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    for k in list(nb.metadata):
        if k not in NB_METADATA_KEEP:
            del nb.metadata[k]
    n = 0
    for c in nb.cells:
        for k in list(c.metadata):
            if k not in CELL_METADATA_KEEP:
                del c.metadata[k]
        if c.cell_type != "code":
            continue
        if c.execution_count is not None:
            n += 1
            c.execution_count = n
        for o in c.outputs:
            if o.get("output_type") == "execute_result":
                o["execution_count"] = c.execution_count
    return nb


def notebook_noise(nb) -> list:
    """What a committed notebook carries besides content that nbval's sanitizer would not catch.

    One line per problem (empty when clean): metadata outside :data:`NB_METADATA_KEEP` /
    :data:`CELL_METADATA_KEEP`, papermill's injected cell, execution counts that are not 1..n in order,
    widget views (random model ids) or progress-bar streams in a cell not marked ``# NBVAL_IGNORE_OUTPUT``,
    and error outputs.
    """
    problems = [f"notebook metadata {k!r}" for k in nb.metadata if k not in NB_METADATA_KEEP]
    counts = []
    for i, c in enumerate(nb.cells):
        where = f"cell {i} ({c.cell_type})"
        problems += [f"{where}: metadata {k!r}" for k in c.metadata if k not in CELL_METADATA_KEEP]
        if "injected-parameters" in c.metadata.get("tags", []):
            problems.append(f"{where}: papermill's injected-parameters cell")
        if c.cell_type != "code":
            continue
        if c.execution_count is not None:
            counts.append(c.execution_count)
        ignored = IGNORE_MARK in c.source
        for o in c.get("outputs", []):
            kind = o.get("output_type")
            if kind == "error":
                problems.append(f"{where}: error output {o.get('ename')}")
            if kind == "execute_result" and o.get("execution_count") != c.execution_count:
                problems.append(f"{where}: output execution_count {o.get('execution_count')} != the cell's {c.execution_count}")
            if not ignored and WIDGET_VIEW in o.get("data", {}):
                problems.append(f"{where}: widget view (random model id) outside a # {IGNORE_MARK} cell")
            if not ignored and kind == "stream" and "\r" in o.get("text", ""):
                problems.append(f"{where}: progress-bar stream outside a # {IGNORE_MARK} cell")
    if counts and counts != list(range(1, len(counts) + 1)):
        problems.append(f"execution counts {counts} are not 1..{len(counts)} in order")
    return problems


def _cell_key(c) -> tuple:
    return c.cell_type, c.source.rstrip("\n"), tuple(c.metadata.get("tags", []))


def pair_problems(ipynb: Path) -> list:
    """Differences between ``NN_topic.ipynb`` and its jupytext pair ``NN_topic.py`` (empty when in sync).

    Compares cell by cell the type, source and tags of the notebook with ``jupytext.read`` of the
    py:percent file, which is what ``jupytext --sync`` makes equal.
    """
    import jupytext
    import nbformat

    ipynb = Path(ipynb)
    py = ipynb.with_suffix(".py")
    if not py.is_file():
        return [f"{ipynb.name}: no paired {py.name} (run `jupytext --set-formats ipynb,py:percent {ipynb}`)"]
    a = [_cell_key(c) for c in nbformat.read(ipynb, as_version=4).cells]
    b = [_cell_key(c) for c in jupytext.read(py).cells]
    fix = f"edit one side, then `jupytext --sync {py}`"
    problems = [f"{ipynb.name} has {len(a)} cells, {py.name} {len(b)} ({fix})"] if len(a) != len(b) else []
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            what = "type" if x[0] != y[0] else "tags" if x[2] != y[2] else "source"
            first = next((l for l, m in itertools.zip_longest(x[1].splitlines(), y[1].splitlines()) if l != m), "")
            problems.append(f"{ipynb.name} cell {i}: {what} differs from {py.name} (ipynb line {first!r}; {fix})")
    return problems


def _refresh_one(p: Path, progress: bool = False) -> tuple:
    import nbformat
    import papermill as pm

    t0 = time.time()
    pm.execute_notebook(str(p), str(p), kernel_name=_kernel_name(), cwd=str(p.parent),
                        progress_bar=progress, log_output=False)
    nbformat.write(clean_notebook(nbformat.read(p, as_version=4)), p)
    return (p.name, round(time.time() - t0, 1))


def refresh(only: Optional[str] = None, progress: bool = False, folder: Path = NOTEBOOKS, jobs: int = 1) -> list:
    """Execute the committed notebooks in place with their default parameters, then clean them.

    The one way committed outputs change (``emolens notebooks --refresh``, ``make notebooks``); nbval
    compares later runs against them. ``jobs`` notebooks at once. Returns ``[(notebook name, seconds), ...]``.
    """
    paths = notebook_paths(only, folder)
    for p in paths:  # check every pair before executing any
        problems = pair_problems(p)
        if problems:
            raise ValueError(f"{problems[0]}; refresh would overwrite one side")
    done = _parallel(_refresh_one, jobs, [(p, progress) for p in paths], "notebooks", order=_longest_first(paths))
    if folder == NOTEBOOKS:  # the durations the next parallel run schedules by (merged: --only refreshes some)
        try:
            known = json.loads(DURATIONS.read_text())
        except (OSError, ValueError):
            known = {}
        DURATIONS.write_text(json.dumps({**known, **dict(done)}, indent=1, sort_keys=True) + "\n")
    return done


# The sweep moved to emolens.sweep (executors local/submitit/ray); re-exported for older callers.
from .sweep import parse_grid, run_sweep  # noqa: E402,F401
