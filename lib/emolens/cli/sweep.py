"""``emolens sweep``: run one notebook over a parameter grid; CSV + figure."""
from __future__ import annotations

from .args import pairs


def register(sub) -> None:
    s = sub.add_parser("sweep", help="run one notebook over a parameter grid; CSV + figure")
    s.add_argument("notebook")
    s.add_argument("--grid", action="append", metavar="KEY=V1,V2,...")
    s.add_argument("--out", required=True)
    s.add_argument("-p", nargs=2, action="append", metavar=("KEY", "VALUE"))
    s.add_argument("--executor", default="local", choices=("local", "submitit", "ray"),
                   help="where the points run (submitit and ray: pip install -e .[cluster])")
    s.add_argument("--jobs", type=int, default=1, help="local: points run at once")
    s.add_argument("--partition", default=None, help="submitit: SLURM partition")
    s.add_argument("--gpus-per-job", type=int, default=0, help="submitit/ray: GPUs per point")
    s.add_argument("--cpus-per-job", type=int, default=1, help="submitit/ray: CPUs per point")
    s.add_argument("--timeout-min", type=int, default=60, help="submitit: minutes per point")
    s.add_argument("--max-parallel", type=int, default=None, help="submitit: array tasks running at once")
    s.add_argument("--log-folder", default=None, help="submitit: logs and sweep_array.sbatch (default OUT/submitit)")
    s.add_argument("--ray-address", default=None, help="ray: cluster address (default $RAY_ADDRESS, else a local one)")
    s.set_defaults(fn=run)


def run(a) -> int:
    from ..sweep import parse_grid, run_sweep

    if not a.grid:
        raise ValueError("give at least one --grid key=v1,v2,...")
    path = run_sweep(a.notebook, parse_grid(a.grid), a.out, params=pairs(a.p), executor=a.executor, jobs=a.jobs,
                     partition=a.partition, gpus_per_job=a.gpus_per_job, cpus_per_job=a.cpus_per_job,
                     timeout_min=a.timeout_min, max_parallel=a.max_parallel, log_folder=a.log_folder,
                     ray_address=a.ray_address)
    import pandas as pd

    print(pd.read_csv(path).to_string(index=False))
    print(f"wrote {path} and {path.with_name('sweep.png')}")
    return 0
