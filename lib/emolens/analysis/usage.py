"""Token usage under the world-model view (WETR Sec. 3.2, Eq. 1-2): what the frozen model attends to.

The step-by-step computations notebooks 00, 03 and 05 show; generic across methods (any token group,
any plan op), so WETR's, SEPM's and MoSEAR's walkthroughs all read attention through it.

WETR factorises each token's usage as ``w_i = m_i * gamma_i`` (Eq. 2): ``m_i`` admits the token as
evidence (NTS), ``gamma_i`` scales its influence (STR). Before any method acts, this module measures
the baseline usage on the model's real attention: at the answer position, layer by layer, how much
attention mass goes to each token group (visual, audio, subtitle content, instruction) and to the
ground-truth cue tokens the emotion world knows.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from .cpu import to_cpu

GROUPS = ("visual", "audio", "content", "instruction")


def answer_attention(lm, samples: Sequence, prompts: Sequence, layers="all", plan_ops: Optional[list] = None):
    """Attention rows at each sample's answer position for every requested layer.

    Returns ``(batch, rows, logits)`` where ``rows[l]`` is ``[B, H, K]`` float32 probabilities of the
    answer row at layer ``l`` (head-resolved) and ``logits`` is ``[B, V]`` float32, both on the CPU
    (captures are moved there as they are made).
    ``plan_ops`` adds other plan ops (e.g. a method's KeyMask) so usage can be compared under a method.
    """
    from ..answers import answer_logits
    from ..intervene import Capture, Plan, intervene

    batch = lm.encode(samples, prompts)
    ops = [Capture(layers=layers, rows="answer", name="answer", offload="cpu")] + list(plan_ops or [])
    with intervene(lm.model, batch.layouts, Plan(ops)) as trace:
        logits = answer_logits(lm.model, batch)
    rows = {l: c.probs[:, :, 0] for (n, l), c in trace.captures.items() if n == "answer"}
    return batch, dict(sorted(rows.items())), to_cpu(logits, float32=True)


def group_mass(row: np.ndarray, layout, groups: Sequence[str] = GROUPS) -> dict:
    """Attention mass of one head-averaged row ``[K]`` on each token group (empty groups -> 0)."""
    row = np.asarray(row)
    out = {}
    for g in groups:
        pos = getattr(layout, g) if g in GROUPS else layout.spans.get(g, np.zeros(0, int))
        out[g] = float(row[pos].sum()) if len(pos) else 0.0
    return out


def cue_share(row: np.ndarray, layout) -> Optional[float]:
    """Share of the visual attention mass that lands on ground-truth cue tokens (None without truth)."""
    if layout.cue_visual is None or layout.visual.size == 0:
        return None
    v = np.asarray(row)[layout.visual]
    tot = v.sum()
    return float(v[np.asarray(layout.cue_visual, bool)].sum() / tot) if tot > 0 else float("nan")


def usage_profile(lm, samples: Sequence, prompts: Sequence, batch_size: int = 16) -> "pandas.DataFrame":
    """Tidy table over samples x layers: mass per group, cue share of visual attention, and the
    cue share expected under uniform visual attention (#cue / #visual)."""
    import pandas as pd

    recs = []
    for i in range(0, len(samples), batch_size):
        s, p = samples[i:i + batch_size], prompts[i:i + batch_size]
        batch, rows, _ = answer_attention(lm, s, p)
        for l, r in rows.items():
            mean_r = r.mean(1).cpu().numpy()  # head-averaged [B, K]
            for b, lay in enumerate(batch.layouts):
                rec = {"sample": s[b].uid, "layer": l, **group_mass(mean_r[b], lay)}
                cs = cue_share(mean_r[b], lay)
                if cs is not None:
                    rec["cue_share"] = cs
                    rec["cue_uniform"] = float(np.mean(lay.cue_visual))
                recs.append(rec)
    return pd.DataFrame(recs)


def mask_group_plan(layouts, select, from_layer: int = 0):
    """A KeyMask plan op that sets m_i = 0 for the visual tokens chosen by ``select(layout) -> bool [N_v]``
    (e.g. the ground-truth cue tokens): Eq. 2's selection factor applied by hand."""
    from ..intervene import KeyMask

    L = layouts[0].seq_len
    keep = torch.ones(len(layouts), L, dtype=torch.bool)
    for b, lay in enumerate(layouts):
        drop = np.asarray(select(lay), bool)
        keep[b, torch.as_tensor(lay.visual[drop], dtype=torch.long)] = False
    return KeyMask(from_layer=from_layer, keep=keep)


def method_attention(lm, samples: Sequence, prompts: Sequence, method=None, layers="all",
                     rows: Sequence[str] = ("answer",)):
    """Capture attention rows (``rows``: group/span names) at ``layers`` while ``method`` acts.

    ``method`` is None (the frozen model) or an NTS-family method (nts, str, wetr, ...) whose
    ``forward`` accepts extra plan ops. Returns ``(batch, captures, logits)`` where
    ``captures[(row_name, layer)]`` is an :class:`~emolens.intervene.AttnCapture`; everything is on the
    CPU (logits float32).
    """
    from ..answers import answer_logits
    from ..intervene import Capture, Plan, intervene

    batch = lm.encode(samples, prompts)
    ops = [Capture(layers=layers, rows=r, name=f"usage:{r}", offload="cpu") for r in rows]
    if method is None:
        with intervene(lm.model, batch.layouts, Plan(ops)) as trace:
            logits = answer_logits(lm.model, batch)
    else:
        if not hasattr(method, "forward"):
            raise ValueError(f"method {method.name!r} has no single-forward plan; use nts, str, wetr or a selection baseline")
        logits, trace = method.forward(lm, batch, samples, extra_ops=ops, keep_captures=False)
    caps = {(n.split(":", 1)[1], l): c for (n, l), c in trace.captures.items() if n.startswith("usage:")}
    return batch, caps, to_cpu(logits, float32=True)
