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

Dtypes: :func:`tolerances` is the one place that says how close two model tensors computed by two
routes (single vs padded batch, step-by-step recomputation vs the library) must be, per dtype; every
notebook and test assertion on model tensors takes its atol/rtol from it, so a bf16/fp16 run on a GPU
checks the same properties as the float32 CPU run with bounds that fit the dtype's rounding.
"""
from __future__ import annotations

import functools
import inspect
import warnings

__all__ = ["cache_kw", "output_cache", "quiet_third_party_deprecations", "THIRD_PARTY", "tolerances", "TOLERANCES"]

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


#: (atol, rtol) for comparing model tensors computed by two routes, per compute dtype. float32: the
#: bounds emolens' own tests used before dtypes mattered; bfloat16 has an 8-bit mantissa (one ulp at 1
#: is 7.8e-3) and fp16 a 10-bit one (9.8e-4), and a difference is a few ulps after one decoder layer
#: (measured on the CPU run: P-bar single vs padded 8.6e-4, UAP 2.2e-3 in bf16).
TOLERANCES = {
    "float64": (1e-10, 1e-10),
    "float32": (1e-5, 1e-5),
    "float16": (5e-3, 5e-3),
    "bfloat16": (3e-2, 3e-2),
}


def tolerances(dtype, scale: float = 1.0) -> dict:
    """``dict(atol=..., rtol=...)`` for comparing tensors of a model run in ``dtype`` (a torch dtype,
    ``"bf16"``-style name, or anything with a ``.dtype``, e.g. a :class:`~emolens.models.LoadedModel`).
    ``scale`` widens both bounds for a comparison that accumulates over more steps (e.g. 10 for a
    statistic averaged over layers). Use as ``torch.allclose(a, b, **tolerances(lm.dtype))`` or
    ``np.testing.assert_allclose(a, b, **tolerances(lm.dtype))``."""
    import torch

    d = getattr(dtype, "dtype", dtype)
    names = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "fp64": "float64"}
    key = str(d).replace("torch.", "")
    key = names.get(key, key)
    if isinstance(d, torch.dtype) and not d.is_floating_point:
        raise ValueError(f"tolerances: {d} is not a floating dtype; compare integer tensors with equality")
    if key not in TOLERANCES:
        raise ValueError(f"tolerances: unknown dtype {dtype!r}; use one of {sorted(TOLERANCES)}")
    atol, rtol = TOLERANCES[key]
    return {"atol": atol * float(scale), "rtol": rtol * float(scale)}
