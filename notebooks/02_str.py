# %% [markdown]
# # 02 · STR: state-strengthened token reweighting, step by step
#
# STR (WETR, seed 000, Sec. 3.4) sets the reweighting factor $\gamma_i$ of $w_i = m_i\gamma_i$ for the
# tokens NTS admitted, $\mathcal{K}_v \cup \mathcal{K}_{con}$. Under the world-model view each retained
# token contributes a likelihood term and $\gamma_i$ scales it (Eq. 8); a frozen model exposes no
# likelihoods, so STR asks a computable question instead: *can this token's key be reconstructed from
# the other modality's kept keys?* Predictable, weakly emotion-relevant overlap is down-weighted;
# relevant but hard-to-predict residual evidence is up-weighted; then $h_i \leftarrow \gamma_i h_i$ at
# the trigger layer, so every later layer sees the refined usage.
#
# **What you will see** on the embedded emolens-tiny model and the emotion world:
#
# 1. for one sample, at the trigger layer $\ell$: the query / key vectors $q_i, k_i$ the attention uses,
#    $\alpha_{ij}$ and the reconstruction errors $e_i$ (Eq. 9), their $[0,1]$ normalisation
#    $\bar e_i$, the gate $g_i$, $r_i$ and $c_i$ (Eq. 10), $b_i$ and $\gamma_i$ (Eq. 11) with the
#    handling of negative $\gamma$, and the anchors, each next to the cell that computes it, checked
#    against what the method decided inside its forward;
# 2. the scaling itself: layer $\ell$'s output under STR is exactly $\gamma_i$ times the output without it;
# 3. over many samples: the distribution of $\gamma$, and the decision contribution of down-weighted,
#    neutral and up-weighted tokens before and after STR (WETR Table 8);
# 4. error propagation (WETR Table 5): F1 of the frozen baseline, NTS-only and NTS+STR when the
#    selection is corrupted with ratio $r$, and why a small $r$ cannot touch the visual side at $p_v = 0.03$.

# %% tags=["parameters"]
model: str = "emolens-tiny"  # model name or local checkpoint folder
dataset: str = "world-mer"  # dataset manifest (world view or local benchmark)
split: str = "test"  # dataset split
n_samples: int = 48  # samples for the gamma distribution and the contribution shift (WETR Table 8)
n_eval: int = 96  # samples per cell of the error-propagation table (WETR Table 5)
sample_index: int = 3  # which sample to walk through in detail
eps: float = 0.0  # world noise level (0..7), world datasets only
layer: int = -1  # trigger layer l of NTS + STR (-1: auto, round(n_layers * 9/36))
p_v: float = 0.03  # NTS visual keep ratio (the paper's value)
p_t: float = 0.2  # NTS subtitle-content keep ratio (the paper's value)
p_v_wide: float = 0.25  # a wider visual keep ratio, to see alpha over several kept visual tokens
norm: str = "minmax"  # Norm of the NTS scores (and of the gate input)
delta: float = 4.0  # intervention strength delta (Eq. 11; the paper's value)
p_v_anc: float = 0.1  # anchor ratio within K_v
p_t_anc: float = 0.1  # anchor ratio within K_con
gamma_anc: float = 1.0  # anchor lower bound gamma_anc (at least 1)
negative: str = "clamp0"  # negative gamma: clamp0 (gamma <- max(gamma, 0)) | keep (signed)
n_r: int = 2  # WETR trigger interval for the error-propagation table (triggers: l mod n_r is 0)
noise_grid: list[float] = [0.0, 0.3, 0.5]  # post-NTS selection-noise ratios r (WETR Table 5)
seed: int = 0  # seed of the selection noise
device: str = "auto"  # auto | cpu | cuda
out_dir: str = "../runs/notebooks/02_str"  # where figures and results.json go

# %%
import json
import pathlib

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display

import emolens
from emolens import metrics, plots, widgets
from emolens.analysis import wetr
from emolens.answers import read_answers
from emolens.compat import quiet_third_party_deprecations, tolerances
from emolens.data import load_dataset
from emolens.evaluate import evaluate
from emolens.methods import Task, get_method
from emolens.methods.common import fine_prompts
from emolens.methods.nts import keep_count
from emolens.methods.reweight import (anchor_clamp, gate, migration_gamma, normalize, overlap_residual,
                                      reconstruction_error)
quiet_third_party_deprecations()  # upstream deprecation notices are for developers (README: the lock)

torch.manual_seed(seed)
np.random.seed(seed)
lm = emolens.load_model(model, device=device)
world = {"eps": eps} if dataset.startswith("world") else {}
ds = load_dataset(dataset, split=split, limit=max(n_samples, n_eval), **world)
task = Task.from_dataset(ds)
samples = [ds[i] for i in range(len(ds))]
nts_params = {"layer": layer, "p_v": p_v, "p_t": p_t, "norm": norm, "seed": seed}
str_params = {**nts_params, "delta": delta, "p_v_anc": p_v_anc, "p_t_anc": p_t_anc, "gamma_anc": gamma_anc,
              "negative": negative}
nts, strm = get_method("nts", **nts_params), get_method("str", **str_params)
l = strm.trigger_layers(lm.num_layers)[0]
print(f"{lm.family}: {lm.num_layers} layers, trigger layer l = {l} | {dataset}/{split}: {len(samples)} samples")

# %% [markdown]
# ## 1 · The admitted set $\mathcal{K}$ (NTS, notebook 01)
#
# One STR forward on the sample, with its captures kept. STR acts only on the tokens NTS admits at the
# same layer: with the paper's ratios that is $\lceil 0.03 \cdot 32\rceil = 1$ visual token and
# $\lceil 0.2\, n_{con}\rceil$ subtitle words. The NTS scores $s_i$ (Eq. 5) are recomputed from the captures.

# %%
s = samples[sample_index]
batch = lm.encode([s], fine_prompts([s], task, contrastive=True))  # STR's prompt: query + Q_pos/Q_neg
lay = batch.layouts[0]
tokens = wetr.token_table(lm, batch)
logits_str, trace = strm.forward(lm, batch, [s])
sc = wetr.nts_scores(trace, lay, l, norm=norm)
kp = wetr.nts_keep(lay, sc, p_v, p_t)
K_v, K_con = kp["kept_visual"], kp["kept_content"]
in_v, in_c = np.isin(lay.visual, K_v), np.isin(lay.content, K_con)
kept = pd.DataFrame({"token": tokens.loc[np.r_[K_v, K_con], "token"].values,
                     "modality": ["visual"] * K_v.size + ["content"] * K_con.size,
                     "cue (ground truth)": np.r_[lay.cue_visual[in_v], lay.cue_content[in_c]],
                     "s_i (Eq. 5)": np.r_[sc["s_v"][in_v], sc["s_c"][in_c]]}, index=pd.Index(np.r_[K_v, K_con], name="position"))
print("subtitle:", s.subtitle, "| gold label:", s.label)
print(f"|K_v| = {K_v.size}, |K_con| = {K_con.size}; same m_i as the method: {np.array_equal(kp['m'], trace.decisions['admitted'][0])}")
kept.round(4)

# %% [markdown]
# ## 2 · Query and key vectors $q_i$, $k_i$ at layer $\ell$
#
# "Query/key vectors from the frozen attention projections": the projections' output after Qwen3's q/k
# RMSNorm and **before RoPE**, recorded by the same `Capture` that records the visual and content rows
# (`Capture(qk_rope="pre")` undoes the rotary embedding with the layer's own cos/sin; STR's `qk_rope="post"`
# would use the rotated vectors attention sees, whose keys also differ by position). The decoder uses grouped-query attention: $H$ query heads share $H_{kv}$ key
# heads, so query head $h$ is paired with key head $\lfloor h / (H/H_{kv})\rfloor$, as in the attention itself.

# %%
q, k, pos = wetr.capture_qk(trace, l)
row_of = {int(p): i for i, p in enumerate(pos)}
iv = np.array([row_of[int(p)] for p in K_v])
ic = np.array([row_of[int(p)] for p in K_con])
H, Hkv, d = q.shape[0], k.shape[0], q.shape[-1]
print(f"q: {tuple(q.shape)} (H = {H} query heads, {pos.size} visual + content tokens, d = {d}); "
      f"k: {tuple(k.shape)} (H_kv = {Hkv}: {H // Hkv} query heads per key head)")
kept["|q_i| (head mean)"] = np.r_[q[:, iv].norm(dim=-1).mean(0).cpu().numpy(), q[:, ic].norm(dim=-1).mean(0).cpu().numpy()]
kept["|k_i| (head mean)"] = np.r_[k[:, iv].norm(dim=-1).mean(0).cpu().numpy(), k[:, ic].norm(dim=-1).mean(0).cpu().numpy()]
kept[["token", "modality", "|q_i| (head mean)", "|k_i| (head mean)"]].round(4)

# %% [markdown]
# ## 3 · Cross-modal reconstruction: $\alpha_{ij}$ and $e_i$ (Eq. 9)
#
# $$\alpha_{ij} = \mathrm{Softmax}_{j\in\mathcal{K}_{con}}\left(\frac{q_i^\top k_j}{\sqrt d}\right),\qquad
# e_i^v = \Big\lVert k_i - \sum_{j\in\mathcal{K}_{con}}\alpha_{ij}k_j\Big\rVert_2 \quad (i\in\mathcal{K}_v)$$
#
# and $e_j^t$ symmetrically, reconstructing a kept word's key from the kept *visual* keys. Computed per
# query head with its key head, then averaged over the $H$ heads. With a single kept visual token the
# reverse direction is degenerate: a softmax over one key is exactly 1, so $e_j^t = \lVert k_j - k_v\rVert$.

# %%
alpha_v = wetr.alpha_matrix(q, k, iv, ic)          # [H, |K_v|, |K_con|]: visual i <- content j
alpha_c = wetr.alpha_matrix(q, k, ic, iv)          # [H, |K_con|, |K_v|]: content j <- visual i
e_v = reconstruction_error(q, k, iv, ic)
e_c = reconstruction_error(q, k, ic, iv)
kept["e_i (Eq. 9)"] = np.r_[e_v, e_c]
print("alpha, visual <- content (head mean):", np.round(alpha_v.mean(0), 4).tolist())
print("alpha, content <- visual (head mean):", np.round(alpha_c.mean(0), 4).tolist())
fig = plots.attention_heatmap(alpha_v.mean(0), xlabels=tokens.loc[K_con, "token"].tolist(),
                              ylabels=[f"v{p}" for p in K_v], title=f"alpha_ij at p_v = {p_v} (head mean)")
_ = plots.save(fig, out_dir, "alpha_default")
kept[["token", "modality", "e_i (Eq. 9)"]].round(4)

# %% [markdown]
# The same sample with a wider visual keep ratio (`p_v_wide`), so that $\alpha$ has several visual rows
# and the content rows a real softmax over visual keys:

# %%
wide = get_method("str", **{**str_params, "p_v": p_v_wide})
_, trace_w = wide.forward(lm, batch, [s])
kp_w = wetr.nts_keep(lay, wetr.nts_scores(trace_w, lay, l, norm=norm), p_v_wide, p_t)
q_w, k_w, pos_w = wetr.capture_qk(trace_w, l)
iv_w, ic_w = np.searchsorted(pos_w, kp_w["kept_visual"]), np.searchsorted(pos_w, kp_w["kept_content"])
fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
plots.attention_heatmap(wetr.alpha_matrix(q_w, k_w, iv_w, ic_w).mean(0), ax=axes[0], title="visual i <- content j",
                        xlabels=tokens.loc[kp_w["kept_content"], "token"].tolist(), ylabels=[f"v{p}" for p in kp_w["kept_visual"]])
plots.attention_heatmap(wetr.alpha_matrix(q_w, k_w, ic_w, iv_w).mean(0), ax=axes[1], title="content j <- visual i",
                        xlabels=[f"v{p}" for p in kp_w["kept_visual"]], ylabels=tokens.loc[kp_w["kept_content"], "token"].tolist())
_ = plots.save(fig, out_dir, "alpha_wide")
print(f"p_v = {p_v_wide}: {kp_w['kept_visual'].size} visual x {kp_w['kept_content'].size} content kept tokens")

# %% [markdown]
# ## 4 · Normalised error $\bar e_i$, gate $g_i$, overlap $r_i$ and residual $c_i$ (Eq. 10)
#
# All errors of $\mathcal{K}_v \cup \mathcal{K}_{con}$ are min-max normalised jointly to $\bar e_i\in[0,1]$.
# Predictability alone says nothing about emotion, so it is gated by the NTS score:
# $g_i = \varphi(\mathrm{Norm}(s_i))$ with $\varphi(x) = \sigma((x - 0.5)/0.1)$, a soft step, and Norm over the modality's
# **kept** set $\mathcal{K}$ (the literal sigmoid confines $g$ to $[0.5, 0.731]$ and down-weights every kept token:
# the opposite of the property WETR states; see `emolens.methods.reweight`). Then
#
# $$r_i = (1-g_i)(1-\bar e_i)\ \text{(predictable, weakly relevant overlap)},\qquad c_i = g_i\,\bar e_i\ \text{(relevant, hard-to-predict residual)}.$$

# %%
e_bar = normalize(np.r_[e_v, e_c])
g = np.r_[gate(sc["s_v"][in_v], norm), gate(sc["s_c"][in_c], norm)]  # Norm over the kept set K (gate_scope="kept")
r, c = overlap_residual(g, e_bar)
kept["e_bar"], kept["g_i"], kept["r_i"], kept["c_i"] = e_bar, g, r, c
kept[["token", "modality", "s_i (Eq. 5)", "e_i (Eq. 9)", "e_bar", "g_i", "r_i", "c_i"]].round(4)

# %% [markdown]
# ## 5 · Migration bias $b_i$, $\gamma_i$ (Eq. 11), negative $\gamma$ and anchors
#
# $$b_i = c_i - r_i,\qquad \gamma_i = 1 + \delta\, b_i$$
#
# $\gamma_i$ can be negative ($b_i < -1/\delta$; with $\delta = 4$ that needs $r_i - c_i > 0.25$). Eq. 2
# asks for $\gamma_i > 0$ and WETR's Table 8 reports a down-weighted mean of exactly 0.000, so the default
# (`negative = "clamp0"`) clamps $\gamma_i \leftarrow \max(\gamma_i, 0)$: the token's hidden state is
# zeroed at layer $\ell$'s output. Then the **anchors** (the top `p_v_anc` of $\mathcal{K}_v$ and
# `p_t_anc` of $\mathcal{K}_{con}$ by $s_i$, at least one per modality) are protected:
# $\gamma_i \leftarrow \max(\gamma_i, \gamma_{anc})$. With one kept visual token, that token is always an anchor.

# %%
gamma_raw = 1.0 + delta * (c - r)
gamma_clamped, b = migration_gamma(r, c, delta, negative)
nv = K_v.size
gamma_v, anc_v = anchor_clamp(gamma_clamped[:nv], sc["s_v"][in_v], p_v_anc, gamma_anc)
gamma_c, anc_c = anchor_clamp(gamma_clamped[nv:], sc["s_c"][in_c], p_t_anc, gamma_anc)
gamma, anchor = np.r_[gamma_v, gamma_c], np.r_[anc_v, anc_c]
gamma_method = trace.decisions["gamma"][l][0]
kept["b_i"], kept["1 + delta b_i"], kept["after clamp"] = b, gamma_raw, gamma_clamped
kept["anchor"], kept["gamma_i"], kept["gamma (method)"] = anchor, gamma, gamma_method[np.r_[K_v, K_con]]
print(f"{int((gamma_raw < 0).sum())} negative gamma before clamping; anchors: {int(anchor.sum())}; "
      f"every other token keeps gamma = 1: {bool(np.all(np.delete(gamma_method, np.r_[K_v, K_con]) == 1.0))}")
kept.drop(columns=["|q_i| (head mean)", "|k_i| (head mean)"]).round(4)

# %% [markdown]
# ## 6 · The scaling $\tilde h_i = \gamma_i h_i$
#
# STR multiplies the hidden states on layer $\ell$'s output (a residual-stream hook installed by the same
# plan). Recording that output with and without STR (NTS alone, same selection) shows the ratio is
# exactly $\gamma_i$ at every position: layers $\le \ell$ are untouched, and every layer after $\ell$
# reads the scaled states.

# %%
h_str, _ = wetr.layer_output(lm, batch, [s], strm, l)
h_nts, _ = wetr.layer_output(lm, batch, [s], nts, l)
ratio = (h_str[0].norm(dim=-1) / h_nts[0].norm(dim=-1)).cpu().numpy()
scaled = torch.allclose(h_str[0], h_nts[0] * torch.as_tensor(gamma_method)[:, None], **tolerances(lm.dtype))
print("|h_STR| / |h_NTS| at the kept tokens:", ", ".join(f"{x:.4f}" for x in ratio[np.r_[K_v, K_con]]),
      "| gamma_i:", ", ".join(f"{x:.4f}" for x in gamma), f"| h_STR == gamma * h_NTS at every position: {scaled}")

# %% [markdown]
# ## 7 · $\gamma$ over many samples
#
# STR and NTS alone (the same selection) over `n_samples` samples. Each retained visual/content token
# contributes one $\gamma$; the method also records how many were negative before clamping.

# %%
res_str = evaluate(lm, ds, "str", str_params, limit=n_samples, seed=seed, progress=False)
res_nts = evaluate(lm, ds, "nts", nts_params, limit=n_samples, seed=seed, progress=False)
recs = [t["str"] for p in res_str["predictions"] for t in p["extra"]["nts"]]
gam_v = np.concatenate([x["gamma_visual"] for x in recs])
gam_c = np.concatenate([x["gamma_content"] for x in recs])
gam_all = np.r_[gam_v, gam_c]
anchors_all = np.concatenate([np.r_[x["anchor_visual"], x["anchor_content"]] for x in recs]).astype(bool)
n_neg = int(sum(x["n_negative"] for x in recs))
groups = pd.Series(wetr.gamma_group(gam_all)).value_counts().reindex(["DW", "NEU", "UW"], fill_value=0)
display(Markdown(f"**Measured** (n = {n_samples} samples, {gam_all.size} retained tokens: {gam_v.size} visual, "
                 f"{gam_c.size} content): {n_neg} gamma were negative before clamping; "
                 f"{int((gam_all == 0).sum())} tokens end at gamma = 0; {int(anchors_all.sum())} anchors; "
                 f"down / neutral / up-weighted: {groups['DW']} / {groups['NEU']} / {groups['UW']}; "
                 f"mean gamma {gam_all.mean():.4f}. WAR: NTS alone {res_nts['metrics']['war']:.4f}, "
                 f"NTS+STR {res_str['metrics']['war']:.4f}."))
fig = plots.histogram(gam_all, bins=30, title=f"gamma of retained tokens (delta = {delta}, n = {n_samples})", xlabel="gamma_i")
fig.axes[0].axvline(1.0, color="k", ls="--", lw=1)
_ = plots.save(fig, out_dir, "gamma_histogram")

# %% [markdown]
# ## 8 · Contribution shift (WETR Table 8)
#
# Group the retained tokens by $\gamma_i$ into down-weighted (DW, $\gamma<1$), neutral (NEU, $\gamma=1$)
# and up-weighted (UW, $\gamma>1$). A token's *decision contribution* is the drop of the gold label's
# probability when that token alone is removed (its key masked from layer $\ell+1$ on, where NTS's own
# mask starts, so the selection and the $\gamma$ decided at $\ell$ are unchanged), measured with NTS
# alone (*before* STR) and with NTS+STR (*after*). Only the reweighted tokens
# $\mathcal{K}_v\cup\mathcal{K}_{con}$ are grouped here; the method's own per-sample record
# (`extra["nts"][t]["str"]`, keys `dw` / `neu` / `uw`) also counts every retained instruction and audio
# token as neutral.

# %%
cs = wetr.contribution_shift(lm, samples[:n_samples], task, nts, strm)
table8 = cs.groupby("weighting").agg(n=("gamma", "size"), avg_gamma=("gamma", "mean"),
                                     before_STR=("contrib_before", "mean"), after_STR=("contrib_after", "mean"))
table8["change"] = table8["after_STR"] - table8["before_STR"]
table8 = table8.reindex([w for w in ("DW", "NEU", "UW") if w in table8.index])
tidy = table8.reset_index().melt(id_vars="weighting", value_vars=["before_STR", "after_STR"], var_name="when", value_name="contribution")
fig = plots.bars(tidy, "weighting", "contribution", hue="when", title=f"decision contribution by gamma group (n = {n_samples})")
_ = plots.save(fig, out_dir, "table8_contribution_shift")
table8.round(5)

# %% [markdown]
# ## 9 · Error propagation (WETR Table 5)
#
# NTS's drop is irreversible, so WETR asks how a wrong selection propagates. After NTS chooses its kept
# set at each trigger layer, a fraction $r$ of each modality's kept tokens is swapped for dropped ones
# (`metrics.swap_selection_noise`: $\mathrm{round}(r\cdot n_{kept})$ tokens; keep counts unchanged).
# The baseline row (no selection) instead loses a random $\mathrm{round}(r\cdot n)$ tokens of each
# modality. All rows are WETR with triggers every `n_r` layers: baseline = both modules off,
# NTS-only = `use_str=False`, NTS+STR = full.
#
# **With $p_v = 0.03$ only one visual token is kept**, and $\mathrm{round}(0.3\cdot 1) = 0$: at $r = 0.3$ the
# noise cannot touch the visual side at all (only the subtitle words change); at $r = 0.5$,
# $\mathrm{round}(0.5) = 1$ and the single visual token is always swapped. The second table shows it.

# %%
grid = sorted(set(noise_grid) | {0.0})
wetr_params = {k: v for k, v in str_params.items() if k != "layer"} | {"n_r": n_r}
settings = {"Baseline": {"use_nts": False, "use_str": False}, "NTS-only": {"use_nts": True, "use_str": False},
            "NTS+STR": {"use_nts": True, "use_str": True}}
runs = {(name, r): evaluate(lm, ds, "wetr", {**wetr_params, **flags, "noise_r": r}, limit=n_eval, seed=seed, progress=False)
        for name, flags in settings.items() for r in grid}
f1 = pd.DataFrame({r: {name: runs[(name, r)]["metrics"]["f1"] for name in settings} for r in grid})
dF1 = pd.DataFrame({r: pd.Series(metrics.error_propagation(f1[0.0].values, f1[r].values), index=f1.index) for r in grid})
table5 = pd.DataFrame({f"r={r:g}": [f"{f1.loc[n, r]:.4f} ({dF1.loc[n, r]:+.4f})" for n in settings] for r in grid},
                      index=pd.Index(list(settings), name="F1 (delta F1)"))
tidy = dF1.reset_index(names="method").melt(id_vars="method", var_name="r", value_name="delta F1")
fig = plots.lines(tidy, "r", "delta F1", hue="method", title=f"error propagation (n = {n_eval})")
_ = plots.save(fig, out_dir, "table5_error_propagation")
print(f"triggers: {get_method('wetr', **wetr_params).trigger_layers(lm.num_layers)}; n = {n_eval} samples")
table5


# %%
def kept_sets(res, group):
    return [tuple(p["extra"]["nts"][0][f"kept_{group}"]) for p in res["predictions"]]

changes = []
for name in ("NTS-only", "NTS+STR"):
    clean = {g: kept_sets(runs[(name, 0.0)], g) for g in ("visual", "content")}
    for r in grid[1:]:
        noisy = {g: kept_sets(runs[(name, r)], g) for g in ("visual", "content")}
        kv = np.array([len(x) for x in clean["visual"]])
        kc = np.array([len(x) for x in clean["content"]])
        changes.append({"method": name, "r": r, "kept visual": kv.mean(), "swaps visual round(r*k)": np.floor(r * kv + 0.5).mean(),
                        "visual selection changed": float(np.mean([a != b for a, b in zip(clean["visual"], noisy["visual"])])),
                        "kept content": kc.mean(), "swaps content round(r*k)": np.floor(r * kc + 0.5).mean(),
                        "content selection changed": float(np.mean([a != b for a, b in zip(clean["content"], noisy["content"])]))})
changes = pd.DataFrame(changes).set_index(["method", "r"])
changes.round(4)


# %% [markdown]
# ## 10 · Explore: the intervention strength $\delta$
#
# $\gamma_i = 1 + \delta b_i$ is linear in $\delta$: at $\delta = 0$ every $\gamma_i = 1$ and STR is the
# identity (NTS alone); as $\delta$ grows the down-weighted tokens hit the clamp at 0 and the up-weighted
# ones grow. Move the slider and press *Run*: the cell recomputes $\gamma$ for this sample from the
# $b_i$ above and runs the model with that $\delta$. (Inert when the notebook runs headless.)

# %%
# NBVAL_IGNORE_OUTPUT
def show_delta(delta=delta):
    g_d, _ = migration_gamma(r, c, delta, negative)
    g_d[:nv] = anchor_clamp(g_d[:nv], sc["s_v"][in_v], p_v_anc, gamma_anc)[0]
    g_d[nv:] = anchor_clamp(g_d[nv:], sc["s_c"][in_c], p_t_anc, gamma_anc)[0]
    lg, _ = get_method("str", **{**str_params, "delta": delta}).forward(lm, batch, [s], keep_captures=False)
    ans = read_answers(lg, batch.prompts, lm.option_token_ids)[0]
    print(f"delta = {delta}: answer {ans.label} (gold {s.label}); option probabilities "
          + ", ".join(f"{batch.prompts[0].options[k]} {v:.3f}" for k, v in ans.option_probs.items()))
    fig, ax = plt.subplots(figsize=(5, 2.8))
    ax.bar([f"{t}@{p}" for p, t in kept["token"].items()], g_d, color=["C0"] * nv + ["C1"] * (g_d.size - nv))
    ax.axhline(1.0, color="k", ls="--", lw=1)
    ax.set_ylabel("gamma_i")
    ax.set_title(f"gamma of the kept tokens at delta = {delta}")
    plt.show()

widgets.explorer(show_delta, delta=[0.0, 1.0, 2.0, 4.0, 8.0])

# %% [markdown]
# ## Checks that fail loudly
#
# Properties that must hold whatever the checkpoint's accuracy:
#
# * the step-by-step $\gamma_i$ equals the method's; every non-retained token keeps $\gamma = 1$;
# * $\alpha$ rows are distributions; with one kept visual token the content rows are exactly 1;
#   the library's $e_i$ equals $\lVert k_i - \sum_j\alpha_{ij}k_j\rVert$ from these $\alpha$;
# * $\bar e \in [0, 1]$; $g \in [0.5, \sigma(1)]$ under min-max Norm; $\gamma = 1 + \delta b$ before
#   clamping and $\max(\cdot, 0)$ after; anchors end at $\ge \gamma_{anc}$;
# * layer $\ell$'s output under STR is $\gamma_i h_i$; with $\delta = 0$, STR gives NTS's logits;
# * Table 5: the noise keeps the keep counts; with one kept visual token, $r = 0.3$ leaves every
#   visual selection unchanged and $r = 0.5$ changes every one;
# * Table 8 groups: DW tokens have $\gamma < 1$, UW tokens $\gamma > 1$, and the contribution table has
#   one row per retained token.

# %%
np.testing.assert_allclose(gamma, gamma_method[np.r_[K_v, K_con]], rtol=1e-5, atol=1e-5)
assert np.all(np.delete(gamma_method, np.r_[K_v, K_con]) == 1.0)
np.testing.assert_allclose(alpha_v.sum(-1), 1.0, rtol=1e-10)
np.testing.assert_allclose(alpha_c.sum(-1), 1.0, rtol=1e-10)
if K_v.size == 1:
    assert np.all(alpha_c == 1.0), "a softmax over one key must be exactly 1"
kk = k.repeat_interleave(H // Hkv, dim=0).cpu().numpy()
e_from_alpha = np.mean([np.linalg.norm(kk[h, iv] - alpha_v[h] @ kk[h, ic], axis=-1) for h in range(H)], axis=0)
np.testing.assert_allclose(e_from_alpha, e_v, rtol=1e-8)
assert e_bar.min() >= 0.0 and e_bar.max() <= 1.0
if norm == "minmax":  # the soft step: each modality's most relevant kept token (Norm = 1) gets g = sigmoid(5)
    assert 0.0 < g.min() and np.isclose(g[:nv].max(), 1 / (1 + np.exp(-5.0)))
np.testing.assert_allclose(gamma_raw, 1.0 + delta * b, rtol=0, atol=1e-12)
if negative == "clamp0":
    np.testing.assert_array_equal(gamma_clamped, np.maximum(gamma_raw, 0.0))
assert np.all(gamma[anchor] >= gamma_anc) and anchor[:nv].any() and (K_con.size == 0 or anchor[nv:].any())
assert scaled, "layer output under STR is not gamma * h"
small = samples[:8]
b8 = lm.encode(small, fine_prompts(small, task, contrastive=True))
lg0, _ = get_method("str", **{**str_params, "delta": 0.0}).forward(lm, b8, small, keep_captures=False)
lgn, _ = nts.forward(lm, b8, small, keep_captures=False)
assert torch.allclose(lg0, lgn, **tolerances(lm.dtype)), "delta = 0 must be the identity"
for (name, rr), res in runs.items():
    if name != "Baseline":
        for p in res["predictions"]:
            ex = p["extra"]
            assert ex["k_visual"] == keep_count(ex["n_visual"], p_v) and ex["k_content"] == keep_count(ex["n_content"], p_t)
for name in ("NTS-only", "NTS+STR"):
    for rr in grid[1:]:
        row = changes.loc[(name, rr)]
        if row["kept visual"] == 1 and np.floor(rr + 0.5) == 0:
            assert row["visual selection changed"] == 0.0, (name, rr)
        if row["kept visual"] == 1 and np.floor(rr + 0.5) == 1:
            assert row["visual selection changed"] == 1.0, (name, rr)
assert np.all(gam_all[wetr.gamma_group(gam_all) == "DW"] < 1) and np.all(gam_all[wetr.gamma_group(gam_all) == "UW"] > 1)
assert len(cs) == gam_all.size, (len(cs), gam_all.size)
print("all checks passed")

# %%
summary = {"trigger_layer": l, "k_visual": int(K_v.size), "k_content": int(K_con.size),
           "n_negative_sample": int((gamma_raw < 0).sum()), "n_retained": int(gam_all.size), "n_negative": n_neg,
           "n_gamma_zero": int((gam_all == 0).sum()), "mean_gamma": float(gam_all.mean()),
           "war_nts": res_nts["metrics"]["war"], "war_str": res_str["metrics"]["war"],
           **{f"table8_{w}_{col}": float(table8.loc[w, col]) for w in table8.index for col in ("avg_gamma", "before_STR", "after_STR", "change")},
           **{f"table8_{w}_n": int(table8.loc[w, "n"]) for w in table8.index},
           **{f"f1_{n.lower().replace('+', '_').replace('-', '_')}_r{r:g}": float(f1.loc[n, r]) for n in settings for r in grid}}
results = {"notebook": "02_str",
           "parameters": {"model": model, "dataset": dataset, "split": split, "n_samples": n_samples, "n_eval": n_eval,
                          "sample_index": sample_index, "eps": eps, "layer": layer, "p_v": p_v, "p_t": p_t,
                          "p_v_wide": p_v_wide, "norm": norm, "delta": delta, "p_v_anc": p_v_anc, "p_t_anc": p_t_anc,
                          "gamma_anc": gamma_anc, "negative": negative, "n_r": n_r, "noise_grid": noise_grid,
                          "seed": seed, "device": device, "out_dir": out_dir},
           "summary": summary, "table8": table8.reset_index().to_dict(orient="list"),
           "table5_f1": {f"{r:g}": f1[r].to_dict() for r in grid},
           "selection_changes": changes.reset_index().to_dict(orient="list")}
pathlib.Path(out_dir).mkdir(parents=True, exist_ok=True)
pathlib.Path(out_dir, "results.json").write_text(json.dumps(results, indent=1))
{k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}
