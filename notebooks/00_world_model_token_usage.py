# %% [markdown]
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
# 1. one world sample: its frames cut into visual tokens, the tokens that truly carry the emotion
#    (the face glyph's patches), the subtitle words that carry it, the prosody vector;
# 2. what the frozen model attends to at the answer position, layer by layer and token group by group;
# 3. whether that attention finds the ground-truth cue tokens more than chance;
# 4. the lever itself: setting $m_i = 0$ for the cue tokens versus for as many random visual tokens.

# %% tags=["parameters"]
model: str = "emolens-tiny"  # model name or local checkpoint folder
dataset: str = "world-mer"  # dataset manifest (world view or local benchmark)
split: str = "test"  # dataset split
n_samples: int = 96  # samples for the averaged analyses
sample_index: int = 3  # which sample to draw in detail
eps: float = 0.0  # world noise level (0..7), world datasets only
seed: int = 0  # seed for the random-token control
device: str = "auto"  # auto | cpu | cuda
out_dir: str = "../runs/notebooks/00_world_model_token_usage"  # where figures and results.json go

# %%
import numpy as np
import pandas as pd
import torch
import emolens
from emolens.compat import quiet_third_party_deprecations
from emolens import plots, prompts
from emolens.analysis import usage
from emolens.data import load_dataset
from emolens.methods import Task
quiet_third_party_deprecations()  # upstream deprecation notices are for developers (README: the lock)

lm = emolens.load_model(model, device=device)
ds = load_dataset(dataset, split=split, limit=n_samples, **({"eps": eps} if dataset.startswith("world") else {}))
task = Task.from_dataset(ds)
samples = [ds[i] for i in range(len(ds))]
print(f"{lm.family}: {lm.num_layers} layers | {dataset}/{split}: {len(samples)} samples, labels {task.labels}")

# %% [markdown]
# ## 1 · One sample of the world, and its ground truth
#
# Each frame is cut into 8×8-pixel patches, one visual token each. Cyan dashed boxes: the tokens that
# contain the speaker's face glyph, whose mouth, brows and eyes encode $z_e$ (the ground truth the
# world records). Decoy faces of another colour, clutter and objects are $\varepsilon_v$.

# %%
s = samples[sample_index]
prompt = prompts.fine_query(task.labels)
batch = lm.encode([s], [prompt])
lay = batch.layouts[0]
print("label:", s.label, "| by modality:", s.labels_by_modality)
words = s.subtitle.split()
print("subtitle:", " ".join(f"[{w}]" if i in (s.subtitle_cue_words or []) else w for i, w in enumerate(words)))
print(f"tokens: {lay.visual.size} visual ({int(lay.cue_visual.sum())} carry the cue), {lay.audio.size} audio, "
      f"{lay.content.size} subtitle content, {lay.instruction.size} instruction")
fig = plots.overlay_tokens(s, lay, title=s.label)
plots.save(fig, out_dir, "sample_ground_truth")

# %% [markdown]
# ## 2 · What the frozen model attends to at the answer position
#
# One forward pass with a `Capture` plan records the softmax probabilities of the answer row (the
# position whose next-token logits give the answer letter) at every layer, head-resolved, without
# materialising any full attention matrix. Below: head-averaged mass per token group and layer.

# %%
batch, rows, logits = usage.answer_attention(lm, [s], [prompt])
per_layer = pd.DataFrame([{"layer": l, **usage.group_mass(r.mean(1)[0].cpu().numpy(), batch.layouts[0])}
                          for l, r in rows.items()]).set_index("layer")
fig = plots.attention_heatmap(per_layer.T.values, xlabels=list(per_layer.index), ylabels=list(per_layer.columns),
                              title="answer-row attention mass by token group (this sample)")
plots.save(fig, out_dir, "group_mass_heatmap")
per_layer.round(3)

# %%
mid = lm.num_layers // 2
row = rows[mid].mean(1)[0].cpu().numpy()
fig = plots.overlay_tokens(s, batch.layouts[0], values=row[batch.layouts[0].visual], title=f"layer {mid} attention")
plots.save(fig, out_dir, "visual_attention_overlay")

# %% [markdown]
# ## 3 · Does the model's attention find the cue tokens?
#
# Averaged over samples: the share of the answer row's *visual* attention that lands on ground-truth
# cue tokens, against the share uniform attention would give (#cue / #visual).

# %%
prof = usage.usage_profile(lm, samples, [prompts.fine_query(task.labels) for _ in samples])
by_layer = prof.groupby("layer")[["visual", "audio", "content", "instruction", "cue_share", "cue_uniform"]].mean()
fig = plots.layer_profile({"cue share of visual attention": by_layer["cue_share"].values,
                           "uniform baseline": by_layer["cue_uniform"].values}, ylabel="share",
                          title="attention on the emotion glyph vs chance")
plots.save(fig, out_dir, "cue_share_by_layer")
by_layer.round(3)

# %% [markdown]
# ## 4 · The lever: $m_i = 0$ for the cue tokens vs for random visual tokens
#
# $m_i$ is applied as a key mask from layer 0 (the token is excluded from every attention of the
# other tokens — exactly like removing it). If the model relies on the glyph, removing the cue tokens
# must hurt far more than removing as many random visual tokens.

# %%
from emolens.answers import read_answers, answer_logits
from emolens.intervene import Plan, intervene

rng = np.random.default_rng(seed)
def accuracy(select=None):
    hits = []
    for i in range(0, len(samples), 16):
        ss = samples[i:i + 16]
        b = lm.encode(ss, [prompts.fine_query(task.labels) for _ in ss])
        if select is None:
            lg = answer_logits(lm.model, b)
        else:
            with intervene(lm.model, b.layouts, Plan([usage.mask_group_plan(b.layouts, select)])):
                lg = answer_logits(lm.model, b)
        hits += [a.label == x.label for a, x in zip(read_answers(lg, b.prompts, lm.option_token_ids), ss)]
    return float(np.mean(hits))

def random_like_cue(lay):
    m = np.zeros(lay.visual.size, bool)
    m[rng.choice(lay.visual.size, int(lay.cue_visual.sum()), replace=False)] = True
    return m

acc = {"all tokens (w_i = 1)": accuracy(),
       "m_i = 0 on cue tokens": accuracy(lambda lay: lay.cue_visual),
       "m_i = 0 on as many random visual tokens": accuracy(random_like_cue)}
df = pd.DataFrame({"condition": list(acc), "accuracy": list(acc.values())})
fig = plots.bars(df, "condition", "accuracy", title=f"{dataset}: accuracy when tokens are removed", ylim=(0, 1))
plots.save(fig, out_dir, "lever_demo")
df.round(4)

# %% [markdown]
# ## Checks that fail loudly
#
# * attention rows are distributions over the keys (sum to 1 at every layer);
# * the four token groups partition the non-pad sequence;
# * the model uses the glyph: removing the cue tokens costs more accuracy than removing as many random
#   visual tokens (if this ever fails, the premise of the collection fails and you must know).

# %%
for l, r in rows.items():
    assert torch.allclose(r.sum(-1), torch.ones_like(r.sum(-1)), atol=1e-5), l
lay = batch.layouts[0]
parts = np.sort(np.concatenate([lay.visual, lay.audio, lay.content, lay.instruction]))
assert np.array_equal(parts, lay.valid)
drop_cue = acc["all tokens (w_i = 1)"] - acc["m_i = 0 on cue tokens"]
drop_rand = acc["all tokens (w_i = 1)"] - acc["m_i = 0 on as many random visual tokens"]
assert drop_cue > drop_rand, (drop_cue, drop_rand)
print(f"removing cue tokens costs {drop_cue:.3f} accuracy, random tokens {drop_rand:.3f}")

# %%
import json, pathlib
summary = {"acc_full": acc["all tokens (w_i = 1)"], "acc_no_cue": acc["m_i = 0 on cue tokens"],
           "acc_no_random": acc["m_i = 0 on as many random visual tokens"],
           "cue_share_mid": float(by_layer["cue_share"].iloc[mid]), "cue_uniform": float(by_layer["cue_uniform"].mean())}
results = {"notebook": "00_world_model_token_usage", "parameters": {"model": model, "dataset": dataset, "split": split,
           "n_samples": n_samples, "eps": eps, "seed": seed}, "summary": summary,
           "by_layer": by_layer.reset_index().to_dict(orient="list")}
pathlib.Path(out_dir).mkdir(parents=True, exist_ok=True)
pathlib.Path(out_dir, "results.json").write_text(json.dumps(results, indent=1))
{k: round(v, 4) for k, v in summary.items()}
