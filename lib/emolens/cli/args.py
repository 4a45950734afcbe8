"""Argument helpers shared by subcommands: repeated ``KEY=VALUE`` and ``-p KEY VALUE`` flags."""
from __future__ import annotations


def key_values(items, flag: str = "--set") -> dict:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``; a one-line ValueError naming ``flag`` otherwise."""
    out = {}
    for it in items or []:
        if "=" not in it:
            raise ValueError(f"{flag} expects key=value, got {it!r}")
        k, v = it.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def pairs(items) -> dict:
    """``-p KEY VALUE`` repeated (argparse ``nargs=2, action="append"``) -> dict."""
    return {k: v for k, v in (items or [])}
