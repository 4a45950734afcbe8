# %% [markdown] tags=[]
# # 00 · The world-model view of token usage
#
# WETR (seed 000, Sec. 3.2) treats emotion as a latent world state $z_e$ that generates every modality,
# each with its own nuisance: $V = g_v(z_e, \varepsilon_v)$, $T = g_t(z_e, \varepsilon_t)$ (Eq. 1).
# A frozen MLLM cannot relearn its representations, so the only lever left at inference time is **token
# usage**: $w_i = m_i \, \gamma_i$ (Eq. 2), where $m_i \in \{0,1\}$ admits a token as evidence and
# $\gamma_i > 0$ scales its influence.
#
# **What you will see** on the embedded emolens-tiny model and the emotion world (whose generator we
# own, so we *know* which tokens carry $z_e$):
#
# 0. the model card: what emolens-tiny is, how it was pretrained, how well it answers zero-shot, and its
#    biases (per-modality accuracy, option order) and the papers' premises measured on it;
# 1. the world across noise levels $\varepsilon$ and across CA-MER's conflict subsets, with the prosody
#    and the subtitle of each clip;
# 2. one sample: its frames cut into visual tokens, the tokens that truly carry the emotion (the
#    speaker's face), the subtitle words that carry it;
# 3. what the frozen model attends to at the answer position, layer by layer and token group by group;
# 4. whether that attention finds the ground-truth cue tokens more than chance;
# 5. the lever itself: $m_i = 0$ for the cue tokens versus for as many random visual tokens;
#
# then **What we found**, written from this run's numbers.

# %% tags=["parameters"]
model: str = "emolens-tiny"  # model name or local checkpoint folder
dataset: str = "world-mer"  # dataset manifest (world view or local benchmark)
camer_dataset: str = "world-camer"  # CA-MER view for the conflict-subset gallery ("" skips it)
split: str = "test"  # dataset split
n_samples: int = 96  # samples for the attention profile (a description of usage, not a comparison)
n_eval: int = 300  # samples per condition of the lever comparison (cue vs random tokens removed)
sample_index: int = 3  # which sample to draw in detail and in the galleries
eps: float = -1.0  # world noise level 0..7; -1 keeps the manifest's own nuisance (world views only)
eps_grid: list[float] = [0.0, 1.0, 2.0, 3.0, 5.0, 7.0]  # noise levels of the gallery (same sample index)
seed: int = 0  # seed for the random-token control and the bootstrap
device: str = "auto"  # auto | cpu | cuda
out_dir: str = "../runs/notebooks/00_world_model_token_usage"  # where figures and results.json go

# %% tags=[]
import json, pathlib
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display
from emolens import metrics as M, plots
from emolens.analysis import usage
from emolens.analysis.setup import setup
from emolens.cache import cached_evaluate, result_ci
from emolens.data import load_dataset, load_manifest
from emolens.intervene import Plan
from emolens.methods.common import fine_prompts, no_grad_run

# eps convention of the collection: a negative eps means "the manifest's own nuisance" (nothing is passed)
eps_opt = None if eps < 0 else float(eps)
S = setup(model, dataset, split, n=max(n_samples, n_eval, sample_index + 1), eps=eps_opt, seed=seed, device=device)
lm, ds, task, samples = S
is_world = load_manifest(dataset).is_world
print(S.describe())

# %% [markdown] tags=[]
# ## 0 · The model card: what emolens-tiny is
#
# The papers study large pretrained MLLMs meeting emotion benchmarks *zero-shot*, with baselines around
# 50–65 % that fail through nuisance attention, fine-grained confusion and over-weighting of audio.
# emolens-tiny is built to live in that regime: it was pretrained on a generic question-answering mixture
# of the world (never on the benchmark prompts or a method's wording), then measured, before any method
# ran, against criteria committed in `benchmarks/preregistration.yaml`. Its card is stored with the
# checkpoint (`model_card.json`); the tables below are rendered from it, the same renderer that writes the
# README's model card.

# %% tags=[]
from emolens.models import regime

card = lm.info.get("card") or {}
has_card = "calibration" in card and "premises" in card
if has_card:
    display(Markdown(regime.markdown(card)))
else:
    print(f"{model}: no regime card stored with this checkpoint; measure one with "
          f"`emolens card --model {model} --json card.json` (the figure below is skipped)")

# %% [markdown] tags=[]
# The same numbers as a figure. Bars are zero-shot accuracy on the test split with 95 % Wilson intervals
# (n per cell from the card); the shaded bands are the preregistered target ranges, the dashed line is
# chance (or chance + 0.15, the single-modality criterion). The three premise panels are properties of
# the zero-shot model alone, each the failure one paper claims to fix.

# %% tags=[]
import textwrap
from scipy.stats import binomtest
import matplotlib.pyplot as plt

def wilson(p, n):
    """95 % Wilson interval of an accuracy p measured on n samples (scipy's binomtest)."""
    ci = binomtest(int(round(p * n)), n).proportion_ci(0.95, method="wilson")
    return ci.low, ci.high

if has_card:
    cal, pr, n_card = card["calibration"], card["premises"], int(card["n_per_cell"])
    crit = card.get("criteria") or regime.criteria(card)
    chance = cal["single_modality"]["chance"]
    panels = {
        "calibration (zero-shot WAR)": {"world-mer": cal["world-mer"]["war"], "world-emoset": cal["world-emoset"]["war"],
                                        **{f"camer {k}": v for k, v in cal["world-camer"].items()}},
        "biases (world-mer WAR)": {**{f"only {k} informative": cal["single_modality"][k] for k in ("visual", "audio", "text")},
                                   **({"options in order": cal["option_order"]["in_order"],
                                       "options shuffled": cal["option_order"]["shuffled"]} if "option_order" in cal else {})},
    }
    w, mo = pr["wetr_nuisance_mass"], pr["mosear_mid_layer_per_token"]
    premises = {"WETR: non-cue visual mass": {"wrong answers": w["wrong"], "right answers": w["right"]},
                "SEPM: accuracy (world-emoset)": {"coarse (valence)": pr["sepm_coarse"], "fine (emotion)": pr["sepm_fine"]},
                "MoSEAR: mid-layer attention per token": {"audio token": mo["audio"], "visual token": mo["visual"]}}
    fig, axes = plt.subplots(1, 5, figsize=(17, 3.6), layout="constrained",
                             gridspec_kw={"width_ratios": [1.3, 1.3, 1, 1, 1]})
    for ax, (name, vals) in zip(axes[:2], panels.items()):
        keys, v = list(vals), np.array(list(vals.values()), float)
        lo_hi = np.array([wilson(x, n_card) for x in v])
        ax.barh(np.arange(len(v)), v, xerr=np.abs(lo_hi.T - v), capsize=3, color="tab:blue", alpha=0.75)
        ax.set_yticks(np.arange(len(v)), [f"{k}  {x:.3f}" for k, x in zip(keys, v)], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("accuracy")
        ax.set_title(name, fontsize=9)
    for i, (lo_t, hi_t) in enumerate([(0.55, 0.72), (0.45, 0.65)]):  # the preregistered ranges (world-mer, world-emoset)
        axes[0].add_patch(plt.Rectangle((lo_t, i - 0.45), hi_t - lo_t, 0.9, fill=False, ec="tab:green", lw=2, zorder=4,
                                        label="preregistered target range" if i == 0 else None))
    axes[0].axvline(chance, ls="--", color="0.3", lw=1, label="chance")
    axes[1].axvline(chance + 0.15, ls="--", color="0.3", lw=1, label="chance + 0.15")
    handles = [h for ax in axes[:2] for h in ax.get_legend_handles_labels()[0]]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8)
    for ax, (name, vals) in zip(axes[2:], premises.items()):
        keys = list(vals)
        v = np.array([np.nan if x is None else x for x in vals.values()], float)
        ax.bar(np.arange(2), np.nan_to_num(v), color=["tab:red", "tab:gray"])
        ax.set_xticks(np.arange(2), keys, fontsize=8)
        for i, x in enumerate(v):
            ax.text(i, np.nan_to_num(x), "n/a" if np.isnan(x) else f"{x:.3g}", ha="center", va="bottom", fontsize=7)
        ax.set_ylim(0, 1.25 * np.nanmax(np.r_[v, 1e-9]))
        ax.set_title(textwrap.fill(name, 26), fontsize=9)
    for ax, lab in zip(axes[2:], ("attention mass", "accuracy", "attention per token")):
        ax.set_ylabel(lab, fontsize=8)
    plots.save(fig, out_dir, "model_card")
    card_rows = pd.DataFrame([{"group": g, "quantity": k, "value": x} for g, d in {**panels, **premises}.items()
                              for k, x in d.items()])
    assert not usage.overlapping_texts(fig), usage.overlapping_texts(fig)

# %% [markdown]
# ## 1 · The world across noise levels and conflict subsets
#
# The same sample index drawn at every $\varepsilon$ in `eps_grid`: the latent $z_e$, the scene and the
# speaker's face stay; the nuisance grows (texture, clutter, pixel noise, decoy faces of other
# expressions, noisier prosody, more filler words). The cyan dashed box is the true face (the cue
# pixels); the subtitle is under each frame (cue words in brackets); below, the 8 prosody features and
# the emotion they decode to (nearest prosody prototype, `usage.prosody_emotion`). Frame 0 of each clip.

# %% tags=[]
if is_world:
    eps_samples = [load_dataset(dataset, split=split, limit=sample_index + 1, eps=float(e))[sample_index]
                   for e in eps_grid]
    fig = usage.world_gallery(eps_samples, [f"eps = {e:g}" for e in eps_grid], task.labels,
                              suptitle=f"{dataset}/{split} sample {sample_index} across the noise level")
    plots.save(fig, out_dir, "gallery_eps")
    gallery_overlaps = usage.overlapping_texts(fig)
else:
    eps_samples, gallery_overlaps = [], []
    print(f"{dataset} is a local benchmark: no generator, so no noise sweep to draw")

# %% [markdown] tags=[]
# CA-MER's three conflict subsets, same sample index: in **consistent** clips face, voice and words
# agree; in **audio-aligned** clips the label follows the voice and the face shows another emotion; in
# **video-aligned** clips the label follows the face and the voice says another emotion (MoSEAR Sec. 3).
# The caption under the title says what each modality alone expresses (the world's ground truth;
# "none" = that modality carries no emotion in this clip).

# %% tags=[]
camer_samples, SUBSETS = {}, ("consistent", "audio-aligned", "video-aligned")
if camer_dataset:
    camer_samples = {sub: load_dataset(camer_dataset, split=split, subset=sub, limit=sample_index + 1,
                                       **({} if eps_opt is None else {"eps": eps_opt}))[sample_index] for sub in SUBSETS}
    caps = [" | ".join(f"{m[0]}: {x.labels_by_modality.get(m) or 'none'}" for m in ("visual", "audio", "text"))
            for x in camer_samples.values()]
    camer_labels = load_dataset(camer_dataset, split=split, limit=1).labels
    fig = usage.world_gallery(list(camer_samples.values()), list(SUBSETS), camer_labels, captions=caps,
                              suptitle=f"{camer_dataset} sample {sample_index} in each conflict subset")
    plots.save(fig, out_dir, "gallery_camer")
    gallery_overlaps += usage.overlapping_texts(fig)

# %% [markdown] tags=[]
# ## 2 · One sample of the world, and its ground truth
#
# Each frame is cut into patches, one visual token each. Cyan dashed boxes: the tokens that contain the
# speaker's face glyph, whose mouth, brows and eyes encode $z_e$ (the ground truth the world records).
# Decoy faces, clutter and objects are $\varepsilon_v$.

# %% tags=[]
s = samples[sample_index]
prompt = fine_prompts([s], task)[0]
batch = lm.encode([s], [prompt])
lay = batch.layouts[0]
print("label:", s.label, "| by modality:", s.labels_by_modality)
words = s.subtitle.split()
print("subtitle:", " ".join(f"[{w}]" if i in (s.subtitle_cue_words or []) else w for i, w in enumerate(words)))
print(f"tokens: {lay.visual.size} visual ({int(np.sum(lay.cue_visual))} carry the cue, "
      f"{100 * np.mean(lay.cue_visual):.1f} %), {lay.audio.size} audio, {lay.content.size} subtitle content, "
      f"{lay.instruction.size} instruction")
fig = plots.overlay_tokens(s, lay, title=s.label)
plots.save(fig, out_dir, "sample_ground_truth")

# %% [markdown] tags=[]
# ## 3 · What the frozen model attends to at the answer position
#
# One forward pass with a `Capture` plan records the softmax probabilities of the answer row (the
# position whose next-token logits give the answer letter) at every layer, head-resolved, without
# materialising any full attention matrix. Below: head-averaged mass per token group and layer, for this
# sample, then its visual attention at the middle layer over the frames (one colour scale for both frames).

# %% tags=[]
batch, rows, logits = usage.answer_attention(lm, [s], [prompt])
per_layer = pd.DataFrame([{"layer": l, **usage.group_mass(r.mean(1)[0].cpu().numpy(), batch.layouts[0])}
                          for l, r in rows.items()]).set_index("layer")
fig = plots.attention_heatmap(per_layer.T.values, xlabels=list(per_layer.index), ylabels=list(per_layer.columns),
                              xlabel="layer", ylabel="token group", cbar_label="answer-row attention mass",
                              title="answer-row attention mass by token group (this sample)")
plots.save(fig, out_dir, "group_mass_heatmap")
per_layer.round(3)

# %% tags=[]
mid = lm.num_layers // 2
row = rows[mid].mean(1)[0].cpu().numpy()
fig = plots.overlay_tokens(s, batch.layouts[0], values=row[batch.layouts[0].visual], title=f"layer {mid}",
                           cbar_label="answer-row attention (head mean)")
plots.save(fig, out_dir, "visual_attention_overlay")

# %% [markdown]
# ## 4 · Does the model's attention find the cue tokens?
#
# Over `n_samples` samples: the share of the answer row's *visual* attention that lands on ground-truth
# cue tokens, against the share uniform attention would give (#cue / #visual), with 95 % bootstrap bands
# over samples. Whatever is not on the cue is attention spent on $\varepsilon_v$: the nuisance WETR's
# $m_i$ is meant to remove.

# %%
prof_samples = samples[:n_samples]
prof = usage.usage_profile(lm, prof_samples, fine_prompts(prof_samples, task))
prof["nuisance_visual"] = prof["visual"] * (1 - prof["cue_share"])
by_layer = prof.groupby("layer")[["visual", "audio", "content", "instruction", "cue_share", "cue_uniform",
                                  "nuisance_visual"]].mean()

def band(col):
    out = []
    for l, g in prof.groupby("layer"):
        v = g[col].to_numpy(float)
        est, lo, hi = M.bootstrap_stat(lambda i: float(v[i].mean()), len(v), 1000, seed)
        out.append({"layer": l, "share": est, "lo": lo, "hi": hi})
    return pd.DataFrame(out)

cue_df = pd.concat([band("cue_share").assign(quantity="cue share of visual attention"),
                    band("cue_uniform").assign(quantity="uniform (#cue / #visual)")])
fig = plots.sweep_lines(cue_df, "layer", "share", "lo", "hi", hue="quantity", ylabel="share of visual attention",
                        title=f"attention on the speaker's face vs chance (n = {len(prof_samples)}, 95 % CI)")
plots.save(fig, out_dir, "cue_share_by_layer")
by_layer.round(3)

# %% [markdown]
# ## 5 · The lever: $m_i = 0$ for the cue tokens vs for random visual tokens
#
# $m_i$ is applied as a key mask from layer 0 (the token is excluded from every attention of the
# other tokens — exactly like removing it). If the model relies on the face, removing the cue tokens
# must hurt more than removing as many random visual tokens. The zero-shot reference (all tokens,
# $w_i = 1$) is the collection's cached zero-shot evaluation of the same samples (`cached_evaluate`),
# so it is the number every notebook reports for it.

# %%
rng = np.random.default_rng(seed)
ev = samples[:n_eval]
zs = cached_evaluate(lm, dataset, "zero-shot", split=split, limit=n_eval, seed=seed, batch_size=32, progress=False,
                     **({} if eps_opt is None else {"world": {"eps": eps_opt}}))
dropped = {"cue": [], "random": []}

def random_like_cue(lay):
    m = np.zeros(lay.visual.size, bool)
    m[rng.choice(lay.visual.size, int(np.sum(lay.cue_visual)), replace=False)] = True
    return m

def lever(select, name):
    preds = []
    for i in range(0, len(ev), 32):
        ss = ev[i:i + 32]
        b = lm.encode(ss, fine_prompts(ss, task))
        masks = [np.asarray(select(l), bool) for l in b.layouts]
        dropped[name] += [int(m.sum()) for m in masks]
        op = usage.mask_group_plan(b.layouts, lambda l, it=iter(masks): next(it))
        answers, _, _ = no_grad_run(lm, ss, None, plan=Plan([op]), batch=b)
        preds += [a.label for a in answers]
    return preds

gold = [x.label for x in ev]
pred = {"zero-shot (all tokens, w_i = 1)": [p["label"] for p in zs["predictions"]],
        "m_i = 0 on the cue tokens": lever(lambda l: l.cue_visual, "cue"),
        "m_i = 0 on as many random visual tokens": lever(random_like_cue, "random")}
lev = pd.DataFrame([{"condition": k, **dict(zip(("WAR", "lo", "hi"), M.bootstrap_ci(gold, p, "war", n=1000, seed=seed)))}
                    for k, p in pred.items()])
zs_ci = result_ci(zs, "war", n_boot=1000, seed=seed)
k_zs, k_cue, k_rand = pred
d_cue = M.paired_bootstrap_delta(gold, pred[k_zs], pred[k_cue], "war", n=1000, seed=seed)  # cost of removing the face
d_rand = M.paired_bootstrap_delta(gold, pred[k_zs], pred[k_rand], "war", n=1000, seed=seed)
d_lever = M.paired_bootstrap_delta(gold, pred[k_rand], pred[k_cue], "war", n=1000, seed=seed)  # cost(cue) - cost(random)
fig = plots.comparison_bars(lev.iloc[1:], "condition", "WAR", "lo", "hi", zero_shot=zs_ci, ylim=(0, 1.05), ylabel="WAR",
                            title=f"{dataset}: accuracy when tokens are removed (n = {len(ev)}, 95 % CI)")
plots.save(fig, out_dir, "lever_demo")
lever_overlaps = usage.overlapping_texts(fig)
lev.round(4)

# %% [markdown]
# ## What we found

# %%
verdict = "HELD" if d_lever[1] > 0 else ("FAILED" if d_lever[2] < 0 else "UNRESOLVED")
mid_cue = cue_df[(cue_df.quantity == "cue share of visual attention") & (cue_df.layer == mid)].iloc[0]
uni = float(by_layer["cue_uniform"].mean())
finds = "finds the face more often than chance" if mid_cue.lo > uni else (
    "attends to the face *less* than chance" if mid_cue.hi < uni else "does not find the face more than chance")
card_txt = ""
if has_card:
    ok = lambda b: "met" if b else "**not met**"  # noqa: E731
    card_txt = (f"\n\n**The model.** Zero-shot on the test split (n = {n_card} per cell) emolens-tiny answers world-mer at "
                f"{cal['world-mer']['war']:.3f} (chance {chance:.3f}) and world-emoset at {cal['world-emoset']['war']:.3f}; on "
                f"CA-MER consistent / audio-aligned / video-aligned {cal['world-camer']['consistent']:.3f} / "
                f"{cal['world-camer']['audio-aligned']:.3f} / {cal['world-camer']['video-aligned']:.3f}. Alone, each modality "
                f"gives visual {cal['single_modality']['visual']:.3f}, audio {cal['single_modality']['audio']:.3f}, text "
                f"{cal['single_modality']['text']:.3f}"
                + (f"; with the options shuffled over the letters {cal['option_order']['shuffled']:.3f} vs "
                   f"{cal['option_order']['in_order']:.3f} in order" if "option_order" in cal else "")
                + f". Premises: WETR's (nuisance mass wrong {w['wrong']} vs right {w['right']}) "
                f"{ok(crit['WETR: nuisance mass wrong > right'])}; SEPM's (coarse - fine {pr['sepm_coarse_minus_fine']:+.3f}) "
                f"{ok(crit['SEPM: coarse - fine >= 0.10'])}; MoSEAR's (audio {mo['audio']} vs visual {mo['visual']} per token) "
                f"{ok(crit['MoSEAR: mid-layer audio > visual per token'])}.")
display(Markdown(
    f"**The premise of token usage ({verdict}).** WETR's lever assumes the emotion lives in a few tokens among many "
    f"nuisance tokens, so which tokens are used ($m_i$) matters. Here {int(np.mean(dropped['cue'])):.0f} of "
    f"{lay.visual.size} visual tokens ({100 * uni:.1f} %) hold the face. Removing them moves WAR from "
    f"{zs_ci[0]:.3f} to {lev.WAR[1]:.3f} ({100 * d_cue[0]:+.1f} points lost, 95 % CI [{100 * d_cue[1]:+.1f}, "
    f"{100 * d_cue[2]:+.1f}]); removing as many random visual tokens costs {100 * d_rand[0]:+.1f} points "
    f"[{100 * d_rand[1]:+.1f}, {100 * d_rand[2]:+.1f}]. The difference, {100 * d_lever[0]:+.1f} points "
    f"[{100 * d_lever[1]:+.1f}, {100 * d_lever[2]:+.1f}] (n = {len(ev)}, paired bootstrap), "
    + ("excludes 0: the model's answer does depend on the face tokens more than on the others, so which tokens are "
       "admitted is a real lever." if verdict == "HELD" else
       "excludes 0 the wrong way: removing random tokens hurts more than removing the face, so the model does not read "
       "the emotion from the face tokens." if verdict == "FAILED" else
       "includes 0: on this model and data the face tokens are not shown to matter more than any others.")
    + f"\n\n**Where the attention goes.** At the middle layer ({mid}) {100 * mid_cue.share:.1f} % of the answer row's "
    f"visual attention lands on the face [{100 * mid_cue.lo:.1f}, {100 * mid_cue.hi:.1f}] against {100 * uni:.1f} % "
    f"for uniform attention: the model {finds}. The rest, {100 * by_layer['nuisance_visual'].iloc[mid]:.1f} % of "
    f"the whole row at that layer, is spent on non-cue visual tokens (the $\\varepsilon_v$ that NTS is meant to mask)."
    f" Across the layers the row gives visual tokens {100 * by_layer['visual'].mean():.1f} %, audio "
    f"{100 * by_layer['audio'].mean():.1f} %, subtitle words {100 * by_layer['content'].mean():.1f} % and the "
    f"instruction {100 * by_layer['instruction'].mean():.1f} % of its mass (n = {len(prof_samples)})." + card_txt))

# %% [markdown]
# ## Checks that fail loudly
#
# These hold whatever the verdict: attention rows are distributions; the four token groups partition the
# sequence; the random control removes exactly as many tokens as the cue mask, sample by sample; every
# interval contains its estimate; the cached zero-shot scored exactly these samples; the world keeps
# $z_e$ fixed across $\varepsilon$ and each CA-MER subset assigns the label the way its definition says;
# no label of the galleries or of the lever figure overlaps another.

# %%
for l, r in rows.items():
    assert torch.allclose(r.sum(-1), torch.ones_like(r.sum(-1)), atol=1e-4), l
parts = np.sort(np.concatenate([lay.visual, lay.audio, lay.content, lay.instruction]))
assert np.array_equal(parts, lay.valid)
assert dropped["cue"] == dropped["random"] and len(dropped["cue"]) == len(ev)
assert prof["cue_share"].between(0, 1).all() and (prof[["visual", "audio", "content", "instruction"]].sum(axis=1) <= 1 + 1e-4).all()
for est, lo, hi in [tuple(x) for x in lev[["WAR", "lo", "hi"]].to_numpy()] + [zs_ci, d_cue, d_rand, d_lever]:
    assert lo - 1e-9 <= est <= hi + 1e-9, (est, lo, hi)
assert [p["uid"] for p in zs["predictions"]] == [x.uid for x in ev]
assert len({x.label for x in eps_samples}) <= 1, "the same index must keep z_e across eps"
for sub, x in camer_samples.items():
    v, a = x.labels_by_modality["visual"], x.labels_by_modality["audio"]
    assert {"consistent": v == a == x.label, "audio-aligned": a == x.label != v,
            "video-aligned": v == x.label != a}[sub], (sub, x.labels_by_modality, x.label)
assert not gallery_overlaps and not lever_overlaps, (gallery_overlaps, lever_overlaps)
print(f"checks passed: removing cue tokens costs {100 * d_cue[0]:.1f} points, random tokens {100 * d_rand[0]:.1f}")

# %%
summary = {"acc_full": float(zs_ci[0]), "acc_no_cue": float(lev.WAR[1]), "acc_no_random": float(lev.WAR[2]),
           "lever_delta": float(d_lever[0]), "lever_ci_lo": float(d_lever[1]), "lever_ci_hi": float(d_lever[2]),
           "cue_share_mid": float(mid_cue.share), "cue_uniform": uni, "verdict": verdict}
results = {"notebook": "00_world_model_token_usage", "parameters": {"model": model, "dataset": dataset, "split": split,
           "n_samples": n_samples, "n_eval": n_eval, "eps": eps, "eps_grid": eps_grid, "seed": seed}, "summary": summary,
           "by_layer": by_layer.reset_index().to_dict(orient="list"),
           "model_card": card_rows.to_dict(orient="list") if has_card else None}
pathlib.Path(out_dir).mkdir(parents=True, exist_ok=True)
pathlib.Path(out_dir, "results.json").write_text(json.dumps(results, indent=1))
{k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()}
