"""Method registry: every method by name, constructible from a plain dict.

>>> from emolens.methods import get_method, from_dict
>>> m = get_method("zero-shot")
>>> m = from_dict({"method": "zero-shot"})
>>> m = get_method("sepm+wetr")          # a composition (methods.compose)
"""
from __future__ import annotations

import importlib

from .base import Method, Param, Prediction, Task

_MODULES = ("baselines", "nts", "reweight", "wetr", "sepm", "ar", "sparsevlm")


def registry() -> dict:
    """name -> Method class, for every method module that is present."""
    out = {}
    for mod in _MODULES:
        try:
            m = importlib.import_module(f".{mod}", __name__)
        except ModuleNotFoundError as e:
            if e.name == f"{__name__}.{mod}":
                continue
            raise
        for obj in vars(m).values():
            if isinstance(obj, type) and issubclass(obj, Method) and obj is not Method and obj.name:
                out[obj.name] = obj
    return out


def available() -> list:
    return sorted(registry())


def get_method(name: str, **params) -> Method:
    if "+" in name:
        from .compose import Composition

        return Composition(name, **params)
    reg = registry()
    if name not in reg:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(reg))}")
    return reg[name](**params)


def from_dict(d: dict) -> Method:
    """``{"method": name, **hyperparameters}`` -> Method."""
    if "method" not in d:
        raise ValueError(f"a method dict needs a 'method' key, got keys {sorted(d)}")
    d = dict(d)
    if "+" in str(d["method"]):
        from .compose import from_description

        return from_description(d)
    return get_method(d.pop("method"), **d)


__all__ = ["Method", "Param", "Prediction", "Task", "registry", "available", "get_method", "from_dict"]
