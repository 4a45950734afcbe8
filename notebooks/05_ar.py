# %% [markdown] tags=[]
# # 05 · AR: attention reallocation between audio and visual tokens (MoSEAR)
#
# MoSEAR (seed 003) observes that emotion MLLMs over-trust audio when audio and video disagree: on
# CA-MER's *video-aligned* samples (the face shows the true emotion, the voice another) the answer
# token's middle-layer attention goes mostly to the single audio token (Sec. 4, Fig. 3a/b), which it traces to
# **token imbalance** (1 audio token against hundreds of visual ones; Fig. 3c retrains with more audio
# tokens). Its training-free fix, **Attention Reallocation (AR)** (Sec. 5.2, Algorithm 1), finds the
# biased heads of each layer at the decoding step,
#
# $$c_h = \frac{S_h(\omega, \mathcal A)}{S_h(\omega, \mathcal V)} \ \text{(Eq. 5)},\qquad
# c = \frac{\sum_h S_h(\omega, \mathcal A)}{\sum_h S_h(\omega, \mathcal V)} \ \text{(Eq. 6)},\qquad
# \mathcal H_{bias} = \{h \mid c > \tau \ \text{and}\ c_h > c\} \ \text{(Eq. 7)},$$
#
# and moves mass $\Delta_h$ from audio to visual tokens until $c_h' = c$, keeping the head's
# audio+visual total and each token's share within its group (Eq. 8-14). PAI, the baseline, instead
# amplifies every visual score of the answer row in a range of layers.
#
# **What you will see** on emolens-tiny and the CA-MER view of the emotion world (a clip of visual
# patch tokens, audio token(s) from the prosody, a subtitle; three conflict subsets whose ground truth
# says which modality carries the label; the token counts are printed by the set-up cell):
#
# 1. UAP of audio and visual tokens per layer on video-aligned failures (Fig. 3a), and per-token
#    attention over the middle layers (Fig. 3b);
# 2. the token-imbalance study (Fig. 3c) on emolens-tiny and its 4/16/64-audio-token variants: per-token
#    and total attention, and zero-shot WAR per subset, with 95 % intervals;
# 3. Eq. 5-7 for one sample: the ratios and which heads are biased;
# 4. the reallocation of one head before/after, Eq. 8-11 checked numerically, and an exercise: Eq. 12-14
#    in a few lines of torch;
# 5. AR against PAI on the three subsets (Table 7), AR mirrored (visual → audio) on audio-aligned, and
#    the $\tau$ sweep (Table 8), every number with its 95 % interval;
# 6. "What we found": the verdict on each of MoSEAR's claims, with the mechanism this notebook measured.
#
# Whether this model *has* an audio bias is measured, not assumed. Where no layer's ratio $c$ exceeds
# $\tau$, AR edits nothing; the tables report how much of the model each setting actually edited
# (`touched`), so a method that cannot act here is visible as such.

# %% tags=["parameters"]
model: str = "emolens-tiny"  # model name or local checkpoint folder
dataset: str = "world-camer"  # dataset manifest with audio, visual and conflict subsets
split: str = "test"  # dataset split
subset: str = "video-aligned"  # conflict subset of the attention analysis (MoSEAR Sec. 4 uses video-aligned)
subsets: list[str] = ["video-aligned", "audio-aligned", "consistent"]  # subsets of Tables 7 and 8 and Fig. 3c
eps: float = -1.0  # world noise level 0..7; -1 keeps the manifest's own nuisance (world-camer's default)
n_samples: int = 300  # samples of the analysed subset for the attention analyses (Fig. 3a/b/c)
n_eval: int = 300  # samples per subset for every accuracy comparison of Table 7 and Fig. 3c
n_sweep: int = 300  # samples per subset for the tau sweep (Table 8)
sample_index: int = -1  # sample of the analysed subset to inspect in detail, -1 picks the first failure case
tau: float = 1.0  # AR threshold of Eq. 7 (MoSEAR default 1, preregistered)
taus: list[float] = [0.0, 1.0, 2.0, 3.0]  # tau sweep of Table 8 (the paper's grid)
tau_quantiles: list[float] = [0.5]  # also sweep tau at these quantiles of the zero-shot layer ratio c (Eq. 6), so AR acts on some layers
source: str = "audio"  # token group that AR takes mass from (MoSEAR: audio)
target: str = "visual"  # token group that AR gives mass to (MoSEAR: visual)
pai_alpha: float = 0.5  # PAI amplification alpha (its paper: 0.5 for LLaVA-1.5; preregistered)
pai_layers: str = "all"  # PAI layers: all (MoSEAR's PAI, preregistered); "2:" is PAI's own code
variants: list[str] = ["emolens-tiny", "emolens-tiny-audio4", "emolens-tiny-audio16", "emolens-tiny-audio64"]  # Fig. 3c models (1/4/16/64 audio tokens); missing ones are reported
n_boot: int = 1000  # bootstrap resamples of every 95 % interval
seed: int = 0  # seed of evaluation and bootstrap
device: str = "auto"  # auto | cpu | cuda
out_dir: str = "../runs/notebooks/05_ar"  # where figures and results.json go

# %% tags=[]
import json
import pathlib

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display

from emolens import plots
from emolens.analysis import usage
from emolens.analysis.mosear import (claim_verdict, evaluate_grid, head_table, imbalance_study, load_variants,
                                     mean_ci, middle_third, reallocation_report)
from emolens.analysis.setup import setup
from emolens.cache import result_delta
from emolens.methods import get_method
from emolens.methods.ar import reallocate, reallocate_head, uap_profile
from emolens.methods.common import fine_prompts, run
from emolens.metrics import bootstrap_ci, paired_bootstrap_delta, uap
from emolens.widgets import explorer

eps_world = None if eps < 0 else float(eps)   # -1: the manifest's own nuisance (nothing passed to load_dataset)
S = setup(model, dataset, split, n=n_samples, eps=eps_world, subset=subset, seed=seed, device=device)
lm, ds, task, samples = S
L = lm.num_layers
mid = middle_third(L)
lay0 = lm.encode(samples[:1], fine_prompts(samples[:1], task)).layouts[0]
n_visual, n_audio = len(lay0.group(target)), len(lay0.group(source))
print(S.describe())
print(f"middle third of the layers: {mid}; tokens per clip: {n_visual} {target}, {n_audio} {source}, "
      f"{len(lay0.content)} subtitle")
print("labels:", task.labels)

# %% [markdown] tags=[]
# ## Hypothesis (MoSEAR's claims, each tested below)
#
# * **Fig. 3a/b (premise):** on video-aligned *failures*, the middle layers give the audio tokens more
#   attention than the visual tokens: in total (UAP, Eq. 1) and per token.
# * **Fig. 3c (token imbalance):** with more audio tokens, the video-aligned subset improves and the
#   audio-aligned subset degrades (a trade-off), the consistent subset barely moves.
# * **Table 7:** AR improves every CA-MER subset; PAI helps video-aligned but hurts audio-aligned.
# * **Table 8:** $\tau = 1$ is better than $\tau = 0$ (editing every layer without distinction is worst).
#
# A claim **held** when every comparison's 95 % interval excludes 0 in the claimed direction,
# **failed** when one excludes 0 the other way, and is **unresolved** otherwise (the rules of
# `benchmarks/verdicts.py`).

# %% [markdown] tags=[]
# ## 1 · Unimodal attention proportion per layer (MoSEAR Eq. 1, Fig. 3a)
#
# At the answer position (the row whose next-token logits give the answer letter),
#
# $$UAP_v = \frac1H \sum_h \sum_{v \in \mathcal V} \omega_h(v), \qquad UAP_a = \frac1H \sum_h \sum_{a \in \mathcal A} \omega_h(a).$$
#
# MoSEAR computes them on the *failure cases* of the video-aligned subset. The world also tells us what
# each modality expresses, so we can check the behaviour directly: on a video-aligned sample, does a
# wrong answer follow the audio's emotion?

# %% tags=[]
prof = uap_profile(lm, samples, task, groups=(target, source), middle=mid)
fail = ~prof["correct"]
follows_audio = np.array([p == s.labels_by_modality.get("audio") for p, s in zip(prof["pred"], samples)])
follows_video = np.array([p == s.labels_by_modality.get("visual") for p, s in zip(prof["pred"], samples)])
print(f"accuracy {prof['correct'].mean():.3f}; {int(fail.sum())} failures of {len(samples)}; answers equal to the "
      f"audio's emotion: {follows_audio.mean():.3f}, to the face's: {follows_video.mean():.3f}")
which = fail if fail.any() else np.ones_like(fail)
uap_layers = pd.DataFrame({f"UAP_{target} (failures)": prof["uap"][target][which].mean(0),
                           f"UAP_{source} (failures)": prof["uap"][source][which].mean(0),
                           f"UAP_{target} (all)": prof["uap"][target].mean(0),
                           f"UAP_{source} (all)": prof["uap"][source].mean(0)}, index=pd.Index(range(L), name="layer"))
fig = plots.layer_profile({c: uap_layers[c].values for c in uap_layers.columns}, ylabel="UAP (Eq. 1)",
                          title=f"{subset}: UAP per layer" + ("" if fail.any() else " (no failures: all samples)"))
for l in (mid[0], mid[-1]):
    fig.axes[0].axvline(l, color="grey", ls=":", lw=1)
plots.save(fig, out_dir, "uap_per_layer")
# the premise on the failures: total (Fig. 3a) and per-token (Fig. 3b) audio minus visual, middle third
a_tot, v_tot = prof["uap_middle"][source][which], prof["uap_middle"][target][which]
a_tok = np.array([float(v.mean()) for v in prof["per_token_group"][source]])[which]
v_tok = np.array([float(v.mean()) for v in prof["per_token_group"][target]])[which]
premise = {"total": mean_ci(a_tot - v_tot, n_boot, seed), "per_token": mean_ci(a_tok - v_tok, n_boot, seed),
           "n": int(which.sum()), "on_failures": bool(fail.any())}
print(f"{source} - {target}, middle third, {premise['n']} {'failures' if fail.any() else 'samples'}: "
      f"total (UAP) {premise['total'][0]:+.4f} [{premise['total'][1]:+.4f}, {premise['total'][2]:+.4f}], "
      f"per token {premise['per_token'][0]:+.5f} [{premise['per_token'][1]:+.5f}, {premise['per_token'][2]:+.5f}]")
uap_layers.round(4)

# %% [markdown] tags=[]
# ## 2 · Per-token attention over the middle layers (Fig. 3b)
#
# One sample (the first failure case unless `sample_index` says otherwise): the answer row's attention,
# averaged over heads and the middle third of the layers, on every token of the sequence, coloured by
# token group. The y axis is logarithmic, as MoSEAR's figure compares weights of order $10^{-1}$ and $10^{-3}$.

# %% tags=[]
i0 = sample_index if sample_index >= 0 else (int(np.flatnonzero(fail)[0]) if fail.any() else 0)
s = samples[i0]
prompt = fine_prompts([s], task)
batch, rows, logits = usage.answer_attention(lm, [s], prompt)
lay = batch.layouts[0]
rows = {l: r[0] for l, r in rows.items()}                           # layer -> [H, K] answer row
tok = torch.stack([rows[l].mean(0) for l in mid]).mean(0).cpu().numpy()  # heads, then middle layers: [K]
group = np.full(tok.size, "instruction", dtype=object)
group[lay.content] = "subtitle"
group[lay.visual] = "visual"
group[lay.audio] = "audio"
print(f"sample {i0}: label {s.label}; face shows {s.labels_by_modality.get('visual')}, voice {s.labels_by_modality.get('audio')}; "
      f"answer {prof['pred'][i0]}")
print(f"max per-token attention: audio {tok[lay.audio].max():.4f}, visual {tok[lay.visual].max():.4f}, "
      f"subtitle {tok[lay.content].max():.4f}")
fig, ax = plt.subplots(figsize=(10, 3.2))
for g, colour in (("instruction", "C7"), ("subtitle", "C2"), ("visual", "C0"), ("audio", "C3")):
    pos = np.flatnonzero(group == g)
    ax.bar(pos, np.maximum(tok[pos], 1e-8), width=1.0, color=colour, label=f"{g} ({pos.size} tokens)")
ax.set_yscale("log")
ax.set_xlabel("token position in the sequence")
ax.set_ylabel("attention (head mean)")
ax.set_title(f"per-token attention of the answer row, layers {mid[0]}-{mid[-1]} (sample {i0})")
ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
fig.tight_layout()
plots.save(fig, out_dir, "per_token_attention")

# %% [markdown] tags=[]
# ## 3 · Token imbalance (MoSEAR Fig. 3c)
#
# MoSEAR retrains Emotion-LLaMA with its audio token duplicated until the counts match, and sees the
# video-aligned subset improve while the audio-aligned subset degrades. emolens-tiny's variants start
# from the default's weights with its audio projector tiled to 4, 16 and 64 tokens (no new audio
# information), then continue the default's recipe, **for only 10 steps in the shipped checkpoints** (each
# variant's `train_log.json`; `emolens train-tiny --from emolens-tiny --audio-tokens N --steps S` for more).
# A short adaptation is not MoSEAR's full retraining: a WAR change across the variants measures the added
# tokens *and* how little the model adapted to them. For each variant that is present: the answer row's attention per audio token and
# per visual token and in total (UAP), middle third of the layers, on the first `n_samples`
# video-aligned samples and on their failures; and zero-shot WAR on the first `n_eval` samples of each
# subset. Every number has a 95 % bootstrap interval over samples.

# %% tags=[]
by_name = {model: lm}
more, missing = load_variants([v for v in variants if v != model], device=device)
by_name.update(more)
fig3c_models = {v: by_name[v] for v in variants if v in by_name}
for v, why in missing.items():
    print(f"variant {v} is missing, left out of Fig. 3c: {why}")
print(f"Fig. 3c runs on {list(fig3c_models)}" + (f"; missing: {list(missing)}" if missing else "; none missing"))
imb = imbalance_study(fig3c_models, dataset, subsets, n_eval=n_eval, n_attn=n_samples, attn_subset=subset,
                      split=split, seed=seed, eps=eps_world, middle=mid, n_boot=n_boot,
                      profiles={model: prof} if {source, target} == {"visual", "audio"} else None)
imb_war, imb_att = imb["war"], imb["attention"]
fail_att = imb_att[imb_att["samples"] == ("failures" if (imb_att["samples"] == "failures").any() else "all")]
long = pd.concat([fail_att.assign(group=g, value=fail_att[f"{k}_{g}"], lo=fail_att[f"{k}_{g}_lo"],
                                  hi=fail_att[f"{k}_{g}_hi"], kind=k)
                  for g in ("audio", "visual") for k in ("per_token", "total")])
long = long[np.isfinite(long["value"])]
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
for ax, (k, ylabel) in zip(axes, (("per_token", "attention per token"), ("total", "total attention (UAP)"))):
    for g, colour in (("audio", "C3"), ("visual", "C0")):
        d = long[(long["kind"] == k) & (long["group"] == g)].sort_values("audio_tokens")
        ax.plot(d["audio_tokens"], d["value"], marker="o", color=colour, label=g)
        ax.fill_between(d["audio_tokens"], d["lo"], d["hi"], color=colour, alpha=0.2, lw=0)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("audio tokens per clip")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
fig.suptitle(f"{subset} failures, layers {mid[0]}-{mid[-1]}: audio vs visual attention per variant (95 % CI)")
fig.tight_layout()
plots.save(fig, out_dir, "fig3c_attention")
zs_pool = [q for sub in subsets for q in imb["results"].get((model, sub), {"predictions": []})["predictions"]]
zs_pool_ci = bootstrap_ci([q["gold"] for q in zs_pool], [q["label"] for q in zs_pool], "war", n=n_boot, seed=seed) if zs_pool else None
fig = plots.sweep_lines(imb_war, "audio_tokens", "war", "war_lo", "war_hi", hue="subset", zero_shot=zs_pool_ci, logx=True,
                        title=f"Fig. 3c analogue: zero-shot WAR per subset vs audio tokens (n={n_eval}, 95 % CI)",
                        xlabel="audio tokens per clip", ylabel="zero-shot WAR")
plots.save(fig, out_dir, "fig3c_war")
display(imb_att.round(5))
imb_war.pivot(index="audio_tokens", columns="subset", values="war").round(4)

# %% [markdown] tags=[]
# ## 4 · Biased layers and heads for one sample (Eq. 5-7)
#
# For the same sample: per layer and head, $S_h(\omega, \mathcal A)$, $S_h(\omega, \mathcal V)$, the head
# ratio $c_h$ (Eq. 5), the layer ratio $c$ (Eq. 6) and the biased set (Eq. 7) at `tau`. A layer is
# biased only when $c > \tau$; then its heads with $c_h > c$ are biased.

# %% tags=[]
heads = head_table(rows, lay, tau, source=source, target=target)
layer_c = heads.groupby("layer")["c"].first()
n_biased = int(heads["biased"].sum())
tau_show = tau if n_biased > 0 else 0.0
if n_biased == 0:
    print(f"At tau = {tau} no layer of this sample is biased (largest layer ratio c = {layer_c.max():.4f} <= tau): "
          f"AR leaves every head untouched. To show the mechanism, the rest of this section uses tau = 0, "
          f"Table 8's first row, where any layer with c > 0 is treated as biased.")
    heads = head_table(rows, lay, tau_show, source=source, target=target)
print(f"tau = {tau_show}: {int(heads['biased'].sum())} biased heads in {int(heads.groupby('layer')['layer_biased'].first().sum())} biased layers")
ch = heads.pivot(index="layer", columns="head", values="c_h")
fig = plots.attention_heatmap(np.log10(ch.values + 1e-12), xlabels=[f"h{h}" for h in ch.columns], ylabels=list(ch.index),
                              title=f"log10 c_h (Eq. 5); tau = {tau_show}: biased heads boxed", cmap="magma",
                              xlabel="head", ylabel="layer", cbar_label="log10 c_h")
for r_ in heads[heads["biased"]].itertuples():
    fig.axes[0].add_patch(plt.Rectangle((r_.head, r_.layer), 1, 1, fill=False, ec="cyan", lw=2))
plots.save(fig, out_dir, "head_ratios")
heads.round(4)

# %% [markdown] tags=[]
# ## 5 · Reallocating one head (Eq. 8-14), before and after
#
# The biased head with the largest $\Delta_h$ is reallocated with the closed form
#
# $$\omega'_h(a) = \omega_h(a)\Big(1 - \frac{\Delta_h}{S_h(\omega,\mathcal A)}\Big),\quad
# \omega'_h(v) = \omega_h(v)\Big(1 + \frac{\Delta_h}{S_h(\omega,\mathcal V)}\Big),\quad
# \Delta_h = \frac{S_h(\omega,\mathcal A) - c\,S_h(\omega,\mathcal V)}{1 + c}\ \text{(Eq. 12-14)},$$
#
# and the constraints are measured on the result: $c_h(\omega') = c$ (Eq. 8), the audio+visual total is
# unchanged (Eq. 9), each token's share within its group is unchanged (Eq. 10-11), every other key and
# every unbiased head is untouched, and the row still sums to 1.

# %% tags=[]
biased = heads[heads["biased"]].copy()
biased["delta"] = (biased["S_A"] - biased["c"] * biased["S_V"]) / (1 + biased["c"])   # Eq. (14)
pick = biased.sort_values(["delta", "layer", "head"], ascending=[False, True, True]).iloc[0]
l_, h_ = int(pick["layer"]), int(pick["head"])
src, tgt = lay.group(source), lay.group(target)
w = rows[l_][h_].double()
w_new, d_h = reallocate_head(w, src, tgt, float(pick["c"]))                           # Eq. (12)-(14)
rep = reallocation_report(w, w_new, src, tgt, pick["c"])
print(f"layer {l_}, head {h_}: c = {pick['c']:.4f}, c_h = {pick['c_h']:.4f}, Delta_h = {float(d_h):.4f} moved "
      f"from {source} to {target}; prediction of this sample before AR: {prof['pred'][i0]}")
masses = pd.DataFrame([{"when": when, "group": g, "mass": float(x[pos].sum())}
                       for when, x in (("before", w), ("after", w_new))
                       for g, pos in ((source, src), (target, tgt))]
                      + [{"when": when, "group": "other", "mass": float(1 - x[src].sum() - x[tgt].sum())}
                         for when, x in (("before", w), ("after", w_new))])
fig = plots.bars(masses, "group", "mass", hue="when", title=f"layer {l_} head {h_}: attention mass before / after AR")
plots.save(fig, out_dir, "head_before_after")
fig = plots.lines(pd.DataFrame({"visual token": np.tile(np.arange(len(tgt)), 2),
                                "attention": np.concatenate([w[tgt].cpu().numpy(), w_new[tgt].cpu().numpy()]),
                                "when": ["before"] * len(tgt) + ["after"] * len(tgt)}),
                  "visual token", "attention", hue="when", title="per-token visual weights: same shape, scaled (Eq. 11)")
plots.save(fig, out_dir, "head_visual_tokens")
pd.Series(rep).to_frame("value").T.round(6)


# %% [markdown] tags=[]
# ### Exercise: Eq. 12-14 in a few lines of torch
#
# Implement the reallocation of one head: given its attention row `w` (`[K]`, float64), the positions
# of the source (audio) and target (visual) tokens and the layer ratio `c`, return $\omega'_h$:
# compute $S_h(\omega, \mathcal A)$, $S_h(\omega, \mathcal V)$, $\Delta_h$ (Eq. 14), then scale the source
# weights by $1 - \Delta_h / S_h(\omega, \mathcal A)$ (Eq. 12) and the target weights by
# $1 + \Delta_h / S_h(\omega, \mathcal V)$ (Eq. 13); every other key keeps its weight. The check cell
# compares your result with `emolens.methods.ar.reallocate_head` on the head above. Leave the stub
# returning `None` and the check runs on the (collapsed) solution instead, saying so.

# %% tags=[]
def my_reallocate_head(w: torch.Tensor, src: torch.Tensor, tgt: torch.Tensor, c: float):
    """w: [K] float64 attention row of one head; src, tgt: LongTensor positions; c: the layer ratio (Eq. 6).
    Returns w' [K] (Eq. 12-14)."""
    # your code here (about 6 lines)
    return None


# %% jupyter={"source_hidden": true} tags=[]
# Solution (collapsed in JupyterLab; click to expand).
def solution_reallocate_head(w: torch.Tensor, src: torch.Tensor, tgt: torch.Tensor, c: float) -> torch.Tensor:
    s_a, s_v = w[src].sum(), w[tgt].sum()          # S_h(w, A), S_h(w, V)
    delta = (s_a - c * s_v) / (1 + c)              # Eq. (14)
    out = w.clone()
    out[src] = w[src] * (1 - delta / s_a)          # Eq. (12)
    out[tgt] = w[tgt] * (1 + delta / s_v)          # Eq. (13)
    return out


# %% tags=[]
src_t, tgt_t = torch.as_tensor(src, dtype=torch.long), torch.as_tensor(tgt, dtype=torch.long)
mine = my_reallocate_head(w.clone(), src_t, tgt_t, float(pick["c"]))
checked = "your my_reallocate_head" if mine is not None else "the solution (my_reallocate_head returned None)"
candidate = (mine if mine is not None else solution_reallocate_head(w.clone(), src_t, tgt_t, float(pick["c"]))).double()
exercise_err = float((candidate - w_new.double()).abs().max())
assert candidate.shape == w_new.shape and exercise_err < 1e-12, f"{checked} differs from reallocate_head by {exercise_err:.3g}"
print(f"checked {checked}: equals emolens.methods.ar.reallocate_head on layer {l_}, head {h_} "
      f"(max |difference| {exercise_err:.2e})")

# %% [markdown] tags=[]
# The same step for the whole layer through `reallocate` (Algorithm 1), and through the model: AR's plan
# with `record=True` stores, at every layer, the rows before and after the edit inside one forward
# (earlier layers' edits already shape later layers' inputs). Each edited head must satisfy the
# constraints; every other head must be bit-identical.

# %% tags=[]
layer_rows = torch.stack([rows[l] for l in range(L)])[:, None, :, None, :]   # [L, 1, H, 1, K]
src_m = torch.zeros(lay.seq_len, dtype=torch.bool); src_m[torch.as_tensor(src)] = True
tgt_m = torch.zeros(lay.seq_len, dtype=torch.bool); tgt_m[torch.as_tensor(tgt)] = True
out_l, info_l = reallocate(layer_rows[l_], src_m, tgt_m, tau_show)
same_head = torch.allclose(out_l[0, h_, 0].double(), w_new, atol=1e-7)
untouched_equal = bool(torch.equal(out_l[0][~info_l["biased"][0, :, 0]], layer_rows[l_][0][~info_l["biased"][0, :, 0]]))

ar_show = get_method("ar", tau=tau_show, source=source, target=target)
answers_ar, tr, b_ar = run(lm, [s], prompt, ar_show.plan(list(range(L)), record=True))
forward_rows = []
for l in range(L):
    before, after = tr.get("ar_in", l).probs[0, :, 0], tr.get("ar", l).probs[0, :, 0]     # [H, K]
    bia = tr.decisions["ar"][l]["biased"][0, :, 0]
    c_l = float(tr.decisions["ar"][l]["c"][0, 0])
    for h in range(before.shape[0]):
        row = {"layer": l, "head": h, "biased": bool(bia[h]), "unchanged": bool(torch.equal(before[h], after[h]))}
        if bia[h]:
            r = reallocation_report(before[h], after[h], src, tgt, c_l)
            row.update({k: r[k] for k in ("row_sum", "eq8", "eq9", "share_A", "share_V", "other", "delta")})
        forward_rows.append(row)
forward_checks = pd.DataFrame(forward_rows)
print(f"reallocate() on layer {l_}: head {h_} equals the closed form: {same_head}; unbiased heads bit-identical: {untouched_equal}")
print(f"in the forward at tau = {tau_show}: {int(forward_checks['biased'].sum())} heads edited over {L} layers; "
      f"answer {prof['pred'][i0]} -> {answers_ar[0].label} (gold {s.label})")
forward_checks[forward_checks["biased"]].drop(columns=["biased"]).round(6)

# %% [markdown] tags=[]
# ## 6 · AR against PAI on the three conflict subsets (MoSEAR Table 7), and AR mirrored
#
# Each subset is evaluated with the same fine query: zero-shot, PAI (visual scores $s \leftarrow s + \alpha|s|$
# at the answer row, layers `pai_layers`) and AR at `tau`, `n_eval` samples per subset, every run stored
# once by `emolens.cache.cached_evaluate`. MoSEAR reports the average of accuracy and recall (`avg` =
# (WAR + UAR) / 2); the verdicts use WAR with a paired bootstrap against zero-shot (`delta`, 95 %
# interval). `touched` is the share of (sample, layer) pairs AR actually edited, `answers = audio` the
# share of answers equal to the audio's emotion.
#
# **AR mirrored.** AR only moves mass from `source` to `target`. If this model's bias runs the other
# way (it over-weights the visual tokens in total), the mirrored question is AR with source = visual and
# target = audio, on the subset where the audio is right: audio-aligned.

# %% tags=[]
configs7 = {"zero-shot": {"method": "zero-shot"},
            "PAI": {"method": "pai", "alpha": pai_alpha, "layers": pai_layers},
            "AR": {"method": "ar", "tau": tau, "source": source, "target": target}}
grid = dict(limit=n_eval, split=split, seed=seed, eps=eps_world, ci=True, baseline="zero-shot", n_boot=n_boot)
table7, cache = evaluate_grid(lm, dataset, configs7, subsets, **grid)
mirror_subset = "audio-aligned"
configs_m = {"zero-shot": configs7["zero-shot"],
             "AR mirrored": {"method": "ar", "tau": tau, "source": target, "target": source}}
table_m, cache = evaluate_grid(lm, dataset, configs_m, [mirror_subset], cache=cache, **grid)


def run_of(sub, cfg):
    return cache[(sub, json.dumps(cfg, sort_keys=True))]


def touched(res):
    """Share of (sample, layer) pairs where AR's layer ratio exceeded tau (Algorithm 1 line 3)."""
    return float(np.mean([lb for q in res["predictions"] for lb in q["extra"]["ar"]["layer_biased"]]))


def follows_audio_share(sub, res):
    ds_sub = cache[("data", sub)]
    return float(np.mean([q["label"] == ds_sub[i].labels_by_modality.get("audio") for i, q in enumerate(res["predictions"])]))


table7 = pd.concat([table7, table_m[table_m["config"] == "AR mirrored"]], ignore_index=True)
all_cfgs = {**configs7, **configs_m}
table7["answers = audio"] = [follows_audio_share(r.subset, run_of(r.subset, all_cfgs[r.config])) for r in table7.itertuples()]
table7["touched"] = [touched(run_of(r.subset, all_cfgs[r.config])) if all_cfgs[r.config]["method"] == "ar" else np.nan
                     for r in table7.itertuples()]
zs_pool = [q for sub in subsets for q in run_of(sub, configs7["zero-shot"])["predictions"]]
zs_ci = bootstrap_ci([q["gold"] for q in zs_pool], [q["label"] for q in zs_pool], "war", n=n_boot, seed=seed)
fig = plots.comparison_bars(table7, "subset", "war", "war_lo", "war_hi", hue="config", zero_shot=zs_ci, ylim=(0, 1),
                            title=f"Table 7 analogue: WAR per subset (n={n_eval} each, 95 % CI)", ylabel="WAR",
                            xlabel="CA-MER subset")
plots.save(fig, out_dir, "table7_war")
fig = plots.comparison_bars(table7[table7["config"] != "zero-shot"], "subset", "delta", "delta_lo", "delta_hi",
                            hue="config", zero_shot=0.0, ylabel="WAR - zero-shot WAR", xlabel="CA-MER subset",
                            title="Table 7 analogue: paired difference to zero-shot (95 % CI)")
plots.save(fig, out_dir, "table7_delta")
# the layer ratio c (Eq. 6) that AR saw at every layer of every sample (AR at tau, all subsets) and mirrored
c_seen = np.array([c for sub in subsets for q in run_of(sub, configs7["AR"])["predictions"]
                   for c in q["extra"]["ar"]["c"] if c is not None])
c_mirror = np.array([c for q in run_of(mirror_subset, configs_m["AR mirrored"])["predictions"]
                     for c in q["extra"]["ar"]["c"] if c is not None])
print(f"layer ratio c = S({source}) / S({target}) seen by AR: median {np.median(c_seen):.4g}, 99th percentile "
      f"{np.quantile(c_seen, 0.99):.4g}, max {c_seen.max():.4g} (tau = {tau:g}); mirrored c = S({target}) / S({source}): "
      f"median {np.median(c_mirror):.4g}")
pai_mass = np.array([[q["extra"]["pai"]["mass_before"], q["extra"]["pai"]["mass_after"]]
                     for sub in subsets for q in run_of(sub, configs7["PAI"])["predictions"]])   # [N, 2, layers]
print(f"PAI: {target} mass of the answer row (mean over samples and its layers) {pai_mass[:, 0].mean():.4f} -> {pai_mass[:, 1].mean():.4f}")
table7.round(4)

# %% [markdown] tags=[]
# ## 7 · The threshold $\tau$ (MoSEAR Table 8)
#
# $\tau = 0$ edits every layer with $c > 0$; larger $\tau$ edits only layers where audio already outweighs
# visual by that factor in total. Besides the paper's grid, the sweep takes $\tau$ at the
# `tau_quantiles` of the zero-shot layer ratio $c$ measured in section 1 (the analysed samples, every
# layer; no accuracy is looked at to choose them), so that it includes thresholds at which AR edits
# some layers and leaves others. `touched` shows how much of the model each $\tau$ actually edits; the
# figure shows each $\tau$'s paired WAR difference to zero-shot with its 95 % interval.

# %% tags=[]
c_zs = prof["uap"][source] / np.maximum(prof["uap"][target], 1e-300)          # [N, L]: Eq. 6 = UAP_a / UAP_v
c_fin = c_zs[np.isfinite(c_zs)]
tau_q = [float(f"{np.quantile(c_fin, q):.3g}") for q in tau_quantiles] if c_fin.size else []
taus_all = sorted({float(t) for t in taus} | set(tau_q))
print(f"taus: paper grid {list(map(float, taus))} + quantiles {tau_quantiles} of c -> {tau_q}")
configs8 = {f"tau={t:g}": {"method": "ar", "tau": float(t), "source": source, "target": target} for t in taus_all}
cache8 = cache if n_sweep == n_eval else {}
table8, cache8 = evaluate_grid(lm, dataset, {"zero-shot": configs7["zero-shot"], **configs8}, subsets, cache=cache8,
                               **{**grid, "limit": n_sweep})
table8 = table8[table8["config"] != "zero-shot"].reset_index(drop=True)
table8["tau"] = [configs8[c]["tau"] for c in table8["config"]]
table8["touched"] = [touched(cache8[(r.subset, json.dumps(configs8[r.config], sort_keys=True))]) for r in table8.itertuples()]
wide8 = table8.pivot(index="config", columns="subset", values="avg").loc[list(configs8)][list(subsets)]
wide8["overall"] = wide8.mean(axis=1)
wide8["touched"] = table8.groupby("config")["touched"].mean().loc[list(configs8)]
zs_avg = table7[table7["config"] == "zero-shot"].set_index("subset")["avg"]
wide8.loc["zero-shot"] = [*zs_avg.loc[list(subsets)].values, zs_avg.loc[list(subsets)].mean(), 0.0]
fig = plots.sweep_lines(table8, "tau", "delta", "delta_lo", "delta_hi", hue="subset", zero_shot=0.0, logx=True,
                        title=f"Table 8 analogue: AR's WAR - zero-shot vs tau (n={n_sweep} per subset, 95 % CI)",
                        xlabel="tau (Eq. 7)", ylabel="WAR - zero-shot WAR")
plots.save(fig, out_dir, "table8_tau")
fig, ax = plt.subplots(figsize=(5.8, 3.2))
for sub in subsets:
    d = table8[table8["subset"] == sub].sort_values("tau")
    ax.plot(d["tau"], d["touched"], marker="o", label=sub)
ax.set_xscale("symlog", linthresh=min([t for t in taus_all if t > 0] or [1.0]))
ax.set_xlabel("tau (Eq. 7)")
ax.set_ylabel("touched: share of (sample, layer) edited")
ax.set_ylim(-0.02, 1.02)
ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
fig.tight_layout()
plots.save(fig, out_dir, "table8_touched")
wide8.round(4)

# %% [markdown] tags=[]
# ## 8 · Explore $\tau$
#
# What the explorer below shows, for every $\tau$ of the sweep at once: for the inspected sample, how
# many heads of each layer Eq. 7 marks as biased (one colour scale, 0 to the number of heads). AR's
# accuracy at each $\tau$ is Table 8 above. Raising $\tau$ above the largest layer ratio $c$ switches AR
# off entirely.

# %% tags=[]
H = rows[0].shape[0]
biased_by_tau = np.stack([head_table(rows, lay, t, source=source, target=target).groupby("layer")["biased"].sum()
                          .reindex(range(L)).to_numpy() for t in taus_all])            # [n_taus, L]
fig = plots.attention_heatmap(biased_by_tau, xlabels=list(range(L)), ylabels=[f"{t:g}" for t in taus_all],
                              title=f"sample {i0}: biased heads per layer (Eq. 7) at each tau", cmap="viridis",
                              xlabel="layer", ylabel="tau", cbar_label="biased heads", vmin=0, vmax=H)
plots.save(fig, out_dir, "biased_heads_by_tau")


# %% [markdown] tags=[]
# The interactive version: in JupyterLab pick $\tau$ and press Run to see the biased heads of the
# inspected sample and AR's accuracy on the analysed subset at that $\tau$ (evaluated once per $\tau$,
# then cached). Headless runs show only the controls.

# %% tags=[]
# NBVAL_IGNORE_OUTPUT
def explore(tau=tau):
    ht = head_table(rows, lay, tau, source=source, target=target)
    t_, _ = evaluate_grid(lm, dataset, {"AR": {"method": "ar", "tau": float(tau), "source": source, "target": target}},
                          [subset], limit=n_eval, split=split, seed=seed, eps=eps_world, cache=cache)
    print(f"tau={tau}: {int(ht['biased'].sum())} biased heads in {int(ht.groupby('layer')['layer_biased'].first().sum())} "
          f"biased layers for sample {i0}; AR on {subset}: avg {t_['avg'].iloc[0]:.3f} "
          f"(zero-shot {zs_avg.loc[subset] if subset in zs_avg.index else float('nan'):.3f})")
    display(ht.pivot(index="layer", columns="head", values="biased"))

explorer(explore, tau=sorted(set(taus_all) | {0.01, 0.05, 0.1, 0.5}))


# %% [markdown] tags=[]
# ## What we found
#
# Built from this run's numbers (every number below is inserted by code).

# %% tags=[]
def ci_txt(t, scale=100.0, unit=" pts", sign=True, digits=2):
    """'est [lo, hi]' of an (estimate, lo, hi) triple, times scale (100: percentage points)."""
    f = f"{'+' if sign else ''}.{digits}f"
    return f"{scale * t[0]:{f}}{unit} [{scale * t[1]:{f}}, {scale * t[2]:{f}}]"


def row_of(tab, sub, cfg):
    r = tab[(tab["subset"] == sub) & (tab["config"] == cfg)]
    return r.iloc[0] if len(r) else None


verdicts, why = {}, {}
# Fig. 3a/b: the premise, on video-aligned failures
verdicts["fig3a_total"] = claim_verdict([(*premise["total"], +1)])
verdicts["fig3b_per_token"] = claim_verdict([(*premise["per_token"], +1)])
# Fig. 3c: most vs fewest audio tokens, paired over the same samples
counts = imb_war.groupby("model")["audio_tokens"].first().sort_values()
fig3c_parts = {}
if len(counts) >= 2 and {"video-aligned", "audio-aligned"} <= set(subsets):
    lo_m, hi_m = counts.index[0], counts.index[-1]
    for sub_, d_ in (("video-aligned", +1), ("audio-aligned", -1)):
        fig3c_parts[sub_] = (*result_delta(imb["results"][(hi_m, sub_)], imb["results"][(lo_m, sub_)], "war",
                                           n_boot=n_boot, seed=seed), d_)
    verdicts["fig3c_tradeoff"] = claim_verdict(list(fig3c_parts.values()))
else:
    verdicts["fig3c_tradeoff"] = "UNRESOLVED"
# Table 7
ar_parts = [(r.delta, r.delta_lo, r.delta_hi, +1) for r in table7[table7["config"] == "AR"].itertuples()]
verdicts["table7_ar"] = claim_verdict(ar_parts)
pai_parts = [(r.delta, r.delta_lo, r.delta_hi, {"video-aligned": +1, "audio-aligned": -1}[r.subset])
             for r in table7[table7["config"] == "PAI"].itertuples() if r.subset in ("video-aligned", "audio-aligned")]
verdicts["table7_pai_tradeoff"] = claim_verdict(pai_parts)
# Table 8: tau (paper: 1) better than tau = 0, pooled over the subsets, paired
t8_delta = None
if f"tau={tau:g}" in configs8 and "tau=0" in configs8 and tau != 0:
    pa = [q for sub in subsets for q in cache8[(sub, json.dumps(configs8[f"tau={tau:g}"], sort_keys=True))]["predictions"]]
    pb = [q for sub in subsets for q in cache8[(sub, json.dumps(configs8["tau=0"], sort_keys=True))]["predictions"]]
    t8_delta = paired_bootstrap_delta([q["gold"] for q in pa], [q["label"] for q in pa], [q["label"] for q in pb],
                                      "war", n=n_boot, seed=seed)
verdicts["table8_tau"] = claim_verdict([(*t8_delta, +1)] if t8_delta else [])
mrow = row_of(table7, mirror_subset, "AR mirrored")
mirror_delta = (float(mrow["delta"]), float(mrow["delta_lo"]), float(mrow["delta_hi"]))
mirror_dir = {"HELD": "helped", "FAILED": "hurt", "UNRESOLVED": "neither helped nor hurt (interval contains 0)"}[
    claim_verdict([(*mirror_delta, +1)])]

touch_ar = float(table7[table7["config"] == "AR"]["touched"].mean())
touch_m = float(mrow["touched"])
pt = fail_att.set_index("model")
lines_ = [f"**Set-up.** {model} on {dataset}/{split} ({'eps = ' + format(eps_world, 'g') if eps_world is not None else 'the manifest nuisance'}): "
          f"{n_visual} {target} tokens against {n_audio} {source} token(s) per clip; zero-shot WAR over the "
          f"{len(subsets)} subsets {ci_txt(zs_ci, sign=False, unit='')} % (n = {len(zs_pool)}).",
          "",
          f"* **Fig. 3a (total attention): {verdicts['fig3a_total']}.** On {premise['n']} video-aligned "
          f"{'failures' if premise['on_failures'] else 'samples (no failures)'}, UAP_{source} - UAP_{target} in layers "
          f"{mid[0]}-{mid[-1]} is {ci_txt(premise['total'], 1, '', digits=4)}: the {n_visual} {target} tokens together receive "
          f"{'more' if premise['total'][0] < 0 else 'less'} of the answer row than the {source}.",
          f"* **Fig. 3b (per token): {verdicts['fig3b_per_token']}.** Per token the difference is "
          f"{ci_txt(premise['per_token'], 1, '', digits=5)}"
          + (f" (one {source} token receives {float(a_tok.mean() / v_tok.mean()):.1f}x the attention of one {target} token)."
             if v_tok.size and v_tok.mean() > 0 else "."),
          ]
if fig3c_parts:
    lines_.append(f"* **Fig. 3c (token imbalance): {verdicts['fig3c_tradeoff']}.** From {counts.iloc[0]} to {counts.iloc[-1]} "
                  f"audio tokens, zero-shot WAR changes by {ci_txt(fig3c_parts['video-aligned'][:3])} on video-aligned "
                  f"(claimed > 0) and {ci_txt(fig3c_parts['audio-aligned'][:3])} on audio-aligned (claimed < 0). "
                  + (f"The per-token {source}/{target} attention ratio on the failures goes from "
                     f"{pt.loc[counts.index[0], 'per_token_ratio']:.2f} to {pt.loc[counts.index[-1], 'per_token_ratio']:.2f}, "
                     f"and the total {source} share from {pt.loc[counts.index[0], 'total_audio']:.4f} to "
                     f"{pt.loc[counts.index[-1], 'total_audio']:.4f}."
                     if counts.index[0] in pt.index and counts.index[-1] in pt.index else ""))
else:
    lines_.append(f"* **Fig. 3c (token imbalance): UNRESOLVED.** Only {list(counts.index)} could be evaluated "
                  f"(missing: {list(missing) or 'none'}); the trade-off needs at least two audio-token counts.")
lines_ += [
    f"* **Table 7, AR improves every subset: {verdicts['table7_ar']}.** AR at tau = {tau:g} minus zero-shot: "
    + "; ".join(f"{r.subset} {ci_txt((r.delta, r.delta_lo, r.delta_hi))}" for r in table7[table7['config'] == 'AR'].itertuples())
    + f". AR edited {touch_ar:.1%} of the (sample, layer) pairs: the layer ratio c = S({source})/S({target}) it saw has "
      f"median {np.median(c_seen):.3g} and maximum {c_seen.max():.3g}"
    + (f", never above tau = {tau:g}, so AR is the zero-shot model here. The audio's advantage is per token, "
       f"but Eq. 6 compares totals, and {n_visual} {target} tokens outweigh {n_audio} {source} token(s) in total."
       if touch_ar == 0 else f"; where c > tau, AR moved mass from {source} to {target}."),
    f"* **Table 7, PAI's trade-off (helps video-aligned, hurts audio-aligned): {verdicts['table7_pai_tradeoff']}.** "
    + "; ".join(f"{r.subset} {ci_txt((r.delta, r.delta_lo, r.delta_hi))}" for r in table7[table7['config'] == 'PAI'].itertuples())
    + f". PAI raised the answer row's {target} mass from {pai_mass[:, 0].mean():.3f} to {pai_mass[:, 1].mean():.3f}.",
    f"* **Table 8, tau = {tau:g} better than tau = 0: {verdicts['table8_tau']}.** "
    + (f"Pooled over the subsets, AR(tau = {tau:g}) - AR(tau = 0) = {ci_txt(t8_delta)}. " if t8_delta else "")
    + "Touched share per tau: " + ", ".join(f"{c} {v:.0%}" for c, v in wide8['touched'].drop('zero-shot').items()) + ".",
    f"* **AR mirrored ({target} -> {source}) on {mirror_subset} (not a paper claim):** WAR minus zero-shot "
    f"{ci_txt(mirror_delta)}; it edited {touch_m:.0%} of the (sample, layer) pairs (mirrored c: median "
    f"{np.median(c_mirror):.3g}), and {mirror_dir}.",
]
display(Markdown("\n".join(lines_)))

# %% [markdown] tags=[]
# ## Checks that fail loudly
#
# Structural truths on this model's real attention (no claim that AR or PAI wins):
#
# * UAP values lie in $[0, 1]$ and $UAP_v + UAP_a \le 1$; Eq. 1 recomputed on a captured row matches `uap_profile`;
# * the reallocated head satisfies Eq. 8-11 (to float precision), its row sums to 1, other keys are untouched;
#   the exercise's result equals the library's;
# * `reallocate` and the in-forward AR edit touch exactly the heads of Eq. 7 and leave every other head bit-identical;
# * AR (both directions) moves mass only in layers with $c > \tau$, and at a $\tau$ above every layer ratio it changes nothing;
# * PAI raises the visual mass of the answer row in every edited layer of every sample;
# * Table 8's $\tau$ = `tau` row is Table 7's AR row (when `n_sweep` = `n_eval`);
# * every 95 % interval is well-formed (lo <= estimate <= hi);
# * Fig. 3c: per-token attention times the token count is the total (mass conservation), and each
#   variant has the number of audio tokens its name says.

# %% tags=[]
for g in (target, source):
    assert np.all((prof["uap"][g] >= 0) & (prof["uap"][g] <= 1 + 1e-9)), g
assert np.all(prof["uap"][target] + prof["uap"][source] <= 1 + 1e-9)
u = uap(rows[mid[0]].cpu().numpy(), {target: lay.group(target), source: lay.group(source)})
assert abs(u[target] - prof["uap"][target][i0, mid[0]]) < 1e-4 and abs(u[source] - prof["uap"][source][i0, mid[0]]) < 1e-4
assert rep["row_sum"] < 1e-9 and rep["eq8"] < 1e-9 and rep["eq9"] < 1e-12, rep
assert rep["eq10"] < 1e-9 and rep["eq11"] < 1e-9 and rep["share_A"] < 1e-12 and rep["share_V"] < 1e-12, rep
assert rep["other"] == 0.0 and abs(float(w_new.sum()) - 1) < 1e-6, rep
assert rep["delta"] > 0 and abs(rep["delta"] - float(d_h)) < 1e-12
assert exercise_err < 1e-12
assert same_head and untouched_equal
assert set(zip(*np.nonzero(info_l["biased"][0, :, 0].cpu().numpy()))) == {(h,) for h in heads[(heads["layer"] == l_) & heads["biased"]]["head"]}
fb = forward_checks[forward_checks["biased"]]
assert len(fb) > 0, "tau_show was chosen so that at least one head is biased"
assert (fb[["row_sum", "eq8", "eq9", "share_A", "share_V"]] < 1e-5).all().all() and (fb["other"] == 0).all(), fb
assert forward_checks.loc[~forward_checks["biased"], "unchanged"].all(), "an unbiased head was edited"
ar_runs = [(sub, t, cache8[(sub, json.dumps(configs8[f"tau={t:g}"], sort_keys=True))]) for sub in subsets for t in taus_all]
ar_runs += [(mirror_subset, tau, run_of(mirror_subset, configs_m["AR mirrored"]))]
for sub, t, res in ar_runs:
    for q in res["predictions"]:
        x = q["extra"]["ar"]
        for c_, lb, mv in zip(x["c"], x["layer_biased"], x["moved_mass"]):
            assert lb == (c_ is not None and c_ > t) and mv >= 0 and (lb or mv == 0.0), (sub, t, x)
huge = get_method("ar", tau=1e9, source=source, target=target)
_, tr_h, _ = run(lm, [s], prompt, huge.plan(list(range(L)), record=True))
assert all(torch.equal(tr_h.get("ar_in", l).probs, tr_h.get("ar", l).probs) for l in range(L)), "AR edited above every c"
assert np.all(pai_mass[:, 1] >= pai_mass[:, 0] - 1e-7) and pai_mass[:, 1].mean() > pai_mass[:, 0].mean()
if tau in taus_all and n_sweep == n_eval:
    t7 = table7[table7["config"] == "AR"].set_index("subset")["war"]
    t8 = table8[table8["config"] == f"tau={tau:g}"].set_index("subset")["war"]
    assert np.allclose(t7.loc[list(subsets)].values, t8.loc[list(subsets)].values)
for tab, cols in ((table7, ("war", "avg", "delta")), (table8, ("war", "avg", "delta")), (imb_war, ("war",)),
                  (imb_att[imb_att["n"] > 0], ("per_token_audio", "per_token_visual", "total_audio", "total_visual"))):
    for c in cols:
        assert np.all(tab[f"{c}_lo"] <= tab[c] + 1e-12) and np.all(tab[c] <= tab[f"{c}_hi"] + 1e-12), (c, tab)
ok_att = imb_att[imb_att["n"] > 0]
assert np.allclose(ok_att["per_token_audio"] * ok_att["audio_tokens"], ok_att["total_audio"], rtol=1e-6)
assert np.allclose(ok_att["per_token_visual"] * ok_att["visual_tokens"], ok_att["total_visual"], rtol=1e-6)
for name, n_a in imb_war.groupby("model")["audio_tokens"].first().items():
    want = int(name.rsplit("audio", 1)[1]) if "-audio" in name else (n_audio if name == model else None)
    assert want is None or n_a == want, (name, n_a)
assert set(fig3c_models) | set(missing) == set(variants)
print("all checks passed")

# %% tags=[]
summary = {"acc_subset": float(prof["correct"].mean()), "n_failures": int(fail.sum()),
           "answers_follow_audio": float(follows_audio.mean()), "answers_follow_face": float(follows_video.mean()),
           f"uap_{target}_middle": float(prof["uap_middle"][target].mean()), f"uap_{source}_middle": float(prof["uap_middle"][source].mean()),
           "premise_total": list(premise["total"]), "premise_per_token": list(premise["per_token"]),
           "visual_tokens": n_visual, "audio_tokens": n_audio, "middle_layers": mid,
           "biased_heads_at_tau": n_biased, "tau_shown": float(tau_show), "delta_h": float(d_h),
           "c_median": float(np.median(c_seen)), "c_max": float(c_seen.max()), "touched_ar": touch_ar,
           "touched_mirrored": touch_m, "mirrored_delta": list(mirror_delta), "taus": taus_all,
           "pai_mass_before": float(pai_mass[:, 0].mean()), "pai_mass_after": float(pai_mass[:, 1].mean()),
           "zero_shot_war_pooled": list(zs_ci), "variants_loaded": list(fig3c_models), "variants_missing": missing,
           "verdicts": verdicts, "exercise_checked": checked}
for r_ in table7.itertuples():
    summary[f"war_{r_.config}_{r_.subset}"] = float(r_.war)
    summary[f"avg_{r_.config}_{r_.subset}"] = float(r_.avg)
for cfg_name, r_ in wide8.iterrows():
    summary[f"overall_{cfg_name}"] = float(r_["overall"])
parameters = {"model": model, "dataset": dataset, "split": split, "subset": subset, "subsets": subsets, "eps": eps,
              "n_samples": n_samples, "n_eval": n_eval, "n_sweep": n_sweep, "sample_index": sample_index, "tau": tau, "taus": taus,
              "tau_quantiles": tau_quantiles, "source": source, "target": target, "pai_alpha": pai_alpha,
              "pai_layers": pai_layers, "variants": variants, "n_boot": n_boot, "seed": seed, "device": device,
              "out_dir": out_dir}
results = {"notebook": "05_ar", "parameters": parameters, "summary": summary,
           "uap_per_layer": uap_layers.reset_index().to_dict(orient="list"),
           "imbalance_attention": imb_att.to_dict(orient="list"), "imbalance_war": imb_war.to_dict(orient="list"),
           "table7": table7.to_dict(orient="list"), "table8": wide8.reset_index().to_dict(orient="list"),
           "table8_long": table8.to_dict(orient="list")}
pathlib.Path(out_dir).mkdir(parents=True, exist_ok=True)
pathlib.Path(out_dir, "results.json").write_text(json.dumps(results, indent=1, default=float))
{k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()}
