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


# ------------------------------------------------------------------------------------------------
# the world itself (notebook 00's gallery): what each modality says, shown as small multiples

def prosody_emotion(features, labels: Sequence[str]) -> str:
    """The emotion the audio alone expresses: the nearest prosody prototype among ``labels``.

    The world's audio is ``A = mu[z_a] + sigma(eps) n`` (``emolens.world.prosody``, WETR Eq. 1 extended
    to audio), so the nearest prototype is the Bayes decision for equal priors. ``features``: ``[8]``
    prosody vector (:data:`emolens.world.prosody.FEATURES`); ``labels``: the candidate emotions.
    """
    from ..world.prosody import FEATURES, PROTOTYPES

    x = np.asarray(features, dtype=np.float64).ravel()
    if x.shape != (len(FEATURES),):
        raise ValueError(f"prosody_emotion needs the {len(FEATURES)} prosody features {FEATURES}, got shape "
                         f"{np.asarray(features).shape}; pass a world sample's .audio (audio_kind 'features')")
    unknown = [l for l in labels if l not in PROTOTYPES]
    if not labels or unknown:
        raise ValueError(f"prosody_emotion: labels {unknown or list(labels)} have no prosody prototype; pass "
                         f"emotions of the world ({sorted(PROTOTYPES)})")
    d = [float(((x - PROTOTYPES[l]) ** 2).sum()) for l in labels]
    return list(labels)[int(np.argmin(d))]


def _marked_subtitle(sample, wrap: int) -> str:
    import textwrap

    cue = set(sample.subtitle_cue_words or [])
    words = [f"[{w}]" if i in cue else w for i, w in enumerate(sample.subtitle.split())]
    return textwrap.fill(" ".join(words), wrap) if words else "(no subtitle)"


def _place_grid(fig, axes, widths: Sequence[float], heights: Sequence[float], sup=None, pad: float = 0.12) -> None:
    """Place ``axes[rows, cols]`` with fixed box sizes (inches: ``widths`` per column, ``heights`` per row)
    and size ``fig`` so that no axes' decorations (titles, axis and tick labels) reach another's, nor the
    suptitle ``sup`` (the Text of ``fig.suptitle``, or None), nor the figure's edge.

    Each decoration sits at a fixed offset (in points) from its axes' edges, so its reach beyond the box
    does not depend on where the box is: it is measured once on the renderer, with every box at its final
    size, and every row / column gets the largest reach of its axes on each side plus ``pad`` inches. No
    layout engine runs afterwards (constrained layout does not converge on fixed-aspect image axes whose
    cells change shape between its passes: it left the subtitles over the panels below)."""
    rows, cols = axes.shape
    dpi = fig.dpi
    fig.set_size_inches(sum(widths) + 2.0 * cols + 1.0, sum(heights) + 2.0 * rows + 1.0)
    W, H = fig.get_size_inches()
    for i in range(rows):  # a provisional grid, each box at its final size (where does not matter)
        for j in range(cols):
            x, y = 1.0 + 2.0 * j + sum(widths[:j]), 1.0 + 2.0 * (rows - 1 - i) + sum(heights[i + 1:])
            axes[i, j].set_position([x / W, y / H, widths[j] / W, heights[i] / H])
    r = fig.canvas.get_renderer()
    reach = np.zeros((rows, cols, 4))  # left, bottom, right, top beyond the drawn box, inches
    for i in range(rows):
        for j in range(cols):
            ax = axes[i, j]
            ax.apply_aspect()
            box, tight = ax.get_window_extent(r), ax.get_tightbbox(r)
            if tight is not None:
                reach[i, j] = np.maximum(0.0, [box.x0 - tight.x0, box.y0 - tight.y0,
                                               tight.x1 - box.x1, tight.y1 - box.y1]) / dpi
    left, right = reach[:, :, 0].max(0), reach[:, :, 2].max(0)
    bottom, top = reach[:, :, 1].max(1), reach[:, :, 3].max(1)
    sup_w = sup_h = 0.0
    if sup is not None:
        e = sup.get_window_extent(r)
        sup_w, sup_h = e.width / dpi + 2 * pad, e.height / dpi + pad
    col_w = [left[j] + widths[j] + right[j] for j in range(cols)]
    W = max(sum(col_w) + pad * (cols + 1), sup_w)
    x0 = (W - sum(col_w) - pad * (cols - 1)) / 2  # centred (wider only when the suptitle is)
    H = sum(top[i] + heights[i] + bottom[i] for i in range(rows)) + pad * (rows + 1) + sup_h
    fig.set_size_inches(W, H)
    y = H - pad - sup_h
    for i in range(rows):
        y -= top[i] + heights[i]
        x = x0
        for j in range(cols):
            x += left[j]
            axes[i, j].set_position([x / W, y / H, widths[j] / W, heights[i] / H])
            x += widths[j] + right[j] + pad
        y -= bottom[i] + pad
    if sup is not None:
        sup.set_y(1.0 - pad / H)
        sup.set_verticalalignment("top")


def world_gallery(samples: Sequence, titles: Sequence[str], labels: Sequence[str], *, frame: int = 0,
                  wrap: int = 24, captions: Optional[Sequence[str]] = None, suptitle: str = ""):
    """Small multiples of world samples, one column each: the frame with the speaker's face (the
    ground-truth cue pixels) outlined, the subtitle under it (cue words in brackets), and below the
    prosody vector as bars with the emotion it decodes to (:func:`prosody_emotion`).

    One shared x scale for every prosody panel (a bar has the same length in every column); feature
    names label the first column only. Every panel has a fixed size; the rows and columns are spaced by
    the measured reach of their labels (the longest subtitle, the title lines, the feature names), so no
    label overlaps another or leaves the figure (tests/test_world_gallery.py measures it). ``captions``:
    an extra title line per column (e.g. what each modality expresses). Returns the matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    from ..world.prosody import FEATURES

    if len(samples) != len(titles) or not len(samples):
        raise ValueError(f"world_gallery needs one title per sample, got {len(samples)} samples and {len(titles)} titles")
    if captions is not None and len(captions) != len(samples):
        raise ValueError(f"world_gallery: {len(captions)} captions for {len(samples)} samples; pass one per sample")
    audio = [s.audio if s.audio_kind == "features" else None for s in samples]
    has_audio = any(a is not None for a in audio)
    subs = [_marked_subtitle(s, wrap) for s in samples]
    n, rows = len(samples), 2 if has_audio else 1
    side = 2.0  # inches: each frame's width; its height follows the frame's aspect
    aspect = max(s.frames[frame].shape[0] / s.frames[frame].shape[1] for s in samples)
    fig, axes = plt.subplots(rows, n, squeeze=False)
    lim = max([float(np.abs(a).max()) for a in audio if a is not None] or [1.0]) * 1.1
    for j, (s, title) in enumerate(zip(samples, titles)):
        ax = axes[0, j]
        ax.imshow(s.frames[frame], interpolation="nearest")
        if s.cue_mask is not None and s.cue_mask[frame].any():
            ys, xs = np.nonzero(s.cue_mask[frame])
            ax.add_patch(plt.Rectangle((xs.min() - 0.5, ys.min() - 0.5), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1,
                                       fill=False, ec="cyan", lw=1.2, ls="--"))
        ax.set_xticks([])
        ax.set_yticks([])
        head = f"{title}\nlabel: {s.label}" + (f"\n{captions[j]}" if captions is not None else "")
        ax.set_title(head, fontsize=8)
        ax.set_xlabel(subs[j], fontsize=7)
        if not has_audio:
            continue
        ax = axes[1, j]
        if audio[j] is None:
            ax.set_axis_off()
            ax.set_title("no audio", fontsize=8)
            continue
        a = np.asarray(audio[j], float)
        ax.barh(np.arange(len(FEATURES)), a, color=np.where(a >= 0, "tab:red", "tab:blue"))
        ax.set_xlim(-lim, lim)
        ax.axvline(0, color="0.3", lw=0.8)
        ax.set_yticks(np.arange(len(FEATURES)), FEATURES if j == 0 else [""] * len(FEATURES), fontsize=7)
        ax.invert_yaxis()
        ax.tick_params(axis="x", labelsize=7)
        ax.set_xlabel("prosody (std units)", fontsize=7)
        ax.set_title(f"audio says: {prosody_emotion(a, labels)}", fontsize=8)
    sup = fig.suptitle(suptitle, fontsize=10) if suptitle else None
    _place_grid(fig, axes, [side] * n, [side * aspect, 1.6][:rows], sup=sup)
    return fig


def overlapping_texts(fig) -> list:
    """Pairs ``(text_a, text_b)`` of visible, non-empty labels of ``fig`` (titles, axis and tick labels,
    legends, suptitle) whose drawn boxes overlap, measured on the rendered figure; ``[]``: none collide.
    The notebooks assert it on their galleries and comparison figures."""
    from matplotlib.text import Text

    fig.canvas.draw()  # extents are only known after a draw
    r = fig.canvas.get_renderer()
    hidden = set()  # texts that exist but are not drawn: tick labels outside the view, hidden axes (twins)
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if not (ax.get_visible() and axis.get_visible()):
                hidden.update(id(t) for t in [*axis.get_ticklabels(), axis.label, axis.get_offset_text()])
        for locs, labels, lim in ((ax.get_xticks(), ax.get_xticklabels(), ax.get_xlim()),
                                  (ax.get_yticks(), ax.get_yticklabels(), ax.get_ylim())):
            lo, hi = min(lim), max(lim)
            tol = 1e-9 * max(1.0, abs(hi - lo))
            hidden.update(id(t) for x, t in zip(locs, labels) if not lo - tol <= x <= hi + tol)
    boxes = [(t.get_text(), t.get_window_extent(r)) for t in fig.findobj(Text)
             if t.get_visible() and t.get_text().strip() and t.figure is not None and id(t) not in hidden]
    return [(ta, tb) for i, (ta, a) in enumerate(boxes) for tb, b in boxes[i + 1:] if a.overlaps(b)]
