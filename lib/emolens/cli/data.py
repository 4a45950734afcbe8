"""``emolens data``: dataset tools (``emolens data check MANIFEST --root DIR``)."""
from __future__ import annotations

import argparse


def register(sub) -> None:
    d = sub.add_parser("data", help="dataset tools: `emolens data check MANIFEST --root DIR`")
    d.add_argument("rest", nargs=argparse.REMAINDER, help="check MANIFEST --root DIR")
    d.set_defaults(fn=run)


def run(a) -> int:
    from ..data import data_check_main

    return int(data_check_main(a.rest))
