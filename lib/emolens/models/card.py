"""The model card of emolens-tiny: held-out accuracy measured, never tuned.

Measured on the world's *test* split with the zero-shot fine query:

* per view (world-mer, world-emoset, and world-camer's three conflict subsets),
* per noise level eps = 0..7 on world-mer,
* per single informative modality on world-mer (visual only, audio only, text only: the other
  modalities carry no emotion evidence), against chance = 1 / #labels;
* letter-position bias: zero-shot WAR with the options in label order and shuffled per sample
  (``option_order``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _acc(lm, dataset: str, n: int, shuffle_options: bool = False, **world) -> float:
    from ..evaluate import evaluate

    res = evaluate(lm, dataset, "zero-shot", limit=n, progress=False, world=world or None, batch_size=32,
                   shuffle_options=shuffle_options)
    return round(float(res["metrics"]["war"]), 4)


def option_order(lm, n: int = 300) -> dict:
    """Letter-position bias: zero-shot WAR with the options in label order and with the options
    shuffled per sample (seeded; ``evaluate(shuffle_options=True)``), on the world's test views."""
    return {ds: {"in_order": _acc(lm, ds, n), "shuffled": _acc(lm, ds, n, shuffle_options=True)}
            for ds in ("world-mer", "world-emoset")}


def measure(lm, n: int = 300) -> dict:
    """Held-out WAR of ``lm`` (a LoadedModel) on the world's test splits, ``n`` samples per cell."""
    card = {"n_per_cell": n, "metric": "WAR (accuracy), zero-shot fine query, test split"}
    card["views"] = {"world-mer": _acc(lm, "world-mer", n), "world-emoset": _acc(lm, "world-emoset", n)}
    card["camer_subsets"] = {c: _acc(lm, "world-camer", n, conflict=c)
                             for c in ("consistent", "video-aligned", "audio-aligned")}
    card["eps"] = {str(e): _acc(lm, "world-mer", n, eps=float(e)) for e in range(8)}
    card["single_modality"] = {m: _acc(lm, "world-mer", n, informative=(m,)) for m in ("visual", "audio", "text")}
    card["single_modality_emoset"] = {m: _acc(lm, "world-emoset", n, informative=(m,)) for m in ("visual", "text")}
    card["chance"] = {"world-mer": round(1 / 6, 4), "world-emoset": round(1 / 8, 4)}
    card["option_order"] = option_order(lm, n)
    return card


def summary(card: dict) -> str:
    v, s, e = card["views"], card["single_modality"], card["eps"]
    return (f"world-mer {v['world-mer']:.3f} | world-emoset {v['world-emoset']:.3f} | "
            f"camer {', '.join(f'{k} {x:.3f}' for k, x in card['camer_subsets'].items())} | "
            f"only visual {s['visual']:.3f} audio {s['audio']:.3f} text {s['text']:.3f} | "
            f"eps0 {e['0']:.3f} eps3 {e['3']:.3f} eps7 {e['7']:.3f}"
            + (f" | options shuffled: world-mer {card['option_order']['world-mer']['shuffled']:.3f}"
               if "option_order" in card else ""))


def write_card(path, n: int = 300) -> dict:
    """Measure the checkpoint at ``path`` and write ``model_card.json`` beside it."""
    from . import load_model

    lm = load_model(str(path), attn="sdpa")
    card = measure(lm, n)
    log = Path(path) / "train_log.json"
    if log.is_file():
        t = json.loads(log.read_text())
        card["training"] = {k: t[k] for k in ("seed", "steps_done", "batch_size", "train_seconds", "n_params",
                                               "final_loss_mean_last50") if k in t}
    card["summary"] = summary(card)
    (Path(path) / "model_card.json").write_text(json.dumps(card, indent=2))
    return card
