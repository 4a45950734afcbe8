"""`emolens card`: is a model in the papers' regime? Calibration criteria and the three premises (issue 12).

Everything here is a property of the *zero-shot* model alone (the plain fine query, options in label
order); no method runs. Preregistered in ``benchmarks/preregistration.yaml``.

Calibration
    zero-shot WAR on world-mer and world-emoset; on world-mer with the options shuffled over the letters
    (``option_order``: a model that memorised letter positions falls to chance there); on world-camer per conflict subset (consistent,
    audio-aligned, video-aligned); on world-mer with one informative modality (the others carry no
    evidence), against chance = 1/6.
Premises
    * WETR (seed 000, Sec. 3): the answer row's attention mass on non-cue visual tokens (head mean, layer
      mean, world-mer) is higher on wrong answers than on right ones (``wetr_nuisance_mass``).
    * SEPM (seed 001, Sec. 3.2): coarse (valence) accuracy minus fine accuracy on world-emoset, with the
      coarse query of SEPM Eq. 1 without the FoE prefix (``sepm_coarse_minus_fine``; neutral samples,
      which have no valence answer, are left out of the coarse accuracy).
    * MoSEAR (seed 003, Fig. 3): on world-camer video-aligned *failures*, the answer row's attention per
      audio token and per visual token (head mean), averaged over the middle third of the layers
      ``[L//3, 2L//3)`` (``mosear_mid_layer_per_token``).
Token counts
    ``visual_tokens_per_clip`` (world-mer) and ``cue_token_fraction``: the mean fraction of a clip's visual
    tokens that hold a pixel of the true face (the world's ground truth).

Datasets: world-mer, world-emoset and world-camer (EmoWorld version 2 with its default nuisance);
``prefix=`` measures other manifests named ``{prefix}mer`` etc.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

CAMER_SUBSETS = ("consistent", "audio-aligned", "video-aligned")
MODALITIES = ("visual", "audio", "text")


def world_prefix(lm) -> str:
    """The manifests' prefix: ``"world-"`` (world-mer, world-emoset, world-camer: EmoWorld version 2 since
    issue 12; version 1 stays available as ``EmoWorld(version=1)``)."""
    return "world-"


def _zero_shot(lm, dataset: str, split: str, n: int, seed: int, *, capture: bool = False, batch_size: int = 32,
               coarse: bool = False, shuffled: bool = False, **world):
    """Zero-shot answers on the first ``n`` samples: ``(correct [n] bool, rows)`` where ``rows`` holds, per
    sample, the answer row's head-mean attention per layer ``[L, K]`` (numpy) and its layout, when
    ``capture``. ``coarse``: SEPM's coarse query (Eq. 1, no FoE) against the valence, neutral left out.
    ``shuffled``: the options permuted over the letters per sample (``prompts.shuffle_options``, seeded by
    ``seed`` and the sample's position), to expose letter-position memorisation."""
    from .. import prompts as P
    from ..data import load_dataset
    from ..intervene import Capture, Plan
    from ..methods.common import forward_logits
    from ..answers import read_answers
    from ..world.taxonomy import VALENCE

    ds = load_dataset(dataset, split, limit=n, seed=seed, **world)
    samples = [ds[i] for i in range(len(ds))]
    if coarse:
        samples = [s for s in samples if VALENCE[s.label] != "neutral"]
    plan = Plan([Capture(layers="all", rows="answer", reduce="heads", name="ans")]) if capture else None
    correct, rows = [], []
    for i in range(0, len(samples), batch_size):
        chunk = samples[i:i + batch_size]
        if coarse:
            prompts = [P.coarse_query(ds.valence_groups, foe=False) for _ in chunk]
            gold = [VALENCE[s.label] for s in chunk]
        else:
            prompts = [P.fine_query(ds.labels, contrastive=False) for _ in chunk]
            if shuffled:
                prompts = [P.shuffle_options(q, np.random.default_rng([seed, i + j])) for j, q in enumerate(prompts)]
            gold = [s.label for s in chunk]
        batch = lm.encode(chunk, prompts)
        logits, trace = forward_logits(lm, batch, plan)
        answers = read_answers(logits, batch.prompts, lm.option_token_ids)
        correct += [a.label == g for a, g in zip(answers, gold)]
        if capture:
            layers = sorted(l for (name, l) in trace.captures if name == "ans")
            for b, lay in enumerate(batch.layouts):
                att = np.stack([trace.get("ans", l).sample(b)[0, 0].cpu().numpy() for l in layers])  # [L, K]
                rows.append((att, lay))
    return np.asarray(correct, bool), rows


def _war(correct) -> float:
    return round(float(np.mean(correct)), 4) if len(correct) else float("nan")


def measure_regime(lm, *, n: int = 600, seed: int = 4242, split: str = "test", prefix: Optional[str] = None,
                   batch_size: int = 32) -> dict:
    """The regime card of ``lm`` (a LoadedModel): see the module docstring for every entry."""
    pre = prefix or world_prefix(lm)
    mer, emoset, camer = f"{pre}mer", f"{pre}emoset", f"{pre}camer"
    kw = dict(split=split, n=n, seed=seed, batch_size=batch_size)

    mer_ok, mer_rows = _zero_shot(lm, mer, capture=True, **kw)
    nuis = []
    for att, lay in mer_rows:
        vis = np.asarray(lay.visual)
        cue = np.asarray(lay.cue_visual, bool)
        nuis.append(float(att[:, vis[~cue]].sum(-1).mean()))
    nuis = np.asarray(nuis)
    emo_ok, _ = _zero_shot(lm, emoset, **kw)
    emo_coarse, _ = _zero_shot(lm, emoset, coarse=True, **kw)
    camer_war, va = {}, None
    for c in CAMER_SUBSETS:
        ok, rows = _zero_shot(lm, camer, capture=(c == "video-aligned"), conflict=c, **kw)
        camer_war[c] = _war(ok)
        if c == "video-aligned":
            va = (ok, rows)
    shuffled = _war(_zero_shot(lm, mer, shuffled=True, **kw)[0])
    single = {m: _war(_zero_shot(lm, mer, informative=(m,), **kw)[0]) for m in MODALITIES}
    ok, rows = va
    fails = [r for r, o in zip(rows, ok) if not o]
    aud, vis_pt = [], []
    for att, lay in fails:
        L = att.shape[0]
        mid = att[L // 3: max(L // 3 + 1, 2 * L // 3)]
        a, v = np.asarray(lay.audio), np.asarray(lay.visual)
        if a.size:
            aud.append(float(mid[:, a].sum(-1).mean() / a.size))
        vis_pt.append(float(mid[:, v].sum(-1).mean() / v.size))
    lay0 = mer_rows[0][1]
    return {
        "model": lm.name, "split": split, "n_per_cell": n, "seed": seed, "datasets": [mer, emoset, camer],
        "calibration": {
            "world-mer": {"war": _war(mer_ok)},  # keys name the view; "datasets" names the manifests
            "world-emoset": {"war": _war(emo_ok)},
            "world-camer": camer_war,
            "single_modality": {**single, "chance": round(1 / 6, 4)},
            "option_order": {"in_order": _war(mer_ok), "shuffled": shuffled},  # world-mer
        },
        "premises": {
            "wetr_nuisance_mass": {"wrong": round(float(nuis[~mer_ok].mean()), 4) if (~mer_ok).any() else None,
                                   "right": round(float(nuis[mer_ok].mean()), 4) if mer_ok.any() else None},
            "sepm_coarse_minus_fine": round(_war(emo_coarse) - _war(emo_ok), 4),
            "sepm_coarse": _war(emo_coarse), "sepm_fine": _war(emo_ok),
            "mosear_mid_layer_per_token": {"audio": round(float(np.mean(aud)), 5) if aud else None,
                                           "visual": round(float(np.mean(vis_pt)), 5) if vis_pt else None,
                                           "n_failures": len(fails)},
        },
        "visual_tokens_per_clip": int(len(lay0.visual)),
        "cue_token_fraction": round(float(np.mean([np.mean(np.asarray(l.cue_visual, bool)) for _, l in mer_rows])), 4),
    }


def criteria(card: dict) -> dict:
    """Each preregistered criterion / premise -> bool (``benchmarks/preregistration.yaml``)."""
    cal, pr = card["calibration"], card["premises"]
    mer, emoset = "world-mer", "world-emoset"
    c = cal["world-camer"]
    sm = cal["single_modality"]
    w, m = pr["wetr_nuisance_mass"], pr["mosear_mid_layer_per_token"]
    return {
        "world-mer WAR in [0.55, 0.72]": 0.55 <= cal[mer]["war"] <= 0.72,
        "world-emoset WAR in [0.45, 0.65]": 0.45 <= cal[emoset]["war"] <= 0.65,
        "camer consistent > audio-aligned > video-aligned": c["consistent"] > c["audio-aligned"] > c["video-aligned"],
        "camer consistent - video-aligned >= 0.08": c["consistent"] - c["video-aligned"] >= 0.08,
        **{f"{k} alone > chance + 0.15": sm[k] > sm["chance"] + 0.15 for k in MODALITIES},
        **({"shuffled options within 0.10 of in order": abs(cal["option_order"]["shuffled"] - cal["option_order"]["in_order"]) <= 0.10}
           if "option_order" in cal else {}),
        "WETR: nuisance mass wrong > right": w["wrong"] is not None and w["right"] is not None and w["wrong"] > w["right"],
        "SEPM: coarse - fine >= 0.10": pr["sepm_coarse_minus_fine"] >= 0.10,
        "MoSEAR: mid-layer audio > visual per token": m["audio"] is not None and m["visual"] is not None
                                                       and m["audio"] > m["visual"],
    }


def table(card: dict) -> str:
    """The card as a plain-text table (one line per number, then the criteria)."""
    lines = [f"regime card: {card['model']} ({card['split']} split, n = {card['n_per_cell']} per cell, seed {card['seed']})"]
    for ds, v in card["calibration"].items():
        lines.append(f"  {ds:<18} " + "  ".join(f"{k} {x:.3f}" for k, x in v.items()))
    pr = card["premises"]
    w, m = pr["wetr_nuisance_mass"], pr["mosear_mid_layer_per_token"]
    lines.append(f"  WETR nuisance mass   wrong {w['wrong']}  right {w['right']}")
    lines.append(f"  SEPM coarse - fine   {pr['sepm_coarse_minus_fine']:+.3f} (coarse {pr['sepm_coarse']:.3f}, fine {pr['sepm_fine']:.3f})")
    lines.append(f"  MoSEAR mid layers    audio/token {m['audio']}  visual/token {m['visual']}  ({m['n_failures']} failures)")
    lines.append(f"  visual tokens per clip {card['visual_tokens_per_clip']}  cue token fraction {card['cue_token_fraction']:.3f}")
    for k, ok in criteria(card).items():
        lines.append(f"  [{'x' if ok else ' '}] {k}")
    return "\n".join(lines)


def write_regime_card(path, *, n: int = 600, seed: int = 4242, readme=None) -> dict:
    """Measure the checkpoint at ``path`` (test split) and write ``model_card.json`` beside it: the regime
    card, the preregistered criteria, the pretraining statistics (v2 recipe) and the training log."""
    from . import load_model
    from .pretrain import PRETRAINING_STATISTICS

    lm = load_model(str(path), attn="emolens")
    card = measure_regime(lm, n=n, seed=seed)
    card["model"] = Path(path).name  # the shipped name, not this machine's folder
    card["criteria"] = criteria(card)
    log = Path(path) / "train_log.json"
    if log.is_file():
        t = json.loads(log.read_text())
        card["training"] = {k: t[k] for k in ("seed", "recipe", "audio_tokens", "steps_done", "batch_size",
                                               "train_seconds", "n_params", "final_loss_mean_last50", "derived_from",
                                               "finetuned_on", "how") if k in t}
        if t.get("recipe") == "v2":
            card["pretraining_statistics"] = PRETRAINING_STATISTICS
    card["summary"] = table(card)
    (Path(path) / "model_card.json").write_text(json.dumps(card, indent=2))
    if readme is not None:
        update_readme(readme, markdown(card, shipped_variants()))
    return card


def shipped_variants() -> dict:
    """``{variant name: its train_log.json}`` for each shipped variant (:data:`VARIANTS`)."""
    from . import CHECKPOINTS

    out = {}
    for name in VARIANTS:
        f = CHECKPOINTS / name / "train_log.json"
        if f.is_file():
            out[name] = json.loads(f.read_text())
    return out


README_START, README_END = "<!-- card:start -->", "<!-- card:end -->"
VARIANTS = ("emolens-tiny-audio4", "emolens-tiny-audio16", "emolens-tiny-audio64", "emolens-tiny-ft")


def _stats_md(stats: dict) -> list:
    rows = []
    for k, v in stats.items():
        if isinstance(v, dict):
            v = ", ".join(f"{a} {b}" for a, b in v.items())
        elif isinstance(v, list):
            v = ", ".join(str(x) for x in v)
        rows.append(f"| {k.replace('_', ' ')} | {v} |")
    return ["| pretraining statistic | value |", "|---|---|"] + rows


def markdown(card: dict, variants: Optional[dict] = None) -> str:
    """The README's model-card block (between ``<!-- card:start -->`` and ``<!-- card:end -->``) rendered
    from a regime card (:func:`measure_regime` + ``criteria`` + ``pretraining_statistics`` + ``training``);
    ``variants``: ``{name: that variant's train_log.json}`` for the variants table."""
    cal, pr = card["calibration"], card["premises"]
    crit = card.get("criteria") or criteria(card)
    ok = lambda b: "yes" if b else "**no**"  # noqa: E731
    c, sm, oo = cal["world-camer"], cal["single_modality"], cal.get("option_order", {})
    w, m = pr["wetr_nuisance_mass"], pr["mosear_mid_layer_per_token"]
    out = [f"Measured by `emolens card --model {card['model']} --seed {card['seed']} --n {card['n_per_cell']}` "
           f"({card['split']} split, n = {card['n_per_cell']} per cell, zero-shot, no method); stored in "
           f"`lib/emolens/checkpoints/emolens-tiny/model_card.json`. Criteria preregistered in "
           f"`benchmarks/preregistration.yaml`, calibration history in `benchmarks/calibration_log.md`.", "",
           "| calibration (zero-shot WAR) | measured | criterion | met |", "|---|---:|---|:---:|",
           f"| world-mer | {cal['world-mer']['war']:.3f} | [0.55, 0.72] | {ok(crit['world-mer WAR in [0.55, 0.72]'])} |",
           f"| world-emoset | {cal['world-emoset']['war']:.3f} | [0.45, 0.65] | {ok(crit['world-emoset WAR in [0.45, 0.65]'])} |",
           f"| world-camer consistent / audio-aligned / video-aligned | {c['consistent']:.3f} / {c['audio-aligned']:.3f} / "
           f"{c['video-aligned']:.3f} | C > A > V, C - V >= 0.08 | "
           f"{ok(crit['camer consistent > audio-aligned > video-aligned'] and crit['camer consistent - video-aligned >= 0.08'])} |"]
    for k in MODALITIES:
        out.append(f"| world-mer, only {k} informative | {sm[k]:.3f} | > chance + 0.15 = {sm['chance'] + 0.15:.3f} | "
                   f"{ok(crit[f'{k} alone > chance + 0.15'])} |")
    if oo:
        out.append(f"| world-mer, options shuffled over the letters | {oo['shuffled']:.3f} | within 0.10 of in order "
                   f"({oo['in_order']:.3f}) | {ok(crit['shuffled options within 0.10 of in order'])} |")
    out += ["", "| premise (zero-shot model alone) | measured | met |", "|---|---|:---:|",
            f"| WETR: answer-row attention mass on non-cue visual tokens, wrong vs right answers (world-mer) | "
            f"{w['wrong']} vs {w['right']} | {ok(crit['WETR: nuisance mass wrong > right'])} |",
            f"| SEPM: coarse (valence) minus fine accuracy (world-emoset) | {pr['sepm_coarse']:.3f} - {pr['sepm_fine']:.3f} = "
            f"{pr['sepm_coarse_minus_fine']:+.3f} (>= 0.10) | {ok(crit['SEPM: coarse - fine >= 0.10'])} |",
            f"| MoSEAR Fig. 3: per-token attention, middle third of the layers, on {m['n_failures']} video-aligned failures | "
            f"audio {m['audio']} vs visual {m['visual']} | {ok(crit['MoSEAR: mid-layer audio > visual per token'])} |",
            "", f"Tokens: {card['visual_tokens_per_clip']} visual tokens per clip; the face (the cue) covers "
            f"{100 * card['cue_token_fraction']:.1f} % of them."]
    t = card.get("training")
    if t:
        out += ["", f"Training: recipe {t.get('recipe')}, seed {t.get('seed')}, {t.get('steps_done')} steps of batch "
                f"{t.get('batch_size')}, {t.get('train_seconds')} s on the 2-core CPU, {t.get('n_params'):,} parameters, "
                f"final loss {t.get('final_loss_mean_last50', float('nan')):.3f}."]
    if card.get("pretraining_statistics"):
        out += ["", "The pretraining world (`emolens.models.pretrain`): generic questions, no benchmark query and no method "
                "prompt (tests/test_pretraining.py scans every template).", ""] + _stats_md(card["pretraining_statistics"])
    if variants:
        out += ["", "| variant (`load_model(name)`) | audio tokens | how it was made | steps | final loss |",
                "|---|---:|---|---:|---:|"]
        for name, log in variants.items():
            how = (f"emolens-tiny fine-tuned on {log['finetuned_on']} with the benchmark query (supervised upper bound)"
                   if log.get("finetuned_on") else
                   f"emolens-tiny's weights, the audio projection tiled over {log.get('audio_tokens')} tokens, then its recipe continued")
            out.append(f"| `{name}` | {log.get('audio_tokens')} | {how} | {log.get('steps_done')} | "
                       f"{log.get('final_loss_mean_last50', float('nan')):.3f} |")
        out.append("(`emolens train-tiny --from emolens-tiny --audio-tokens N` / `--finetune world-mer`; the variants are "
                   "measured where they are used: notebook 05's token-imbalance study, notebook 06's upper bound)")
    return "\n".join(out)


def update_readme(readme, block: str) -> bool:
    """Replace the model-card block of ``readme`` (between the card markers) with ``block``; False (and
    nothing written) when the markers are missing."""
    p = Path(readme)
    s = p.read_text()
    i, j = s.find(README_START), s.find(README_END)
    if i < 0 or j < i:
        return False
    p.write_text(s[:i + len(README_START)] + "\n" + block + "\n" + s[j:])
    return True
