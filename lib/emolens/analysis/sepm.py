"""SEPM step by step (the computations notebook 04 shows): many configurations on one sample list,
what a dropping strategy does to the world's cue tokens, and the occluded image of SEPM Fig. 4.

Nothing here is a method: every equation lives in :mod:`emolens.methods.sepm`. These functions only
orchestrate library calls so that a walkthrough's cells stay short and fast.

* :class:`SepmLab` evaluates many SEPM configurations (alpha, beta, strategy, CCI/FP/VTA) on one fixed
  list of samples. It calls the library's own pieces (``run_stage1``, ``SEPM.dropping``,
  ``SEPM.stage2_prompts``, ``run_stage2``) and reuses forwards: stage 1 runs once per
  (CCI, FP, significance rows) -- a coarse pass without rows reuses one with rows -- and is alpha-free (the branch is re-derived from C by Algorithm 1's
  ``C > alpha`` test); a stage-2 answer is cached per (sample, Q_f, dropping map R), so an alpha sweep
  costs two stage-2 passes in total. Samples are processed in chunks of ``batch_size`` in sample order,
  exactly as :func:`emolens.evaluate.evaluate` batches them; when a configuration needs every sample
  afresh the batches are identical to ``SEPM.predict``'s (tested in ``tests/test_analysis_sepm.py``).
  A cached answer computed next to other neighbours in a batch may differ from ``SEPM.predict`` only
  by left-padding float noise.
* :func:`occlude` paints the dropped visual tokens' patches grey (SEPM Fig. 4: "the occluded part
  represents dropped tokens").
* :func:`restricted_confusion` splits SEPM's errors on the samples that took a restricted branch
  (Q_PEC / Q_NEC: stage 2 answers only within the predicted valence group) into cross-valence errors
  (exactly the coarse stage's errors there: Eq. 1's wrong valence cannot be undone) and within-valence
  errors, next to zero-shot's on the same samples, with both confusion matrices.
* :func:`dropping_grid` draws SEPM Fig. 4 for several samples and drop rates on ONE colour scale of the
  significance P̄ (Eq. 8) with one colourbar (the static version of notebook 04's explorer).
* :func:`confusion_pair` draws confusion matrices side by side on one colour scale, axes labelled.

A claimed difference's 95 % interval is read by :func:`emolens.analysis.wetr.verdict` (HELD / FAILED /
UNRESOLVED, the rule of ``benchmarks/verdicts.py``).
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np
import torch

__all__ = ["SepmLab", "confusion_pair", "cue_survival", "dropping_grid", "occlude",
           "restricted_confusion"]


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
        if key not in self._s1 and rows is None and cci:
            # a coarse pass that also captured attention rows has the same logits, C and branches: reuse it
            for (c2, f2, _, p2), chunks in self._s1.items():
                if (c2, f2, p2) == key[:2] + key[3:]:
                    return chunks
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

    def result(self, **params) -> dict:
        """One configuration in :func:`emolens.evaluate.evaluate`'s result shape (``metrics["war"]`` and
        per-sample ``predictions`` with ``uid``, ``gold``, ``label`` and ``extra`` = branch, dropped, k,
        n_visual, coarse, confidence),
        so :func:`emolens.cache.result_ci` / :func:`~emolens.cache.result_delta` give its intervals."""
        r = self.run(**params)
        preds = [{"uid": s.uid, "gold": g, "label": a,
                  "extra": {"branch": b, "dropped": d, "k": k, "n_visual": nv, "coarse": c, "confidence": conf}}
                 for s, g, a, b, d, k, nv, c, conf in zip(self.samples, r["gold"], r["label"], r["branch"], r["dropped"],
                                                          r["k"], r["n_visual"], r["coarse"], r["confidence"])]
        return {"metrics": {"war": r["accuracy"]}, "predictions": preds, "config": {"method": {"method": "sepm", **params}}}


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


# ---------------------------------------------------------------------------------------------
# reading the results (notebook 04's "What we found")

def restricted_confusion(sepm_result: dict, zs_result: dict, labels: Sequence[str], valence: dict,
                         branches: Sequence[str] = ("positive", "negative")) -> dict:
    """SEPM's restricted branch against zero-shot on the same samples (SEPM Sec. 3.2's premise: the
    model confuses semantically close categories, and answering within the predicted valence group helps).

    Args:
        sepm_result, zs_result: ``evaluate`` results (``predictions`` with ``uid``, ``gold``, ``label``;
            SEPM's with ``extra["branch"]``) on the same samples in the same order.
        labels: the task's labels (the matrices' order). valence: label -> valence group.
        branches: the restricted branches (Q_PEC, Q_NEC).
    Returns:
        ``mask`` [N] bool (samples that took a restricted branch), ``n``, the confusion matrices
        ``cm_sepm`` / ``cm_zero_shot`` [C, C] (rows gold, columns predicted; :func:`emolens.metrics.
        confusion_matrix`) on those samples, and per method (``sepm`` / ``zero_shot``) the counts
        ``correct``, ``cross_valence`` (predicted valence != gold valence) and ``within_valence`` errors.
        On a restricted branch SEPM's ``cross_valence`` equals the coarse stage's errors there.
    """
    from ..metrics import confusion_matrix

    ps, pz = sepm_result["predictions"], zs_result["predictions"]
    if [p["uid"] for p in ps] != [p["uid"] for p in pz]:
        raise ValueError("restricted_confusion needs the SEPM and zero-shot runs on the same samples in the same "
                         "order (same dataset, split, limit and world)")
    missing = sorted({p["gold"] for p in ps} - set(valence))
    if missing:
        raise ValueError(f"restricted_confusion: gold labels {missing} have no valence group; pass the task's "
                         "label -> valence map")
    mask = np.array([p.get("extra", {}).get("branch") in branches for p in ps], dtype=bool)
    out = {"mask": mask, "n": int(mask.sum()), "labels": list(labels)}
    for name, preds in (("sepm", ps), ("zero_shot", pz)):
        sel = [p for p, m in zip(preds, mask) if m]
        gold = [p["gold"] for p in sel]
        pred = [p["label"] for p in sel]
        ok = sum(g == a for g, a in zip(gold, pred))
        cross = sum(g != a and valence.get(a) != valence[g] for g, a in zip(gold, pred))
        out[name] = {"correct": int(ok), "cross_valence": int(cross), "within_valence": int(len(sel) - ok - cross)}
        out[f"cm_{name}"] = (confusion_matrix(gold, pred, labels=list(labels)) if sel
                             else np.zeros((len(labels), len(labels)), dtype=np.int64))
    return out


def confusion_pair(matrices: dict, labels: Sequence[str], *, normalize: bool = True, suptitle: str = "",
                   cmap: str = "Blues"):
    """Confusion matrices side by side (``{title: [C, C] counts}``, rows gold, columns predicted) on ONE
    colour scale with one colourbar; ``normalize``: each row divided by its count (recall per gold class;
    empty rows stay 0). Axes are labelled "gold" / "predicted"; cells carry the counts."""
    import matplotlib
    import matplotlib.pyplot as plt
    import seaborn as sns

    if not matrices:
        raise ValueError("confusion_pair needs at least one matrix ({title: [C, C] counts})")
    C = len(labels)
    mats = {}
    for t, m in matrices.items():
        m = np.asarray(m, dtype=float)
        if m.shape != (C, C):
            raise ValueError(f"confusion_pair: matrix {t!r} has shape {m.shape} but there are {C} labels")
        rows = m.sum(1, keepdims=True)
        mats[t] = (np.divide(m, rows, out=np.zeros_like(m), where=rows > 0) if normalize else m, m)
    vmax = 1.0 if normalize else max(float(v[0].max()) for v in mats.values()) or 1.0
    fig, axes = plt.subplots(1, len(mats), figsize=(0.55 * C * len(mats) + 2.5, 0.5 * C + 1.8), squeeze=False,
                             layout="constrained")
    for ax, (t, (shown, counts)) in zip(axes[0], mats.items()):
        sns.heatmap(shown, ax=ax, cmap=cmap, vmin=0.0, vmax=vmax, cbar=False, square=True,
                    annot=counts.astype(int), fmt="d", annot_kws={"fontsize": 7},
                    xticklabels=list(labels), yticklabels=list(labels))
        ax.set_xlabel("predicted")
        ax.set_ylabel("gold")
        ax.set_title(t, fontsize=10)
        ax.tick_params(axis="x", labelrotation=90, labelsize=8)
        ax.tick_params(axis="y", labelrotation=0, labelsize=8)
    sm = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0.0, vmax), cmap=cmap)
    fig.colorbar(sm, ax=list(axes[0]), shrink=0.8, label="share of the gold class" if normalize else "samples")
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def dropping_grid(samples: Sequence, layouts: Sequence, significances: Sequence, betas: Sequence[float], *,
                  cmap: str = "magma", frame: int = 0):
    """SEPM Fig. 4 for several samples: per row one sample, first the significance P̄ (Eq. 8) as heat,
    then the image with the dropping map R = argmin_k(P̄), k = floor(beta N_v) (Eq. 9) occluded for each
    ``beta``. Every heat panel shares ONE colour scale (min and max of P̄ over all the samples) with one
    colourbar; cyan dashed boxes are the world's ground-truth cue tokens.

    Returns:
        ``(fig, dropped)``: the Figure and ``dropped[r][c]``, the R of sample r at ``betas[c]``.
    """
    import matplotlib.pyplot as plt

    from .. import plots
    from ..methods.sepm import dropping_map

    if not (len(samples) == len(layouts) == len(significances)) or not samples:
        raise ValueError(f"dropping_grid needs one layout and one P̄ per sample; got {len(samples)} samples, "
                         f"{len(layouts)} layouts, {len(significances)} significance vectors")
    vals = [np.asarray(v, dtype=float) for v in significances]
    lo = float(min(v.min() for v in vals))
    hi = float(max(v.max() for v in vals))
    hi = hi if hi > lo else lo + 1e-12
    n_c = 1 + len(betas)
    fig, axes = plt.subplots(len(samples), n_c, figsize=(2.3 * n_c + 1.0, 2.4 * len(samples)), squeeze=False,
                             layout="constrained")
    dropped = []
    for r, (s, lay, pb) in enumerate(zip(samples, layouts, vals)):
        plots.overlay_tokens(s, lay, values=pb, ax_row=[axes[r, 0]], frames=[frame], title=f"{s.label}: P̄",
                             cmap=cmap, vmin=lo, vmax=hi, colorbar=False)
        row = []
        for c, b in enumerate(betas):
            R = dropping_map(pb, b)
            row.append(R)
            plots.overlay_tokens(occlude(s, lay, R), lay, ax_row=[axes[r, c + 1]], frames=[frame],
                                 title=f"beta={b:g}: {len(R)} dropped")
        dropped.append(row)
    for ax in axes.ravel():
        ax.title.set_fontsize(8)
    plots._colorbar(fig, axes, cmap, lo, hi, "P̄ (Eq. 8): FoE rows' attention")
    return fig, dropped
