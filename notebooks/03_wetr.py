# %% [markdown]
# # 03 · WETR: NTS + STR at sparse trigger layers
#
# WETR (seed 000, Sec. 3.2-3.4) refines token usage $w_i = m_i\gamma_i$ (Eq. 2) at the trigger layers
# $\mathcal{L}_{reg} = \{\ell \mid \ell \bmod n_r = 0\}$: NTS re-selects $m_i$ (Eq. 4-7) and STR rescales
# the admitted tokens' hidden states, $\tilde h_i = \gamma_i h_i$ (Eq. 9-11); non-trigger layers are
# untouched and the answer is read by standard decoding.
#
# **What you will see** on emolens-tiny and world-mer (every number below is computed by this run; the
# sizes of the model and the world are printed by the set-up cell):
#
# 1. the trigger layers for this model's depth (the paper's $n_r = 9$ of 36 layers scales to
#    $n_r = 2$ of 8) and, on one clip, where the answer row looks under base / +NTS / +STR / both
#    (Fig. 5 analogue, one colour scale, NTS's kept tokens boxed green, the ground-truth face cyan);
# 2. the module ablation (Table 3) with 95 % intervals, and the sweeps of $n_r$ (1 to half the depth)
#    and $\delta \in \{0, 1, 2, 4, 8\}$ (Table 4);
# 3. the noise sweep over every $\varepsilon$ from 0 to 7: F1 of zero-shot and WETR with intervals (Fig. 6,
#    left), and EMass (Fig. 6, right; at $\varepsilon \in$ `emass_eps_grid`, since it takes two uncached
#    attention-capturing forwards per sample) read two ways: as the paper reads it, on the run that masks
#    tokens, and with the part the mask explains by itself taken out;
# 4. "What we found", written from this run's numbers, then checks and the results file.
#
# Every comparison uses the same cached evaluations (`emolens.cache.cached_evaluate`) that the other
# notebooks read, so the same quantity has the same number everywhere.

# %% tags=["parameters"]
model: str = "emolens-tiny"  # model name or local checkpoint folder
dataset: str = "world-mer"  # dataset manifest (world view)
split: str = "test"  # dataset split
n_samples: int = 300  # samples per compared quantity (every WAR, F1 and EMass below)
sample_index: int = 3  # sample drawn in the heatmaps
eps: float = -1.0  # world nuisance for sections 1-2; negative: the manifest's own (printed below); 0: clean
n_r: int = 2  # trigger interval (paper: 9 of 36 layers -> 2 of 8)
delta: float = 4.0  # STR intervention strength (paper default 4)
p_v: float = 0.03  # NTS visual keep ratio (paper default)
p_t: float = 0.2  # NTS subtitle keep ratio (paper default)
n_r_grid: list[int] = [1, 2, 3, 4]  # n_r values swept (Table 4): 1 to half the depth
delta_grid: list[float] = [0.0, 1.0, 2.0, 4.0, 8.0]  # delta values swept (Table 4; 0: no reweighting)
eps_grid: list[float] = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]  # noise levels of the F1 sweep (Fig. 6, left)
emass_eps_grid: list[float] = [0.0, 2.0, 4.0, 6.0, 7.0]  # noise levels of the EMass pass (Fig. 6, right; 2 forwards each)
emass_layer: int = -1  # layer EMass is read at (-1: the last; must follow the last trigger layer)
n_boot: int = 1000  # bootstrap resamples behind every 95 % interval
batch_size: int = 32  # samples per forward
seed: int = 0  # evaluation and bootstrap seed
device: str = "auto"  # auto | cpu | cuda
out_dir: str = "../runs/notebooks/03_wetr"  # where figures and results.json go

# %%
import json
import pathlib

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from emolens import metrics, plots
from emolens.analysis import wetr as W
from emolens.analysis.setup import setup
from emolens.cache import cached_evaluate, result_ci, result_delta
from emolens.compat import tolerances
from emolens.methods import get_method
from emolens.methods.nts import keep_count

S = setup(model, dataset, split, n=n_samples, eps=None if eps < 0 else eps, seed=seed, device=device)
lm, ds, task, samples = S
eps_main = float(ds.options["eps"])          # the nuisance sections 1-2 run at
eps_manifest = float(S.ds.manifest.world["eps"])  # the manifest's own level
hp = dict(n_r=n_r, delta=delta, p_v=p_v, p_t=p_t)
wetr = get_method("wetr", **hp)
lay0 = lm.encode(samples[:1], wetr.prompts(samples[:1], task)).layouts[0]
n_vis, n_cue = lay0.visual.size, int(np.sum(lay0.cue_visual))
print(S.describe())
print(f"{n_vis} visual tokens per clip, {n_cue} of them the face in this clip; NTS keeps "
      f"{keep_count(n_vis, p_v)} visual tokens (p_v = {p_v})")
print(f"trigger layers for n_r = {n_r}: {wetr.trigger_layers(lm.num_layers)}")


def world_for(e):
    """The `world` argument of an evaluation at noise e: None at the manifest's own level, so the cache key
    is the one every other notebook uses for the default world."""
    return None if float(e) == eps_manifest else {"eps": float(e)}


def ev(method, params=None, e=eps_main):
    """One cached evaluation on the first n_samples of the split at noise e (see emolens.cache)."""
    return cached_evaluate(lm, dataset, method, params or None, split=split, limit=n_samples, seed=seed,
                           world=world_for(e), batch_size=batch_size, progress=False)


def ci(res, metric="war"):
    """(estimate, lo, hi): the 95 % percentile bootstrap interval over samples."""
    return result_ci(res, metric, n_boot=n_boot, seed=seed)


def delta_ci(a, b, metric="war"):
    """(metric(a) - metric(b), lo, hi): paired bootstrap over the same samples."""
    return result_delta(a, b, metric, n_boot=n_boot, seed=seed)


def mean_ci(v):
    """Mean of per-sample values (NaNs left out) with its 95 % bootstrap interval."""
    v = np.asarray(v, float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (np.nan, np.nan, np.nan)
    return metrics.bootstrap_stat(lambda i: float(v[i].mean()), v.size, n_boot, seed)


# %% [markdown]
# ## 1 · Where the answer row looks: base / +NTS / +STR / both (Fig. 5)
#
# Head-averaged attention of the answer row over the visual tokens at the last layer, on one clip, all
# four panels on **one colour scale** (one colourbar). Green boxes: the visual tokens NTS admitted (the
# only ones left after the first trigger layer); cyan dashed: the ground-truth face tokens. All four use
# WETR's prompt (with the $Q_{pos}$/$Q_{neg}$ spans), so only the method differs between rows.

# %%
variants = {"base": None, "+NTS": get_method("wetr", **hp, use_str=False),
            "+STR": get_method("wetr", **hp, use_nts=False), "NTS+STR (WETR)": wetr}
s = samples[sample_index]
batch1 = lm.encode([s], wetr.prompts([s], task))
lay = batch1.layouts[0]
cue = np.asarray(lay.cue_visual, bool)
vals, boxes, rows = {}, {}, []
for name, m in variants.items():
    a, adm, _ = W.attention_and_mask(lm, batch1, [s], m, layer=-1, rows=("answer",))
    v = a["answer"][0][lay.visual]
    kept = adm[0, lay.visual]
    vals[name] = v
    boxes[name] = kept if not kept.all() else None   # boxes only where tokens were dropped
    rows.append({"variant": name, "answer mass on visual": v.sum(), "share of it on the face": v[cue].sum() / v.sum(),
                 "visual tokens kept": int(kept.sum()), "face tokens kept": int((kept & cue).sum())})
fig = plots.small_multiples(s, lay, vals, selected_by_title=boxes, cbar_label="answer-row attention (last layer)",
                            suptitle=f"sample {sample_index} ({s.label}), eps = {eps_main:g}")
plots.save(fig, out_dir, "heatmaps_base_nts_str_both")
one_clip = pd.DataFrame(rows).set_index("variant")
one_clip.round(3)

# %% [markdown]
# One clip illustrates; it decides nothing. The averages over samples follow.
#
# ## 2 · Module ablation (Table 3) and sensitivity to $n_r$ and $\delta$ (Table 4)
#
# Five rows: the zero-shot baseline (the plain query, what every other notebook calls zero-shot), the same
# frozen model with WETR's two extra query spans (the prompt's own effect), and WETR with NTS only, STR
# only, and both. Bars: WAR with 95 % bootstrap intervals; dashed line and band: zero-shot.

# %%
configs = {"zero-shot": ("zero-shot", {}), "zero-shot + WETR spans": ("zero-shot", {"prompt_spans": True}),
           "+NTS": ("wetr", {**hp, "use_str": False}), "+STR": ("wetr", {**hp, "use_nts": False}),
           "NTS+STR": ("wetr", hp)}
res = {k: ev(m, p) for k, (m, p) in configs.items()}
base = res["zero-shot"]
recs = []
for k, r in res.items():
    rec = {"config": k}
    for met in ("war", "uar", "macro_f1"):
        rec[met], rec[f"{met}_lo"], rec[f"{met}_hi"] = ci(r, met)
    rec["d_war"], rec["d_war_lo"], rec["d_war_hi"] = delta_ci(r, base) if k != "zero-shot" else (0.0, 0.0, 0.0)
    recs.append(rec)
ablation = pd.DataFrame(recs).set_index("config")
zs_war = ci(base)
fig = plots.comparison_bars(ablation.reset_index(), "config", "war", "war_lo", "war_hi", zero_shot=zs_war,
                            title=f"WETR modules on {dataset} (n = {n_samples}, eps = {eps_main:g})", ylabel="WAR",
                            xlabel="")
plots.save(fig, out_dir, "ablation_table3")
table3 = {name: delta_ci(res[a], res[b]) for name, (a, b) in
          {"NTS - base": ("+NTS", "zero-shot"), "STR - base": ("+STR", "zero-shot"),
           "NTS+STR - NTS": ("NTS+STR", "+NTS"), "NTS+STR - STR": ("NTS+STR", "+STR")}.items()}
table3 = pd.DataFrame([{"comparison": k, "delta WAR": d, "lo": lo, "hi": hi, "verdict": W.verdict(lo, hi)}
                       for k, (d, lo, hi) in table3.items()]).set_index("comparison")
display(ablation[["war", "war_lo", "war_hi", "uar", "macro_f1", "d_war", "d_war_lo", "d_war_hi"]].round(4))
table3.round(4)


# %% [markdown]
# The sweeps: WAR of WETR with 95 % bands as $n_r$ runs from 1 to half the depth and as $\delta$ runs over
# {0, 1, 2, 4, 8} ($\delta = 0$ gives $\gamma_i = 1$: no reweighting, i.e. NTS alone); the dashed line is
# zero-shot. The table lists each $n_r$'s trigger layers: a larger interval also moves the *first* trigger
# (where NTS drops tokens) deeper.

# %%
def sweep(param, grid):
    out = []
    for v in grid:
        r = ev("wetr", {**hp, param: v})
        rec = {"param": param, "value": v}
        for met in ("war", "macro_f1"):
            rec[met], rec[f"{met}_lo"], rec[f"{met}_hi"] = ci(r, met)
        rec["d_war"], rec["d_war_lo"], rec["d_war_hi"] = delta_ci(r, base)
        if param == "n_r":
            rec["triggers"] = str(get_method("wetr", **{**hp, "n_r": int(v)}).trigger_layers(lm.num_layers))
        out.append(rec)
        res[f"wetr {param}={v:g}"] = r
    return pd.DataFrame(out)


sweep_nr, sweep_delta = sweep("n_r", n_r_grid), sweep("delta", delta_grid)
for df, name, lab in ((sweep_nr, "n_r", "trigger interval n_r"), (sweep_delta, "delta", "STR strength delta")):
    fig = plots.sweep_lines(df, "value", "war", "war_lo", "war_hi", zero_shot=zs_war, xlabel=lab, ylabel="WAR",
                            title=f"WETR vs {name} (n = {n_samples}, eps = {eps_main:g})")
    fig.axes[0].set_xticks(df["value"].tolist())
    plots.save(fig, out_dir, f"sweep_{name}")


def best_vs_rest(df, default):
    """Table 4's claim for one parameter: the paper's value beats every other value of the grid (paired)."""
    d = res[f"wetr {df.param.iloc[0]}={default:g}"]
    comps = [(v, *delta_ci(d, res[f"wetr {df.param.iloc[0]}={v:g}"])) for v in df["value"] if v != default]
    return pd.DataFrame(comps, columns=["other", "delta WAR", "lo", "hi"]).assign(
        verdict=lambda t: [W.verdict(a, b) for a, b in zip(t.lo, t.hi)])


nr_claim = best_vs_rest(sweep_nr, n_r) if n_r in n_r_grid and len(n_r_grid) > 1 else pd.DataFrame()
delta_claim = best_vs_rest(sweep_delta, delta) if delta in delta_grid and len(delta_grid) > 1 else pd.DataFrame()
display(sweep_nr.round(4), sweep_delta.round(4))
print(f"n_r = {n_r} vs the rest:"); display(nr_claim.round(4))
print(f"delta = {delta:g} vs the rest:"); display(delta_claim.round(4))

# %% [markdown]
# ## 3 · Noise amplification: F1 and EMass as $\varepsilon$ grows (Fig. 6)
#
# **F1** (left of Fig. 6): macro-F1 of zero-shot and WETR on the same $n$ samples at every $\varepsilon$,
# each with its 95 % band (the zero-shot curve is the reference).
#
# **EMass** (right of Fig. 6, at the levels of `emass_eps_grid`: it takes two attention-capturing forwards
# per sample) "measures how much attention is allocated to a shared evidence set
# $\mathcal{K}$ under an emotion-seeking query versus a noise-seeking query". The paper gives no formula;
# we use $\mathrm{EMass} = M_{pos}/(M_{pos}+M_{neg})$, $M_q$ the share of span $q$'s head-averaged
# attention that lands on $\mathcal{K}$ (`emolens.metrics.emass`; 0.5 = no preference), at the last layer,
# with $\mathcal{K}$ = the world's **ground-truth** evidence (face tokens + emotion word), the same set for
# both runs (the paper could not know it).
#
# **The masking tautology.** WETR's NTS removes every non-kept visual and subtitle token from all later
# layers, so EMass measured on the WETR run counts attention over *what the mask left*: a rise can come
# from removing competing tokens alone, without any token being attended differently, and samples whose
# evidence was removed entirely have no EMass at all (0/0) and silently leave the average. That readout
# can show whether the surviving evidence is favoured by $Q_{pos}$ over $Q_{neg}$; it cannot show that WETR
# re-allocates attention. So we also read the **frozen** model's attention restricted to the tokens WETR
# kept (`emass_base_kept`): what the mask does by itself. Then
# $\mathrm{EMass}_{WETR} - \mathrm{EMass}_{base} = \underbrace{(\mathrm{EMass}_{base|kept} -
# \mathrm{EMass}_{base})}_{\text{the mask alone}} + \underbrace{(\mathrm{EMass}_{WETR} -
# \mathrm{EMass}_{base|kept})}_{\text{re-allocation among survivors}}$, all on the same samples
# (`emolens.analysis.wetr.emass_decomposition`). NTS's own precision against the ground truth (kept face
# tokens / kept visual tokens, against the face's share of the clip = chance) says what the mask kept.

# %%
noise_rows, emass_rows, emass_tabs = [], [], {}
for e in eps_grid:
    rb, rw = ev("zero-shot", e=e), ev("wetr", hp, e=e)
    rec = {"eps": e}
    for name, r in (("base", rb), ("wetr", rw)):
        for met in ("macro_f1", "war"):
            rec[f"{met}_{name}"], rec[f"{met}_{name}_lo"], rec[f"{met}_{name}_hi"] = ci(r, met)
    rec["f1_gain"], rec["f1_gain_lo"], rec["f1_gain_hi"] = delta_ci(rw, rb, "macro_f1")
    noise_rows.append(rec)
    res[f"zero-shot eps={e:g}"], res[f"wetr eps={e:g}"] = rb, rw
# EMass needs two attention-capturing forwards per sample (frozen and WETR, both on WETR's prompt) and is
# not cached, so it runs on the coarser emass_eps_grid (the runtime budget); F1 above covers every eps.
for e in emass_eps_grid:
    S_e = setup(lm, dataset, split, n=n_samples, eps=e, seed=seed)   # the same samples the evaluations scored
    tab = W.emass_decomposition(lm, S_e.samples, task, wetr, layer=emass_layer, batch_size=batch_size)
    emass_tabs[e] = tab
    ok = tab["k_kept"] > 0
    er = {"eps": e, "n": len(tab), "k_lost": float((~ok).mean())}
    for col in ("emass_base", "emass_method", "emass_base_kept"):
        er[col], er[f"{col}_lo"], er[f"{col}_hi"] = mean_ci(tab[col])
    t = tab[ok]
    for name, x in (("gain", t.emass_method - t.emass_base), ("mask_part", t.emass_base_kept - t.emass_base),
                    ("realloc_part", t.emass_method - t.emass_base_kept)):
        er[name], er[f"{name}_lo"], er[f"{name}_hi"] = mean_ci(x)
    er["precision"], er["precision_lo"], er["precision_hi"] = W.share_ci(tab.hit_visual, tab.kept_visual,
                                                                         n_boot=n_boot, seed=seed)
    er["chance"] = float(tab.cue_visual.sum() / tab.n_visual.sum())
    er["prec_minus_chance"], er["pmc_lo"], er["pmc_hi"] = W.share_ci(tab.hit_visual, tab.kept_visual, tab.cue_visual,
                                                                     tab.n_visual, n_boot=n_boot, seed=seed)
    emass_rows.append(er)
noise, emass_df = pd.DataFrame(noise_rows), pd.DataFrame(emass_rows)

f1_long = pd.concat([noise.assign(method=lab, f1=noise[f"macro_f1_{k}"], lo=noise[f"macro_f1_{k}_lo"],
                                  hi=noise[f"macro_f1_{k}_hi"])[["eps", "method", "f1", "lo", "hi"]]
                     for k, lab in (("base", "zero-shot"), ("wetr", "WETR"))])
fig = plots.sweep_lines(f1_long, "eps", "f1", "lo", "hi", hue="method", xlabel="nuisance eps", ylabel="macro-F1",
                        title=f"F1 under noise amplification (n = {n_samples} per point)")
fig.axes[0].set_xticks(list(eps_grid))
plots.save(fig, out_dir, "noise_f1")

em_long = pd.concat([emass_df.assign(readout=lab, emass=emass_df[c], lo=emass_df[f"{c}_lo"], hi=emass_df[f"{c}_hi"])
                     [["eps", "readout", "emass", "lo", "hi"]] for c, lab in
                     (("emass_base", "zero-shot (frozen)"), ("emass_method", "WETR run (masked keys)"),
                      ("emass_base_kept", "frozen, on WETR's kept keys"))])
fig = plots.sweep_lines(em_long, "eps", "emass", "lo", "hi", hue="readout", xlabel="nuisance eps",
                        ylabel="EMass (0.5 = no preference)", title="EMass on the ground-truth evidence set")
fig.axes[0].axhline(0.5, color="0.6", lw=0.8, ls=":")
fig.axes[0].set_xticks(list(emass_df.eps))
plots.save(fig, out_dir, "noise_emass")

fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
ax = axes[0]
ax.plot(noise.eps, noise.f1_gain, marker="o", label="F1 gain (WETR - zero-shot)")
ax.fill_between(noise.eps, noise.f1_gain_lo, noise.f1_gain_hi, alpha=0.2)
ax.set_ylabel("macro-F1 difference")
ax = axes[1]
for name, lab in (("gain", "EMass gain (total)"), ("mask_part", "the mask alone"), ("realloc_part", "re-allocation")):
    ax.plot(emass_df.eps, emass_df[name], marker="o", label=lab)
    ax.fill_between(emass_df.eps, emass_df[f"{name}_lo"], emass_df[f"{name}_hi"], alpha=0.2)
ax.set_ylabel("EMass difference")
for ax, t, ticks in zip(axes, ("F1: WETR - zero-shot (paired)", "EMass: WETR - frozen, decomposed"),
                        (list(eps_grid), list(emass_df.eps))):
    ax.axhline(0, color="0.25", ls="--", lw=1.2, label="no difference")
    ax.set_xlabel("nuisance eps")
    ax.set_xticks(ticks)
    ax.set_title(t)
    ax.legend(fontsize=8)
fig.tight_layout()
plots.save(fig, out_dir, "noise_gains")
display(noise[["eps", "macro_f1_base", "macro_f1_wetr", "f1_gain", "f1_gain_lo", "f1_gain_hi"]].round(4))
emass_df[["eps", "emass_base", "emass_method", "emass_base_kept", "mask_part", "realloc_part", "k_lost",
          "precision", "chance"]].round(4)

# %% [markdown]
# ## 4 · Explore $n_r$ (JupyterLab)
#
# The static version is the $n_r$ sweep above. Move the slider and press *Run*: WAR and the trigger layers
# for that interval (read from the same cache). Nothing runs headless.

# %%
# NBVAL_IGNORE_OUTPUT
from emolens.widgets import explorer


def show_nr(n_r=2):
    m = get_method("wetr", **{**hp, "n_r": n_r})
    print("triggers:", m.trigger_layers(lm.num_layers), "WAR:", round(ev("wetr", {**hp, "n_r": n_r})["metrics"]["war"], 4))


explorer(show_nr, n_r=list(range(1, lm.num_layers // 2 + 1)))

# %% [markdown]
# ## What we found

# %%
e_hi, e_lo = max(eps_grid), min(eps_grid)
nb, nw = res[f"zero-shot eps={e_lo:g}"], res[f"wetr eps={e_lo:g}"]
hb, hw = res[f"zero-shot eps={e_hi:g}"], res[f"wetr eps={e_hi:g}"]
gb = [(np.asarray([p["gold"] for p in r["predictions"]], object), np.asarray([p["label"] for p in r["predictions"]], object))
      for r in (nw, hw, nb, hb)]
f1m = metrics.METRICS["macro_f1"]
slope = metrics.bootstrap_stat(lambda i: (f1m(gb[0][0][i], gb[0][1][i]) - f1m(gb[1][0][i], gb[1][1][i]))
                               - (f1m(gb[2][0][i], gb[2][1][i]) - f1m(gb[3][0][i], gb[3][1][i])), len(gb[0][0]), n_boot, seed)
gain_hi, gain_lo = noise.set_index("eps").loc[e_hi], noise.set_index("eps").loc[e_lo]
em_e_hi = max(emass_eps_grid)                 # the highest eps EMass was read at
em_hi = emass_df.set_index("eps").loc[em_e_hi]
sel_eps = eps_main if eps_main in set(emass_df.eps) else em_e_hi   # where NTS's precision is quoted
sel_main = emass_df.set_index("eps").loc[sel_eps]

verdicts = {
    "Table 3 (NTS and STR each beat the baseline, both beat each)": W.combine_verdicts(table3["verdict"]),
    "Table 4 (n_r: the paper's interval beats the others)": W.combine_verdicts(nr_claim["verdict"]) if len(nr_claim) else "UNRESOLVED",
    "Table 4 (delta: the paper's strength beats the others)": W.combine_verdicts(delta_claim["verdict"]) if len(delta_claim) else "UNRESOLVED",
    "Fig. 6 left (F1 gain at the highest eps, slower degradation)": W.combine_verdicts(
        [W.verdict(gain_hi.f1_gain_lo, gain_hi.f1_gain_hi), W.verdict(slope[1], slope[2], -1)]),
    "Fig. 6 right, as read on the masked run (EMass WETR > frozen at every eps read)": W.combine_verdicts(
        [W.verdict(r.gain_lo, r.gain_hi) for r in emass_df.itertuples()]),
    "Fig. 6 right, the mask's share removed (re-allocation > 0 at every eps read)": W.combine_verdicts(
        [W.verdict(r.realloc_part_lo, r.realloc_part_hi) for r in emass_df.itertuples()]),
}


def f(x, d=3):
    return f"{x:.{d}f}"


def iv(row, a, lo, hi, d=3):
    return f"{row[a]:+.{d}f} [{row[lo]:+.{d}f}, {row[hi]:+.{d}f}]"


t3 = table3.reset_index()
abl = ablation
lines = [f"**Set-up.** {S.describe()}; {n_vis} visual tokens per clip, NTS keeps {keep_count(n_vis, p_v)} of them "
         f"(p_v = {p_v}); {n_samples} samples per quantity, 95 % bootstrap intervals ({n_boot} resamples). A claim "
         "HELD when every one of its comparisons' intervals excludes 0 in the claimed direction, FAILED when one "
         "excludes 0 the other way, else UNRESOLVED (the rule of benchmarks/verdicts.py).", "",
         "\n".join(["| claim | verdict |", "|---|---|"] + [f"| {k} | **{v}** |" for k, v in verdicts.items()])]
lines.append(
    f"**Modules (Table 3), eps = {eps_main:g}.** Zero-shot WAR {f(abl.loc['zero-shot', 'war'])} "
    f"[{f(abl.loc['zero-shot', 'war_lo'])}, {f(abl.loc['zero-shot', 'war_hi'])}]; +NTS {f(abl.loc['+NTS', 'war'])}, "
    f"+STR {f(abl.loc['+STR', 'war'])}, both {f(abl.loc['NTS+STR', 'war'])}. "
    + "; ".join(f"{r.comparison}: {r['delta WAR']:+.3f} [{r.lo:+.3f}, {r.hi:+.3f}] ({r.verdict.lower()})" for _, r in t3.iterrows())
    + f". WETR's two query spans alone move the frozen model by {abl.loc['zero-shot + WETR spans', 'd_war']:+.3f} "
    f"[{abl.loc['zero-shot + WETR spans', 'd_war_lo']:+.3f}, {abl.loc['zero-shot + WETR spans', 'd_war_hi']:+.3f}], "
    "part of any difference between WETR and the plain zero-shot query. "
    f"Mechanism (eps = {sel_eps:g}): of the visual tokens NTS keeps, {f(sel_main.precision)} [{f(sel_main.precision_lo)}, "
    f"{f(sel_main.precision_hi)}] are face tokens against {f(sel_main.chance)} by chance "
    f"(difference {sel_main.prec_minus_chance:+.3f} [{sel_main.pmc_lo:+.3f}, {sel_main.pmc_hi:+.3f}]); in "
    f"{100 * sel_main.k_lost:.0f} % of the clips the mask removed the whole evidence set (face and emotion word), "
    "so from the first trigger layer on the model answers those without the evidence.")
best_nr = sweep_nr.sort_values("war").iloc[-1]
best_d = sweep_delta.sort_values("war").iloc[-1]
lines.append(
    f"**Sensitivity (Table 4).** WAR over n_r = {list(sweep_nr.value)}: "
    + ", ".join(f"{r.war:.3f}" for r in sweep_nr.itertuples())
    + f" (highest at n_r = {best_nr.value:g}); over delta = {list(sweep_delta.value)}: "
    + ", ".join(f"{r.war:.3f}" for r in sweep_delta.itertuples())
    + f" (highest at delta = {best_d.value:g}). "
    + ("The paper's n_r against each other value: " + "; ".join(
        f"vs {r.other:g}: {r['delta WAR']:+.3f} [{r.lo:+.3f}, {r.hi:+.3f}]" for _, r in nr_claim.iterrows()) + ". "
       if len(nr_claim) else "")
    + ("The paper's delta against each other value: " + "; ".join(
        f"vs {r.other:g}: {r['delta WAR']:+.3f} [{r.lo:+.3f}, {r.hi:+.3f}]" for _, r in delta_claim.iterrows()) + ". "
       if len(delta_claim) else "")
    + "Where these intervals contain 0 the sweep cannot rank the settings at this n: a difference smaller than the "
    "interval's half-width is not a finding.")
lines.append(
    f"**Noise (Fig. 6, F1).** From eps = {e_lo:g} to {e_hi:g} zero-shot macro-F1 goes "
    f"{f(gain_lo.macro_f1_base)} -> {f(gain_hi.macro_f1_base)} and WETR's "
    f"{f(gain_lo.macro_f1_wetr)} -> {f(gain_hi.macro_f1_wetr)}. The gain at eps = {e_hi:g} is "
    f"{gain_hi.f1_gain:+.3f} [{gain_hi.f1_gain_lo:+.3f}, {gain_hi.f1_gain_hi:+.3f}] (paper: +0.092); WETR's F1 loss "
    f"minus zero-shot's is {slope[0]:+.3f} [{slope[1]:+.3f}, {slope[2]:+.3f}] (claimed < 0: WETR degrades more slowly).")
lines.append(
    f"**Noise (Fig. 6, EMass).** Read on the masked WETR run, as the paper does, EMass is "
    f"{f(em_hi.emass_method)} against the frozen model's {f(em_hi.emass_base)} at eps = {em_e_hi:g} "
    f"(gain {iv(em_hi, 'gain', 'gain_lo', 'gain_hi')}, over the {100 * (1 - em_hi.k_lost):.0f} % of clips where some "
    f"evidence survived the mask). Of that gain, the mask alone (frozen attention restricted to WETR's kept keys) "
    f"gives {iv(em_hi, 'mask_part', 'mask_part_lo', 'mask_part_hi')} and the re-allocation among the surviving "
    f"tokens {iv(em_hi, 'realloc_part', 'realloc_part_lo', 'realloc_part_hi')}. Across eps = "
    f"{', '.join(f'{x:g}' for x in emass_df.eps)} the mask's part is "
    + ", ".join(f"{x:+.3f}" for x in emass_df.mask_part) + " and the re-allocation part "
    + ", ".join(f"{x:+.3f}" for x in emass_df.realloc_part)
    + ". So the masked-run EMass is a statement about *which* tokens NTS kept (its precision against chance above), "
    "not evidence that WETR makes the model attend to the evidence differently, unless the re-allocation part "
    "is itself above 0.")
display(Markdown("\n\n".join(lines)))

# %% [markdown]
# ## Checks that fail loudly
#
# Properties that hold whatever the verdicts are:
#
# * the trigger set is $\{\ell \mid \ell \bmod n_r = 0\}$ without layer 0 and the last layer (documented
#   choice), for every $n_r$ swept;
# * WETR with both modules off is the frozen model on WETR's prompt, and $\delta = 0$ ($\gamma_i = 1$) is NTS
#   alone: the same option probabilities for every sample within the model dtype's tolerance
#   (`emolens.compat.tolerances`), and the same answer except on a near-tie (top-2 gap within that tolerance,
#   where two equal computations may round either way; so not an exact label equality);
# * NTS keeps exactly $\lceil p_v N_v \rceil$ visual tokens in every clip, at every $\varepsilon$;
# * EMass and attention shares lie in [0, 1]; EMass on the masked run is undefined exactly where the mask
#   removed all of $\mathcal{K}$; the frozen model's EMass restricted to an untouched key set is its EMass;
# * every interval contains its estimate.

# %%
for v in n_r_grid:
    assert get_method("wetr", **{**hp, "n_r": v}).trigger_layers(lm.num_layers) == \
        [l for l in range(1, lm.num_layers - 1) if l % v == 0]


def same_answers(a, b, what):
    """Two runs that must be the same computation: every option probability agrees within the model dtype's
    tolerance (emolens.compat.tolerances, plus the 1e-6 the results are rounded to), and the labels agree except
    on a near-tie (top-2 gap within that tolerance), where two equal forwards may pick either option."""
    tol = tolerances(lm.dtype)
    tol["atol"] += 1e-6
    pa, pb = ([[p["option_probs"][k] for k in sorted(p["option_probs"])] for p in r["predictions"]] for r in (a, b))
    assert np.allclose(pa, pb, **tol), f"{what}: option probabilities differ by up to {np.abs(np.subtract(pa, pb)).max():.3g}"
    gap = np.diff(np.sort(pa, axis=1)[:, -2:], axis=1)[:, 0]
    differ = np.array([x["label"] != y["label"] for x, y in zip(a["predictions"], b["predictions"])])
    assert not (differ & (gap > tol["atol"] + tol["rtol"])).any(), f"{what}: a label differs away from a tie"


off = ev("wetr", {**hp, "use_nts": False, "use_str": False})   # 02's Table 5 'Baseline' (r = 0): a cache hit there
same_answers(off, res["zero-shot + WETR spans"], "WETR with both modules off vs the frozen model on its prompt")
if 0.0 in delta_grid:
    same_answers(res["wetr delta=0"], res["+NTS"], "delta = 0 vs NTS alone")
for e, tab in emass_tabs.items():
    assert (tab.kept_visual == tab.n_visual.map(lambda n: keep_count(int(n), p_v))).all(), e
    assert (tab.k_kept <= tab.k_size).all() and (tab.hit_visual <= tab.kept_visual).all()
    for c in ("emass_base", "emass_method", "emass_base_kept", "answer_k_base", "answer_k_method"):
        x = tab[c].dropna()
        assert x.between(0, 1).all(), c
    assert (tab.emass_method.isna() == (tab.k_kept == 0)).all() and (tab.emass_base_kept.isna() == (tab.k_kept == 0)).all()
    assert tab.emass_base.notna().all()
str_only = W.emass_decomposition(lm, samples[:batch_size], task, variants["+STR"], layer=emass_layer, batch_size=batch_size)
assert (str_only.k_kept == str_only.k_size).all() and np.allclose(str_only.emass_base_kept, str_only.emass_base)
for df, y, lo, hi in [(ablation, c, f"{c}_lo", f"{c}_hi") for c in ("war", "uar", "macro_f1", "d_war")] + \
        [(table3, "delta WAR", "lo", "hi"), (sweep_nr, "war", "war_lo", "war_hi"), (sweep_delta, "war", "war_lo", "war_hi"),
         (noise, "f1_gain", "f1_gain_lo", "f1_gain_hi"), (emass_df, "realloc_part", "realloc_part_lo", "realloc_part_hi"),
         (emass_df, "precision", "precision_lo", "precision_hi")]:
    ok = df[[y, lo, hi]].dropna()
    assert ((ok[lo] <= ok[y] + 1e-12) & (ok[y] <= ok[hi] + 1e-12)).all(), y
assert slope[1] <= slope[0] <= slope[2]
print("checks passed")

# %%
summary = {"war_base": float(ablation.loc["zero-shot", "war"]), "war_spans": float(ablation.loc["zero-shot + WETR spans", "war"]),
           "war_nts": float(ablation.loc["+NTS", "war"]), "war_str": float(ablation.loc["+STR", "war"]),
           "war_wetr": float(ablation.loc["NTS+STR", "war"]),
           "f1_base_eps_max": float(gain_hi.macro_f1_base), "f1_wetr_eps_max": float(gain_hi.macro_f1_wetr),
           "f1_gain_eps_max": [float(gain_hi.f1_gain), float(gain_hi.f1_gain_lo), float(gain_hi.f1_gain_hi)],
           "f1_slope_diff": [float(x) for x in slope],
           "emass_gain_eps_max": [float(em_hi.gain), float(em_hi.gain_lo), float(em_hi.gain_hi)],
           "emass_realloc_eps_max": [float(em_hi.realloc_part), float(em_hi.realloc_part_lo), float(em_hi.realloc_part_hi)],
           "nts_precision": float(sel_main.precision), "nts_chance": float(sel_main.chance),
           "best_n_r": float(best_nr.value), "best_delta": float(best_d.value), "eps_main": eps_main,
           "verdicts": verdicts}
results = {"notebook": "03_wetr",
           "parameters": {"model": model, "dataset": dataset, "split": split, "n_samples": n_samples, "eps": eps,
                          "n_r": n_r, "delta": delta, "p_v": p_v, "p_t": p_t, "n_r_grid": n_r_grid,
                          "delta_grid": delta_grid, "eps_grid": eps_grid, "emass_layer": emass_layer,
                          "n_boot": n_boot, "seed": seed},
           "summary": summary, "ablation": ablation.reset_index().to_dict(orient="list"),
           "table3": table3.reset_index().to_dict(orient="list"),
           "sweep": pd.concat([sweep_nr, sweep_delta]).to_dict(orient="list"),
           "noise": noise.to_dict(orient="list"), "emass": emass_df.to_dict(orient="list"),
           "one_clip": one_clip.reset_index().to_dict(orient="list")}
pathlib.Path(out_dir).mkdir(parents=True, exist_ok=True)
pathlib.Path(out_dir, "results.json").write_text(json.dumps(results, indent=1, default=float))
{k: v for k, v in summary.items() if k != "verdicts"}
