"""Notebook sweeps on executors (emolens.sweep): local --jobs in parallel, submitit's local executor with the
SLURM array script it would submit, a local Ray cluster on notebook 03; failing points recorded, finished
points skipped, missing engines reported in one line.

The executor mechanics run on a two-cell notebook written here (a real papermill run in a real kernel,
seconds instead of a minute); notebook 03 runs on Ray, as the issue's acceptance command asks."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from emolens.sweep import POINT_FILE, parse_grid, require, run_sweep

REPO = Path(__file__).resolve().parents[1]
SMALL_03 = {"n_samples": "8", "sample_index": "0", "n_r_grid": "[2]", "delta_grid": "[4.0]", "eps_grid": "[0.0]",
            "device": "cpu"}


@pytest.fixture()
def tiny_nb(tmp_path) -> Path:
    """x -> y = x*x in results.json; the point with x == fail_at raises in its kernel."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('x = 1  # the swept value\nfail_at = -1  # the x that raises\n'
                                       'out_dir = "out"  # where results.json goes')
    params.metadata["tags"] = ["parameters"]
    body = nbformat.v4.new_code_cell(
        "import json, os, pathlib\n"
        "if x == fail_at:\n    raise ValueError(f'x={x} is the failing point')\n"
        "pathlib.Path(out_dir).mkdir(parents=True, exist_ok=True)\n"
        "pathlib.Path(out_dir, 'results.json').write_text(json.dumps({'summary': {'y': x * x, 'pid': os.getpid()}}))")
    nb.cells = [params, body]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "tiny.ipynb"
    nbformat.write(nb, path)
    return path


def _points(out: Path) -> dict:
    return {int(p.parent.name.split("-")[1]): json.loads(p.read_text()) for p in out.glob(f"x-*/{POINT_FILE}")}


def test_parse_grid_and_bad_input_are_one_line_errors(tiny_nb, tmp_path):
    assert parse_grid(["n_r=1,2", "delta=0.5,x"]) == {"n_r": [1, 2], "delta": [0.5, "x"]}
    with pytest.raises(ValueError, match="unknown executor 'slurm'; choose one of local, submitit, ray"):
        require("slurm")
    with pytest.raises(ValueError, match=r"tiny.ipynb has no parameter\(s\) \['n_r'\]"):
        run_sweep(str(tiny_nb), {"n_r": [1]}, str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("engine", ["ray", "submitit"])
def test_missing_engine_names_the_extra(engine, tiny_nb, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, engine, None)  # as if not installed: import raises ImportError
    with pytest.raises(ValueError) as e:
        run_sweep(str(tiny_nb), {"x": [1]}, str(tmp_path / "o"), executor=engine)
    assert str(e.value) == f"--executor {engine} needs {engine}, which is not installed: pip install -e .[cluster]"
    assert not (tmp_path / "o").exists()


def test_local_jobs_run_in_parallel_failure_recorded_rerun_skips(tiny_nb, tmp_path):
    out = tmp_path / "sweep"
    csv = run_sweep(str(tiny_nb), {"x": [1, 2, 3]}, str(out), params={"fail_at": "3"}, executor="local", jobs=2)
    df = pd.read_csv(csv).set_index("x")
    assert df["status"].to_dict() == {1: "ok", 2: "ok", 3: "failed"}
    assert df.loc[3, "error"] == "ValueError: x=3 is the failing point"  # one line, the cell's own error
    assert df.loc[1, "y"] == 1 and df.loc[2, "y"] == 4 and pd.isna(df.loc[3, "y"])
    assert df.loc[1, "pid"] != df.loc[2, "pid"]  # each point in its own kernel
    assert (out / "sweep.png").is_file()
    page = (out / "index.html").read_text()
    assert "x=3 is the failing point" in page and "sweep.png" in page
    rec = _points(out)
    assert max(rec[1]["started"], rec[2]["started"]) < min(rec[1]["finished"], rec[2]["finished"]), \
        "with --jobs 2 the first two points should overlap in time"

    again = pd.read_csv(run_sweep(str(tiny_nb), {"x": [1, 2, 3]}, str(out), params={"fail_at": "3"},
                                  executor="local", jobs=2)).set_index("x")
    assert again["status"].to_dict() == {1: "skipped", 2: "skipped", 3: "failed"}
    assert again.loc[2, "y"] == 4 and again.loc[2, "pid"] == df.loc[2, "pid"]  # results reused, not recomputed
    assert _points(out)[3]["started"] > rec[3]["started"]  # the failed point was retried
    assert {k: v["started"] for k, v in _points(out).items() if k != 3} == {1: rec[1]["started"], 2: rec[2]["started"]}


def test_submitit_local_executor_and_the_slurm_array_script(tiny_nb, tmp_path):
    out = tmp_path / "sweep"
    csv = run_sweep(str(tiny_nb), {"x": [2, 5]}, str(out), executor="submitit", cluster="local",
                    partition="gpu", gpus_per_job=1, cpus_per_job=2, timeout_min=7, max_parallel=1,
                    log_folder=str(tmp_path / "logs"))
    df = pd.read_csv(csv).set_index("x")
    assert df["status"].to_dict() == {2: "ok", 5: "ok"} and df["y"].to_dict() == {2: 4, 5: 25}
    jobs = [p for p in (tmp_path / "logs").iterdir() if p.name.isdigit()]
    assert len(jobs) == 2 and all(list(j.glob("*_log.out")) for j in jobs)  # one submitit job (and log) each

    script = (tmp_path / "logs" / "sweep_array.sbatch").read_text()
    sbatch = {ln for ln in script.splitlines() if ln.startswith("#SBATCH")}
    assert {"#SBATCH --array=0-1%1", "#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1",
            "#SBATCH --cpus-per-task=2", "#SBATCH --time=7", "#SBATCH --job-name=emolens-sweep"} <= sbatch
    logs = str((tmp_path / "logs").resolve())
    assert f"#SBATCH --output={logs}/%A_%a/%A_%a_0_log.out" in sbatch  # one folder per array task
    assert script.startswith("#!/bin/bash") and "-u -m submitit.core._submit" in script
    assert sys.executable in script


@pytest.mark.slow
def test_ray_sweep_of_notebook_03_on_a_local_cluster(tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        csv = run_sweep(str(REPO / "notebooks" / "03_wetr.ipynb"), {"n_r": [1, 2]}, str(tmp_path / "sweep"),
                        params=SMALL_03, executor="ray")
    finally:
        ray.shutdown()
    df = pd.read_csv(csv).set_index("n_r")
    assert df["status"].to_dict() == {1: "ok", 2: "ok"}, df["error"].to_dict()
    assert df["war_wetr"].between(0, 1).all() and df["war_base"].nunique() == 1  # the base run ignores n_r
    assert (tmp_path / "sweep" / "sweep.png").is_file()
    for n_r in (1, 2):
        res = json.loads((tmp_path / "sweep" / f"n_r-{n_r}" / "results.json").read_text())
        assert res["parameters"]["n_r"] == n_r and res["parameters"]["n_samples"] == 8
