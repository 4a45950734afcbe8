"""Figures shared by the notebooks (seaborn / matplotlib): token overlays on frames, attention maps,
per-layer profiles, sweeps. Every function returns the matplotlib Figure and never calls ``show``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import matplotlib

import matplotlib.pyplot as plt
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402

sns.set_theme(context="notebook", style="whitegrid")


def token_grid(values: np.ndarray, layout, frames: int) -> np.ndarray:
    """Scatter per-visual-token values ``[N_v]`` into ``[T, rows, cols]`` using ``layout.visual_grid``."""
    grid = layout.visual_grid
    if grid is None:
        raise ValueError("this layout has no visual_grid (frame, row, col); the model's vision tower exposes none")
    r, c = int(grid[:, 1].max()) + 1, int(grid[:, 2].max()) + 1
    out = np.full((frames, r, c), np.nan)
    v = np.asarray(values, dtype=float)
    out[grid[:, 0], grid[:, 1], grid[:, 2]] = v
    return out


def overlay_tokens(sample, layout, values=None, *, selected=None, truth=True, title: str = "",
                   cmap: str = "magma", ax_row=None):
    """Frames with per-token values as a heat overlay, selected tokens outlined (green), and the
    ground-truth cue tokens outlined (cyan, dashed).

    Args:
        sample: the :class:`~emolens.sample.Sample` (its frames are drawn).
        layout: its :class:`~emolens.layout.TokenLayout` (``visual_grid`` maps tokens to patches).
        values: ``[N_v]`` per-token values (attention, scores) or None.
        selected: ``[N_v]`` bool (kept tokens) or None.
        truth: draw ``layout.cue_visual`` when present.
    """
    frames = sample.frames
    T, H, W, _ = frames.shape
    grid = layout.visual_grid
    rows = int(grid[:, 1].max()) + 1
    ph, pw = H / rows, W / (int(grid[:, 2].max()) + 1)
    if ax_row is None:
        fig, axes = plt.subplots(1, T, figsize=(2.6 * T, 2.8), squeeze=False)
        axes = axes[0]
    else:
        axes, fig = ax_row, ax_row[0].figure
    vals = None if values is None else token_grid(values, layout, T)
    for t in range(T):
        ax = axes[t]
        ax.imshow(frames[t], interpolation="nearest")
        if vals is not None:
            v = vals[t]
            ax.imshow(np.kron(np.nan_to_num(v), np.ones((int(ph), int(pw)))), cmap=cmap, alpha=0.55,
                      extent=(-0.5, W - 0.5, H - 0.5, -0.5), interpolation="nearest")
        for k, (f, r, c) in enumerate(grid):
            if f != t:
                continue
            if selected is not None and selected[k]:
                ax.add_patch(plt.Rectangle((c * pw - 0.5, r * ph - 0.5), pw, ph, fill=False, ec="lime", lw=1.8))
            if truth and layout.cue_visual is not None and layout.cue_visual[k]:
                ax.add_patch(plt.Rectangle((c * pw - 0.2, r * ph - 0.2), pw - 0.6, ph - 0.6, fill=False, ec="cyan",
                                           lw=1.0, ls="--"))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"frame {t}" if not title else f"{title} (frame {t})", fontsize=9)
    fig.tight_layout()
    return fig


def layer_profile(values: dict, *, ylabel: str = "attention mass", title: str = ""):
    """Per-layer curves: ``values`` name -> ``[L]``."""
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for name, v in values.items():
        ax.plot(np.arange(len(v)), v, marker="o", label=name)
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def attention_heatmap(matrix: np.ndarray, *, xlabels: Optional[Sequence] = None, ylabels: Optional[Sequence] = None,
                      title: str = "", ax=None, cmap: str = "viridis"):
    """A heatmap of an attention matrix (e.g. layers x token groups)."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.2))
    else:
        fig = ax.figure
    sns.heatmap(np.asarray(matrix), ax=ax, cmap=cmap, xticklabels=xlabels if xlabels is not None else "auto",
                yticklabels=ylabels if ylabels is not None else "auto", cbar=True)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def bars(df, x: str, y: str, hue: Optional[str] = None, *, title: str = "", ylim=None):
    """Grouped bar chart from a tidy DataFrame."""
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    sns.barplot(data=df, x=x, y=y, hue=hue, ax=ax, errorbar=None)
    ax.set_title(title)
    if ylim is not None:
        ax.set_ylim(*ylim)
    for c in ax.containers:
        ax.bar_label(c, fmt="%.2f", fontsize=7)
    fig.tight_layout()
    return fig


def lines(df, x: str, y: str, hue: Optional[str] = None, *, title: str = ""):
    """Line plot (sweeps) from a tidy DataFrame."""
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    sns.lineplot(data=df, x=x, y=y, hue=hue, marker="o", ax=ax)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def histogram(values, *, bins: int = 30, title: str = "", xlabel: str = ""):
    fig, ax = plt.subplots(figsize=(5, 3))
    sns.histplot(np.asarray(values).ravel(), bins=bins, ax=ax)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    fig.tight_layout()
    return fig


def save(fig, out_dir, name: str) -> str:
    """Save a figure as ``<out_dir>/<name>.png`` (the notebook index links it)."""
    from pathlib import Path

    p = Path(out_dir)
    p.mkdir(parents=True, exist_ok=True)
    path = p / f"{name}.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return str(path)
