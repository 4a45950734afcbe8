"""MoSEAR step by step (the computations notebook 05 shows): Eqs. (5)-(7) per layer and head for one
answer row, how well an edited head satisfies the reallocation Eqs. (8)-(11), and the CA-MER subset
grid of Tables 7-8.

Nothing here is a method: every equation lives in :mod:`emolens.methods.ar` (AR, PAI, UAP). These
functions only orchestrate library calls so that a walkthrough's cells stay short and fast.

* :func:`head_table` lists Eqs. (5)-(7) of MoSEAR per layer and head for one answer row.
* :func:`reallocation_report` measures how well an edited head satisfies Eqs. (8)-(11).
* :func:`evaluate_grid` runs methods over the CA-MER subsets (MoSEAR Tables 7 and 8) through
  :func:`emolens.cache.cached_evaluate` (one stored evaluation per model/data/method/seed), with 95 %
  bootstrap intervals and paired deltas against a baseline configuration on request.
* :func:`middle_third` is the layer range of MoSEAR Fig. 3's "middle layers" as the regime card measures
  it (``[L//3, 2L//3)``).
* :func:`load_variants` loads the token-count variants that are present and says why the others are not.
* :func:`imbalance_study` is MoSEAR Fig. 3c on emolens-tiny's audio-token variants: zero-shot WAR per
  subset with intervals, and per-token / total audio vs visual attention in the middle third of the layers.
* :func:`claim_verdict` decides a claim from its comparisons' 95 % intervals (the rules of
  ``benchmarks/verdicts.py``: HELD iff every interval excludes 0 in the claimed direction, FAILED if one
  excludes 0 the other way, UNRESOLVED otherwise).
"""
from __future__ import annotations

import json
from typing import Optional, Sequence

import numpy as np
import torch

__all__ = ["head_table", "reallocation_report", "evaluate_grid", "rendered", "middle_third", "load_variants", "imbalance_study",
           "claim_verdict", "mean_ci"]


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


def _avg_metric(t, p) -> float:
    """MoSEAR's table metric: (WAR + UAR) / 2 (average of accuracy and recall)."""
    from ..metrics import uar, war

    return (war(t, p) + uar(t, p)) / 2


def rendered(ds):
    """The same dataset (same manifest, split, subset, options: the same cache key) with its samples
    rendered once and held in memory, so that the many runs of a grid do not re-render the world."""
    from ..data.views import Dataset

    samples = [ds[i] for i in range(len(ds))]
    return Dataset(ds.manifest, ds.split, len(samples), samples.__getitem__, subset=ds.subset, root=ds.root,
                   options=ds.options)


def evaluate_grid(lm, dataset: str, configs: dict, subsets: Sequence[str], *, limit: int, split: str = "test",
                  seed: int = 0, cache: Optional[dict] = None, eps: Optional[float] = None, ci: bool = False,
                  baseline: Optional[str] = None, n_boot: int = 1000, batch_size: int = 32,
                  cache_dir=None):
    """Run named method configurations over dataset subsets (MoSEAR Tables 7-8).

    Every run goes through :func:`emolens.cache.cached_evaluate`, so the same (model, data, method,
    seed) gives the same stored number in every notebook.

    Args:
        configs: display name -> ``{"method": name, **hyperparameters}``.
        subsets: subset names of the manifest (e.g. CA-MER's ``video-aligned``...).
        cache: a dict reused across calls *with the same model*: a (subset, configuration) already
            evaluated is not looked up again.
        eps: the world's noise level; None keeps the manifest's own (nothing is passed).
        ci: add 95 % percentile-bootstrap intervals (``n_boot`` resamples, seed ``seed``):
            ``war_lo``, ``war_hi``, ``avg_lo``, ``avg_hi``.
        baseline: a configuration name; adds the paired bootstrap ``delta`` = WAR(config) - WAR(baseline)
            over the same samples with ``delta_lo``, ``delta_hi`` (0 for the baseline itself).
    Returns:
        ``(table, cache)``: a tidy DataFrame (``subset``, ``config``, ``war``, ``uar``, ``avg`` = (WAR + UAR)/2,
        ``n``, then the interval columns asked for) and the cache (``(subset, json config) -> result``;
        ``("data", subset)`` -> dataset).
    """
    import pandas as pd

    from ..cache import cached_evaluate, result_delta
    from ..data import load_dataset
    from ..metrics import bootstrap_ci

    if baseline is not None and baseline not in configs:
        raise ValueError(f"evaluate_grid: baseline {baseline!r} is not one of the configurations {list(configs)}")
    cache = {} if cache is None else cache
    world = {} if eps is None else {"eps": float(eps)}
    recs = []
    for sub in subsets:
        dkey = ("data", sub)
        if dkey not in cache:
            cache[dkey] = rendered(load_dataset(dataset, split=split, subset=sub, limit=limit, **world))
        ds = cache[dkey]
        for name, cfg in configs.items():
            cfg = dict(cfg)
            method = cfg.pop("method")
            key = (sub, json.dumps({"method": method, **cfg}, sort_keys=True))
            if key not in cache:
                cache[key] = cached_evaluate(lm, ds, method, cfg, split=split, limit=limit, seed=seed,
                                             progress=False, batch_size=batch_size, cache_dir=cache_dir)
            res = cache[key]
            m = res["metrics"]
            rec = {"subset": sub, "config": name, "war": m["war"], "uar": m["uar"],
                   "avg": (m["war"] + m["uar"]) / 2, "n": m["n"]}
            if ci or baseline is not None:
                gold = [q["gold"] for q in res["predictions"]]
                pred = [q["label"] for q in res["predictions"]]
            if ci:
                _, rec["war_lo"], rec["war_hi"] = bootstrap_ci(gold, pred, "war", n=n_boot, seed=seed)
                _, rec["avg_lo"], rec["avg_hi"] = bootstrap_ci(gold, pred, _avg_metric, n=n_boot, seed=seed)
            if baseline is not None:
                bcfg = dict(configs[baseline])
                bmethod = bcfg.pop("method")
                bkey = (sub, json.dumps({"method": bmethod, **bcfg}, sort_keys=True))
                if bkey not in cache:
                    cache[bkey] = cached_evaluate(lm, ds, bmethod, bcfg, split=split, limit=limit, seed=seed,
                                                  progress=False, batch_size=batch_size, cache_dir=cache_dir)
                rec["delta"], rec["delta_lo"], rec["delta_hi"] = result_delta(res, cache[bkey], "war",
                                                                              n_boot=n_boot, seed=seed)
            recs.append(rec)
    return pd.DataFrame(recs), cache


def middle_third(n_layers: int) -> list:
    """MoSEAR Fig. 3's middle layers as the regime card measures them (``emolens card``'s
    ``mosear_mid_layer_per_token``): ``[L//3, max(L//3 + 1, 2L//3))``, i.e. layers 2..4 of 8."""
    if int(n_layers) < 1:
        raise ValueError(f"middle_third needs a model with at least one layer, got n_layers = {n_layers}")
    q = n_layers // 3
    return list(range(q, max(q + 1, 2 * n_layers // 3)))


def mean_ci(values, n_boot: int = 1000, seed: int = 0) -> tuple:
    """``(mean, lo, hi)``: the mean of per-sample values ``[N]`` with its 95 % percentile bootstrap
    interval over samples (:func:`emolens.metrics.bootstrap_stat`); NaNs for an empty array."""
    from ..metrics import bootstrap_stat

    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    return bootstrap_stat(lambda i: float(v[i].mean()), v.size, n_boot, seed)


def load_variants(names: Sequence[str], device: str = "auto") -> tuple:
    """Load each named model that is present. Returns ``(loaded, missing)``: ``{name: LoadedModel}`` in
    the order given and ``{name: one-line reason}`` for each that could not be loaded (a shipped variant
    not trained yet, a folder without weights...). Nothing is retried or substituted."""
    from ..models import load_model

    loaded, missing = {}, {}
    for name in names:
        try:
            loaded[name] = load_model(name, device=device)
        except Exception as e:  # noqa: BLE001 -- reported per variant, the study runs on the others
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            missing[name] = f"{type(e).__name__}: {msg}"
    return loaded, missing


def imbalance_study(models: dict, dataset: str, subsets: Sequence[str], *, n_eval: int, n_attn: int,
                    attn_subset: str = "video-aligned", split: str = "test", seed: int = 0,
                    eps: Optional[float] = None, middle: Optional[Sequence[int]] = None, n_boot: int = 1000,
                    batch_size: int = 32, cache_dir=None, profiles: Optional[dict] = None) -> dict:
    """MoSEAR Fig. 3c (Sec. 4, "token imbalance") on models that differ only in their audio-token count.

    For each model of ``models`` (name -> LoadedModel):

    * zero-shot WAR on each subset (first ``n_eval`` samples, :func:`evaluate_grid`, 95 % intervals);
    * on the first ``n_attn`` samples of ``attn_subset``: the answer row's attention (head mean, averaged
      over ``middle``, default :func:`middle_third`) per audio token and per visual token, and in total
      (UAP, Eq. 1), on all samples and on the failures, each with a 95 % bootstrap interval over samples.

    ``profiles``: ``{name: uap_profile(...)}`` already computed on exactly these samples with these
    middle layers and groups ``("visual", "audio")`` (a notebook's section 1), reused instead of a second forward.

    Returns ``{"war": DataFrame(model, audio_tokens, subset, war, war_lo, war_hi, n),
    "attention": DataFrame(model, audio_tokens, visual_tokens, samples, n, per_token_audio(+_lo/_hi),
    per_token_visual(+_lo/_hi), per_token_ratio, total_audio(+_lo/_hi), total_visual(+_lo/_hi)),
    "results": {(model, subset): cached zero-shot result}}``.
    """
    import pandas as pd

    from ..data import load_dataset
    from ..methods import Task
    from ..methods.ar import uap_profile

    if not models:
        raise ValueError("imbalance_study needs at least one model ({name: LoadedModel})")
    world = {} if eps is None else {"eps": float(eps)}
    ds = load_dataset(dataset, split=split, subset=attn_subset, limit=n_attn, **world)
    samples = [ds[i] for i in range(len(ds))]
    task = Task.from_dataset(ds)
    war_rows, att_rows, results = [], [], {}
    data = {}                                   # the subsets' datasets, rendered once for every model
    for name, lm in models.items():
        mid = list(middle) if middle is not None else middle_third(lm.num_layers)
        prof = (profiles or {}).get(name)
        if prof is None:
            prof = uap_profile(lm, samples, task, groups=("visual", "audio"), middle=mid, batch_size=batch_size)
        elif len(prof["correct"]) != len(samples) or list(prof["middle"]) != mid:
            raise ValueError(f"imbalance_study: the profile given for {name!r} covers {len(prof['correct'])} samples "
                             f"and layers {list(prof['middle'])}, not {len(samples)} samples and layers {mid}; "
                             "pass a profile of the same samples and middle layers, or none")
        n_a = np.array([len(v) for v in prof["per_token_group"]["audio"]])
        n_v = np.array([len(v) for v in prof["per_token_group"]["visual"]])
        a_tok = np.array([float(v.mean()) for v in prof["per_token_group"]["audio"]])     # [N] per audio token
        v_tok = np.array([float(v.mean()) for v in prof["per_token_group"]["visual"]])    # [N] per visual token
        a_tot, v_tot = prof["uap_middle"]["audio"], prof["uap_middle"]["visual"]          # [N] UAP (Eq. 1)
        n_audio = int(n_a[0])
        for which, sel in (("all", np.ones(len(samples), bool)), ("failures", ~prof["correct"])):
            row = {"model": name, "audio_tokens": n_audio, "visual_tokens": float(n_v.mean()), "samples": which,
                   "n": int(sel.sum())}
            for key, vals in (("per_token_audio", a_tok), ("per_token_visual", v_tok), ("total_audio", a_tot),
                              ("total_visual", v_tot)):
                row[key], row[f"{key}_lo"], row[f"{key}_hi"] = mean_ci(vals[sel], n_boot, seed)
            row["per_token_ratio"] = row["per_token_audio"] / row["per_token_visual"] if sel.any() else float("nan")
            att_rows.append(row)
        tab, cache = evaluate_grid(lm, dataset, {"zero-shot": {"method": "zero-shot"}}, subsets, limit=n_eval,
                                   split=split, seed=seed, eps=eps, ci=True, n_boot=n_boot, batch_size=batch_size,
                                   cache_dir=cache_dir, cache=dict(data))
        data.update({k: v for k, v in cache.items() if k[0] == "data"})
        for r in tab.itertuples():
            war_rows.append({"model": name, "audio_tokens": n_audio, "subset": r.subset, "war": r.war,
                             "war_lo": r.war_lo, "war_hi": r.war_hi, "n": r.n})
            results[(name, r.subset)] = cache[(r.subset, json.dumps({"method": "zero-shot"}))]
    return {"war": pd.DataFrame(war_rows), "attention": pd.DataFrame(att_rows), "results": results}


def claim_verdict(comparisons: Sequence[tuple]) -> str:
    """A paper claim from its comparisons, by the rules of ``benchmarks/verdicts.py``.

    Args:
        comparisons: ``(estimate, lo, hi, direction)`` per comparison: the 95 % interval of a statistic
            whose claimed sign is ``direction`` (+1: claimed > 0, -1: claimed < 0).
    Returns:
        ``"HELD"`` when every interval excludes 0 in the claimed direction, ``"FAILED"`` when any
        excludes 0 in the other direction, ``"UNRESOLVED"`` otherwise (also with no comparison, or an
        undefined interval).
    """
    verdicts = []
    for est, lo, hi, direction in comparisons:
        if direction not in (1, -1):
            raise ValueError(f"claim_verdict: direction must be +1 or -1, got {direction!r}")
        if not (np.isfinite(lo) and np.isfinite(hi)):
            verdicts.append("unresolved")
            continue
        a, b = sorted((direction * lo, direction * hi))
        verdicts.append("holds" if a > 0 else "reversed" if b < 0 else "unresolved")
    if verdicts and all(v == "holds" for v in verdicts):
        return "HELD"
    if any(v == "reversed" for v in verdicts):
        return "FAILED"
    return "UNRESOLVED"
