"""MoSEAR step by step (the computations notebook 05 shows): Eqs. (5)-(7) per layer and head for one
answer row, how well an edited head satisfies the reallocation Eqs. (8)-(11), and the CA-MER subset
grid of Tables 7-8.

Nothing here is a method: every equation lives in :mod:`emolens.methods.ar` (AR, PAI, UAP). These
functions only orchestrate library calls so that a walkthrough's cells stay short and fast.

* :func:`head_table` lists Eqs. (5)-(7) of MoSEAR per layer and head for one answer row.
* :func:`reallocation_report` measures how well an edited head satisfies Eqs. (8)-(11).
* :func:`evaluate_grid` runs methods over the CA-MER subsets (MoSEAR Tables 7 and 8), caching runs.
"""
from __future__ import annotations

import json
from typing import Optional, Sequence

import numpy as np
import torch

__all__ = ["head_table", "reallocation_report", "evaluate_grid"]


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

    from ..methods.ar import biased_heads, group_mass, head_ratio, layer_ratio

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

    from ..data import load_dataset
    from ..evaluate import evaluate

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
