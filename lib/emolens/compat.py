"""Compatibility with the range of transformers versions that pyproject allows, in one place.

transformers 5.24 renamed the KV-cache keyword of every decoder's ``forward`` (and the field of the
model outputs) from ``past_key_values`` to ``cache``; the old name still works until 5.40 but warns
on each call. emolens passes whichever name the installed version takes, read once from the
signature of a stock decoder, so both sides of the rename run without a warning.

Notebooks: :func:`quiet_third_party_deprecations` is the one place where warnings are filtered. It
hides only ``DeprecationWarning``/``FutureWarning`` raised from inside third-party libraries
(transformers, torch, accelerate, ...): a deprecation notice there is addressed to emolens' developers
(``make test-latest`` surfaces it, with ``-W error::FutureWarning`` on the generate tests), not to a
reader, and it must not turn nbval red when upstream moves. Every other warning, and every error,
still shows and still fails.
"""
from __future__ import annotations

import functools
import inspect
import warnings

__all__ = ["cache_kw", "output_cache", "quiet_third_party_deprecations", "THIRD_PARTY"]

# Libraries whose deprecation notices are not addressed to a notebook's reader.
THIRD_PARTY = ("transformers", "torch", "accelerate", "huggingface_hub", "tokenizers", "safetensors",
               "papermill", "nbclient", "jupyter_client", "ipykernel", "ipywidgets", "seaborn", "matplotlib",
               "pandas", "sklearn")


@functools.lru_cache(maxsize=None)
def cache_kw() -> str:
    """``"cache"`` on transformers >= 5.24, else ``"past_key_values"``: the KV-cache keyword that the
    installed decoders' ``forward`` takes (and the field name of their outputs)."""
    from transformers import Qwen3Model

    params = inspect.signature(Qwen3Model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def output_cache(out):
    """The KV cache of a model output under either name (``None`` when there is none), without
    touching the deprecated attribute."""
    return out.get(cache_kw()) if hasattr(out, "get") else getattr(out, cache_kw(), None)


def quiet_third_party_deprecations() -> None:
    """Filter ``DeprecationWarning`` and ``FutureWarning`` raised from inside :data:`THIRD_PARTY`
    libraries (by the warning's module). Called once in each notebook's first code cell."""
    pattern = r"(" + "|".join(THIRD_PARTY) + r")(\..*)?$"
    for category in (DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=pattern)
