# %% [markdown]
# # 07 · The methods on a real checkpoint and a real benchmark (GPU walkthrough)
#
# Notebooks 00-06 run on the embedded emolens-tiny model and the emotion world. This one points the
# same library at **your** checkpoint (LLaVA, Qwen2-VL, Qwen2.5-VL, Qwen3-VL or InternVL, from a local
# folder or the local Hugging Face cache) and **your** local copy of a real benchmark (EmoSet, MER2023,
# MAFW, DFEW, ... as laid out in `data_manifests/<name>.yaml`). Nothing is downloaded.
#
# **What you will see** when the weights, the dataset copy and a GPU are present:
#
# 1. a status cell that says plainly what is present and what is not;
# 2. zero-shot vs WETR vs SEPM vs AR on a slice of the split, through `emolens.evaluate` (WAR, UAR,
#    F1, latency), the same numbers `emolens eval` writes;
# 3. WETR's NTS selection (the kept visual tokens, Eq. 6) drawn over the frames;
# 4. SEPM's Focus-on-Emotion dropping map (the $k = \lfloor \beta N_v \rfloor$ least significant
#    visual tokens, Eq. 9) drawn over the frames;
# 5. MoSEAR's UAP per layer (Eq. 1) for AR's source and target groups, and how many heads AR rebalances
#    (Eq. 7-14);
# 6. `results.json` for sweeps.
#
# When something is missing (this is the case on the CPU-only machines the collection is tested on),
# the status cell says which, sets `RUN = False`, and every heavy cell prints `skipped: <reason>`.
# No result is ever faked. Set `allow_cpu = True` to run the heavy cells without a GPU (e.g. on a tiny
# checkpoint saved by `tests/hf_checkpoints.py`).

# %% tags=["parameters"]
model: str = "llava-hf/llava-1.5-7b-hf"  # local checkpoint folder or cached HF id (LLaVA, Qwen2-VL, Qwen2.5-VL, Qwen3-VL, InternVL)
dataset: str = "emoset"  # real benchmark manifest name or path (data_manifests/), e.g. emoset or mer2023
root: str = ""  # folder holding your local copy of the dataset, empty if you have none
split: str = "test"  # dataset split
n_samples: int = 32  # samples of the split evaluated (the first n of the split)
sample_index: int = 0  # which sample is drawn in detail
frames: int = 8  # frames per clip for video benchmarks
batch_size: int = 4  # samples per forward
seed: int = 0  # seed of the runs
device: str = "auto"  # auto | cpu | cuda
allow_cpu: bool = False  # run the heavy cells without a GPU (tiny checkpoints, smoke tests)
n_r: int = 0  # WETR trigger interval, 0 for a quarter of the depth (the paper: 9 of 36 layers)
p_v: float = 0.03  # NTS visual keep ratio p_v (WETR Eq. 6)
p_t: float = 0.2  # NTS subtitle-content keep ratio p_t (WETR Eq. 6)
delta: float = 4.0  # STR strength delta (WETR Eq. 11)
alpha: float = 0.1  # SEPM confidence threshold alpha (SEPM Eq. 4)
beta: float = 0.2  # SEPM dropping ratio beta (SEPM Eq. 9)
tau: float = 1.0  # AR layer-bias threshold tau (MoSEAR Eq. 7)
ar_source: str = "auto"  # AR source group, auto picks audio if the model has audio tokens, else subtitle content, else instruction
ar_target: str = "visual"  # AR target group
out_dir: str = "../runs/notebooks/07_real_checkpoint"  # where figures and results.json go

# %% [markdown]
# ## Status: GPU, weights, dataset copy
#
# Each check is guarded: a failure prints its one-line reason (the same message `emolens eval` would
# print) and the walkthrough is skipped rather than faked. The weights are only loaded when they will
# be used (a GPU is present, or `allow_cpu = True`); otherwise the checkpoint is only located.

# %%
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import emolens
from emolens.compat import quiet_third_party_deprecations
from emolens import plots
from emolens.data import load_dataset, load_manifest
from emolens.methods import Task
quiet_third_party_deprecations()  # upstream deprecation notices are for developers (README: the lock)


def short(msg):
    """A one-line reason with machine-specific folders abbreviated (so this cell's output is stable)."""
    msg = str(msg).strip().splitlines()[0] if str(msg).strip() else "error"
    try:
        from huggingface_hub import constants

        msg = msg.replace(str(constants.HF_HUB_CACHE), "$HF_HUB_CACHE")
    except ImportError:
        pass
    return msg.replace(str(Path.cwd()), ".").replace(str(Path.home()), "~")


has_gpu = torch.cuda.is_available()
use_gpu = has_gpu and device != "cpu"
missing, lm, ds = [], None, None
print("GPU:", torch.cuda.get_device_name(0) if has_gpu else "none")
if not (use_gpu or allow_cpu):
    missing.append("no GPU" if not has_gpu else f"device={device!r}")
    print("     -> the walkthrough needs a GPU; set allow_cpu = True to run it on CPU anyway")

try:
    man = load_manifest(dataset)
    opts = {"frames": frames, "audio": False} if man.is_local else {}  # these families take no audio input
    ds = load_dataset(man, split=split, root=root or None, limit=n_samples, **opts)
    first = ds[0]
    print(f"dataset: {man.name}/{split} present: {len(ds)} samples, modalities {man.modalities}, "
          f"{len(man.labels)} labels, frames {first.frames.shape[0]}")
except Exception as e:
    ds = None
    missing.append("no local dataset copy")
    print("dataset: not usable:", short(e))

if model == "emolens-tiny" or Path(os.path.expanduser(model)).is_dir():
    where = model
else:
    try:
        from emolens.models.hf import resolve_checkpoint

        where = resolve_checkpoint(model)
    except Exception as e:
        where = None
        missing.append("weights not found")
        print("weights: not found:", short(e))
if where is not None and not missing:
    try:
        lm = emolens.load_model(model, device=device)
        print(f"weights: loaded {lm.family} ({lm.num_layers} layers) on {lm.device} as {lm.dtype}")
    except Exception as e:
        lm = None
        missing.append("the model did not load")
        print("weights: present but not loadable:", short(e))
elif where is not None:
    print("weights: present (not loaded, see above)")

RUN = not missing
WHY = ", ".join(missing)
print("RUN =", RUN, "" if RUN else f"(skipped: {WHY})")

# %% [markdown]
# ## 1 · Zero-shot vs WETR vs SEPM vs AR on a slice
#
# Every method is the same `Method` object `emolens eval --method NAME --set k=v` builds, run by
# `emolens.evaluate` on the first `n_samples` samples of the split.
#
# * **WETR** (seed 000): at each trigger layer $l \bmod n_r = 0$, NTS sets $m_i$ and STR sets
#   $\gamma_i$ of $w_i = m_i \gamma_i$ (Eq. 2). On a real checkpoint `n_r` must follow its depth
#   (the paper: 9 of 36 layers); `n_r = 0` picks a quarter of the depth. A model too shallow to have a
#   trigger in $1..L-2$ gets the literal set including layer 0.
# * **SEPM** (seed 001): coarse valence first, then the fine query with the least emotion-significant
#   visual tokens dropped.
# * **AR** (seed 003): heads that over-attend the source group give mass to the target group. MoSEAR's
#   source is audio; these VLM families take no audio input here, so `ar_source = "auto"` falls back to
#   the subtitle content (or, for image benchmarks without subtitles, the instruction).

# %%
if not RUN:
    print("skipped:", WHY)
else:
    from emolens.evaluate import evaluate, metrics_table

    task = Task.from_dataset(ds)
    samples = [ds[i] for i in range(len(ds))]
    L = lm.num_layers
    nr = n_r if n_r > 0 else max(1, round(L / 4))
    wetr_hp = {"n_r": nr, "p_v": p_v, "p_t": p_t, "delta": delta,
               "include_layer0": not any(l % nr == 0 for l in range(1, L - 1))}
    from emolens.prompts import fine_query

    probe = lm.encode(samples[:1], [fine_query(task.labels)]).layouts[0]
    if ar_source != "auto":
        src = ar_source
    elif probe.audio.size:
        src = "audio"
    elif probe.content.size:
        src = "content"
    else:
        src = "instruction"
    runs = {"zero-shot": {}, "wetr": wetr_hp, "sepm": {"alpha": alpha, "beta": beta},
            "ar": {"source": src, "target": ar_target, "tau": tau}}
    results = {name: evaluate(lm, ds, name, hp, limit=n_samples, batch_size=batch_size, seed=seed, progress=False)
               for name, hp in runs.items()}
    table = pd.DataFrame([{"method": k, "WAR": r["metrics"]["war"], "UAR": r["metrics"]["uar"], "F1": r["metrics"]["f1"],
                           "ms/sample": 1000 * r["latency_s"]["per_sample"]} for k, r in results.items()]).set_index("method")
    print(f"{lm.family}, {L} layers | {ds.name}/{split}: {len(samples)} samples | WETR n_r={nr} | AR {src} -> {ar_target}")
    fig = plots.bars(table.reset_index().melt(id_vars="method", value_vars=["WAR", "UAR", "F1"], var_name="metric"),
                     "method", "value", hue="metric", title=f"{ds.name}/{split} (n={len(samples)})", ylim=(0, 1))
    plots.save(fig, out_dir, "methods_compared")
    display(table.round(4))

# %% [markdown]
# ## 2 · WETR's NTS selection over the frames (Eq. 4-7)
#
# At the first trigger layer NTS scores every visual token by the contrast between the attention of
# the emotion-seeking span $Q_{pos}$ and the emotion-irrelevant span $Q_{neg}$ (Eq. 4), adds the
# cross-modal support (Eq. 5) and keeps the top $\lceil p_v |I_v| \rceil$ (Eq. 6): $m_i = 1$ for the
# tokens outlined in green; every other visual token is masked from later layers. A real benchmark has
# no ground-truth cue tokens, so no cyan boxes are drawn. Two caveats of the drawing: LLaVA's image
# processor resizes and centre-crops, and the overlay spreads the token grid over the whole frame, so
# on a non-square image the boxes are shifted towards the uncropped borders; a Qwen-VL video token
# covers a pair of frames and is drawn on the first of them.

# %%
if not RUN:
    print("skipped:", WHY)
else:
    from emolens.methods.common import fine_prompts

    s = samples[sample_index]
    lay = lm.encode([s], fine_prompts([s], task, contrastive=True)).layouts[0]
    w_extra = results["wetr"]["predictions"][sample_index]["extra"]
    first_trigger = w_extra["nts"][0]
    kept = np.zeros(lay.visual.size, bool)
    kept[first_trigger["kept_visual"]] = True
    print(f"sample {s.uid}: gold {s.label}, WETR says {results['wetr']['predictions'][sample_index]['label']}; "
          f"triggers {w_extra['triggers']}, kept {int(kept.sum())} of {kept.size} visual tokens at layer {first_trigger['layer']}")
    if lay.visual_grid is None:
        print("this family's layout has no (frame, row, col) grid for this sample (InternVL tiles, LLaVA 'full'): no overlay")
    else:
        fig = plots.overlay_tokens(s, lay, selected=kept, truth=False, title="NTS kept")
        plots.save(fig, out_dir, "nts_kept_tokens")

# %% [markdown]
# ## 3 · SEPM's dropped visual tokens (Eq. 5-10)
#
# Stage 1 asks the coarse valence question and measures the confidence $C$ (Eq. 4); stage 2 asks the
# fine question of the chosen branch. The Focus-on-Emotion span's attention to each visual token gives
# its significance; the $k = \lfloor \beta N_v \rfloor$ least significant tokens (the dropping map $R$,
# Eq. 9) are removed in stage 2. Highlighted: the dropped tokens of the detailed sample.

# %%
if not RUN:
    print("skipped:", WHY)
else:
    se = results["sepm"]["predictions"][sample_index]["extra"]
    dropped = np.zeros(se["n_visual"], bool)
    dropped[se["dropped"]] = True
    print(f"branch {se['branch']}, confidence {se['confidence']}, dropped k = {se['k']} of N_v = {se['n_visual']} "
          f"visual tokens, options {se['options']}")
    if lay.visual_grid is None:
        print("no (frame, row, col) grid for this sample: no overlay")
    else:
        fig = plots.overlay_tokens(s, lay, values=dropped.astype(float), truth=False, cmap="Reds", title="SEPM dropped")
        plots.save(fig, out_dir, "sepm_dropped_tokens")

# %% [markdown]
# ## 4 · AR: UAP per layer (MoSEAR Eq. 1) and the heads it rebalances (Eq. 7-14)
#
# $\mathrm{UAP}_g = \frac{1}{H} \sum_h \sum_{x \in g} w_h(x)$ at the answer row, per layer, for
# AR's source and target groups (averaged over the slice). A layer is biased when its ratio
# $c = S(A)/S(V)$ exceeds $\tau$ (Eq. 7); in such a layer every head with $c_h > c$ gives mass from
# $A$ to $V$ until its ratio equals $c$ (Eq. 12-14).

# %%
if not RUN:
    print("skipped:", WHY)
else:
    from emolens.methods.ar import uap_profile

    prof = uap_profile(lm, samples, task, groups=(src, ar_target), batch_size=batch_size)
    curves = {f"UAP {g}": prof["uap"][g].mean(0) for g in (src, ar_target)}
    ar_x = [p["extra"]["ar"] for p in results["ar"]["predictions"]]
    n_biased = np.mean([a["n_biased_heads"] for a in ar_x], 0)
    fig = plots.layer_profile(curves, ylabel="UAP (answer row)", title=f"{lm.family}: {src} vs {ar_target} per layer")
    plots.save(fig, out_dir, "ar_uap_per_layer")
    fig = plots.layer_profile({"heads rebalanced by AR": n_biased}, ylabel="heads (mean over samples)",
                              title=f"AR {src} -> {ar_target}, tau = {tau}")
    plots.save(fig, out_dir, "ar_biased_heads")
    display(pd.DataFrame({**{k: v for k, v in curves.items()}, "AR heads": n_biased}).rename_axis("layer").round(4))

# %% [markdown]
# ## Checks that fail loudly
#
# * every method answered every sample with a label of the dataset and option probabilities summing to 1;
# * WETR kept $\max(1, \lceil p_v |I_v| \rceil)$ visual tokens at its first trigger (Eq. 6);
# * SEPM dropped exactly $\lfloor \beta N_v \rfloor$ distinct visual tokens (Eq. 9);
# * UAP of a group lies in $[0, 1]$ and AR moved a non-negative mass.

# %%
if not RUN:
    print("skipped:", WHY)
else:
    from emolens.methods.nts import keep_count
    from emolens.methods.sepm import n_dropped

    for name, r in results.items():
        assert len(r["predictions"]) == len(samples), name
        for p in r["predictions"]:
            assert p["label"] in task.labels and abs(sum(p["option_probs"].values()) - 1) < 1e-3, (name, p)
    for p in results["wetr"]["predictions"]:
        t0 = p["extra"]["nts"][0]
        assert len(t0["kept_visual"]) == keep_count(t0["n_cand_visual"], p_v), t0
    for p in results["sepm"]["predictions"]:
        e = p["extra"]
        assert e["k"] == n_dropped(e["n_visual"], beta) == len(set(e["dropped"])), e
    for g in (src, ar_target):
        assert np.all((prof["uap"][g] >= -1e-6) & (prof["uap"][g] <= 1 + 1e-6)), g
    assert all(m >= -1e-6 for a in ar_x for m in a["moved_mass"])
    print("all checks passed")

# %%
import json

summary = {"ran": RUN, "reason": WHY}
if RUN:
    summary.update({f"{k}_{m}": float(r["metrics"][m]) for k, r in results.items() for m in ("war", "uar", "f1")})
    summary.update({f"{k}_ms_per_sample": 1000 * float(r["latency_s"]["per_sample"]) for k, r in results.items()})
    summary.update({"family": lm.family, "n": len(samples), "wetr_n_r": nr, "ar_source": src})
out = {"notebook": "07_real_checkpoint",
       "parameters": {"model": model, "dataset": dataset, "root": root, "split": split, "n_samples": n_samples,
                      "sample_index": sample_index, "frames": frames, "batch_size": batch_size, "seed": seed,
                      "device": device, "allow_cpu": allow_cpu, "n_r": n_r, "p_v": p_v, "p_t": p_t, "delta": delta,
                      "alpha": alpha, "beta": beta, "tau": tau, "ar_source": ar_source, "ar_target": ar_target},
       "summary": summary}
if RUN:
    out["methods"] = {k: {"config": r["config"], "metrics": r["metrics"], "latency_s": r["latency_s"]}
                      for k, r in results.items()}
Path(out_dir).mkdir(parents=True, exist_ok=True)
Path(out_dir, "results.json").write_text(json.dumps(out, indent=1, default=str))
summary
