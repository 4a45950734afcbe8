# %% [markdown] tags=[]
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
# 2. an exercise: write Eq. 9-11 yourself in a few lines of torch and check them against the library;
# 3. the scaling itself: layer $\ell$'s output under STR is exactly $\gamma_i$ times the output without it,
#    and what the next layer's RMSNorm makes of it;
# 4. over `n_eval` samples: the distribution of $\gamma$, and $\gamma$ **scored against the ground-truth cue
#    words** (is an up-weighted subtitle token the emotion word more often than chance?);
# 5. the decision contribution of down-weighted, neutral and up-weighted tokens before and after STR
#    (WETR Table 8);
# 6. error propagation (WETR Table 5): F1 of the frozen baseline, NTS-only and NTS+STR when the
#    selection is corrupted with ratios $r$ that really swap kept visual tokens, with 95 % intervals;
# 7. **What we found**: the paper's claims, held / failed / unresolved, from this run's numbers.

# %% tags=["parameters"]
model: str = "emolens-tiny"  # model name or local checkpoint folder
dataset: str = "world-mer"  # dataset manifest (world view or local benchmark)
split: str = "test"  # dataset split
n_samples: int = 64  # samples of the leave-one-out contribution table (WETR Table 8; one forward per retained token)
n_eval: int = 300  # samples per compared quantity: gamma vs the cue words, NTS vs NTS+STR, each Table 5 cell
sample_index: int = 3  # which sample to walk through in detail
eps: float = -1.0  # world noise level (0..7); -1: the manifest's own nuisance (world v2's default)
layer: int = -1  # trigger layer l of NTS + STR (-1: auto, round(n_layers * 9/36))
p_v: float = 0.03  # NTS visual keep ratio (the paper's value)
p_t: float = 0.2  # NTS subtitle-content keep ratio (the paper's value)
p_v_wide: float = 0.25  # a wider visual keep ratio, to see alpha over more kept visual tokens
norm: str = "minmax"  # Norm of the NTS scores (and of the gate input)
delta: float = 4.0  # intervention strength delta (Eq. 11; the paper's value)
p_v_anc: float = 0.1  # anchor ratio within K_v
p_t_anc: float = 0.1  # anchor ratio within K_con
gamma_anc: float = 1.0  # anchor lower bound gamma_anc (at least 1)
negative: str = "clamp0"  # negative gamma: clamp0 (gamma <- max(gamma, 0)) | keep (signed)
n_r: int = 2  # WETR trigger interval for the error-propagation table (triggers: l mod n_r is 0)
noise_grid: list[float] = [0.0, 0.25, 0.5, 0.75]  # post-NTS selection-noise ratios r (WETR Table 5)
delta_grid: list[float] = [0.0, 1.0, 2.0, 4.0, 8.0]  # intervention strengths of the static gamma figure and the explorer
seed: int = 0  # seed of the selection noise and the bootstrap
device: str = "auto"  # auto | cpu | cuda
out_dir: str = "../runs/notebooks/02_str"  # where figures and results.json go

# %% [markdown]
# ## Hypothesis
#
# WETR's claim for STR: within NTS's kept set, the tokens whose keys the other modality cannot reconstruct
# *and* that NTS scores as emotion-relevant carry the residual evidence, so raising their weight (and
# lowering predictable overlap) tightens the posterior over the emotion (Eq. 8). If that holds here:
#
# * the up-weighted subtitle tokens are the emotion words (the world knows them) more often than chance,
#   and more often than the words NTS kept;
# * NTS+STR beats NTS alone (Table 3);
# * after STR the up-weighted tokens contribute more to the decision and the down-weighted ones less (Table 8);
# * when the selection is corrupted, NTS+STR loses less F1 than NTS alone and the frozen baseline (Table 5).
#
# Verdicts use the 95 % bootstrap interval of each comparison (HELD: excludes 0 in the claimed direction).

# %% tags=[]
import json
import pathlib

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display

from emolens import metrics, plots, widgets
from emolens.analysis import wetr
from emolens.analysis.setup import setup
from emolens.answers import read_answers
from emolens.attention import decoder_layers
from emolens.cache import cached_evaluate, result_ci, result_delta
from emolens.compat import tolerances
from emolens.methods import get_method
from emolens.methods.common import fine_prompts
from emolens.methods.nts import keep_count
from emolens.methods.reweight import (anchor_clamp, gate, migration_gamma, normalize, overlap_residual,
                                      reconstruction_error)

S = setup(model, dataset, split, n=max(n_samples, n_eval), eps=None if eps < 0 else eps, seed=seed, device=device)
lm, ds, task, samples = S
nts_params = {"layer": layer, "p_v": p_v, "p_t": p_t, "norm": norm, "seed": seed}
str_params = {**nts_params, "delta": delta, "p_v_anc": p_v_anc, "p_t_anc": p_t_anc, "gamma_anc": gamma_anc,
              "negative": negative}
nts, strm = get_method("nts", **nts_params), get_method("str", **str_params)
l = strm.trigger_layers(lm.num_layers)[0]


def ev(method, params=None, n=n_eval):
    """One cached evaluation (emolens.cache): every notebook gets the same number for the same quantity."""
    return cached_evaluate(lm, ds, method, params, split=split, limit=n, seed=seed, world=S.world or None, batch_size=32,
                           progress=False)


print(S.describe(), f"| trigger layer l = {l}")

# %% [markdown] tags=[]
# ## 1 · The admitted set $\mathcal{K}$ (NTS, notebook 01)
#
# One STR forward on the sample, with its captures kept. STR acts only on the tokens NTS admits at the
# same layer: $\max(1, \lceil p_v n_v\rceil)$ visual tokens and $\max(1, \lceil p_t n_{con}\rceil)$ subtitle
# words (the cell prints the counts for this clip). The NTS scores $s_i$ (Eq. 5) are recomputed from the captures.

# %% tags=[]
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
print(f"|K_v| = {K_v.size} = max(1, ceil({p_v} * {lay.visual.size})), |K_con| = {K_con.size} = max(1, ceil({p_t} * "
      f"{lay.content.size})); same m_i as the method: {np.array_equal(kp['m'], trace.decisions['admitted'][0])}")
kept.round(4)

# %% [markdown] tags=[]
# ## 2 · Query and key vectors $q_i$, $k_i$ at layer $\ell$
#
# "Query/key vectors from the frozen attention projections": the projections' output after Qwen3's q/k
# RMSNorm and **before RoPE**, recorded by the same `Capture` that records the visual and content rows
# (`Capture(qk_rope="pre")` undoes the rotary embedding with the layer's own cos/sin; STR's `qk_rope="post"`
# would use the rotated vectors attention sees, whose keys also differ by position). The decoder uses grouped-query attention: $H$ query heads share $H_{kv}$ key
# heads, so query head $h$ is paired with key head $\lfloor h / (H/H_{kv})\rfloor$, as in the attention itself.

# %% tags=[]
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

# %% [markdown] tags=[]
# ## 3 · Cross-modal reconstruction: $\alpha_{ij}$ and $e_i$ (Eq. 9)
#
# $$\alpha_{ij} = \mathrm{Softmax}_{j\in\mathcal{K}_{con}}\left(\frac{q_i^\top k_j}{\sqrt d}\right),\qquad
# e_i^v = \Big\lVert k_i - \sum_{j\in\mathcal{K}_{con}}\alpha_{ij}k_j\Big\rVert_2 \quad (i\in\mathcal{K}_v)$$
#
# and $e_j^t$ symmetrically, reconstructing a kept word's key from the kept *visual* keys. Computed per
# query head with its key head, then averaged over the $H$ heads. (With a single kept token on the other
# side a softmax over one key is exactly 1 and $e = \lVert k_i - k_j\rVert$: the degenerate case the
# checks below test when it occurs.)

# %% tags=[]
alpha_v = wetr.alpha_matrix(q, k, iv, ic)          # [H, |K_v|, |K_con|]: visual i <- content j
alpha_c = wetr.alpha_matrix(q, k, ic, iv)          # [H, |K_con|, |K_v|]: content j <- visual i
e_v = reconstruction_error(q, k, iv, ic)
e_c = reconstruction_error(q, k, ic, iv)
kept["e_i (Eq. 9)"] = np.r_[e_v, e_c]
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
plots.attention_heatmap(alpha_v.mean(0), ax=axes[0], xlabels=tokens.loc[K_con, "token"].tolist(),
                        ylabels=[f"v{p}" for p in K_v], title="visual i <- content j", vmin=0, vmax=1,
                        xlabel="kept subtitle word j", ylabel="kept visual token i", cbar_label="alpha_ij (head mean)")
plots.attention_heatmap(alpha_c.mean(0), ax=axes[1], xlabels=[f"v{p}" for p in K_v],
                        ylabels=tokens.loc[K_con, "token"].tolist(), title="content j <- visual i", vmin=0, vmax=1,
                        xlabel="kept visual token i", ylabel="kept subtitle word j", cbar_label="alpha_ij (head mean)")
fig.suptitle(f"alpha at p_v = {p_v:g}, p_t = {p_t:g}")
fig.tight_layout()
_ = plots.save(fig, out_dir, "alpha_default")
kept[["token", "modality", "e_i (Eq. 9)"]].round(4)

# %% [markdown] tags=[]
# The same sample with a wider visual keep ratio (`p_v_wide`), so that $\alpha$ has more visual rows
# (same colour scale, 0 to 1):

# %% tags=[]
wide = get_method("str", **{**str_params, "p_v": p_v_wide})
_, trace_w = wide.forward(lm, batch, [s])
kp_w = wetr.nts_keep(lay, wetr.nts_scores(trace_w, lay, l, norm=norm), p_v_wide, p_t)
q_w, k_w, pos_w = wetr.capture_qk(trace_w, l)
iv_w, ic_w = np.searchsorted(pos_w, kp_w["kept_visual"]), np.searchsorted(pos_w, kp_w["kept_content"])
fig, axes = plt.subplots(1, 2, figsize=(11, max(3.4, 0.16 * kp_w["kept_visual"].size + 1.5)))
plots.attention_heatmap(wetr.alpha_matrix(q_w, k_w, iv_w, ic_w).mean(0), ax=axes[0], title="visual i <- content j",
                        xlabels=tokens.loc[kp_w["kept_content"], "token"].tolist(), ylabels=[f"v{p}" for p in kp_w["kept_visual"]],
                        vmin=0, vmax=1, xlabel="kept subtitle word j", ylabel="kept visual token i", cbar_label="alpha_ij (head mean)")
plots.attention_heatmap(wetr.alpha_matrix(q_w, k_w, ic_w, iv_w).mean(0), ax=axes[1], title="content j <- visual i",
                        xlabels=[f"v{p}" for p in kp_w["kept_visual"]], ylabels=tokens.loc[kp_w["kept_content"], "token"].tolist(),
                        vmin=0, vmax=1, xlabel="kept visual token i", ylabel="kept subtitle word j", cbar_label="alpha_ij (head mean)")
fig.tight_layout()
_ = plots.save(fig, out_dir, "alpha_wide")
print(f"p_v = {p_v_wide}: {kp_w['kept_visual'].size} visual x {kp_w['kept_content'].size} content kept tokens")

# %% [markdown] tags=[]
# ## 4 · Normalised error $\bar e_i$, gate $g_i$, overlap $r_i$ and residual $c_i$ (Eq. 10)
#
# All errors of $\mathcal{K}_v \cup \mathcal{K}_{con}$ are min-max normalised jointly to $\bar e_i\in[0,1]$.
# Predictability alone says nothing about emotion, so it is gated by the NTS score:
# $g_i = \varphi(\mathrm{Norm}(s_i))$ with $\varphi(x) = \sigma((x - 0.5)/0.1)$, a soft step, and Norm over the modality's
# **kept** set $\mathcal{K}$ (the literal sigmoid confines $g$ to $[0.5, 0.731]$ and down-weights every kept token:
# the opposite of the property WETR states; see `emolens.methods.reweight`). Then
#
# $$r_i = (1-g_i)(1-\bar e_i)\ \text{(predictable, weakly relevant overlap)},\qquad c_i = g_i\,\bar e_i\ \text{(relevant, hard-to-predict residual)}.$$

# %% tags=[]
e_bar = normalize(np.r_[e_v, e_c])
g = np.r_[gate(sc["s_v"][in_v], norm), gate(sc["s_c"][in_c], norm)]  # Norm over the kept set K (gate_scope="kept")
r, c = overlap_residual(g, e_bar)
kept["e_bar"], kept["g_i"], kept["r_i"], kept["c_i"] = e_bar, g, r, c
kept[["token", "modality", "s_i (Eq. 5)", "e_i (Eq. 9)", "e_bar", "g_i", "r_i", "c_i"]].round(4)

# %% [markdown] tags=[]
# ## 5 · Migration bias $b_i$, $\gamma_i$ (Eq. 11), negative $\gamma$ and anchors
#
# $$b_i = c_i - r_i,\qquad \gamma_i = 1 + \delta\, b_i$$
#
# $\gamma_i$ can be negative ($b_i < -1/\delta$; with $\delta = 4$ that needs $r_i - c_i > 0.25$). Eq. 2
# asks for $\gamma_i > 0$ and WETR's Table 8 reports a down-weighted mean of exactly 0.000, so the default
# (`negative = "clamp0"`) clamps $\gamma_i \leftarrow \max(\gamma_i, 0)$: the token's hidden state is
# zeroed at layer $\ell$'s output. Then the **anchors** (the top `p_v_anc` of $\mathcal{K}_v$ and
# `p_t_anc` of $\mathcal{K}_{con}$ by $s_i$, $\max(1, \lceil p_{anc}|\mathcal{K}|\rceil)$ per modality) are protected:
# $\gamma_i \leftarrow \max(\gamma_i, \gamma_{anc})$.

# %% tags=[]
gamma_raw = 1.0 + delta * (c - r)
gamma_clamped, b = migration_gamma(r, c, delta, negative)
nv = K_v.size
gamma_v, anc_v = anchor_clamp(gamma_clamped[:nv], sc["s_v"][in_v], p_v_anc, gamma_anc)
gamma_c, anc_c = anchor_clamp(gamma_clamped[nv:], sc["s_c"][in_c], p_t_anc, gamma_anc)
gamma, anchor = np.r_[gamma_v, gamma_c], np.r_[anc_v, anc_c]
gamma_method = trace.decisions["gamma"][l][0]
kept["b_i"], kept["1 + delta b_i"], kept["after clamp"] = b, gamma_raw, gamma_clamped
kept["anchor"], kept["gamma_i"], kept["gamma (method)"] = anchor, gamma, gamma_method[np.r_[K_v, K_con]]
print(f"{int((gamma_raw < 0).sum())} negative gamma before clamping; anchors: {int(anc_v.sum())} visual + "
      f"{int(anc_c.sum())} content; every other token keeps gamma = 1: "
      f"{bool(np.all(np.delete(gamma_method, np.r_[K_v, K_con]) == 1.0))}")
kept.drop(columns=["|q_i| (head mean)", "|k_i| (head mean)"]).round(4)


# %% [markdown] tags=[]
# ## Exercise · Eq. 9-11 in a few lines of torch
#
# Write the two functions below (torch float64 tensors):
#
# * `my_reconstruction_error(q_src, k_src, k_tgt)`: Eq. 9. `q_src`, `k_src` are `[H, S, D]` (the queries and
#   keys of the $S$ tokens to reconstruct), `k_tgt` is `[H, T, D]` (the other modality's kept keys, already
#   repeated to the $H$ query heads). $\alpha = \mathrm{softmax}_j(q_i^\top k_j/\sqrt D)$ per head, then
#   $e_i = \lVert k_i - \sum_j \alpha_{ij} k_j\rVert_2$, averaged over the heads: return `[S]`.
# * `my_gamma(e, g, delta)`: Eq. 10-11 before the anchors. $\bar e$ = min-max of `e` (a constant vector gives
#   zeros), $r = (1-g)(1-\bar e)$, $c = g\bar e$, $\gamma = \max(1 + \delta(c - r), 0)$.
#
# Leave `return None` to skip: the check cell then checks the collapsed solution instead, and says so.

# %% tags=[]
def my_reconstruction_error(q_src: torch.Tensor, k_src: torch.Tensor, k_tgt: torch.Tensor):
    """Eq. 9. q_src, k_src: [H, S, D]; k_tgt: [H, T, D]. Returns e: [S] (or None to skip)."""
    return None  # your code here


def my_gamma(e: torch.Tensor, g: torch.Tensor, delta: float):
    """Eq. 10-11 (clamped at 0, no anchors). e, g: [n]. Returns gamma: [n] (or None to skip)."""
    return None  # your code here


# %% jupyter={"source_hidden": true}
# Solution (collapsed: click to expand)
def solution_reconstruction_error(q_src: torch.Tensor, k_src: torch.Tensor, k_tgt: torch.Tensor) -> torch.Tensor:
    alpha = torch.softmax(q_src @ k_tgt.transpose(-1, -2) / q_src.shape[-1] ** 0.5, dim=-1)  # [H, S, T]
    return (k_src - alpha @ k_tgt).norm(dim=-1).mean(0)


def solution_gamma(e: torch.Tensor, g: torch.Tensor, delta: float) -> torch.Tensor:
    span = e.max() - e.min()
    e_bar = torch.zeros_like(e) if span <= 1e-12 else (e - e.min()) / span
    r, c = (1 - g) * (1 - e_bar), g * e_bar
    return torch.clamp(1 + delta * (c - r), min=0.0)


# %%
kk = k.repeat_interleave(H // Hkv, dim=0)                       # [H, N, D]: each query head with its key head
for name, src, tgt, ref in (("Eq. 9 (e^v: visual from content)", iv, ic, e_v), ("Eq. 9 (e^t: content from visual)", ic, iv, e_c)):
    args = (q[:, src], kk[:, src], kk[:, tgt])
    print(wetr.check_exercise(my_reconstruction_error(*args), solution_reconstruction_error(*args), ref, what=name))
t_e, t_g = torch.as_tensor(np.r_[e_v, e_c]), torch.as_tensor(g)
ref_gamma = migration_gamma(*overlap_residual(g, normalize(np.r_[e_v, e_c])), delta, "clamp0")[0]
print(wetr.check_exercise(my_gamma(t_e, t_g, delta), solution_gamma(t_e, t_g, delta), ref_gamma, what="Eq. 10-11 (gamma)"))

# %% [markdown] tags=[]
# ## 6 · The scaling $\tilde h_i = \gamma_i h_i$, and what the next layer reads
#
# STR multiplies the hidden states on layer $\ell$'s output (a residual-stream hook installed by the same
# plan). Recording that output with and without STR (NTS alone, same selection) shows the ratio is
# exactly $\gamma_i$ at every position: layers $\le \ell$ are untouched, and every layer after $\ell$
# reads the scaled states. But a pre-norm decoder reads $\mathrm{RMSNorm}(h)$ for its queries, keys and
# values, and RMSNorm is scale-invariant: for $\gamma_i > 0$ layer $\ell+1$'s attention input is unchanged,
# and only $\gamma_i = 0$ (a zeroed state) changes what later layers attend. The last line measures it.

# %% tags=[]
h_str, _ = wetr.layer_output(lm, batch, [s], strm, l)
h_nts, _ = wetr.layer_output(lm, batch, [s], nts, l)
ratio = (h_str[0].norm(dim=-1) / h_nts[0].norm(dim=-1)).cpu().numpy()
scaled = torch.allclose(h_str[0], h_nts[0] * torch.as_tensor(gamma_method)[:, None], **tolerances(lm.dtype))
print("|h_STR| / |h_NTS| at the kept tokens:", ", ".join(f"{x:.4f}" for x in ratio[np.r_[K_v, K_con]]),
      "| gamma_i:", ", ".join(f"{x:.4f}" for x in gamma), f"| h_STR == gamma * h_NTS at every position: {scaled}")
ln = decoder_layers(lm.model)[l + 1].input_layernorm
kept_pos = torch.as_tensor(np.r_[K_v, K_con])
with torch.no_grad():
    w = next(ln.parameters())
    n_str, n_nts = (ln(h[0][kept_pos].to(w.device, w.dtype)).float().cpu() for h in (h_str, h_nts))
rms_change = (n_str - n_nts).norm(dim=-1) / n_nts.norm(dim=-1)
pos_g = torch.as_tensor(gamma > 0)
print(f"layer {l + 1}'s RMSNorm input, relative change at the kept tokens: gamma > 0: max "
      f"{float(rms_change[pos_g].max()) if pos_g.any() else float('nan'):.2e}; gamma = 0: "
      + (f"{float(rms_change[~pos_g].min()):.3f}" if (~pos_g).any() else "none on this sample"))

# %% [markdown] tags=[]
# ## 7 · $\gamma$ over many samples, and against the ground-truth cue words
#
# STR and NTS alone (the same selection) over `n_eval` samples. Each retained visual / content token
# contributes one $\gamma$; the method also records how many were negative before clamping.
#
# The world knows which subtitle word carries the emotion (and which patches show the face), so STR's
# $\gamma$ can be **scored**: among the up-weighted (UW, $\gamma > 1$) subtitle tokens, what share are cue
# words? Chance is the share of cue words among *all* subtitle tokens (what keeping every word at weight 1,
# the zero-shot model, gives: the dashed line); the share among the words NTS kept shows what the
# selection alone already achieves, so "UW minus kept" is what STR adds. Intervals: bootstrap over samples.

# %% tags=[]
res_str, res_nts, res_zs = ev("str", str_params), ev("nts", nts_params), ev("zero-shot")
eval_layouts = lm.encode(samples[:n_eval], fine_prompts(samples[:n_eval], task, contrastive=True)).layouts
recs = [t["str"] for p in res_str["predictions"] for t in p["extra"]["nts"]]
gam_v = np.concatenate([x["gamma_visual"] for x in recs])
gam_c = np.concatenate([x["gamma_content"] for x in recs])
gam_all = np.r_[gam_v, gam_c]
anchors_all = np.concatenate([np.r_[x["anchor_visual"], x["anchor_content"]] for x in recs]).astype(bool)
n_neg = int(sum(x["n_negative"] for x in recs))
groups = pd.Series(wetr.gamma_group(gam_all)).value_counts().reindex(["DW", "NEU", "UW"], fill_value=0)
war_ci = {k: result_ci(r_, "war", seed=seed) for k, r_ in (("zero-shot", res_zs), ("NTS", res_nts), ("NTS+STR", res_str))}
str_vs_nts = result_delta(res_str, res_nts, "war", seed=seed)
display(Markdown(f"**Measured** (n = {n_eval} samples, {gam_all.size} retained tokens: {gam_v.size} visual, "
                 f"{gam_c.size} content): {n_neg} gamma were negative before clamping; "
                 f"{int((gam_all == 0).sum())} tokens end at gamma = 0; {int(anchors_all.sum())} anchors; "
                 f"down / neutral / up-weighted: {groups['DW']} / {groups['NEU']} / {groups['UW']}; "
                 f"mean gamma {gam_all.mean():.4f}. WAR: zero-shot {war_ci['zero-shot'][0]:.4f}, NTS alone "
                 f"{war_ci['NTS'][0]:.4f}, NTS+STR {war_ci['NTS+STR'][0]:.4f}; NTS+STR minus NTS {str_vs_nts[0]:+.4f} "
                 f"[{str_vs_nts[1]:+.4f}, {str_vs_nts[2]:+.4f}]."))
fig = plots.histogram(gam_all, bins=30, title=f"gamma of retained tokens (delta = {delta:g}, n = {n_eval})", xlabel="gamma_i")
fig.axes[0].axvline(1.0, color="k", ls="--", lw=1)
fig.axes[0].set_ylabel("retained tokens")
_ = plots.save(fig, out_dir, "gamma_histogram")

# %%
sel = wetr.selection_table(res_str, eval_layouts)
gct = wetr.gamma_cue_table(res_str, eval_layouts)
N = len(sel)


def counts(modality, mask=None):
    """Per-sample (cue tokens, tokens) among the retained tokens of one modality (optionally a gamma group)."""
    t = gct[(gct.modality == modality) & (True if mask is None else mask)]
    g_ = t.groupby("sample")["cue"].agg(["sum", "size"]).reindex(range(N), fill_value=0)
    return g_["sum"].to_numpy(float), g_["size"].to_numpy(float)


cue_rows, cue_deltas = [], {}
for mod in ("content", "visual"):
    base = {"all tokens (chance)": (sel[f"cue_{mod}"].to_numpy(float), sel[f"n_{mod}"].to_numpy(float)),
            "kept by NTS": counts(mod)}
    for w_ in ("DW", "NEU", "UW"):
        base[w_] = counts(mod, gct.weighting == w_)
    for name, (num, den) in base.items():
        cue_rows.append({"modality": mod, "tokens": name, "n tokens": int(den.sum()),
                         **dict(zip(("cue share", "lo", "hi"), wetr.share_ci(num, den, seed=seed)))})
    uw = base["UW"]
    cue_deltas[mod] = {"UW minus chance": wetr.share_ci(*uw, *base["all tokens (chance)"], seed=seed),
                       "UW minus kept": wetr.share_ci(*uw, *base["kept by NTS"], seed=seed)}
cue_table = pd.DataFrame(cue_rows)
for mod in ("content", "visual"):
    t = cue_table[(cue_table.modality == mod) & (cue_table["n tokens"] > 0)]
    chance_row = t[t.tokens == "all tokens (chance)"][["cue share", "lo", "hi"]].to_numpy(float)[0]
    fig = plots.comparison_bars(t[t.tokens != "all tokens (chance)"], "tokens", "cue share", "lo", "hi", zero_shot=chance_row,
                                ylim=(0, 1), ylabel=f"share of cue {'words' if mod == 'content' else 'tokens'}",
                                xlabel="retained tokens (DW: gamma < 1, NEU: = 1, UW: > 1)",
                                title=f"gamma vs ground truth, {'subtitle words' if mod == 'content' else 'visual tokens'} (n={n_eval})")
    _ = plots.save(fig, out_dir, f"gamma_cue_{mod}")
display(pd.DataFrame({f"{mod}: {k}": {"value": x[0], "95% lo": x[1], "95% hi": x[2], "verdict": wetr.verdict(x[1], x[2])}
                      for mod, dd in cue_deltas.items() for k, x in dd.items()}).T)
cue_table.round(4)

# %% [markdown] tags=[]
# ## 8 · Contribution shift (WETR Table 8)
#
# Group the retained tokens by $\gamma_i$ into down-weighted (DW, $\gamma<1$), neutral (NEU, $\gamma=1$)
# and up-weighted (UW, $\gamma>1$). A token's *decision contribution* is the drop of the gold label's
# probability when that token alone is removed (its key masked from layer $\ell+1$ on, where NTS's own
# mask starts, so the selection and the $\gamma$ decided at $\ell$ are unchanged), measured with NTS
# alone (*before* STR) and with NTS+STR (*after*). Only the reweighted tokens
# $\mathcal{K}_v\cup\mathcal{K}_{con}$ are grouped here. This table costs one forward per retained token
# and method, so it runs on `n_samples` samples; its intervals (bootstrap over samples) say what that n resolves.

# %% tags=[]
cs = wetr.contribution_shift(lm, samples[:n_samples], task, nts, strm)
ns_ = cs["sample"].max() + 1 if len(cs) else 0
t8_rows = []
for w_ in [w for w in ("DW", "NEU", "UW") if w in set(cs["weighting"])]:
    t = cs[cs.weighting == w_].groupby("sample").agg(n=("gamma", "size"), g=("gamma", "sum"), b=("contrib_before", "sum"),
                                                    a=("contrib_after", "sum")).reindex(range(ns_), fill_value=0)
    t["d"] = t["a"] - t["b"]
    row = {"weighting": w_, "n": int(t["n"].sum()), "avg_gamma": t["g"].sum() / t["n"].sum()}
    for col, name in (("b", "before_STR"), ("a", "after_STR"), ("d", "change")):
        row |= dict(zip((name, f"{name} lo", f"{name} hi"), wetr.share_ci(t[col].to_numpy(float), t["n"].to_numpy(float), seed=seed)))
    t8_rows.append(row)
table8 = pd.DataFrame(t8_rows).set_index("weighting")
tidy = pd.concat([table8.reset_index().assign(when=w, value=table8[w].values, lo=table8[f"{w} lo"].values, hi=table8[f"{w} hi"].values)
                  for w in ("before_STR", "after_STR")])
fig = plots.comparison_bars(tidy, "weighting", "value", "lo", "hi", hue="when", ylabel="mean drop of p_gold when removed",
                            title=f"decision contribution by gamma group (n = {n_samples} samples)")
_ = plots.save(fig, out_dir, "table8_contribution_shift")
table8.round(5)

# %% [markdown]
# ## 9 · Error propagation (WETR Table 5)
#
# NTS's drop is irreversible, so WETR asks how a wrong selection propagates. After NTS chooses its kept
# set at each trigger layer, a fraction $r$ of each modality's kept tokens is swapped for dropped ones
# (`metrics.swap_selection_noise`: $\mathrm{round}(r\cdot n_{kept})$ tokens; keep counts unchanged), so a
# ratio only acts when $r\cdot n_{kept} \ge 0.5$: the grid is chosen so that every $r > 0$ swaps at least one
# of the few kept visual tokens (the table after the figure shows how many). The baseline row (no selection)
# instead loses a random $\mathrm{round}(r\cdot n)$ tokens of each modality. All rows are WETR with triggers
# every `n_r` layers: baseline = both modules off, NTS-only = `use_str=False`, NTS+STR = full. F1 with 95 %
# intervals; the dashed line is the zero-shot model. The paper's claim is about the *slopes*: NTS+STR's F1
# drop from $r = 0$ is smaller than NTS-only's and the baseline's (a paired bootstrap of the difference of drops).

# %% tags=[]
grid = sorted(set(noise_grid) | {0.0})
wetr_params = {k: v for k, v in str_params.items() if k != "layer"} | {"n_r": n_r}
settings = {"Baseline": {"use_nts": False, "use_str": False}, "NTS-only": {"use_nts": True, "use_str": False},
            "NTS+STR": {"use_nts": True, "use_str": True}}
# r > 0 with a selection: prune=True removes the dropped tokens physically (the same answers for less compute);
# the r = 0 cells keep the preregistered parameters, so notebook 03's module ablation reads them from the cache
runs = {(name, r_): ev("wetr", {**wetr_params, **flags, "noise_r": r_, **({"prune": True} if flags["use_nts"] and r_ > 0 else {})})
        for name, flags in settings.items() for r_ in grid}
gold = np.array([p["gold"] for p in runs[("NTS+STR", 0.0)]["predictions"]], dtype=object)
pred = {key: np.array([p["label"] for p in r_["predictions"]], dtype=object) for key, r_ in runs.items()}
t5_rows = []
for (name, r_), res_ in runs.items():
    t5_rows.append({"method": name, "r": r_, **dict(zip(("F1", "F1 lo", "F1 hi"), result_ci(res_, "f1", seed=seed)))})
table5 = pd.DataFrame(t5_rows)
table5["delta F1"] = table5["F1"] - table5["method"].map(table5[table5.r == 0.0].set_index("method")["F1"])


def drop_diff(a, b, r_):
    """[F1_a(r) - F1_a(0)] - [F1_b(r) - F1_b(0)], paired over the same samples (> 0: a degrades less)."""
    f = lambda key, i: metrics.f1(gold[i], pred[key][i])
    return metrics.bootstrap_stat(lambda i: (f((a, r_), i) - f((a, 0.0), i)) - (f((b, r_), i) - f((b, 0.0), i)),
                                  len(gold), n=1000, seed=seed)


slower = {(other, r_): drop_diff("NTS+STR", other, r_) for other in ("NTS-only", "Baseline") for r_ in grid[1:]}
zs_f1 = result_ci(res_zs, "f1", seed=seed)
fig = plots.sweep_lines(table5, "r", "F1", "F1 lo", "F1 hi", hue="method", zero_shot=zs_f1, ylabel="weighted F1",
                        xlabel="selection-noise ratio r", title=f"error propagation (WETR Table 5, n = {n_eval})")
_ = plots.save(fig, out_dir, "table5_error_propagation")
print(f"triggers: {get_method('wetr', **wetr_params).trigger_layers(lm.num_layers)}; n = {n_eval} samples")
display(pd.DataFrame({f"NTS+STR vs {o}, r={r_:g}": {"drop difference": x[0], "95% lo": x[1], "95% hi": x[2],
                                                   "verdict": wetr.verdict(x[1], x[2])} for (o, r_), x in slower.items()}).T)
table5.pivot(index="method", columns="r", values="F1").reindex(list(settings)).round(4)


# %%
def kept_sets(res_, group):
    return [tuple(p["extra"]["nts"][0][f"kept_{group}"]) for p in res_["predictions"]]

changes = []
for name in ("NTS-only", "NTS+STR"):
    clean = {g_: kept_sets(runs[(name, 0.0)], g_) for g_ in ("visual", "content")}
    for r_ in grid[1:]:
        noisy = {g_: kept_sets(runs[(name, r_)], g_) for g_ in ("visual", "content")}
        kv = np.array([len(x) for x in clean["visual"]])
        kc = np.array([len(x) for x in clean["content"]])
        changes.append({"method": name, "r": r_, "kept visual": kv.mean(), "swaps visual round(r*k)": np.floor(r_ * kv + 0.5).mean(),
                        "visual selection changed": float(np.mean([a != b_ for a, b_ in zip(clean["visual"], noisy["visual"])])),
                        "kept content": kc.mean(), "swaps content round(r*k)": np.floor(r_ * kc + 0.5).mean(),
                        "content selection changed": float(np.mean([a != b_ for a, b_ in zip(clean["content"], noisy["content"])]))})
changes = pd.DataFrame(changes).set_index(["method", "r"])
changes.round(4)


# %% [markdown] tags=[]
# ## 10 · The intervention strength $\delta$, static and interactive
#
# $\gamma_i = 1 + \delta b_i$ is linear in $\delta$: at $\delta = 0$ every $\gamma_i = 1$ and STR is the
# identity (NTS alone); as $\delta$ grows the down-weighted tokens hit the clamp at 0 and the up-weighted
# ones grow. The figure shows this sample's kept tokens at every $\delta$ of `delta_grid` (anchors protected),
# the table the model's answer at each; the explorer below is the interactive version (inert headless).

# %% tags=[]
def gamma_at(delta_):
    g_d, _ = migration_gamma(r, c, delta_, negative)
    g_d[:nv] = anchor_clamp(g_d[:nv], sc["s_v"][in_v], p_v_anc, gamma_anc)[0]
    g_d[nv:] = anchor_clamp(g_d[nv:], sc["s_c"][in_c], p_t_anc, gamma_anc)[0]
    return g_d


def answer_at(delta_):
    lg, _ = get_method("str", **{**str_params, "delta": delta_}).forward(lm, batch, [s], keep_captures=False)
    return read_answers(lg, batch.prompts, lm.option_token_ids)[0]


labels_k = [f"{t}@{p}" + ("*" if cue else "") for (p, t), cue in zip(kept["token"].items(), kept["cue (ground truth)"])]
x_, width = np.arange(len(labels_k)), 0.8 / len(delta_grid)
fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(labels_k) + 3), 3.4))
for j, dl in enumerate(delta_grid):
    ax.bar(x_ - 0.4 + width * (j + 0.5), gamma_at(dl), width * 0.92, label=f"delta={dl:g}")
ax.axhline(1.0, color="k", ls="--", lw=1)
ax.set_xticks(x_, labels_k, rotation=45, ha="right")
ax.set_xlabel("kept token (token@position; * = ground-truth cue)")
ax.set_ylabel("gamma_i")
ax.set_title("gamma of this sample's kept tokens by delta")
ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
fig.tight_layout()
_ = plots.save(fig, out_dir, "gamma_by_delta")
delta_rows = []
for dl in delta_grid:
    ans = answer_at(dl)
    delta_rows.append({"delta": dl, "answer": ans.label, "gold": s.label, "p(gold)": wetr.gold_prob([ans], [s], batch.prompts)[0]})
pd.DataFrame(delta_rows).set_index("delta").round(4)


# %%
# NBVAL_IGNORE_OUTPUT
def show_delta(delta=delta):
    g_d, ans = gamma_at(delta), answer_at(delta)
    print(f"delta = {delta}: answer {ans.label} (gold {s.label}); option probabilities "
          + ", ".join(f"{batch.prompts[0].options[k_]} {v:.3f}" for k_, v in ans.option_probs.items()))
    fig, ax = plt.subplots(figsize=(5, 2.8))
    ax.bar(labels_k, g_d, color=["C0"] * nv + ["C1"] * (g_d.size - nv))
    ax.axhline(1.0, color="k", ls="--", lw=1)
    ax.set_ylabel("gamma_i")
    ax.tick_params(axis="x", labelrotation=45)
    ax.set_title(f"gamma of the kept tokens at delta = {delta}")
    plt.show()

widgets.explorer(show_delta, delta=sorted(set(delta_grid) | {delta}))

# %% [markdown] tags=[]
# ## What we found
#
# Built from this run's numbers (change a parameter and the text follows). A claim **HELD** when the 95 %
# interval of its comparison excludes 0 in the claimed direction, **FAILED** when it excludes 0 the other
# way, and is **UNRESOLVED** when it contains 0.

# %% tags=[]
fmt = lambda x: f"{x[0]:+.3f} [{x[1]:+.3f}, {x[2]:+.3f}]"
cd = cue_deltas["content"]
share = cue_table.set_index(["modality", "tokens"])["cue share"]
v_cue = wetr.verdict(*cd["UW minus chance"][1:])
v_beyond = wetr.verdict(*cd["UW minus kept"][1:])
v_war = wetr.verdict(*str_vs_nts[1:])
r_max = grid[-1]
v_t5 = {o: wetr.combine_verdicts([wetr.verdict(*slower[(o, r_)][1:]) for r_ in grid[1:]]) for o in ("NTS-only", "Baseline")}
v_t8 = {w_: wetr.verdict(table8.loc[w_, "change lo"], table8.loc[w_, "change hi"], +1 if w_ == "UW" else -1)
        for w_ in ("UW", "DW") if w_ in table8.index}
zero_share = float((gam_all == 0).sum() / gam_all.size)
rms_pos = float(rms_change[pos_g].max()) if pos_g.any() else float("nan")
claims = {"uw_words_are_cues": v_cue, "uw_beyond_nts_selection": v_beyond, "str_beats_nts": v_war,
          "table5_slower_than_nts_only": v_t5["NTS-only"], "table5_slower_than_baseline": v_t5["Baseline"],
          **{f"table8_{w_.lower()}_change": x for w_, x in v_t8.items()}}
uw_c = share.get(("content", "UW"), float("nan"))
if v_beyond == "HELD":
    cue_why = (f"Within the kept words STR does prefer the emotion word: {uw_c:.0%} of the up-weighted subtitle tokens are "
               f"cue words against {share[('content', 'kept by NTS')]:.0%} of the kept ones, so the reconstruction error "
               "adds information the NTS score alone does not carry.")
elif v_cue == "HELD":
    cue_why = (f"The up-weighted words are cue words more often than chance ({uw_c:.0%} vs "
               f"{share[('content', 'all tokens (chance)')]:.0%}), but no more often than the words NTS already kept "
               f"({share[('content', 'kept by NTS')]:.0%}; difference {fmt(cd['UW minus kept'])}): the gate g_i follows "
               "NTS's own score, so STR's up-weighting mostly re-ranks what NTS selected.")
else:
    cue_why = (f"STR's up-weighted subtitle tokens are not shown to be the emotion words ({uw_c:.0%} vs chance "
               f"{share[('content', 'all tokens (chance)')]:.0%}, difference {fmt(cd['UW minus chance'])}): a word whose key "
               "the kept visual keys cannot reconstruct is not, in this model, the word that carries the emotion.")
mech_why = (f"Whatever gamma says, only part of it reaches the answer: the next layer reads RMSNorm(gamma h), which equals "
            f"RMSNorm(h) for gamma > 0 (relative change at most {rms_pos:.1e} on the walkthrough sample), so later layers "
            f"attend differently only to the {zero_share:.0%} of retained tokens STR zeroes (gamma = 0); a positive gamma "
            "changes just the residual mix of those tokens' own states.")
found = [
    f"**NTS+STR vs NTS alone (n = {n_eval}, WAR):** {war_ci['NTS+STR'][0]:.3f} vs {war_ci['NTS'][0]:.3f} "
    f"(zero-shot {war_ci['zero-shot'][0]:.3f}); difference {fmt(str_vs_nts)} → **{v_war}**.",
    f"**gamma against the cue words (n = {n_eval}):** cue words are {share[('content', 'all tokens (chance)')]:.1%} of all "
    f"subtitle tokens (chance), {share[('content', 'kept by NTS')]:.1%} of the words NTS kept and {uw_c:.1%} of the "
    f"up-weighted ones; UW − chance {fmt(cd['UW minus chance'])} → **{v_cue}**; UW − kept {fmt(cd['UW minus kept'])} → "
    f"**{v_beyond}**. (Visual: UW − chance {fmt(cue_deltas['visual']['UW minus chance'])}.)",
    f"**Table 5 (n = {n_eval}):** F1 change from r = 0 to r = {r_max:g}: "
    + ", ".join(f"{table5[(table5.method == m_) & (table5.r == r_max)]['delta F1'].iloc[0]:+.3f} ({m_})" for m_ in settings)
    + ". " + " ".join(f"NTS+STR degrades less than {o} over every r > 0: **{v_t5[o]}** (difference of the F1 drops, "
                      + ", ".join(f"r = {r_:g}: {fmt(slower[(o, r_)])}" for r_ in grid[1:]) + ")."
                      for o in ("NTS-only", "Baseline")),
    f"**Table 8 (n = {n_samples} samples, {len(cs)} tokens):** "
    + "; ".join(f"{w_}: contribution change {fmt(tuple(table8.loc[w_, ['change', 'change lo', 'change hi']]))} → **{x}**"
                for w_, x in v_t8.items()) + ".",
    f"**Why:** {cue_why} {mech_why}",
]
display(Markdown("\n\n".join(found)))

# %% [markdown]
# ## Checks that fail loudly
#
# Properties that must hold whatever the verdicts are:
#
# * the step-by-step $\gamma_i$ equals the method's; every non-retained token keeps $\gamma = 1$;
# * $\alpha$ rows are distributions (a softmax over one key is exactly 1); the library's $e_i$ equals
#   $\lVert k_i - \sum_j\alpha_{ij}k_j\rVert$ from these $\alpha$;
# * $\bar e \in [0, 1]$; under min-max Norm each modality's top kept token gets $g = \sigma(5)$;
#   $\gamma = 1 + \delta b$ before clamping and $\max(\cdot, 0)$ after; anchors end at $\ge \gamma_{anc}$;
# * layer $\ell$'s output under STR is $\gamma_i h_i$; with $\delta = 0$, STR gives NTS's logits;
# * the gamma-vs-ground-truth table counts every retained token once (its groups add up to the kept set);
# * Table 5: the noise keeps the keep counts; a ratio that swaps no kept visual token leaves every visual
#   selection unchanged, one that swaps at least one changes every one;
# * Table 8 groups: DW tokens have $\gamma < 1$, UW tokens $\gamma > 1$, one row per retained token;
# * every interval is well-formed (lo ≤ estimate ≤ hi).

# %% tags=[]
np.testing.assert_allclose(gamma, gamma_method[np.r_[K_v, K_con]], rtol=1e-5, atol=1e-5)
assert np.all(np.delete(gamma_method, np.r_[K_v, K_con]) == 1.0)
np.testing.assert_allclose(alpha_v.sum(-1), 1.0, rtol=1e-10)
np.testing.assert_allclose(alpha_c.sum(-1), 1.0, rtol=1e-10)
if K_v.size == 1:
    assert np.all(alpha_c == 1.0), "a softmax over one key must be exactly 1"
kk_np = kk.cpu().numpy()
e_from_alpha = np.mean([np.linalg.norm(kk_np[h, iv] - alpha_v[h] @ kk_np[h, ic], axis=-1) for h in range(H)], axis=0)
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
for mod in ("content", "visual"):
    kept_n = cue_table[(cue_table.modality == mod) & (cue_table.tokens == "kept by NTS")]["n tokens"].iloc[0]
    assert kept_n == sel[f"kept_{mod}"].sum() == len(gct[gct.modality == mod])
    assert cue_table[(cue_table.modality == mod) & cue_table.tokens.isin(["DW", "NEU", "UW"])]["n tokens"].sum() == kept_n
for (name, rr), res_ in runs.items():
    if name != "Baseline":
        for p in res_["predictions"]:
            ex = p["extra"]
            assert ex["k_visual"] == keep_count(ex["n_visual"], p_v) and ex["k_content"] == keep_count(ex["n_content"], p_t)
for name in ("NTS-only", "NTS+STR"):
    for rr in grid[1:]:
        row = changes.loc[(name, rr)]
        kv_all = {len(x) for x in kept_sets(runs[(name, 0.0)], "visual")}
        if len(kv_all) == 1 and np.floor(rr * kv_all.pop() + 0.5) == 0:
            assert row["visual selection changed"] == 0.0, (name, rr)
        elif row["swaps visual round(r*k)"] >= 1 and row["kept visual"] < lay.visual.size:
            assert row["visual selection changed"] == 1.0, (name, rr)
assert np.all(gam_all[wetr.gamma_group(gam_all) == "DW"] < 1) and np.all(gam_all[wetr.gamma_group(gam_all) == "UW"] > 1)
t8_layouts = lm.encode(samples[:n_samples], fine_prompts(samples[:n_samples], task, contrastive=True)).layouts
assert len(cs) == sum(keep_count(x.visual.size, p_v) + keep_count(x.content.size, p_t) for x in t8_layouts), len(cs)
intervals = [tuple(cue_table.loc[i, ["cue share", "lo", "hi"]]) for i in cue_table.index]
intervals += [tuple(table5.loc[i, ["F1", "F1 lo", "F1 hi"]]) for i in table5.index]
intervals += [tuple(table8.loc[w_, [c_, f"{c_} lo", f"{c_} hi"]]) for w_ in table8.index for c_ in ("before_STR", "after_STR", "change")]
intervals += [*war_ci.values(), str_vs_nts, *slower.values(), *(x for dd in cue_deltas.values() for x in dd.values())]
assert all(lo - 1e-12 <= est <= hi + 1e-12 for est, lo, hi in intervals if np.isfinite(lo)), "an interval does not contain its estimate"
print(f"all checks passed ({len(intervals)} intervals)")

# %%
summary = {"trigger_layer": l, "k_visual": int(K_v.size), "k_content": int(K_con.size), "claims": claims,
           "n_negative_sample": int((gamma_raw < 0).sum()), "n_retained": int(gam_all.size), "n_negative": n_neg,
           "n_gamma_zero": int((gam_all == 0).sum()), "mean_gamma": float(gam_all.mean()),
           "war_zero_shot": war_ci["zero-shot"][0], "war_nts": war_ci["NTS"][0], "war_str": war_ci["NTS+STR"][0],
           "str_minus_nts": list(str_vs_nts),
           **{f"cue_{mod}_{k.lower().replace(' ', '_')}": list(x) for mod, dd in cue_deltas.items() for k, x in dd.items()},
           **{f"table8_{w_}_{col}": float(table8.loc[w_, col]) for w_ in table8.index for col in ("avg_gamma", "before_STR", "after_STR", "change")},
           **{f"table8_{w_}_n": int(table8.loc[w_, "n"]) for w_ in table8.index},
           **{f"f1_{n_.lower().replace('+', '_').replace('-', '_')}_r{r_:g}": float(table5[(table5.method == n_) & (table5.r == r_)]["F1"].iloc[0])
              for n_ in settings for r_ in grid},
           **{f"table5_slower_than_{o.lower().replace('-', '_')}_r{r_:g}": list(x) for (o, r_), x in slower.items()}}
results = {"notebook": "02_str",
           "parameters": {"model": model, "dataset": dataset, "split": split, "n_samples": n_samples, "n_eval": n_eval,
                          "sample_index": sample_index, "eps": eps, "layer": layer, "p_v": p_v, "p_t": p_t,
                          "p_v_wide": p_v_wide, "norm": norm, "delta": delta, "p_v_anc": p_v_anc, "p_t_anc": p_t_anc,
                          "gamma_anc": gamma_anc, "negative": negative, "n_r": n_r, "noise_grid": noise_grid,
                          "delta_grid": delta_grid, "seed": seed, "device": device, "out_dir": out_dir},
           "summary": summary, "what_we_found": found, "table8": table8.reset_index().to_dict(orient="list"),
           "gamma_cue": cue_table.to_dict(orient="list"), "table5": table5.to_dict(orient="list"),
           "selection_changes": changes.reset_index().to_dict(orient="list")}
pathlib.Path(out_dir).mkdir(parents=True, exist_ok=True)
pathlib.Path(out_dir, "results.json").write_text(json.dumps(results, indent=1, default=float))
{k_: round(x, 4) if isinstance(x, float) else x for k_, x in summary.items()}
