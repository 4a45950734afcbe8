"""Notebook parameter sweeps: one papermill run per grid point, a ``sweep.csv`` table and ``sweep.png``."""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Optional, Sequence


def _coerce(v):
    from .runner import _coerce as c  # lazy: runner re-exports this module

    return c(v)


def execute(*a, **k):
    from .runner import execute as ex

    return ex(*a, **k)


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


def run_sweep(notebook: str, grid: dict, out: str, params: Optional[dict] = None) -> Path:
    """Run ``notebook`` for every point of ``grid``; write ``sweep.csv`` and ``sweep.png`` to ``out``."""
    import pandas as pd
    from tqdm.auto import tqdm

    nb = Path(notebook)
    if not nb.is_file():
        raise FileNotFoundError(f"no notebook at {nb}; give a path such as notebooks/03_wetr.ipynb")
    outp = Path(out)
    keys = list(grid)
    rows = []
    base = {k: _coerce(v) for k, v in (params or {}).items()}
    points = list(itertools.product(*(grid[k] for k in keys)))
    for vals in tqdm(points, desc=f"sweep {nb.name}"):
        point = dict(zip(keys, vals))
        tag = "_".join(f"{k}-{v}" for k, v in point.items())
        rec = execute(nb, outp / tag, {**base, **point})
        row = dict(point)
        row.update({k: v for k, v in rec["results"].get("summary", {}).items() if isinstance(v, (int, float, str, bool))})
        row["seconds"] = rec["seconds"]
        rows.append(row)
    df = pd.DataFrame(rows)
    outp.mkdir(parents=True, exist_ok=True)
    df.to_csv(outp / "sweep.csv", index=False)
    _sweep_figure(df, keys, outp / "sweep.png")
    return outp / "sweep.csv"


def _sweep_figure(df, keys, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    metrics = [c for c in df.columns if c not in keys and c != "seconds" and df[c].dtype.kind in "fi"]
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
