"""emolens: training-free inference-time methods for multimodal emotion recognition, shown on a
frozen multimodal LLM's real attention (WETR's NTS and STR, SEPM, MoSEAR's AR against PAI).

Stable entry points (see DESIGN.md): ``load_model``, ``intervene``, ``methods``, ``world.EmoWorld``,
``data.load_dataset``, ``evaluate``, ``metrics``.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["load_model", "intervene", "evaluate", "__version__"]


def __getattr__(name):  # lazy: `import emolens` stays fast and torch-free until needed
    if name == "load_model":
        from .models import load_model

        return load_model
    if name == "intervene":
        from .intervene import intervene

        return intervene
    if name == "evaluate":
        from .evaluate import evaluate

        return evaluate
    if name in ("methods", "metrics", "world", "data", "prompts", "layout", "attention", "plots", "widgets"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'emolens' has no attribute {name!r}")
