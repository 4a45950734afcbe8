"""SEPM step by step (the computations notebook 04 shows): many configurations on one sample list,
what a dropping strategy does to the world's cue tokens, and the occluded image of SEPM Fig. 4.

Nothing here is a method: every equation lives in :mod:`emolens.methods.sepm`. These functions only
orchestrate library calls so that a walkthrough's cells stay short and fast.

* :class:`SepmLab` evaluates many SEPM configurations (alpha, beta, strategy, CCI/FP/VTA) on one fixed
  list of samples. It calls the library's own pieces (``run_stage1``, ``SEPM.dropping``,
  ``SEPM.stage2_prompts``, ``run_stage2``) and reuses forwards: stage 1 runs once per
  (CCI, FP, significance rows) and is alpha-free (the branch is re-derived from C by Algorithm 1's
  ``C > alpha`` test); a stage-2 answer is cached per (sample, Q_f, dropping map R), so an alpha sweep
  costs two stage-2 passes in total. Samples are processed in chunks of ``batch_size`` in sample order,
  exactly as :func:`emolens.evaluate.evaluate` batches them; when a configuration needs every sample
  afresh the batches are identical to ``SEPM.predict``'s (tested in ``tests/test_analysis_sepm.py``).
  A cached answer computed next to other neighbours in a batch may differ from ``SEPM.predict`` only
  by left-padding float noise.
* :func:`occlude` paints the dropped visual tokens' patches grey (SEPM Fig. 4: "the occluded part
  represents dropped tokens").
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np
import torch

__all__ = ["SepmLab", "cue_survival", "occlude"]


def release_inputs(s1):
    """A cached :class:`~emolens.methods.sepm.Stage1` without what only the forward needed: the batch's
    model inputs (pixel values, ids, on the model's device) and the KV cache are dropped; layouts,
    prompts, logits (CPU), confidence and significance stay. A notebook that keeps a SepmLab for its
    whole lifetime then holds no device memory for it (issue 16)."""
    if s1.batch is not None:
        s1.batch = dataclasses.replace(s1.batch, inputs={})
    if getattr(s1, "cache", None) is not None:
        s1.cache = None
    if isinstance(s1.logits, torch.Tensor):
        s1.logits = s1.logits.detach().cpu()
    return s1


class SepmLab:
    """Many SEPM configurations on one fixed sample list, with shared forwards (see module docstring).

    Args:
        lm: a loaded model (:func:`emolens.load_model`).
        samples: the samples, in evaluation order.
        task: the :class:`~emolens.methods.Task`.
        batch_size: chunk size (``evaluate``'s default is 16).

    Attributes:
        forwards: number of model forwards run so far (stage 1 and stage 2 together).
    """

    def __init__(self, lm, samples: Sequence, task, batch_size: int = 16):
        if not samples:
            raise ValueError("SepmLab needs at least one sample")
        self.lm, self.samples, self.task = lm, list(samples), task
        self.batch_size = int(batch_size)
        self.gold = [s.label for s in self.samples]
        self.forwards = 0
        self._s1: dict = {}
        self._s2: dict = {}

    def _chunks(self, idx: Sequence[int]):
        idx = list(idx)
        for i in range(0, len(idx), self.batch_size):
            yield idx[i:i + self.batch_size]

    def stage1(self, *, cci: bool = True, fp: bool = True, rows: Optional[str] = "foe",
               prompt_spans: bool = True) -> list:
        """Stage 1 per chunk (a list of :class:`~emolens.methods.sepm.Stage1`, cached). Run with
        ``alpha = inf`` (every branch ``ambiguous``): :meth:`run` re-derives the branch for its alpha."""
        from ..methods.sepm import run_stage1

        key = (bool(cci), bool(fp), rows, bool(prompt_spans))
        if key not in self._s1:
            out = []
            for ch in self._chunks(range(len(self.samples))):
                s1 = run_stage1(self.lm, [self.samples[i] for i in ch], self.task, alpha=float("inf"), cci=cci,
                                fp=fp, rows=rows, prompt_spans=prompt_spans)
                self.forwards += int(s1.batch is not None)
                out.append(release_inputs(s1))
            self._s1[key] = out
        return self._s1[key]

    def run(self, **params) -> dict:
        """One SEPM configuration (any ``SEPM`` hyperparameters) on every sample.

        Returns a dict of per-sample lists: ``label``, ``gold``, ``branch``, ``dropped`` (R, visual
        indices), ``k``, ``n_visual``, ``confidence`` / ``p_A`` / ``p_B`` / ``coarse`` (None without
        CCI), ``significance`` (P̄ or None), ``cue_visual`` (ground truth or None); and ``accuracy``.
        """
        from ..methods.sepm import SEPM, run_stage2

        m = SEPM(**params)
        p = m.params
        s1_chunks = self.stage1(cci=p["cci"], fp=p["fp"], rows=m.rows, prompt_spans=p["prompt_spans"])
        out = {k: [] for k in ("branch", "dropped", "confidence", "p_A", "p_B", "coarse", "significance", "n_visual",
                               "cue_visual")}
        todo, prompts_all, drops_all = [], [], []
        for ch, s1 in zip(self._chunks(range(len(self.samples))), s1_chunks):
            ss = [self.samples[i] for i in ch]
            s1 = dataclasses.replace(s1)
            if s1.confidence is not None:  # Algorithm 1: C > alpha -> the coarse answer's branch
                s1.branch = [c if float(C) > p["alpha"] else "ambiguous" for c, C in zip(s1.coarse, s1.confidence)]
            if s1.batch is not None:
                lays = s1.batch.layouts
            else:
                lays = self.lm.encode(ss, m.stage2_prompts(self.task, s1.branch)).layouts
            n_visual = [int(l.visual.size) for l in lays]
            drop = m.dropping(ss, s1, n_visual)
            prompts = m.stage2_prompts(self.task, s1.branch)
            for j, i in enumerate(ch):
                out["branch"].append(s1.branch[j])
                out["dropped"].append([int(x) for x in drop[j]])
                out["n_visual"].append(n_visual[j])
                out["cue_visual"].append(None if lays[j].cue_visual is None else np.asarray(lays[j].cue_visual, bool))
                has_c = s1.confidence is not None
                out["confidence"].append(float(s1.confidence[j]) if has_c else None)
                out["p_A"].append(float(s1.p_a[j]) if has_c else None)
                out["p_B"].append(float(s1.p_b[j]) if has_c else None)
                out["coarse"].append(s1.coarse[j] if has_c else None)
                out["significance"].append(None if s1.significance is None else np.asarray(s1.significance[j]))
                key = (i, prompts[j].text, tuple(int(x) for x in drop[j]))
                prompts_all.append(prompts[j])
                drops_all.append(drop[j])
                if key not in self._s2:
                    todo.append((i, key))
        # stage 2: only the (sample, Q_f, R) not seen yet, in sample order and chunks of batch_size
        for part in self._chunks(range(len(todo))):
            items = [todo[t] for t in part]
            ss = [self.samples[i] for i, _ in items]
            answers, _, _ = run_stage2(self.lm, ss, [prompts_all[i] for i, _ in items], [drops_all[i] for i, _ in items])
            self.forwards += 1
            for (i, key), a in zip(items, answers):
                self._s2[key] = a.label
        out["label"] = [self._s2[(i, prompts_all[i].text, tuple(int(x) for x in drops_all[i]))]
                        for i in range(len(self.samples))]
        out["gold"] = list(self.gold)
        out["k"] = [len(d) for d in out["dropped"]]
        out["accuracy"] = float(np.mean([a == g for a, g in zip(out["label"], self.gold)]))
        return out

    def accuracy(self, **params) -> float:
        """Accuracy (WAR) of one configuration."""
        return self.run(**params)["accuracy"]


def cue_survival(dropped: Sequence, cue_visual: Sequence) -> dict:
    """How a dropping strategy treats the world's ground-truth cue tokens, over samples.

    Args:
        dropped: per sample the dropping map R (visual indices).
        cue_visual: per sample ``[N_v]`` bool ground truth (None where unknown; such samples are skipped).
    Returns:
        ``cue_kept``: mean share of a sample's cue tokens that survive (samples with at least one cue token);
        ``dropped_is_cue``: share of all dropped tokens that are cue tokens (NaN when nothing was dropped);
        ``cue_rate``: share of all visual tokens that are cue tokens (what uniform random dropping would hit).
    """
    kept, n_drop, n_drop_cue, n_vis, n_cue = [], 0, 0, 0, 0
    for d, cv in zip(dropped, cue_visual):
        if cv is None:
            continue
        cv = np.asarray(cv, dtype=bool)
        d = np.asarray(d, dtype=np.int64).reshape(-1)
        hit = cv[d] if d.size else np.zeros(0, dtype=bool)
        n_drop += d.size
        n_drop_cue += int(hit.sum())
        n_vis += cv.size
        n_cue += int(cv.sum())
        if cv.any():
            kept.append(1.0 - hit.sum() / cv.sum())
    return {"cue_kept": float(np.mean(kept)) if kept else float("nan"),
            "dropped_is_cue": n_drop_cue / n_drop if n_drop else float("nan"),
            "cue_rate": n_cue / n_vis if n_vis else float("nan")}


def occlude(sample, layout, dropped, fill: int = 128):
    """A copy of ``sample`` whose frames have the patches of the ``dropped`` visual tokens (indices into
    the layout's visual tokens) painted ``fill`` grey: SEPM Fig. 4's occluded image."""
    grid = layout.visual_grid
    if grid is None:
        raise ValueError("this layout has no visual_grid; the occluded image cannot be drawn")
    frames = np.array(sample.frames, copy=True)
    T, H, W, _ = frames.shape
    rows, cols = int(grid[:, 1].max()) + 1, int(grid[:, 2].max()) + 1
    ph, pw = H // rows, W // cols
    for j in np.asarray(dropped, dtype=np.int64).reshape(-1):
        f, r, c = (int(x) for x in grid[j])
        frames[f, r * ph:(r + 1) * ph, c * pw:(c + 1) * pw] = fill
    return dataclasses.replace(sample, frames=frames)
