"""Everything a notebook receives from the library is on the CPU: the one conversion helper.

A model loaded with ``device="auto"`` lives on the GPU where there is one; its captures, logits and
hidden states then live there too, and a notebook that calls ``.numpy()`` on them, or compares them
with a CPU tensor, fails on the first GPU run although it passed on every CPU machine. The analysis
helpers return CPU tensors / numpy arrays through :func:`to_cpu` / :func:`as_numpy`, and notebook code
that reads a trace directly converts through them too (``tests/test_device_clean.py`` checks both
statically and, where CUDA exists, at run time).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

__all__ = ["to_cpu", "as_numpy"]

_NARROW = (torch.bfloat16, torch.float16)


def to_cpu(x, float32: bool = False):
    """``x`` with every tensor in it detached and moved to the CPU (dicts, lists, tuples and
    dataclasses such as ``AttnCapture`` are walked; other values are returned as they are).
    ``float32=True`` also widens bf16/fp16 tensors to float32 (what numpy can hold)."""
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        return t.float() if float32 and t.dtype in _NARROW else t
    if isinstance(x, dict):
        return type(x)((k, to_cpu(v, float32)) for k, v in x.items())
    if isinstance(x, (list, tuple)) and not hasattr(x, "_fields"):
        return type(x)(to_cpu(v, float32) for v in x)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return dataclasses.replace(x, **{f.name: to_cpu(getattr(x, f.name), float32)
                                          for f in dataclasses.fields(x) if f.init})
    return x


def as_numpy(x) -> np.ndarray:
    """A numpy array from a tensor on any device and of any dtype (bf16/fp16 widened to float32), or
    from anything ``np.asarray`` takes."""
    if isinstance(x, torch.Tensor):
        return to_cpu(x, float32=True).numpy()
    return np.asarray(x)
