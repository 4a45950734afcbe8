"""Overhead of emolens' attention mechanism vs the plain SDPA forward (see benchmarks/README.md).

    PYTHONPATH=lib python benchmarks/bench_attention.py [--quick] [--json runs/bench.json]
"""
from __future__ import annotations

import argparse

from emolens.bench import main_bench


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small model only, 2 repeats")
    ap.add_argument("--json", default=None, help="also write the results as JSON here")
    args = ap.parse_args(argv)
    main_bench(json_path=args.json, quick=args.quick)


if __name__ == "__main__":
    main()
