"""Helpers shared by notebooks 04 (SEPM) and 05 (AR): things a notebook does more than once.

Nothing here is a method: every equation lives in :mod:`emolens.methods.sepm` / :mod:`emolens.methods.ar`.
These helpers only orchestrate library calls so that notebook cells stay short and fast.

* :class:`SepmLab` evaluates many SEPM configurations (alpha, beta, strategy, CCI/FP/VTA) on one fixed
  list of samples. It calls the library's own pieces (``run_stage1``, ``SEPM.dropping``,
  ``SEPM.stage2_prompts``, ``run_stage2``) and reuses forwards: stage 1 runs once per
  (CCI, FP, significance rows) and is alpha-free (the branch is re-derived from C by Algorithm 1's
  ``C > alpha`` test); a stage-2 answer is cached per (sample, Q_f, dropping map R), so an alpha sweep
  costs two stage-2 passes in total. Samples are processed in chunks of ``batch_size`` in sample order,
  exactly as :func:`emolens.evaluate.evaluate` batches them; when a configuration needs every sample
  afresh the batches are identical to ``SEPM.predict``'s (tested in ``tests/test_nbhelpers_sepm_ar.py``).
  A cached answer computed next to other neighbours in a batch may differ from ``SEPM.predict`` only
  by left-padding float noise.
* :func:`occlude` paints the dropped visual tokens' patches grey (SEPM Fig. 4: "the occluded part
  represents dropped tokens").
* :func:`head_table` lists Eqs. (5)-(7) of MoSEAR per layer and head for one answer row.
* :func:`reallocation_report` measures how well an edited head satisfies Eqs. (8)-(11).
* :func:`evaluate_grid` runs methods over the CA-MER subsets (MoSEAR Tables 7 and 8), caching runs.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Optional, Sequence

import numpy as np
import torch

__all__ = ["SepmLab", "cue_survival", "occlude", "head_table", "reallocation_report", "evaluate_grid"]


# =========================================================================== SEPM
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
        from .methods.sepm import run_stage1

        key = (bool(cci), bool(fp), rows, bool(prompt_spans))
        if key not in self._s1:
            out = []
            for ch in self._chunks(range(len(self.samples))):
                s1 = run_stage1(self.lm, [self.samples[i] for i in ch], self.task, alpha=float("inf"), cci=cci,
                                fp=fp, rows=rows, prompt_spans=prompt_spans)
                self.forwards += int(s1.batch is not None)
                out.append(s1)
            self._s1[key] = out
        return self._s1[key]

    def run(self, **params) -> dict:
        """One SEPM configuration (any ``SEPM`` hyperparameters) on every sample.

        Returns a dict of per-sample lists: ``label``, ``gold``, ``branch``, ``dropped`` (R, visual
        indices), ``k``, ``n_visual``, ``confidence`` / ``p_A`` / ``p_B`` / ``coarse`` (None without
        CCI), ``significance`` (P̄ or None), ``cue_visual`` (ground truth or None); and ``accuracy``.
        """
        from .methods.sepm import SEPM, run_stage2

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


# =========================================================================== AR
def head_table(rows: dict, layout, tau: float, source: str = "audio", target: str = "visual"):
    """MoSEAR Eqs. (5)-(7) for one answer row at every layer, per head.

    Args:
        rows: layer -> ``[H, K]`` attention probabilities of the answer row (one sample).
        layout: the sample's :class:`~emolens.layout.TokenLayout`.
        tau: the threshold of Eq. (7).
    Returns:
        a DataFrame with one row per (layer, head): ``S_A``, ``S_V`` (``S_h(w, A)``, ``S_h(w, V)``),
        ``c_h`` (Eq. 5), ``c`` (Eq. 6, the layer's), ``layer_biased`` (``c > tau``), ``biased`` (Eq. 7).
    """
    import pandas as pd

    from .methods.ar import biased_heads, group_mass, head_ratio, layer_ratio

    src, tgt = layout.group(source), layout.group(target)
    recs = []
    for l in sorted(rows):
        w = torch.as_tensor(rows[l]).double()                 # [H, K]
        s_a, s_v = group_mass(w, src), group_mass(w, tgt)      # [H]
        c_h = head_ratio(w, src, tgt)                          # Eq. (5)
        c = float(layer_ratio(w, src, tgt, head_dim=-2))       # Eq. (6)
        hb = biased_heads(w, src, tgt, tau, head_dim=-2)       # Eq. (7)
        for h in range(w.shape[0]):
            recs.append({"layer": int(l), "head": h, "S_A": float(s_a[h]), "S_V": float(s_v[h]), "c_h": float(c_h[h]),
                         "c": c, "layer_biased": bool(c > tau), "biased": bool(hb[h])})
    return pd.DataFrame(recs)


def reallocation_report(w, w_new, src, tgt, c) -> dict:
    """How well ``w_new`` (one head's row ``[K]``) is AR's reallocation of ``w`` at layer ratio ``c``.

    Returns max absolute residuals (floats): ``row_sum`` (|sum w' - sum w|: the row keeps its total,
    1 up to the input's own rounding), ``eq8`` (|c_h(w') - c|), ``eq9`` (|S(w', A+V) - S(w, A+V)|),
    ``eq10`` / ``eq11`` (the proportional-split equations as written, over the source / target keys;
    they divide by the moved mass, so float32 inputs with a tiny move amplify rounding), ``share_A`` /
    ``share_V`` (max |w'(x) / S(w', X) - w(x) / S(w, X)|: each token's share within its group, the
    same condition in a form that does not amplify rounding), ``other`` (max |w' - w| on the remaining
    keys); and the masses ``S_A``, ``S_V``, ``S_A_new``, ``S_V_new``, ``delta`` (S_A - S_A_new = D_h of
    Eq. 14).
    """
    w = np.asarray(torch.as_tensor(w).double().cpu().numpy()).reshape(-1)
    w2 = np.asarray(torch.as_tensor(w_new).double().cpu().numpy()).reshape(-1)
    K = w.size
    sm = np.zeros(K, bool)
    tm = np.zeros(K, bool)
    sm[np.asarray(src, dtype=np.int64)] = True
    tm[np.asarray(tgt, dtype=np.int64)] = True
    sa, sv, sa2, sv2 = w[sm].sum(), w[tm].sum(), w2[sm].sum(), w2[tm].sum()
    other = ~(sm | tm)

    def prop(mask, s_old, s_new):
        d = s_new - s_old
        if abs(d) < 1e-15:
            return float(np.abs(w2[mask] - w[mask]).max(initial=0.0))
        return float(np.abs((w2[mask] - w[mask]) / d - w[mask] / s_old).max(initial=0.0))

    return {"row_sum": float(abs(w2.sum() - w.sum())), "eq8": float(abs(sa2 / sv2 - float(c))),
            "eq9": float(abs((sa2 + sv2) - (sa + sv))), "eq10": prop(sm, sa, sa2), "eq11": prop(tm, sv, sv2),
            "share_A": float(np.abs(w2[sm] / sa2 - w[sm] / sa).max(initial=0.0)),
            "share_V": float(np.abs(w2[tm] / sv2 - w[tm] / sv).max(initial=0.0)),
            "other": float(np.abs(w2[other] - w[other]).max(initial=0.0)),
            "S_A": float(sa), "S_V": float(sv), "S_A_new": float(sa2), "S_V_new": float(sv2), "delta": float(sa - sa2)}


def evaluate_grid(lm, dataset: str, configs: dict, subsets: Sequence[str], *, limit: int, split: str = "test",
                  seed: int = 0, cache: Optional[dict] = None):
    """Run named method configurations over dataset subsets (MoSEAR Tables 7-8).

    Args:
        configs: display name -> ``{"method": name, **hyperparameters}``.
        subsets: subset names of the manifest (e.g. CA-MER's ``video-aligned``...).
        cache: a dict reused across calls: a (subset, configuration) already evaluated is not re-run.
    Returns:
        ``(table, cache)``: a tidy DataFrame (``subset``, ``config``, ``war``, ``uar``, ``avg`` = (WAR + UAR)/2,
        ``n``) and the cache (``(subset, json config) -> evaluate() result``; ``("data", subset)`` -> dataset).
    """
    import pandas as pd

    from .data import load_dataset
    from .evaluate import evaluate

    cache = {} if cache is None else cache
    recs = []
    for sub in subsets:
        dkey = ("data", sub)
        if dkey not in cache:
            cache[dkey] = load_dataset(dataset, split=split, subset=sub, limit=limit)
        ds = cache[dkey]
        for name, cfg in configs.items():
            cfg = dict(cfg)
            method = cfg.pop("method")
            key = (sub, json.dumps({"method": method, **cfg}, sort_keys=True))
            if key not in cache:
                cache[key] = evaluate(lm, ds, method, cfg, limit=limit, seed=seed, progress=False)
            m = cache[key]["metrics"]
            recs.append({"subset": sub, "config": name, "war": m["war"], "uar": m["uar"],
                         "avg": (m["war"] + m["uar"]) / 2, "n": m["n"]})
    return pd.DataFrame(recs), cache
