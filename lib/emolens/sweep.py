"""Notebook parameter sweeps: one papermill run per grid point, each in its own process, on an executor.

* ``local``: ``jobs`` points at a time on this machine (each a child ``python`` process running papermill);
* ``submitit``: one SLURM job array (``partition``, ``gpus_per_job``, ``timeout_min``, ``max_parallel`` as
  the array's ``%N``, logs in ``log_folder``); without SLURM, submitit's local executor runs the same jobs;
* ``ray``: one Ray task per point with ``num_cpus`` / ``num_gpus``, on the cluster in ``RAY_ADDRESS`` or a
  local one.

Whatever the executor, a point whose ``results.json`` exists and whose recorded parameters equal the
requested ones is skipped; a failing point becomes a ``sweep.csv`` row with ``status=failed`` and its
one-line error while the others go on; ``sweep.csv``, ``sweep.png`` and ``index.html``
(:func:`emolens.report.write_sweep_index`) are written at the end.
Each point's folder holds the executed notebook, its ``results.json`` and ``sweep_point.json`` (the
parameters, status, error, seconds).
"""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

EXECUTORS = ("local", "submitit", "ray")
EXTRA_HINT = "pip install -e .[cluster]"
POINT_FILE = "sweep_point.json"


def _coerce(v):
    from .runner import _coerce as c  # lazy: runner re-exports this module

    return c(v)


def parse_grid(items: Sequence[str]) -> dict:
    """``["n_r=1,2,3", "delta=2,4"]`` -> ``{"n_r": [1, 2, 3], "delta": [2, 4]}``."""
    grid = {}
    for it in items:
        if "=" not in it:
            raise ValueError(f"--grid expects key=v1,v2,..., got {it!r}")
        k, vs = it.split("=", 1)
        vals = [_coerce(v) for v in vs.split(",") if v != ""]
        if not vals:
            raise ValueError(f"--grid {k}= has no values; give key=v1,v2,...")
        grid[k.strip()] = vals
    return grid


def point_main(spec_json: str) -> int:
    """The child process of one grid point: execute the notebook with papermill, record the outcome in
    ``<out_dir>/sweep_point.json``; 0 on success, 1 (with a one-line error) on failure."""
    from .runner import execute

    spec = json.loads(spec_json)
    out_dir = Path(spec["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    rec = {"params": spec["params"], "status": "failed", "error": "", "started": time.time()}
    (out_dir / "results.json").unlink(missing_ok=True)  # a stale results.json must not mark a failed rerun done
    try:
        execute(Path(spec["notebook"]), out_dir, spec["params"])
        rec["status"] = "ok"
    except Exception as e:  # noqa: BLE001 - every failure of a point is recorded, the sweep goes on
        rec["error"] = _one_line(e)
    rec["finished"] = time.time()
    rec["seconds"] = round(rec["finished"] - rec["started"], 1)
    (out_dir / POINT_FILE).write_text(json.dumps(rec, indent=1, default=str))
    if rec["error"]:
        print(rec["error"], file=sys.stderr)
    return 0 if rec["status"] == "ok" else 1


def _one_line(e: BaseException) -> str:
    ename, evalue = getattr(e, "ename", None), getattr(e, "evalue", None)  # papermill's cell error
    if ename:
        msg = f"{ename}: {evalue}"
    else:
        msg = f"{type(e).__name__}: {e}"
    return msg.strip().splitlines()[0][:300]


def run_point(spec: dict) -> dict:
    """Run one grid point in a fresh ``python`` process (papermill kernels sharing one process are
    fragile); returns the point's record (``status``, ``error``, ``seconds``...). Never raises for a
    failing notebook: the failure is the record."""
    out_dir = Path(spec["out_dir"])
    proc = subprocess.run([sys.executable, "-c", "import sys; from emolens.sweep import point_main; "
                           "sys.exit(point_main(sys.argv[1]))", json.dumps(spec, default=str)],
                          capture_output=True, text=True)
    try:
        rec = json.loads((out_dir / POINT_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        rec = {"params": spec["params"], "status": "failed", "seconds": None}
    if proc.returncode != 0 and rec.get("status") == "ok":  # died after recording: trust the exit code
        rec["status"] = "failed"
    if rec["status"] != "ok" and not rec.get("error"):
        tail = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        rec["error"] = tail[-1][:300] if tail else f"point process exited with code {proc.returncode}"
    return rec


def _plain(obj):
    return json.loads(json.dumps(obj, default=str))


def finished(out_dir: Path, params: dict) -> Optional[dict]:
    """The record of a finished point (``results.json`` present, same parameters), else None."""
    try:
        rec = json.loads((Path(out_dir) / POINT_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    ok = rec.get("status") == "ok" and (Path(out_dir) / "results.json").is_file()
    return rec if ok and rec.get("params") == _plain(params) else None


def require(executor: str) -> None:
    """One-line error when the executor's engine is not installed."""
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    if executor == "local":
        return
    try:
        __import__(executor)
    except ImportError:
        raise ValueError(f"--executor {executor} needs {executor}, which is not installed: {EXTRA_HINT}") from None


def slurm_script(n_points: int, log_folder, *, partition: Optional[str] = None, gpus_per_job: int = 0,
                 cpus_per_job: int = 1, timeout_min: int = 60, max_parallel: Optional[int] = None,
                 job_name: str = "emolens-sweep") -> str:
    """The sbatch script of the sweep's SLURM job array, as submitit writes it (nothing is submitted).

    submitit exposes no public call for the text, and its SlurmExecutor refuses to start without
    ``srun``; ``_make_sbatch_string`` is the function that SlurmExecutor itself formats it with.
    """
    import shlex

    from submitit.slurm.slurm import _make_sbatch_string

    folder = Path(log_folder).resolve() / "%j"
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    return _make_sbatch_string(command=command, folder=folder, job_name=job_name, partition=partition,
                               time=timeout_min, cpus_per_task=cpus_per_job, gpus_per_node=gpus_per_job or None,
                               array_parallelism=max_parallel or n_points, map_count=n_points)


def _run_local(specs, jobs: int, **_) -> list:
    from concurrent.futures import ThreadPoolExecutor

    # threads only wait on the child processes; the work is in the children
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(run_point, specs))


def _run_submitit(specs, *, log_folder, partition=None, gpus_per_job=0, cpus_per_job=1, timeout_min=60,
                  max_parallel=None, cluster=None, **_) -> list:
    import submitit

    folder = Path(log_folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sweep_array.sbatch").write_text(slurm_script(
        len(specs), folder, partition=partition, gpus_per_job=gpus_per_job, cpus_per_job=cpus_per_job,
        timeout_min=timeout_min, max_parallel=max_parallel))
    ex = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=cluster)
    opts = dict(name="emolens-sweep", timeout_min=timeout_min, cpus_per_task=cpus_per_job,
                slurm_array_parallelism=max_parallel or len(specs))
    if gpus_per_job:
        opts["gpus_per_node"] = gpus_per_job
    if partition:
        opts["slurm_partition"] = partition
    ex.update_parameters(**opts)
    jobs = ex.map_array(run_point, specs)
    out = []
    for spec, job in zip(specs, jobs):
        try:
            out.append(job.result())
        except Exception as e:  # noqa: BLE001 - a job the scheduler killed (timeout, node failure)
            out.append({"params": spec["params"], "status": "failed", "error": _one_line(e), "seconds": None})
    return out


def _run_ray(specs, *, gpus_per_job=0, cpus_per_job=1, ray_address=None, **_) -> list:
    import ray

    started = not ray.is_initialized()
    if started:  # RAY_ADDRESS (or ray_address) names a cluster; without one Ray starts a local one
        ray.init(address=ray_address or os.environ.get("RAY_ADDRESS") or None, include_dashboard=False,
                 log_to_driver=False)
    try:
        task = ray.remote(num_cpus=cpus_per_job, num_gpus=gpus_per_job)(run_point)
        refs = [task.remote(s) for s in specs]
        out = []
        for spec, ref in zip(specs, refs):
            try:
                out.append(ray.get(ref))
            except Exception as e:  # noqa: BLE001 - a task Ray lost (worker died)
                out.append({"params": spec["params"], "status": "failed", "error": _one_line(e), "seconds": None})
        return out
    finally:
        if started:
            ray.shutdown()


def run_sweep(notebook: str, grid: dict, out: str, params: Optional[dict] = None, *, executor: str = "local",
              jobs: int = 1, partition: Optional[str] = None, gpus_per_job: int = 0, cpus_per_job: int = 1,
              timeout_min: int = 60, max_parallel: Optional[int] = None, log_folder=None,
              ray_address: Optional[str] = None, cluster: Optional[str] = None) -> Path:
    """Run ``notebook`` for every point of ``grid`` on ``executor``; write ``sweep.csv`` and ``sweep.png``.

    Args:
        grid: ``{key: [values]}`` (see :func:`parse_grid`); the points are its Cartesian product.
        params: parameters shared by every point (``-p key value``).
        jobs: points run at once by the ``local`` executor.
        partition, gpus_per_job, cpus_per_job, timeout_min, max_parallel: the SLURM array's options
            (``submitit``); ``gpus_per_job`` / ``cpus_per_job`` are also Ray's ``num_gpus`` / ``num_cpus``.
        log_folder: submitit's folder (default ``<out>/submitit``); the array's script is
            ``sweep_array.sbatch`` in it.
        cluster: submitit's cluster (``slurm``, ``local``, ``debug``; default: SLURM when present).
    Returns:
        the path of ``sweep.csv``: one row per point (its values, the notebook's summary scalars,
        ``seconds``, ``status`` ok/skipped/failed and ``error``).
    """
    import pandas as pd

    require(executor)
    nb = Path(notebook)
    if not nb.is_file():
        raise FileNotFoundError(f"no notebook at {nb}; give a path such as notebooks/03_wetr.ipynb")
    from .runner import declared_parameters

    base = {k: _coerce(v) for k, v in (params or {}).items()}
    declared = declared_parameters(nb)
    unknown = sorted(k for k in [*base, *grid] if k not in declared)
    if unknown:
        raise ValueError(f"{nb.name} has no parameter(s) {unknown}; it declares {sorted(declared)}")
    outp = Path(out).resolve()
    keys = list(grid)
    points = [dict(zip(keys, vals)) for vals in itertools.product(*(grid[k] for k in keys))]
    specs, records = [], {}
    for i, point in enumerate(points):
        p = {**base, **point}
        out_dir = outp / "_".join(f"{k}-{v}" for k, v in point.items())
        done = finished(out_dir, p)
        if done is not None:
            records[i] = {**done, "status": "skipped"}
        else:
            specs.append((i, {"notebook": str(nb.resolve()), "out_dir": str(out_dir), "params": _plain(p)}))
    run = {"local": _run_local, "submitit": _run_submitit, "ray": _run_ray}[executor]
    if specs:
        print(f"sweep {nb.name}: {len(specs)} point(s) to run on {executor}, {len(points) - len(specs)} finished",
              file=sys.stderr)
        got = run([s for _, s in specs], jobs=jobs, partition=partition, gpus_per_job=gpus_per_job,
                  cpus_per_job=cpus_per_job, timeout_min=timeout_min, max_parallel=max_parallel,
                  log_folder=log_folder or outp / "submitit", ray_address=ray_address, cluster=cluster)
        records.update({i: r for (i, _), r in zip(specs, got)})
    rows, runs = [], []
    for i, point in enumerate(points):
        rec = records[i]
        row = dict(point)
        res = outp / "_".join(f"{k}-{v}" for k, v in point.items()) / "results.json"
        results = json.loads(res.read_text()) if rec["status"] != "failed" and res.is_file() else {}
        summ = results.get("summary", {})
        row.update({k: v for k, v in summ.items() if isinstance(v, (int, float, str, bool))})
        row.update(seconds=rec.get("seconds"), status=rec["status"], error=rec.get("error") or "")
        rows.append(row)
        runs.append({"notebook": nb.name, "executed": str(res.parent / nb.name), "seconds": rec.get("seconds") or 0,
                     "error": rec.get("error") or None, "results": results, "params": rec.get("params", {})})
    df = pd.DataFrame(rows)
    outp.mkdir(parents=True, exist_ok=True)
    df.to_csv(outp / "sweep.csv", index=False)
    _sweep_figure(df, keys, outp / "sweep.png")
    from .report import write_sweep_index

    write_sweep_index(outp, nb, grid, df, runs, params=base)
    return outp / "sweep.csv"


def _sweep_figure(df, keys, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    metrics = [c for c in df.columns if c not in keys and c not in ("seconds", "status", "error")
               and df[c].dtype.kind in "fi" and df[c].notna().any()]
    if not metrics:
        return
    x = keys[0]
    hue = keys[1] if len(keys) > 1 else None
    n = min(len(metrics), 4)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.2), squeeze=False)
    for ax, m in zip(axes[0], metrics[:n]):
        sns.lineplot(data=df, x=x, y=m, hue=hue, marker="o", ax=ax)
        ax.set_title(m)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
