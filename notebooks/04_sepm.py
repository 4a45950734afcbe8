# %% [markdown]
# # 04 · SEPM: confidence-guided coarse-to-fine inference and Focus-on-Emotion token dropping
#
# SEPM (seed 001) sharpens a frozen MLLM's emotion perception with two forwards and no training
# (Algorithm 1):
#
# * **Stage 1 (coarse).** The coarse query $Q_c$ ("A. positive B. negative", prefixed by the
#   Focus-on-Emotion prompt "Please focus on emotion.") gives the valence $\hat{\mathcal E}$ (Eq. 1),
#   the vocabulary softmax $p$ (Eq. 3) and the confidence
#   $\mathcal C = [(p_A-\mu)^2 + (p_B-\mu)^2]/2$ (Eq. 4). The same forward's final-layer attention from
#   the FoE tokens to the visual tokens (Eq. 5-6) gives each visual token a significance $\bar P[j]$ (Eq. 8).
# * **Confidence assessment.** $\mathcal C > \alpha$: the fine query keeps only the predicted valence's
#   categories; otherwise every category plus an ambiguity description.
# * **Stage 2 (fine).** The $k = \lfloor \beta N_v \rfloor$ least significant visual tokens
#   $\mathcal R = \mathrm{argmin}_k(\bar P)$ are removed (Eq. 9-10) and the fine query is answered (Eq. 2).
#
# **What you will see** on emolens-tiny and the EmoSet view of the emotion world (one 32×32 image = 16
# visual tokens, 8 Mikels emotions, 4 positive / 4 negative; the world records which patches carry the
# emotion glyph):
#
# 1. stage 1 on the model's real logits: $p_A$, $p_B$ and $\mathcal C$ recomputed from the vocabulary softmax;
# 2. whether $\mathcal C$ behaves like a confidence: coarse accuracy per $\mathcal C$ bin (SEPM Fig. 5);
# 3. the branch each sample takes and the fine / ambiguous queries;
# 4. the drop matrix $P$ and significance $\bar P$ on the final layer's attention, and the dropped tokens
#    drawn over the image next to the ground-truth glyph (Fig. 4);
# 5. stage 2, with a check that the dropped tokens receive exactly zero attention;
# 6. the dropping strategies FoE / query / random (Table 2), the CCI / FP / VTA ablation (Table 3),
#    the $\alpha$ and $\beta$ sensitivity (Fig. 3) and per-class accuracy (Fig. 6).
#
# All accuracies are measured here, on this model, with the sample counts below; none is claimed in
# advance. A component that does not help on this model is a finding and is shown as one.

# %% tags=["parameters"]
model: str = "emolens-tiny"  # model name or local checkpoint folder
dataset: str = "world-emoset"  # dataset manifest with positive/negative valence groups (world view or local)
split: str = "test"  # dataset split
n_samples: int = 128  # samples for the stage-1 analyses (confidence vs coarse accuracy, Fig. 4 picks)
n_eval: int = 128  # samples for every accuracy comparison (Tables 2-3, Figs. 3 and 6)
sample_index: int = 0  # which sample to walk through in detail
eps: float = 0.0  # world noise level (0..7), world datasets only
alpha: float = 0.1  # confidence threshold on C (Eq. 4; C lies in [0, 0.25]); SEPM default 0.1
beta: float = 0.2  # dropping ratio: floor(beta N_v) tokens dropped (Eq. 9); SEPM default 0.2
strategy: str = "foe"  # dropping strategy of the main run: foe | query | random (Table 2)
alphas: list[float] = [0.0, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25]  # alpha sweep (Fig. 3)
betas: list[float] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]  # beta sweep (Fig. 3)
table2_betas: list[float] = [0.1, 0.2]  # drop rates of the strategy comparison (Table 2)
fig4_betas: list[float] = [0.2, 0.4]  # drop rates drawn over the images (Fig. 4)
conf_bins: list[float] = [0.0, 0.01, 0.05, 0.1, 0.15, 0.2, 0.25]  # bin edges of C for confidence vs accuracy (Fig. 5)
seed: int = 0  # seed of the random dropping strategy and of the bootstrap
device: str = "auto"  # auto | cpu | cuda
out_dir: str = "../runs/notebooks/04_sepm"  # where figures and results.json go

# %%
import json
import pathlib

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

import emolens
from emolens import plots, prompts
from emolens.answers import answer_logits
from emolens.compat import quiet_third_party_deprecations, tolerances
from emolens.data import load_dataset
from emolens.evaluate import evaluate, metrics_table
from emolens.intervene import Capture, KeyMask, Plan, intervene
from emolens.methods import Task, sepm
from emolens.metrics import paired_bootstrap_delta
from emolens.analysis.sepm import SepmLab, cue_survival, occlude
from emolens.widgets import explorer
quiet_third_party_deprecations()  # upstream deprecation notices are for developers (README: the lock)

torch.manual_seed(seed)
np.random.seed(seed)
lm = emolens.load_model(model, device=device)
world = {"eps": eps} if dataset.startswith("world") else {}
ds = load_dataset(dataset, split=split, limit=max(n_samples, n_eval), **world)
task = Task.from_dataset(ds)
samples = [ds[i] for i in range(len(ds))]
valence = {lab: g for g, labs in task.valence_groups.items() for lab in labs}
i0 = min(sample_index, n_samples - 1)
print(f"{lm.family}: {lm.num_layers} layers | {dataset}/{split}: {len(samples)} samples")
print("positive (PEC):", task.valence_groups["positive"])
print("negative (NEC):", task.valence_groups["negative"])

# %% [markdown]
# ## 1 · Stage 1: the coarse query with Focus-on-Emotion (Eq. 1, 3, 4)
#
# `sepm.run_stage1` runs $Q_c$ once over the samples. Below, Eq. 3 and Eq. 4 are recomputed by hand
# from the stage-1 logits $z$ at the answer position:
#
# $$p = \mathrm{softmax}(z) \ \text{(whole vocabulary)}, \qquad
# \mu = \frac{p_A + p_B}{2}, \qquad \mathcal C = \frac{(p_A-\mu)^2 + (p_B-\mu)^2}{2} = \frac{(p_A - p_B)^2}{4}.$$
#
# Because $p$ is the whole-vocabulary softmax (not renormalised over A/B), $p_A + p_B \le 1$ and
# $\mathcal C \in [0, 1/4]$; $\alpha \ge 0.25$ would send every sample to the ambiguous branch.

# %%
s1 = sepm.run_stage1(lm, samples[:n_samples], task, alpha=alpha, rows="foe")
print("Q_c:", s1.batch.prompts[i0].text)

z = s1.logits.double()                                    # [N, V] next-token logits (Eq. 3's z)
p = torch.softmax(z, dim=-1)                              # Eq. (3): softmax over the whole vocabulary
ids = lm.option_token_ids(["A", "B"])                     # every token id spelling each letter
p_A = p[:, ids["A"]].sum(-1).cpu().numpy()
p_B = p[:, ids["B"]].sum(-1).cpu().numpy()
mu = (p_A + p_B) / 2
C = ((p_A - mu) ** 2 + (p_B - mu) ** 2) / 2               # Eq. (4)

gold = [x.label for x in samples[:n_samples]]
gold_val = np.array([valence.get(g) for g in gold])
coarse_ok = np.array(s1.coarse) == gold_val               # is the coarse answer (Eq. 1) the gold valence?
stage1 = pd.DataFrame({"gold": gold, "gold valence": gold_val, "coarse Ê": s1.coarse, "p_A": p_A, "p_B": p_B,
                       "p_A + p_B": p_A + p_B, "C (Eq. 4, here)": C, "C (library)": s1.confidence,
                       "branch": s1.branch})
print(f"coarse accuracy {coarse_ok.mean():.3f} on {n_samples} samples | C: min {C.min():.4f}, "
      f"median {np.median(C):.4f}, max {C.max():.4f}")
stage1.head(8).round(4)

# %% [markdown]
# ## 2 · Is $\mathcal C$ a confidence? Coarse accuracy per $\mathcal C$ bin (SEPM Fig. 5)
#
# SEPM's Fig. 5 shows coarse accuracy rising with the variance $\mathcal C$, and $\alpha$ cutting off the
# low-accuracy region. Here: the same on this model, with the number of samples in each bin (bins with
# few samples are noisy; an empty bin has no bar).

# %%
df5 = pd.DataFrame({"C": C, "coarse correct": coarse_ok})
bin_names = [f"{a:g}-{b:g}" for a, b in zip(conf_bins[:-1], conf_bins[1:])]
df5["C bin"] = pd.cut(df5["C"], conf_bins, labels=bin_names, include_lowest=True)
conf_table = (df5.groupby("C bin", observed=False)["coarse correct"].agg(["size", "mean"])
              .rename(columns={"size": "n", "mean": "coarse accuracy"}).reset_index())
conf_table["C bin"] = [f"{b}\n(n={n})" for b, n in zip(conf_table["C bin"], conf_table["n"])]
fig = plots.bars(conf_table, "C bin", "coarse accuracy", title=f"coarse accuracy by confidence C (n={n_samples})",
                 ylim=(0, 1.05))
cut = np.searchsorted(conf_bins, alpha) - 0.5            # the boundary at alpha between bars
fig.axes[0].axvline(cut, color="crimson", ls="--", label=f"alpha = {alpha}")
fig.axes[0].legend(loc="lower right")
plots.save(fig, out_dir, "confidence_vs_coarse_accuracy")
fig = plots.histogram(C, bins=25, title="distribution of C over the samples", xlabel="C (Eq. 4)")
fig.axes[0].axvline(alpha, color="crimson", ls="--")
plots.save(fig, out_dir, "confidence_histogram")
conf_table.round(4)

# %% [markdown]
# ## 3 · Confidence assessment: which branch each sample takes
#
# $\mathcal C > \alpha$: the fine query $Q_f$ lists only the coarse answer's categories ($Q_{PEC}$ or
# $Q_{NEC}$); otherwise $Q_{ambi}$ lists every category and adds the ambiguity description. With FP on,
# the FoE prefix stays in $Q_f$ (module docstring of `emolens.methods.sepm`, choice 7).

# %%
for br in ("positive", "ambiguous"):
    print(f"Q_f ({br}):", sepm.fine_prompt(task, br).text)
branch_table = (pd.DataFrame({"branch": s1.branch, "coarse correct": coarse_ok})
                .groupby("branch")["coarse correct"].agg(["size", "mean"])
                .rename(columns={"size": "n", "mean": "coarse accuracy"}))
branch_table.round(4)

# %% [markdown]
# ## 4 · Which visual tokens matter to "Please focus on emotion."? (Eq. 5-8)
#
# For sample `sample_index`: the final layer's attention (Eq. 5) of the FoE rows $i$ over the visual keys
# $j$ is the drop matrix $P[i, j] = \mathcal A(i, j)$ (Eq. 6; heads averaged, raw probabilities), and
# $\bar P[j] = \frac{1}{L_t}\sum_i P[i, j]$ (Eq. 8). Captured here in a separate single-sample forward and
# compared with what stage 1 computed inside its batch.

# %%
s = samples[i0]
b1 = lm.encode([s], [prompts.coarse_query(task.valence_groups, foe=True)])
lay = b1.layouts[0]
last = lm.num_layers - 1
with intervene(lm.model, b1.layouts, Plan([Capture(layers=[last], rows="foe", name="foe")])) as tr:
    answer_logits(lm.model, b1)
A = tr.get("foe", last).sample(0)                              # Eq. (5): [H, L_t, K] final-layer FoE rows
P = sepm.drop_matrix(A, np.arange(A.shape[1]), lay.visual)     # Eq. (6): [L_t, N_v], heads averaged
Pbar = sepm.significance(P)                                    # Eq. (8): [N_v]
foe_words = lm.processor.tokenizer.convert_ids_to_tokens(b1.inputs["input_ids"][0, lay.span("foe")].tolist())
cue = np.asarray(lay.cue_visual, bool)
print(f"{s.label}: L_t = {P.shape[0]} FoE tokens {foe_words}, N_v = {P.shape[1]} visual tokens")
print(f"share of P̄ on the {cue.sum()} glyph tokens: {Pbar[cue].sum() / Pbar.sum():.3f} "
      f"(uniform would give {cue.mean():.3f})")
gap = np.abs(Pbar - s1.significance[i0]).max()
print("P̄ of this single-sample forward equals stage 1's batched P̄:", "yes (max gap < 1e-6)" if gap < 1e-6 else f"max gap {gap:.1e}")
fig = plots.attention_heatmap(P, xlabels=[f"v{j}" + ("*" if cue[j] else "") for j in range(P.shape[1])],
                              ylabels=foe_words, title="drop matrix P (final layer; * = glyph token)")
plots.save(fig, out_dir, "drop_matrix")

# %% [markdown]
# ## 5 · The dropping map $\mathcal R$ and the refined visual set $\mathcal V'$ (Eq. 9-10; Fig. 4)
#
# $k = \lfloor \beta N_v \rfloor$, $\mathcal R = \mathrm{argmin}_k(\bar P)$ and $\mathcal V' = \{v_j : j \notin \mathcal R\}$.
# The figure mirrors SEPM Fig. 4 on samples of different emotions: the image with $\bar P$ as heat, then
# the image with the dropped tokens occluded at each drop rate of `fig4_betas`. Cyan dashed boxes: the
# ground-truth glyph tokens, which SEPM's paper cannot show; a good significance keeps them.

# %%
k = sepm.n_dropped(lay.visual.size, beta)                      # Eq. (9): k = floor(beta N_v)
R = sepm.dropping_map(Pbar, beta)                              # Eq. (9): R = argmin_k(P̄)
V_kept = sepm.refined_visual_set(lay.visual.size, R)           # Eq. (10): V'
print(f"beta = {beta}: k = {k} of N_v = {lay.visual.size}; R = {R.tolist()}; glyph tokens in R: "
      f"{int(cue[R].sum())} of {int(cue.sum())}")

show = [i0]
for i, x in enumerate(samples[:n_samples]):
    if len(show) < 4 and x.label not in {samples[j].label for j in show}:
        show.append(i)
fig, axes = plt.subplots(len(show), 1 + len(fig4_betas), figsize=(2.6 * (1 + len(fig4_betas)), 2.7 * len(show)),
                         squeeze=False)
for r, i in enumerate(show):
    lay_i, pb = s1.batch.layouts[i], s1.significance[i]
    plots.overlay_tokens(samples[i], lay_i, values=pb, ax_row=[axes[r, 0]], title=f"{samples[i].label}: P̄")
    for c, b_ in enumerate(fig4_betas):
        R_i = sepm.dropping_map(pb, b_)
        plots.overlay_tokens(occlude(samples[i], lay_i, R_i), lay_i, ax_row=[axes[r, c + 1]],
                             title=f"beta={b_}: {len(R_i)} dropped")
plots.save(fig, out_dir, "dropped_tokens_over_images")

# %% [markdown]
# ## 6 · Stage 2: the fine query on $D'$ (Eq. 10, 2), and the whole method
#
# Dropping is removal: stage 2 runs under a key mask from the first decoder layer on, so no token ever
# attends a dropped visual token. First, on a batch of samples, the library's own stage 2
# (`SEPM.stage1` → `SEPM.dropping` → `SEPM.stage2`) and the same forward repeated with the answer row's
# attention recorded at every layer: the dropped keys must get exactly 0.

# %%
main_params = {"alpha": alpha, "beta": beta, "strategy": strategy, "seed": seed}
m = sepm.SEPM(**main_params)
sub = samples[:min(16, n_samples)]
st1 = m.stage1(lm, sub, task)
drop = m.dropping(sub, st1, [l.visual.size for l in st1.batch.layouts])
ans2, logits2, b2 = m.stage2(lm, sub, task, st1.branch, drop)
plan = Plan([KeyMask(from_layer=0, keep=sepm.keep_matrix(b2.layouts, drop)), Capture(layers="all", rows="answer", name="ans")])
with intervene(lm.model, b2.layouts, plan) as tr2:
    logits2_rec = answer_logits(lm.model, b2).float().cpu()
on_dropped, on_kept = [], []
for l in range(lm.num_layers):
    probs = tr2.get("ans", l).probs[:, :, 0]                    # [B, H, K] answer row
    for b, l_b in enumerate(b2.layouts):
        vis = probs[b][:, torch.as_tensor(l_b.visual)]
        kept = torch.ones(l_b.visual.size, dtype=torch.bool)
        kept[torch.as_tensor(drop[b], dtype=torch.long)] = False
        on_dropped.append(float(vis[:, ~kept].abs().max()) if (~kept).any() else 0.0)
        on_kept.append(float(vis[:, kept].sum(-1).mean()))
print(f"{sum(len(d) for d in drop)} tokens dropped over {len(sub)} samples; max attention on a dropped token "
      f"(any layer, head): {max(on_dropped):.1e}; mean mass on kept visual tokens: {np.mean(on_kept):.3f}")
gap2 = float((logits2_rec - logits2).abs().max())
print("the recorded forward reproduces stage 2's logits:", "yes (max gap < 1e-6)" if gap2 < 1e-6 else f"max gap {gap2:.1e}")

# %% [markdown]
# Now the whole method through `evaluate` on `n_eval` samples, against the zero-shot baseline (the
# same fine query over all labels, one forward). The paired bootstrap gives a 95% interval for the
# accuracy difference on the same samples: a gain is only supported when the whole interval is above 0.

# %%
res_zs = evaluate(lm, ds, "zero-shot", limit=n_eval, seed=seed, progress=False)
res_sepm = evaluate(lm, ds, "sepm", main_params, limit=n_eval, seed=seed, progress=False)
print(metrics_table(res_zs))
print(metrics_table(res_sepm))
y = [q["gold"] for q in res_sepm["predictions"]]
pred_sepm = [q["label"] for q in res_sepm["predictions"]]
pred_zs = [q["label"] for q in res_zs["predictions"]]
delta, lo, hi = paired_bootstrap_delta(y, pred_sepm, pred_zs, n=1000, seed=seed)
verdict = "supported" if lo > 0 else ("reversed" if hi < 0 else "not distinguishable from 0 at this n")
print(f"SEPM - zero-shot accuracy: {delta:+.4f}, 95% CI [{lo:+.4f}, {hi:+.4f}] -> {verdict}")

# %% [markdown]
# For the tables and sweeps below, `SepmLab` (in `emolens.analysis.sepm`) runs many configurations
# on the same `n_eval` samples with the library's pieces, reusing stage 1 across configurations and
# caching each (sample, $Q_f$, $\mathcal R$) stage-2 answer. Its default configuration must reproduce
# `evaluate`'s SEPM predictions exactly (checked at the end).

# %%
lab = SepmLab(lm, samples[:n_eval], task)
main = lab.run(**main_params)
print(f"SepmLab, default configuration: accuracy {main['accuracy']:.4f} "
      f"(evaluate: {res_sepm['metrics']['war']:.4f}); forwards so far: {lab.forwards}")

# %% [markdown]
# ## 7 · Which tokens to drop? FoE vs query vs random (SEPM Table 2)
#
# Random: $k$ tokens drawn uniformly (seeded per sample). Query-related: significance from the
# attention rows of the question sentence instead of the FoE prefix. FoE-related: SEPM. Besides
# accuracy, the world lets us score the choice itself: the share of each sample's glyph tokens that
# survive, and the share of dropped tokens that are glyph tokens (random dropping hits glyph tokens at
# the rate `cue_rate`).

# %%
rows = []
for st in ("random", "query", "foe"):
    for b_ in table2_betas:
        r = lab.run(alpha=alpha, beta=b_, strategy=st, seed=seed)
        rows.append({"strategy": st, "beta": b_, "accuracy": r["accuracy"], **cue_survival(r["dropped"], r["cue_visual"])})
table2 = pd.DataFrame(rows)
fig = plots.bars(table2.assign(beta=table2["beta"].astype(str)), "strategy", "accuracy", hue="beta",
                 title=f"dropping strategies (n={n_eval})", ylim=(0, 1))
plots.save(fig, out_dir, "table2_strategies")
table2.round(4)

# %% [markdown]
# ## 8 · Ablation of CCI, FP and VTA (SEPM Table 3)
#
# Rows as in the paper. With all three off SEPM is the zero-shot fine query in SEPM's printed wording; on the
# shared prompt (`prompt_spans=True`) it is exactly zero-shot (checked below). VTA is not
# studied alone, as in the paper (it needs stage 1's attention).

# %%
ablation = {"none": dict(cci=False, fp=False, vta=False), "CCI": dict(cci=True, fp=False, vta=False),
            "FP": dict(cci=False, fp=True, vta=False), "CCI+FP": dict(cci=True, fp=True, vta=False),
            "CCI+FP+VTA": dict(cci=True, fp=True, vta=True)}
runs3 = {name: lab.run(alpha=alpha, beta=beta, strategy=strategy, seed=seed, **sw) for name, sw in ablation.items()}
table3 = pd.DataFrame([{"components": name, "CCI": sw["cci"], "FP": sw["fp"], "VTA": sw["vta"],
                        "accuracy": runs3[name]["accuracy"],
                        "delta vs none": runs3[name]["accuracy"] - runs3["none"]["accuracy"]}
                       for name, sw in ablation.items()])
fig = plots.bars(table3, "components", "accuracy", title=f"ablation (n={n_eval})", ylim=(0, 1))
plots.save(fig, out_dir, "table3_ablation")
table3.round(4)

# %% [markdown]
# Where does CCI's effect come from? The same `n_eval` samples, split by the branch each one took in the
# main run: SEPM's and zero-shot's accuracy on exactly those samples. In the positive / negative
# branches $Q_f$ lists only four categories and re-letters them (in $Q_{NEC}$, "A" is the first negative
# category), so a branch that loses accuracy although its coarse answers are right points at the fine
# query, not at stage 1.

# %%
gold_arr = np.array(main["gold"])
by_branch = pd.DataFrame({"branch": main["branch"], "coarse correct": [c == valence.get(g) for c, g in zip(main["coarse"], main["gold"])],
                          "sepm": np.array(main["label"]) == gold_arr, "zero-shot": np.array(pred_zs) == gold_arr})
by_branch.groupby("branch").agg(n=("sepm", "size"), coarse_accuracy=("coarse correct", "mean"),
                                sepm_accuracy=("sepm", "mean"), zero_shot_accuracy=("zero-shot", "mean")).round(4)

# %% [markdown]
# ## 9 · Sensitivity to $\alpha$ and $\beta$ (SEPM Fig. 3)
#
# One hyperparameter varies, the other stays at its default. For $\alpha$ the share of samples sent to
# the confident branch is shown too: $\alpha = 0$ trusts nearly every coarse answer, $\alpha = 0.25$ none.

# %%
sweep_a = pd.DataFrame([{"alpha": a, "accuracy": (r := lab.run(alpha=a, beta=beta, strategy=strategy, seed=seed))["accuracy"],
                         "confident share": float(np.mean([b != "ambiguous" for b in r["branch"]]))} for a in alphas])
sweep_b = pd.DataFrame([{"beta": b_, "accuracy": (r := lab.run(alpha=alpha, beta=b_, strategy=strategy, seed=seed))["accuracy"],
                         "k": int(np.max(r["k"])), **cue_survival(r["dropped"], r["cue_visual"])} for b_ in betas])
fig = plots.lines(sweep_a.melt(id_vars="alpha", value_vars=["accuracy", "confident share"]), "alpha", "value",
                  hue="variable", title=f"alpha sensitivity (beta={beta}, n={n_eval})")
plots.save(fig, out_dir, "sensitivity_alpha")
fig = plots.lines(sweep_b.melt(id_vars="beta", value_vars=["accuracy", "cue_kept"]), "beta", "value",
                  hue="variable", title=f"beta sensitivity (alpha={alpha}, n={n_eval})")
plots.save(fig, out_dir, "sensitivity_beta")
print(f"forwards run by SepmLab for all tables and sweeps: {lab.forwards}")
display(sweep_a.round(4))
sweep_b.round(4)

# %% [markdown]
# ## 10 · Per-class accuracy (SEPM Fig. 6)
#
# Recall per class for zero-shot and SEPM (left: positive categories, right: negative), with each
# method's overall accuracy as a dashed line. SEPM's paper notes that gains in one category can come
# with losses in a semantically close one.

# %%
per_class = pd.DataFrame([{"class": c, "method": name, "accuracy": res["metrics"]["per_class_recall"][c],
                           "support": res["metrics"]["support"][c]}
                          for name, res in (("zero-shot", res_zs), ("sepm", res_sepm)) for c in task.labels])
fig = plots.bars(per_class, "class", "accuracy", hue="method", title=f"per-class accuracy (n={n_eval})", ylim=(0, 1.05))
for name, res, col in (("zero-shot", res_zs, "C0"), ("sepm", res_sepm, "C1")):
    fig.axes[0].axhline(res["metrics"]["war"], color=col, ls="--", lw=1)
fig.axes[0].tick_params(axis="x", rotation=30)
plots.save(fig, out_dir, "per_class_accuracy")
per_class.pivot(index="class", columns="method", values="accuracy").loc[list(task.labels)].round(4)


# %% [markdown]
# ## 11 · Explore $\alpha$ and $\beta$
#
# In JupyterLab: pick $\alpha$ and $\beta$ and press Run. You will see the accuracy and branch split on the
# `n_eval` samples (cached forwards make this quick) and, for the detailed sample, which tokens FoE
# dropping removes. Lowering $\alpha$ trusts more coarse answers; raising $\beta$ removes more tokens, and
# at some point the glyph itself (cyan boxes) goes. Headless runs show only the controls.

# %%
# NBVAL_IGNORE_OUTPUT
def explore(alpha=alpha, beta=beta):
    r = lab.run(alpha=alpha, beta=beta, strategy=strategy, seed=seed)
    conf_share = np.mean([b != "ambiguous" for b in r["branch"]])
    print(f"alpha={alpha}, beta={beta}: accuracy {r['accuracy']:.3f} (zero-shot {res_zs['metrics']['war']:.3f}), "
          f"confident branch {conf_share:.2f}, glyph tokens kept {cue_survival(r['dropped'], r['cue_visual'])['cue_kept']:.2f}")
    lay_i = s1.batch.layouts[i0]
    R_i = sepm.dropping_map(s1.significance[i0], beta)
    plots.overlay_tokens(occlude(samples[i0], lay_i, R_i), lay_i, title=f"beta={beta}")
    plt.show()

explorer(explore, alpha=alphas, beta=betas)

# %% [markdown]
# ## Checks that fail loudly
#
# Structural truths of SEPM on this model's real tensors (no claim that SEPM wins):
#
# * $\mathcal C$ is Eq. 4 of the whole-vocabulary softmax of the stage-1 logits, and lies in $[0, 1/4]$;
# * each sample's branch follows $\mathcal C > \alpha$ (Algorithm 1), and its $Q_f$ options are the branch's categories;
# * exactly $\lfloor \beta N_v \rfloor$ tokens are dropped, and they are the $\mathrm{argmin}_k$ of $\bar P$;
# * $\bar P$ recomputed in a separate forward equals stage 1's;
# * dropped tokens get zero attention in stage 2 at every layer and head, and the recorded forward is stage 2;
# * the random strategy drops the same number of tokens;
# * `SepmLab` reproduces `evaluate`'s SEPM predictions, and SEPM with CCI, FP and VTA off is zero-shot.

# %%
assert np.allclose(C, s1.confidence, atol=1e-9), "C is not Eq. 4 of the vocabulary softmax"
assert np.allclose(p_A, s1.p_a, **tolerances(lm.dtype)) and np.allclose(p_B, s1.p_b, **tolerances(lm.dtype))
assert np.all(C >= 0) and np.all(C <= 0.25 + 1e-12) and np.all(p_A + p_B <= 1 + 1e-9)
assert s1.branch == [c if Ci > alpha else "ambiguous" for c, Ci in zip(s1.coarse, s1.confidence)]
preds = res_sepm["predictions"]
for q, g in zip(preds, main["gold"]):
    ex = q["extra"]
    assert ex["branch"] == (ex["coarse"] if ex["confidence"] > alpha else "ambiguous"), ex
    assert ex["options"] == sepm.fine_labels(task, ex["branch"]), ex
for d, pb, nv in zip(main["dropped"], main["significance"], main["n_visual"]):
    assert len(d) == int(np.floor(beta * nv + 1e-9)), (len(d), nv)
    if strategy != "random" and len(d):
        kept = np.setdiff1d(np.arange(nv), d)
        assert pb[d].max() <= pb[kept].min(), "dropped tokens are not the argmin of P̄"
assert np.allclose(Pbar, s1.significance[i0], **tolerances(lm.dtype, scale=10)), "P̄ differs between two forwards"
assert set(R.tolist()).isdisjoint(V_kept.tolist()) and len(R) + len(V_kept) == lay.visual.size
assert max(on_dropped) == 0.0, "a dropped token received attention in stage 2"
assert torch.allclose(logits2_rec, logits2, **tolerances(lm.dtype))
rnd = lab.run(alpha=alpha, beta=beta, strategy="random", seed=seed)
assert [len(d) for d in rnd["dropped"]] == main["k"]
assert main["label"] == pred_sepm, "SepmLab does not reproduce SEPM.predict"
assert main["branch"] == [q["extra"]["branch"] for q in preds]
assert main["dropped"] == [q["extra"]["dropped"] for q in preds]
zs_shared = evaluate(lm, ds, "zero-shot", {"prompt_spans": True}, limit=n_eval, seed=seed, progress=False)
assert lab.run(cci=False, fp=False, vta=False, prompt_spans=True)["label"] == [q["label"] for q in zs_shared["predictions"]], \
    "SEPM without CCI/FP/VTA is not zero-shot on the shared prompt"
print("all checks passed")

# %%
summary = {
    "acc_zero_shot": res_zs["metrics"]["war"], "acc_sepm": res_sepm["metrics"]["war"],
    "uar_zero_shot": res_zs["metrics"]["uar"], "uar_sepm": res_sepm["metrics"]["uar"],
    "delta_acc": delta, "delta_ci_lo": lo, "delta_ci_hi": hi,
    "coarse_acc": float(coarse_ok.mean()), "confident_share": float(np.mean([b != "ambiguous" for b in s1.branch])),
    "coarse_acc_confident": float(coarse_ok[np.array(s1.branch) != "ambiguous"].mean()) if any(b != "ambiguous" for b in s1.branch) else float("nan"),
    "coarse_acc_ambiguous": float(coarse_ok[np.array(s1.branch) == "ambiguous"].mean()) if "ambiguous" in s1.branch else float("nan"),
    "C_median": float(np.median(C)),
    **{f"acc_{r.strategy}_b{r.beta}": float(r.accuracy) for r in table2.itertuples()},
    **{f"cue_kept_{r.strategy}_b{r.beta}": float(r.cue_kept) for r in table2.itertuples()},
    **{f"acc_ablation_{r.components}": float(r.accuracy) for r in table3.itertuples()},
    "best_alpha": float(sweep_a.loc[sweep_a["accuracy"].idxmax(), "alpha"]),
    "best_beta": float(sweep_b.loc[sweep_b["accuracy"].idxmax(), "beta"]),
    "max_attention_on_dropped": float(max(on_dropped)),
}
parameters = {"model": model, "dataset": dataset, "split": split, "n_samples": n_samples, "n_eval": n_eval,
              "sample_index": sample_index, "eps": eps, "alpha": alpha, "beta": beta, "strategy": strategy,
              "alphas": alphas, "betas": betas, "table2_betas": table2_betas, "fig4_betas": fig4_betas,
              "conf_bins": conf_bins, "seed": seed, "device": device, "out_dir": out_dir}
results = {"notebook": "04_sepm", "parameters": parameters, "summary": summary,
           "confidence_bins": conf_table.to_dict(orient="list"), "table2": table2.to_dict(orient="list"),
           "table3": table3.to_dict(orient="list"), "sweep_alpha": sweep_a.to_dict(orient="list"),
           "sweep_beta": sweep_b.to_dict(orient="list"), "per_class": per_class.to_dict(orient="list")}
pathlib.Path(out_dir).mkdir(parents=True, exist_ok=True)
pathlib.Path(out_dir, "results.json").write_text(json.dumps(results, indent=1, default=float))
{k: round(v, 4) for k, v in summary.items()}
