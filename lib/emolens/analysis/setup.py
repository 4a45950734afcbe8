"""The set-up every walkthrough repeats after its ``parameters`` cell, in one tested call.

Notebooks 01, 02, 04, 05 (and 07's load step) each: filter third-party deprecation notices, seed torch
and numpy, load the model, load ``n`` samples of one split of a dataset (with the world's noise level
``eps`` on world views, a conflict ``subset`` on CA-MER, a ``root`` for local benchmarks), build the
:class:`~emolens.methods.Task` and materialise the samples. :func:`setup` does exactly that::

    S = setup(model, dataset, split, n=max(n_samples, n_eval), eps=eps, seed=seed, device=device)
    lm, ds, task, samples = S          # or S.lm, S.ds, S.task, S.samples
    print(S.describe())

``eps=None`` keeps the manifest's own nuisance level (nothing is passed to ``load_dataset``); a number
overrides it on world views and is refused, in one line, for a local benchmark (which has no ``eps``).
The world's own seed stays the manifest's: ``seed`` seeds torch and numpy (random baselines, the
bootstrap), not the data.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

__all__ = ["Setup", "setup"]


@dataclass
class Setup:
    """What :func:`setup` built: unpacks as ``lm, ds, task, samples``."""

    lm: Any  # emolens.models.base.LoadedModel
    ds: Any  # emolens.data.Dataset
    task: Any  # emolens.methods.Task
    samples: List[Any]  # [ds[i] for i in range(len(ds))]
    world: dict = field(default_factory=dict)  # the world overrides applied ({}: the manifest's own)
    seed: int = 0

    def __iter__(self):
        return iter((self.lm, self.ds, self.task, self.samples))

    def describe(self) -> str:
        """One line: the model (family, depth) and the data (dataset/split[/subset], n, eps)."""
        ds = self.ds
        sub = f"/{ds.subset}" if getattr(ds, "subset", None) else ""
        eps = (getattr(ds, "options", None) or {}).get("eps")
        noise = "" if eps is None else f", eps = {eps:g}" + ("" if "eps" in self.world else " (manifest)")
        return (f"{self.lm.family}: {self.lm.num_layers} layers | {ds.name}/{ds.split}{sub}: "
                f"{len(self.samples)} samples{noise} | seed {self.seed}")


def setup(model, dataset, split: str = "test", *, n: Optional[int] = None, eps: Optional[float] = None,
          subset: Optional[str] = None, root=None, seed: int = 0, device: str = "auto", quiet: bool = True,
          **options) -> Setup:
    """Seed, load the model and the first ``n`` samples of a split, build the task.

    Args:
        model: a model name / checkpoint folder for :func:`emolens.load_model`, or a loaded
            :class:`~emolens.models.base.LoadedModel` (used as is).
        dataset: a manifest name or path (world view or local benchmark).
        n: the number of samples (the first ``n`` of the split); None for the whole split.
        eps: the world's noise level (0..7); None keeps the manifest's.
        subset: a manifest subset (CA-MER's ``video-aligned`` ...). root: a local benchmark's copy.
        seed: seeds ``torch`` and ``numpy`` (not the world).
        quiet: call :func:`emolens.compat.quiet_third_party_deprecations` (what every notebook does).
        **options: further ``load_dataset`` options (``frames=``, ``audio=``, world overrides).
    """
    import numpy as np
    import torch

    from ..compat import quiet_third_party_deprecations
    from ..data import load_dataset, load_manifest
    from ..methods import Task

    if n is not None and int(n) < 1:
        raise ValueError(f"setup: n = {n} samples; pass n >= 1, or None for the whole split")
    if quiet:
        quiet_third_party_deprecations()
    torch.manual_seed(seed)
    np.random.seed(seed)
    man = load_manifest(dataset)
    world = {}
    if eps is not None:
        if not man.is_world:
            raise ValueError(f"setup: eps = {eps} is a world noise level, but {man.name} is a local benchmark; "
                             "pass eps=None")
        world["eps"] = float(eps)
    if isinstance(model, str) or hasattr(model, "__fspath__"):
        from ..models import load_model

        lm = load_model(str(model), device=device)
    elif hasattr(model, "encode") and hasattr(model, "model"):
        lm = model
    else:
        raise TypeError(f"setup: model must be a name, a checkpoint folder or a LoadedModel, got {type(model).__name__}")
    ds = load_dataset(man, split=split, limit=n, subset=subset, root=root, **world, **options)
    task = Task.from_dataset(ds)
    samples = [ds[i] for i in range(len(ds))]
    return Setup(lm=lm, ds=ds, task=task, samples=samples, world=world, seed=int(seed))
