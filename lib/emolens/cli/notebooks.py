"""``emolens notebooks``: execute the notebook collection headless (papermill)."""
from __future__ import annotations

from .args import pairs


def register(sub) -> None:
    n = sub.add_parser("notebooks", help="execute the notebook collection headless (papermill)")
    n.add_argument("--only", default=None, help="substring or glob of notebook names, e.g. 01 or '0[12]_*'")
    n.add_argument("--out", default="runs/notebooks")
    n.add_argument("-p", nargs=2, action="append", metavar=("KEY", "VALUE"), help="parameter for every notebook that declares it")
    n.set_defaults(fn=run)


def run(a) -> int:
    from ..runner import run_collection

    recs = run_collection(a.out, only=a.only, params=pairs(a.p))
    for r in recs:
        print(f"{r['notebook']:<36} {r['seconds']:>7.1f} s")
    print(f"{'total':<36} {sum(r['seconds'] for r in recs):>7.1f} s -> {a.out}/index.md")
    return 0
