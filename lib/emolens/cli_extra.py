"""Subcommands beyond eval/train-tiny: notebooks, sweep, bench, data check."""
from __future__ import annotations

import argparse


def _params(pairs) -> dict:
    return {k: v for k, v in (pairs or [])}


def cmd_notebooks(a) -> int:
    from .runner import run_collection

    recs = run_collection(a.out, only=a.only, params=_params(a.p))
    for r in recs:
        print(f"{r['notebook']:<36} {r['seconds']:>7.1f} s")
    print(f"{'total':<36} {sum(r['seconds'] for r in recs):>7.1f} s -> {a.out}/index.md")
    return 0


def cmd_sweep(a) -> int:
    from .runner import parse_grid, run_sweep

    if not a.grid:
        raise ValueError("give at least one --grid key=v1,v2,...")
    path = run_sweep(a.notebook, parse_grid(a.grid), a.out, params=_params(a.p))
    import pandas as pd

    print(pd.read_csv(path).to_string(index=False))
    print(f"wrote {path} and {path.with_name('sweep.png')}")
    return 0


def cmd_bench(a) -> int:
    from .bench import main_bench

    main_bench(json_path=a.json, quick=a.quick)
    return 0


def cmd_data(a) -> int:
    from .data import data_check_main

    return int(data_check_main(a.rest))


def register(sub) -> None:
    n = sub.add_parser("notebooks", help="execute the notebook collection headless (papermill)")
    n.add_argument("--only", default=None, help="substring or glob of notebook names, e.g. 01 or '0[12]_*'")
    n.add_argument("--out", default="runs/notebooks")
    n.add_argument("-p", nargs=2, action="append", metavar=("KEY", "VALUE"), help="parameter for every notebook that declares it")
    n.set_defaults(fn=cmd_notebooks)

    s = sub.add_parser("sweep", help="run one notebook over a parameter grid; CSV + figure")
    s.add_argument("notebook")
    s.add_argument("--grid", action="append", metavar="KEY=V1,V2,...")
    s.add_argument("--out", required=True)
    s.add_argument("-p", nargs=2, action="append", metavar=("KEY", "VALUE"))
    s.set_defaults(fn=cmd_sweep)

    b = sub.add_parser("bench", help="overhead ratios of each mechanism against the plain forward")
    b.add_argument("--json", default=None)
    b.add_argument("--quick", action="store_true")
    b.set_defaults(fn=cmd_bench)

    d = sub.add_parser("data", help="dataset tools: `emolens data check MANIFEST --root DIR`")
    d.add_argument("rest", nargs=argparse.REMAINDER, help="check MANIFEST --root DIR")
    d.set_defaults(fn=cmd_data)
