# %% [markdown]
# # 01 · NTS: noise-suppressed token selection, step by step
#
# NTS (WETR, seed 000, Sec. 3.3) sets the selection factor $m_i$ of the token-usage weight
# $w_i = m_i \gamma_i$. The quantity it wants is the conditional information gain
# $\Delta_i^* = I(z_e; x_i \mid \mathbf{x}_{-i})$ (Eq. 3); a frozen model cannot compute it, so NTS ranks
# tokens by a proxy read from the model's own attention at one trigger layer $\ell$, keeps the top
# fraction of each modality and removes the rest from every later layer.
#
# **What you will see**, on the embedded emolens-tiny model and the emotion world (whose generator
# records which visual patches and subtitle words carry the emotion):
#
# 1. the two query spans $Q_{pos}$ / $Q_{neg}$ as text and as token positions in the sequence;
# 2. one forward pass, and from its captured attention at layer $\ell$: $a_{I_{pos}\to i}$,
#    $a_{I_{neg}\to i}$, the contrastive utility $d_i$ (Eq. 4), the cross-modal term and the score
#    $s_i$ (Eq. 5), top-$p$ per modality (Eq. 6) and $m_i$ (Eq. 7), each next to the cell that computes it;
# 3. why the cross-modal term of the *content* tokens is exactly zero in this causal layout;
# 4. the kept tokens drawn over the frames with the ground-truth cue tokens, and the mask in action
#    (dropped keys get exactly zero attention after $\ell$);
# 5. averaged over samples: selection precision / recall against the ground truth and WAR for random,
#    query, $Q_{pos}$ and contrastive scoring (WETR Table 2), the deletion test (Fig. 4) against a
#    size-matched random control, and a sweep of the visual keep ratio $p_v$ (Fig. 7).

# %% tags=["parameters"]
model: str = "emolens-tiny"  # model name or local checkpoint folder
dataset: str = "world-mer"  # dataset manifest (world view or local benchmark)
split: str = "test"  # dataset split
n_samples: int = 64  # samples for the deletion test and the keep-ratio sweep
n_eval: int = 128  # samples for the scoring-strategy comparison (WETR Table 2)
sample_index: int = 3  # which sample to walk through in detail
eps: float = 0.0  # world noise level (0..7), world datasets only
layer: int = -1  # NTS trigger layer l (-1: auto, round(n_layers * 9/36))
p_v: float = 0.03  # visual keep ratio p_v (Eq. 6; the paper's value)
p_t: float = 0.2  # subtitle-content keep ratio p_t (Eq. 6; the paper's value)
norm: str = "minmax"  # Norm of Eq. 4/5: minmax | zscore | none
cross_modal: bool = True  # add Eq. 5's cross-modal support term
p_v_grid: list[float] = [0.03, 0.1, 0.25, 0.5, 1.0]  # visual keep ratios of the sweep (WETR Fig. 7)
deletion_p_v: list[float] = [0.03, 0.25]  # visual keep ratios at which the deletion test runs (WETR Fig. 4)
n_random: int = 2  # random draws of the size-matched control in the deletion test
seed: int = 0  # seed of the random-selection baseline and the random deletion control
device: str = "auto"  # auto | cpu | cuda
out_dir: str = "../runs/notebooks/01_nts"  # where figures and results.json go

# %%
import json
import pathlib

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display

import emolens
from emolens.compat import quiet_third_party_deprecations
from emolens import metrics, plots, widgets
from emolens.analysis import wetr
from emolens.answers import read_answers
from emolens.data import load_dataset
from emolens.evaluate import evaluate
from emolens.intervene import Capture
from emolens.methods import Task, get_method
from emolens.methods.common import fine_prompts
from emolens.methods.nts import (contrastive_utility, cross_modal_support, keep_count, normalize_scores,
                                 selection_mask, selection_score, span_attention, top_p)
quiet_third_party_deprecations()  # upstream deprecation notices are for developers (README: the lock)

torch.manual_seed(seed)
np.random.seed(seed)
lm = emolens.load_model(model, device=device)
world = {"eps": eps} if dataset.startswith("world") else {}
ds = load_dataset(dataset, split=split, limit=max(n_samples, n_eval), **world)
task = Task.from_dataset(ds)
samples = [ds[i] for i in range(len(ds))]
nts_params = {"layer": layer, "p_v": p_v, "p_t": p_t, "norm": norm, "cross_modal": cross_modal, "seed": seed}
nts = get_method("nts", **nts_params)
l = nts.trigger_layers(lm.num_layers)[0]
print(f"{lm.family}: {lm.num_layers} layers, trigger layer l = {l} | {dataset}/{split}: {len(samples)} samples")
print("labels:", task.labels)

# %% [markdown]
# ## 1 · The two query spans $Q_{pos}$ and $Q_{neg}$
#
# NTS inserts two short instruction spans into the prompt: an emotion-seeking $Q_{pos}$ and an
# emotion-irrelevant $Q_{neg}$ that "can be answered without emotion" (it asks about the background and
# the objects, the world's nuisance $\varepsilon$). Their token positions $\mathcal{I}_{pos}$,
# $\mathcal{I}_{neg} \subseteq \mathcal{I}_{inst}$ are located by the processor from character offsets;
# they sit after the visual tokens and the subtitle, so their rows can attend every token NTS scores.

# %%
s = samples[sample_index]
prompt = fine_prompts([s], task, contrastive=True)[0]  # NTS's prompt: the query + Q_pos/Q_neg
batch = lm.encode([s], [prompt])
lay = batch.layouts[0]
tokens = wetr.token_table(lm, batch)
for name in ("q_pos", "q_neg"):
    pos = lay.span(name)
    print(f"{name}: positions {pos[0]}..{pos[-1]} ({pos.size} tokens): {' '.join(tokens.loc[pos, 'token'])!r}")
print(f"sequence: {lay.seq_len} tokens | visual I_v {lay.visual[0]}..{lay.visual[-1]} ({lay.visual.size}), "
      f"audio {lay.audio.tolist()}, subtitle content I_con {lay.content[0]}..{lay.content[-1]} ({lay.content.size}), "
      f"instruction I_inst {lay.instruction.size} tokens, answer row {lay.answer}")
print("subtitle:", s.subtitle, "| gold label:", s.label)
wetr.layout_runs(tokens).set_index("positions")

# %% [markdown]
# ## 2 · One forward pass, captured at the trigger layer
#
# `NTS.forward` installs one plan: `Capture` ops record, at layer $\ell$, the head-resolved attention
# rows of $\mathcal{I}_{pos}$, $\mathcal{I}_{neg}$ and of every visual and content token (for Eq. 5);
# an `AfterLayer` callback at $\ell$ computes $s_i$, picks $\mathcal{K}$ and masks the dropped keys from
# layer $\ell+1$ on, all inside the same forward. We add a capture of the answer row at layers
# $\ell \dots L-1$ to watch the mask act.

# %%
watch = Capture(layers=list(range(l, lm.num_layers)), rows="answer", name="answer")
logits, trace = nts.forward(lm, batch, [s], extra_ops=[watch])
pd.DataFrame([{"capture": n, "layer": ll, "probs [B, H, R, K]": tuple(c.probs.shape)}
              for (n, ll), c in sorted(trace.captures.items()) if ll == l])

# %% [markdown]
# ## 3 · Span attention $a_{\mathcal{I}\to i}^{(\ell)}$ (the input of Eq. 4)
#
# With head-aggregated attention $\mathbf{A}^{(\ell)}$ (mean over the $H$ query heads),
#
# $$a_{\mathcal{I}\to i}^{(\ell)} = \frac{1}{H\,|\mathcal{I}|}\sum_{h}\sum_{q\in\mathcal{I}} \mathbf{A}^{(\ell)}_{h,q,i}.$$
#
# Below: how each span's attention mass splits over the token groups, then $a_{pos}$ and $a_{neg}$ over
# the visual tokens (each frame is cut into 16 patches; cyan dashed boxes: the ground-truth cue tokens).

# %%
P_pos, _ = wetr.capture_rows(trace, "q_pos", l)
P_neg, _ = wetr.capture_rows(trace, "q_neg", l)
a_pos, a_neg = span_attention(P_pos), span_attention(P_neg)
print(f"q_pos rows: {tuple(P_pos.shape)} (heads, rows, keys); q_neg rows: {tuple(P_neg.shape)}")
pd.DataFrame({g: {"a_pos mass": a_pos[getattr(lay, g)].sum(), "a_neg mass": a_neg[getattr(lay, g)].sum()}
              for g in ("visual", "audio", "content", "instruction")}).round(4)

# %%
fig, axes = plt.subplots(2, s.frames.shape[0], figsize=(5.4, 6.2), squeeze=False)
plots.overlay_tokens(s, lay, values=a_pos[lay.visual], title="a_pos", ax_row=axes[0])
plots.overlay_tokens(s, lay, values=a_neg[lay.visual], title="a_neg", ax_row=axes[1])
_ = plots.save(fig, out_dir, "span_attention_visual")

# %% [markdown]
# ## 4 · Contrastive utility $d_i$ (Eq. 4)
#
# $$d_i = \mathrm{Norm}\left(a_{\mathcal{I}_{pos}\to i}^{(\ell)} - a_{\mathcal{I}_{neg}\to i}^{(\ell)}\right)$$
#
# The difference cancels attention both queries share (prompt-induced, $\varepsilon$-driven); Norm
# (min-max by default) runs over one modality's candidates, the same set top-$p$ ranks within.

# %%
d_v = contrastive_utility(a_pos[lay.visual], a_neg[lay.visual], norm)
d_c = contrastive_utility(a_pos[lay.content], a_neg[lay.content], norm)
words = tokens.loc[lay.content, "token"].tolist()
content = pd.DataFrame({"word": words, "cue (ground truth)": lay.cue_content, "a_pos": a_pos[lay.content],
                        "a_neg": a_neg[lay.content], "d_i": d_c}, index=pd.Index(lay.content, name="position"))
print(f"visual d_i: min {d_v.min():.3f}, max {d_v.max():.3f}, at the cue tokens {d_v[lay.cue_visual].mean():.3f} "
      f"vs elsewhere {d_v[~lay.cue_visual].mean():.3f} (means)")
content.round(4)

# %% [markdown]
# ## 5 · The cross-modal term of Eq. 5, and why it vanishes for content tokens
#
# $$s_i = d_i + \begin{cases}\mathrm{Norm}\left(\frac{1}{|\mathcal{I}_{con}|}\sum_{q\in\mathcal{I}_{con}}\mathbf{A}^{(\ell)}_{q,i}\right) & i\in\mathcal{I}_v\\[4pt]
# \mathrm{Norm}\left(\frac{1}{|\mathcal{I}_v|}\sum_{q\in\mathcal{I}_v}\mathbf{A}^{(\ell)}_{q,i}\right) & i\in\mathcal{I}_{con}\end{cases}$$
#
# For a visual token the support comes from the subtitle rows attending it. For a content token it would
# come from the *visual* rows attending it, but in a causal decoder a row $q$ only attends keys
# $k \le q$, and here every visual position precedes every subtitle position (the layout is
# `<bos> <image>… <audio> Subtitle: words… <sep> prompt…`, as in WETR's backbones). The softmax of a
# visual row puts probability exactly $0$ on every content key (its score is $-\infty$ before the
# softmax), so the mean is $0$ and $\mathrm{Norm}(0)=0$: content tokens are ranked by $d_i$ alone. The
# cell computes the term from the captured rows rather than assuming it.

# %%
P_vc, rows = wetr.capture_rows(trace, "vc", l)
rows_v, rows_c = np.isin(rows, lay.visual), np.isin(rows, lay.content)
x_v_raw = cross_modal_support(P_vc[:, rows_c], lay.visual, raw=True)    # content rows -> visual keys
x_c_raw = cross_modal_support(P_vc[:, rows_v], lay.content, raw=True)   # visual rows -> content keys
x_v, x_c = normalize_scores(x_v_raw, norm), normalize_scores(x_c_raw, norm)
print(f"last visual position {lay.visual.max()} < first content position {lay.content.min()}: "
      f"{bool(lay.visual.max() < lay.content.min())}")
print(f"visual rows -> content keys: max mean attention = {float(x_c_raw.max())} (Norm -> {float(x_c.max())})")
print(f"content rows -> visual keys: mean attention in [{x_v_raw.min():.4f}, {x_v_raw.max():.4f}]")

# %% [markdown]
# ## 6 · Score $s_i$, top-$p$ per modality (Eq. 6) and the selection factor $m_i$ (Eq. 7)
#
# $$\mathcal{K}_v = \mathrm{TopP}(\{s_i\}_{i\in\mathcal{I}_v}, p_v),\quad
# \mathcal{K}_{con} = \mathrm{TopP}(\{s_j\}_{j\in\mathcal{I}_{con}}, p_t),\quad
# m_i = \mathbb{1}[i \in \mathcal{K}_v\cup\mathcal{K}_{con}\cup\mathcal{I}_{inst}]$$
#
# TopP keeps $\max(1, \lceil p\,n\rceil)$ tokens of a modality with $n$ tokens: with the paper's
# $p_v = 0.03$ and 32 visual tokens that is **one** visual token. Audio tokens are always kept (Eq. 7 has
# no audio term). The last line compares this step-by-step $m$ with the one the method computed inside
# the forward.

# %%
s_v, s_c = selection_score(d_v, x_v), selection_score(d_c, x_c)
K_v = lay.visual[top_p(s_v, p_v)]
K_con = lay.content[top_p(s_c, p_t)]
m = selection_mask(lay, K_v, K_con)
content["s_i"], content["kept (m_i)"] = s_c, m[lay.content]
print(f"keep counts: |K_v| = {K_v.size} = max(1, ceil({p_v} * {lay.visual.size})) = {keep_count(lay.visual.size, p_v)}; "
      f"|K_con| = {K_con.size} = max(1, ceil({p_t} * {lay.content.size})) = {keep_count(lay.content.size, p_t)}")
print(f"kept visual token(s) {K_v.tolist()} are cue tokens: {lay.cue_visual[np.isin(lay.visual, K_v)].tolist()}")
print(f"m_i = 1 for {int(m.sum())} of {m.size} tokens; same as the method's decision: "
      f"{np.array_equal(m, trace.decisions['admitted'][0])}")
content.round(4)

# %%
fig = plots.overlay_tokens(s, lay, values=s_v, selected=m[lay.visual], title="s_i, kept")
_ = plots.save(fig, out_dir, "selection_overlay")
print("subtitle (kept words in [brackets], ground-truth cue words marked *):")
print(" ".join((f"[{w}]" if k else w) + ("*" if c else "") for w, k, c in zip(words, m[lay.content], lay.cue_content)))

# %% [markdown]
# ## 7 · The mask in action
#
# From layer $\ell+1$ on, no token attends a dropped key: the answer row's attention on the dropped
# tokens is exactly zero, while at layer $\ell$ (before the decision) it is not.

# %%
dropped = torch.as_tensor(~m)
mask_view = pd.DataFrame([{"layer": ll, "mass on dropped keys": float(trace.get("answer", ll).probs[0, :, 0][:, dropped].sum(-1).mean()),
                           "max on a dropped key": float(trace.get("answer", ll).probs[0, :, 0][:, dropped].max()),
                           "mass on kept visual + content": float(trace.get("answer", ll).probs[0, :, 0][:, torch.as_tensor(np.r_[K_v, K_con])].sum(-1).mean())}
                          for ll in range(l, lm.num_layers)]).set_index("layer")
mask_view.round(5)

# %% [markdown]
# ## 8 · Which scoring finds the cues? (WETR Table 2)
#
# The same keep ratios, four scoring functions: **random** (i.i.d. uniform scores), **query**
# (attention of the task question span alone), **$Q_{pos}$** (attention of $Q_{pos}$ alone) and
# **contrastive** (Eq. 4, NTS). The attention-based ones keep Eq. 5's cross-modal term, so they differ
# only in $d_i$. Because the world knows the cue tokens, we also score the *selection itself*:
# precision / recall of the kept visual tokens against the ground truth (chance precision = the cue
# share of the visual tokens). Zero-shot (no selection) is the reference.

# %%
strategies = {"random": "random-select", "query": "query-select", "Q_pos": "qpos-select", "contrastive (NTS)": "nts"}
res = {"zero-shot": evaluate(lm, ds, "zero-shot", limit=n_eval, seed=seed, progress=False)}
for name, meth in strategies.items():
    hp = {k: v for k, v in nts_params.items() if meth != "random-select" or k in ("layer", "p_v", "p_t", "seed")}
    res[name] = evaluate(lm, ds, meth, hp, limit=n_eval, seed=seed, progress=False)
eval_layouts = lm.encode(samples[:n_eval], fine_prompts(samples[:n_eval], task, contrastive=True)).layouts
chance = float(np.mean([x.cue_visual.mean() for x in eval_layouts]))
table2 = pd.DataFrame([{"strategy": k, "WAR": r["metrics"]["war"], "UAR": r["metrics"]["uar"], "F1": r["metrics"]["f1"],
                        "precision": r.get("selection", {}).get("precision", np.nan),
                        "recall": r.get("selection", {}).get("recall", np.nan)} for k, r in res.items()]).set_index("strategy")
print(f"n = {n_eval} samples; chance precision (cue share of visual tokens) = {chance:.4f}")
table2.round(4)

# %%
gold = [p["gold"] for p in res["zero-shot"]["predictions"]]
pred = {k: [p["label"] for p in r["predictions"]] for k, r in res.items()}
boot = {other: metrics.paired_bootstrap_delta(gold, pred["contrastive (NTS)"], pred[other], "war", n=1000, seed=seed)
        for other in ("zero-shot", "random", "Q_pos")}
lines = [f"- NTS minus {k}: WAR delta {d:+.4f}, 95% paired-bootstrap interval [{lo:+.4f}, {hi:+.4f}]"
         for k, (d, lo, hi) in boot.items()]
lines.append(f"- selection precision: NTS {table2.loc['contrastive (NTS)', 'precision']:.4f}, "
             f"random {table2.loc['random', 'precision']:.4f}, chance {chance:.4f}")
display(Markdown("**Measured on this checkpoint** (an interval that contains 0 means no difference at this n):\n\n"
                 + "\n".join(lines)))
tidy = table2.reset_index().melt(id_vars="strategy", value_vars=["WAR", "F1", "precision"], var_name="metric")
fig = plots.bars(tidy, "strategy", "value", hue="metric", title=f"{dataset}: scoring strategies (n={n_eval})", ylim=(0, 1))
fig.axes[0].axhline(chance, color="k", ls=":", lw=1, label="chance precision")
fig.axes[0].legend(loc="center left", bbox_to_anchor=(1, 0.5))
fig.tight_layout()
_ = plots.save(fig, out_dir, "table2_strategies")

# %% [markdown]
# ## 9 · Deletion test (WETR Fig. 4), with a size-matched random control
#
# WETR removes the NTS-selected tokens and keeps all others. We do the same with the frozen model
# (a key mask from layer 0: no token attends them, exactly like deleting them) and, as a control, remove
# as many random tokens of the same modalities (`metrics.matched_random_mask`, averaged over
# `n_random` draws). If the selection is decision-critical, removing it must cost more than the control.
# At the paper's $p_v$ only one visual token is selected, so the test also runs at the wider ratios in
# `deletion_p_v`. Besides WAR (which saturates when the model is nearly always right) we report the
# mean probability of the gold label, $p_{gold}$, and a paired bootstrap of its difference between the
# two removals (per sample, random draws averaged).

# %%
dele = pd.concat([wetr.deletion_test(lm, samples[:n_samples], task, get_method("nts", **{**nts_params, "p_v": pv}),
                                    n_random=n_random, seed=seed).assign(p_v=pv) for pv in deletion_p_v], ignore_index=True)
fig4 = dele.groupby(["p_v", "condition"]).agg(WAR=("correct", "mean"), p_gold=("p_gold", "mean"),
                                             visual_removed=("n_visual", "mean"), content_removed=("n_content", "mean"))
mean_of = lambda t, x: float(np.mean(x))
lines, deletion = [], {}
for pv in deletion_p_v:
    f = fig4.loc[pv]
    per = dele[dele.p_v == pv].groupby(["condition", "sample"])["p_gold"].mean()
    d, lo, hi = metrics.paired_bootstrap_delta(np.zeros(len(per["full"])), per["remove random"].values,
                                               per["remove selected"].values, mean_of, n=1000, seed=seed)
    deletion[pv] = {"war_drop_selected": metrics.deletion_drop(f.loc["full", "WAR"], f.loc["remove selected", "WAR"]),
                    "war_drop_random": metrics.deletion_drop(f.loc["full", "WAR"], f.loc["remove random", "WAR"]),
                    "pgold_drop_selected": metrics.deletion_drop(f.loc["full", "p_gold"], f.loc["remove selected", "p_gold"]),
                    "pgold_drop_random": metrics.deletion_drop(f.loc["full", "p_gold"], f.loc["remove random", "p_gold"]),
                    "pgold_selected_minus_random_drop": d}
    x = deletion[pv]
    lines.append(f"- p_v = {pv:g} ({f.loc['remove selected', 'visual_removed']:.2f} visual + "
                 f"{f.loc['remove selected', 'content_removed']:.2f} content tokens removed per sample): WAR drop "
                 f"{x['war_drop_selected']:+.4f} (selected) vs {x['war_drop_random']:+.4f} (random); p_gold drop "
                 f"{x['pgold_drop_selected']:+.4f} vs {x['pgold_drop_random']:+.4f}; extra p_gold drop of the selected set "
                 f"{d:+.4f}, 95% interval [{lo:+.4f}, {hi:+.4f}]")
display(Markdown(f"**Measured** (n = {n_samples}):\n\n" + "\n".join(lines)))
fig = plots.bars(fig4.reset_index(), "p_v", "p_gold", hue="condition", title=f"deletion test: gold-label probability (n={n_samples})", ylim=(0, 1))
fig.axes[0].legend(loc="center left", bbox_to_anchor=(1, 0.5))
fig.tight_layout()
_ = plots.save(fig, out_dir, "deletion_test")
fig4.round(4)

# %% [markdown]
# ## 10 · Keep-ratio sweep (WETR Fig. 7)
#
# NTS at several visual keep ratios $p_v$ ($p_t$ fixed). Small $p_v$ keeps few visual tokens (precision
# can be high, recall is capped at $\lceil p_v n\rceil/\#\text{cues}$); $p_v = 1$ keeps every visual token
# (recall 1, precision = chance) and only the subtitle is filtered.

# %%
sweep = []
for pv in p_v_grid:
    r = evaluate(lm, ds, "nts", {**nts_params, "p_v": pv}, limit=n_samples, seed=seed, progress=False)
    sel = r.get("selection", {})
    sweep.append({"p_v": pv, "kept visual": float(np.mean([p["extra"]["k_visual"] for p in r["predictions"]])),
                  "WAR": r["metrics"]["war"], "F1": r["metrics"]["f1"],
                  "precision": sel.get("precision", np.nan), "recall": sel.get("recall", np.nan)})
sweep = pd.DataFrame(sweep)
tidy = sweep.melt(id_vars="p_v", value_vars=["WAR", "F1", "precision", "recall"], var_name="metric")
fig = plots.lines(tidy, "p_v", "value", hue="metric", title=f"NTS keep-ratio sweep (p_t = {p_t}, n = {n_samples})")
fig.axes[0].set_xscale("log")
fig.axes[0].legend(loc="center left", bbox_to_anchor=(1, 0.5))
fig.tight_layout()
_ = plots.save(fig, out_dir, "keep_ratio_sweep")
sweep.round(4)


# %% [markdown]
# ## 11 · Explore: the keep ratios
#
# The scores $s_i$ do not depend on $p_v$, $p_t$; only the cut does. Move the sliders and press *Run*
# to see which tokens enter $\mathcal{K}$ as the ratio grows (green: kept; cyan dashed: cue tokens), and
# how the answer for this sample changes. (Inert when the notebook runs headless.)

# %%
# NBVAL_IGNORE_OUTPUT
def show_selection(p_v=p_v, p_t=p_t):
    meth = get_method("nts", **{**nts_params, "p_v": p_v, "p_t": p_t})
    lg, tr = meth.forward(lm, batch, [s], keep_captures=False)
    adm = tr.decisions["admitted"][0]
    ans = read_answers(lg, batch.prompts, lm.option_token_ids)[0]
    print(f"kept {int(adm[lay.visual].sum())} visual, {int(adm[lay.content].sum())} content | "
          f"answer {ans.label} (gold {s.label}), p = {ans.option_probs[ans.letter]:.3f}")
    print(" ".join(f"[{w}]" if k else w for w, k in zip(words, adm[lay.content])))
    plots.overlay_tokens(s, lay, values=s_v, selected=adm[lay.visual], title=f"p_v={p_v}")
    plt.show()

widgets.explorer(show_selection, p_v=sorted(set(p_v_grid) | {p_v}), p_t=[0.2, 0.4, 0.6, 1.0])

# %% [markdown]
# ## Checks that fail loudly
#
# Properties that must hold whatever the checkpoint's accuracy:
#
# * the step-by-step $m_i$ equals the method's own decision; instruction and audio tokens are kept;
# * every strategy keeps exactly $\max(1, \lceil p\,n\rceil)$ tokens per modality on every sample;
# * after the trigger layer the answer row gives exactly $0$ attention to dropped keys (rows still sum to 1);
# * the content tokens' cross-modal term is exactly $0$ (visual before subtitle), here and on every
#   evaluated sample;
# * the deletion control removes as many tokens per modality as NTS selected, on every sample;
# * the sweep keeps more visual tokens as $p_v$ grows, and $p_v = 1$ keeps all of them (recall 1).

# %%
assert np.array_equal(m, trace.decisions["admitted"][0]), "step-by-step m_i differs from the method's"
assert m[lay.instruction].all() and m[lay.audio].all(), "instruction / audio tokens must always be kept"
assert K_v.size == keep_count(lay.visual.size, p_v) and K_con.size == keep_count(lay.content.size, p_t)
for name in strategies:
    for p in res[name]["predictions"]:
        ex = p["extra"]
        assert ex["k_visual"] == keep_count(ex["n_visual"], p_v) and ex["k_content"] == keep_count(ex["n_content"], p_t), (name, ex)
for ll in range(l + 1, lm.num_layers):
    row = trace.get("answer", ll).probs[0, :, 0]
    assert float(row[:, dropped].abs().max()) == 0.0, f"dropped keys attended at layer {ll}"
    assert torch.allclose(row.sum(-1), torch.ones(row.shape[0], device=row.device), atol=1e-5)
assert lay.visual.max() < lay.content.min() and float(x_c_raw.max()) == 0.0
assert all(t["cross_content_max"] == 0.0 for p in res["contrastive (NTS)"]["predictions"] for t in p["extra"]["nts"])
for pv, dv in dele.groupby("p_v"):
    sel_counts = dv[dv.condition == "remove selected"].set_index("sample")[["n_visual", "n_content"]]
    for rep, g in dv[dv.condition == "remove random"].groupby("rep"):
        assert g.set_index("sample")[["n_visual", "n_content"]].equals(sel_counts), f"random control {pv}/{rep} not size-matched"
assert sweep["kept visual"].is_monotonic_increasing
if 1.0 in p_v_grid:
    assert sweep.set_index("p_v").loc[1.0, "recall"] == 1.0
print("all checks passed")

# %%
summary = {"trigger_layer": l, "k_visual": int(K_v.size), "k_content": int(K_con.size),
           "chance_precision": chance,
           **{f"war_{k.split(' ')[0].lower()}": float(v) for k, v in table2["WAR"].items()},
           **{f"precision_{k.split(' ')[0].lower()}": float(v) for k, v in table2["precision"].dropna().items()},
           **{f"recall_{k.split(' ')[0].lower()}": float(v) for k, v in table2["recall"].dropna().items()},
           **{f"deletion_pv{pv:g}_{k}": float(v) for pv, x in deletion.items() for k, v in x.items()},
           **{f"sweep_war_pv{pv:g}": float(w) for pv, w in zip(sweep["p_v"], sweep["WAR"])}}
results = {"notebook": "01_nts",
           "parameters": {"model": model, "dataset": dataset, "split": split, "n_samples": n_samples, "n_eval": n_eval,
                          "sample_index": sample_index, "eps": eps, "layer": layer, "p_v": p_v, "p_t": p_t, "norm": norm,
                          "cross_modal": cross_modal, "p_v_grid": p_v_grid, "deletion_p_v": deletion_p_v, "n_random": n_random, "seed": seed,
                          "device": device, "out_dir": out_dir},
           "summary": summary, "table2": table2.reset_index().to_dict(orient="list"),
           "deletion": fig4.reset_index().to_dict(orient="list"), "sweep": sweep.to_dict(orient="list")}
pathlib.Path(out_dir).mkdir(parents=True, exist_ok=True)
pathlib.Path(out_dir, "results.json").write_text(json.dumps(results, indent=1))
{k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}
