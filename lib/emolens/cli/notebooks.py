"""``emolens notebooks``: execute the notebook collection headless (papermill), or refresh the committed ones."""
from __future__ import annotations

from .args import pairs


def register(sub) -> None:
    n = sub.add_parser("notebooks", help="execute the notebook collection headless (papermill)")
    n.add_argument("--only", default=None, help="substring or glob of notebook names, e.g. 01 or '0[12]_*'")
    n.add_argument("--out", default="runs/notebooks")
    n.add_argument("-p", nargs=2, action="append", metavar=("KEY", "VALUE"), help="parameter for every notebook that declares it")
    n.add_argument("--refresh", action="store_true",
                   help="execute the committed notebooks/ in place with their defaults and clean them (make notebooks)")
    n.add_argument("--jobs", type=int, default=1,
                   help="notebooks executed at once (each kernel on its own process; make run uses 2)")
    n.set_defaults(fn=run)


def run(a) -> int:
    import time

    from ..runner import refresh, run_collection

    t0 = time.time()

    if a.refresh:
        if a.p:
            raise ValueError("--refresh runs the committed notebooks with their defaults; drop -p (or run without --refresh)")
        done = refresh(only=a.only, jobs=a.jobs)
        for name, sec in done:
            print(f"{name:<36} {sec:>7.1f} s")
        print(f"{'total':<36} {sum(s for _, s in done):>7.1f} s (sum over notebooks) -> notebooks/ (executed in place, cleaned)")
        print(f"{'wall':<36} {time.time() - t0:>7.1f} s")
        return 0
    recs = run_collection(a.out, only=a.only, params=pairs(a.p), jobs=a.jobs)
    for r in recs:
        print(f"{r['notebook']:<36} {r['seconds']:>7.1f} s")
    print(f"{'total':<36} {sum(r['seconds'] for r in recs):>7.1f} s (sum over notebooks; {a.jobs} at once) -> {a.out}/index.html")
    print(f"{'wall':<36} {time.time() - t0:>7.1f} s")
    return 0
