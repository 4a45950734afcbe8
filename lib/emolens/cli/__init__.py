"""The ``emolens`` command: one module per subcommand, each with ``register(sub)`` (its flags) and
``run(args)`` (what it does).

=============  ==========================  ===============================================
subcommand     module                      what it runs
=============  ==========================  ===============================================
eval           :mod:`.eval`                :func:`emolens.evaluate.evaluate` on a dataset
train-tiny     :mod:`.train_tiny`          :func:`emolens.models.train.train_tiny`
notebooks      :mod:`.notebooks`           :func:`emolens.runner.run_collection` (papermill)
sweep          :mod:`.sweep`               :func:`emolens.sweep.run_sweep`
bench          :mod:`.bench`               :func:`emolens.bench.main_bench`
data           :mod:`.data`                :func:`emolens.data.data_check_main`
card           :mod:`.card`                :func:`emolens.models.regime.measure_regime`
=============  ==========================  ===============================================

Every error the user can cause prints one line naming the fix (exit 2). The library never imports
this package (``emolens.evaluate`` and the rest stand without the CLI).
"""
from __future__ import annotations

import argparse
import importlib
import sys

DESCRIPTION = "The `emolens` command. Every error the user can cause prints one line naming the fix (exit 2)."

#: subcommand modules, in the order ``emolens --help`` lists them
COMMANDS = ("eval", "train_tiny", "notebooks", "sweep", "bench", "data", "card")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="emolens", description=DESCRIPTION)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in COMMANDS:
        importlib.import_module(f".{name}", __name__).register(sub)
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    try:
        return int(a.fn(a) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError, TypeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"emolens {a.cmd}: error: {msg}", file=sys.stderr)
        return 2


__all__ = ["main", "build_parser", "COMMANDS"]
