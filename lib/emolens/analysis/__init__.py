"""The step-by-step computations the walkthrough notebooks show, one module per paper.

Nothing here is a method (those live in :mod:`emolens.methods`); each function composes library calls
(``intervene``, ``methods.*``, ``metrics``) so a notebook can recompute, table and compare what a
method decides inside the forward.

* :mod:`.usage`: token usage under the world-model view (WETR Sec. 3.2, Eq. 1-2): attention mass
  per token group at the answer position, with or without a method's plan.
* :mod:`.wetr`: WETR's NTS (Eq. 4-7) and STR (Eq. 9) recomputed from a trace, the deletion test
  (Fig. 4), leave-one-out contributions (Table 8) and EMass (Fig. 6).
* :mod:`.sepm`: SEPM's configurations on shared forwards, cue survival of a dropping map, the
  occluded image (Fig. 4).
* :mod:`.mosear`: MoSEAR's Eqs. (5)-(7) per head, the reallocation residuals of Eqs. (8)-(11), the
  CA-MER subset grid (Tables 7-8).
* :mod:`.setup`: the set-up cell every walkthrough repeats (seed, model, dataset, task, samples).

Device: everything these helpers return is on the CPU (:func:`to_cpu`, :func:`as_numpy` in
:mod:`.cpu`, the one conversion helper notebooks use for what they read from a trace themselves).
"""
from .cpu import as_numpy, to_cpu

__all__ = ["as_numpy", "to_cpu"]
