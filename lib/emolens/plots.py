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


def _shared_limits(arrays, vmin=None, vmax=None):
    """One (vmin, vmax) over every finite value of ``arrays`` (None entries skipped); given limits win."""
    finite = [np.asarray(a, dtype=float)[np.isfinite(np.asarray(a, dtype=float))] for a in arrays if a is not None]
    finite = np.concatenate([f.ravel() for f in finite]) if finite else np.zeros(0)
    lo = float(finite.min()) if vmin is None and finite.size else vmin
    hi = float(finite.max()) if vmax is None and finite.size else vmax
    if lo is not None and hi is not None and hi <= lo:
        hi = lo + 1e-12  # a constant map: a valid norm, drawn in one colour
    return lo, hi


def _colorbar(fig, axes, cmap: str, vmin: float, vmax: float, label: str):
    """One colourbar for ``axes`` (all drawn with the same norm)."""
    sm = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(vmin, vmax), cmap=cmap)
    cb = fig.colorbar(sm, ax=list(np.ravel(axes)), shrink=0.9, aspect=25)
    cb.set_label(label)
    return cb


def overlay_tokens(sample, layout, values=None, *, selected=None, truth=True, title: str = "",
                   cmap: str = "magma", ax_row=None, frames: Optional[Sequence[int]] = None,
                   vmin: Optional[float] = None, vmax: Optional[float] = None, colorbar: Optional[bool] = None,
                   cbar_label: str = "value"):
    """Frames with per-token values as a heat overlay, selected tokens outlined (green), and the
    ground-truth cue tokens outlined (cyan, dashed).

    Every frame is drawn with one colour scale: ``vmin``/``vmax`` (default: the min and max of
    ``values`` over all frames), so a value has the same colour in every frame. To compare several
    variants, pass the same limits to each call, or use :func:`small_multiples`.

    Args:
        sample: the :class:`~emolens.sample.Sample` (its frames are drawn).
        layout: its :class:`~emolens.layout.TokenLayout` (``visual_grid`` maps tokens to patches).
        values: ``[N_v]`` per-token values (attention, scores) or None.
        selected: ``[N_v]`` bool (kept tokens) or None.
        truth: draw ``layout.cue_visual`` when present.
        ax_row: axes to draw the frames into (one per frame drawn); default a new figure.
        frames: which frames to draw (default all).
        colorbar: draw one colourbar labelled ``cbar_label`` (default: when values are given and this
            call made its own figure; with ``ax_row`` the caller owns the figure and its colourbar).
    """
    img = sample.frames
    T, H, W, _ = img.shape
    frames = list(range(T)) if frames is None else [int(t) for t in frames]
    grid = layout.visual_grid
    if grid is None:
        raise ValueError("this layout has no visual_grid (frame, row, col); the model's vision tower exposes none")
    rows, cols = int(grid[:, 1].max()) + 1, int(grid[:, 2].max()) + 1
    ph, pw = H / rows, W / cols
    cue = layout.cue_visual if truth else None
    for what, arr in (("values", values), ("selected", selected), ("layout.cue_visual", cue)):
        if arr is not None and len(arr) != len(grid):
            raise ValueError(f"overlay_tokens: {what} has {len(arr)} entries but the layout has {len(grid)} visual "
                             "tokens; pass per-visual-token arrays of this sample's layout (a world rendered at "
                             "another size than the model's vision grid gives this)")
    own = ax_row is None
    if own:
        fig, axes = plt.subplots(1, len(frames), figsize=(2.6 * len(frames) + 0.8, 2.8), squeeze=False,
                                 layout="constrained")  # leaves room for the colourbar
        axes = axes[0]
    else:
        axes, fig = list(ax_row), ax_row[0].figure
        if len(axes) < len(frames):
            raise ValueError(f"overlay_tokens got {len(axes)} axes for {len(frames)} frames; pass one axis per frame "
                             "or frames=[...]")
    vals = None if values is None else token_grid(values, layout, T)
    lo, hi = _shared_limits([None if vals is None else vals[frames]], vmin, vmax)
    for ax, t in zip(axes, frames):
        ax.imshow(img[t], interpolation="nearest")
        if vals is not None:  # NaN (no token there) is left transparent
            ax.imshow(vals[t], cmap=cmap, alpha=0.55, vmin=lo, vmax=hi, extent=(-0.5, W - 0.5, H - 0.5, -0.5),
                      interpolation="nearest", gid="emolens-overlay")
        for k, (f, r, c) in enumerate(grid):
            if f != t:
                continue
            if selected is not None and selected[k]:
                ax.add_patch(plt.Rectangle((c * pw - 0.5, r * ph - 0.5), pw, ph, fill=False, ec="lime", lw=1.8))
            if cue is not None and cue[k]:
                ax.add_patch(plt.Rectangle((c * pw - 0.2, r * ph - 0.2), pw - 0.6, ph - 0.6, fill=False, ec="cyan",
                                           lw=1.0, ls="--"))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"frame {t}" if not title else f"{title} (frame {t})", fontsize=9)
    if (own if colorbar is None else colorbar) and vals is not None:
        _colorbar(fig, axes[:len(frames)], cmap, lo, hi, cbar_label)
    return fig


def small_multiples(sample, layout, values_by_title: dict, frames: Optional[Sequence[int]] = None, *,
                    selected_by_title: Optional[dict] = None, truth: bool = True, cmap: str = "magma",
                    cbar_label: str = "value", vmin: Optional[float] = None, vmax: Optional[float] = None,
                    suptitle: str = ""):
    """Several overlays of one sample in a grid -- one row per entry of ``values_by_title``, one column
    per frame -- with ONE colour scale across all rows and frames and one colourbar (e.g. WETR Fig. 3:
    NTS's kept tokens at several ratios, ``{"p_v=0.03": s_v, ...}`` with ``selected_by_title`` the masks).

    Args:
        values_by_title: title -> ``[N_v]`` per-token values (or None for a row of boxes only).
        frames: which frames to draw (default all).
        selected_by_title: title -> ``[N_v]`` bool kept tokens (outlined green), optional per row.
        vmin, vmax: the shared colour limits (default: min and max over every row's values).
    """
    if not values_by_title:
        raise ValueError("small_multiples needs at least one entry in values_by_title ({title: [N_v] values})")
    selected_by_title = selected_by_title or {}
    extra = sorted(set(selected_by_title) - set(values_by_title))
    if extra:
        raise ValueError(f"selected_by_title has title(s) {extra} that values_by_title lacks; use the same keys")
    frames = list(range(sample.frames.shape[0])) if frames is None else [int(t) for t in frames]
    lo, hi = _shared_limits(list(values_by_title.values()), vmin, vmax)
    n = len(values_by_title)
    fig, axes = plt.subplots(n, len(frames), figsize=(2.4 * len(frames) + 1.0, 2.5 * n), squeeze=False,
                             layout="constrained")  # leaves room for the colourbar
    for row, (name, vals) in zip(axes, values_by_title.items()):
        overlay_tokens(sample, layout, vals, selected=selected_by_title.get(name), truth=truth, title=name,
                       cmap=cmap, ax_row=row, frames=frames, vmin=lo, vmax=hi, colorbar=False)
    if suptitle:
        fig.suptitle(suptitle)
    if any(v is not None for v in values_by_title.values()):
        _colorbar(fig, axes, cmap, lo, hi, cbar_label)
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
                      title: str = "", ax=None, cmap: str = "viridis", xlabel: str = "key token",
                      ylabel: str = "layer", cbar_label: str = "attention", vmin: Optional[float] = None,
                      vmax: Optional[float] = None):
    """A heatmap of an attention matrix (e.g. layers x token groups), axes and colourbar labelled.

    ``xlabel``/``ylabel`` name what the columns and rows are (defaults: key tokens by layer); pass the
    same ``vmin``/``vmax`` to heatmaps that are compared side by side.
    """
    if not str(xlabel).strip() or not str(ylabel).strip() or not str(cbar_label).strip():
        raise ValueError("attention_heatmap needs non-empty xlabel, ylabel and cbar_label (what the columns, "
                         "rows and colours are)")
    if ax is None:
        ncol = np.asarray(matrix).shape[-1] if xlabels is not None else 0
        fig, ax = plt.subplots(figsize=(min(16.0, max(6.0, 0.16 * ncol + 2.0)), 3.2))
    else:
        fig = ax.figure
    sns.heatmap(np.asarray(matrix), ax=ax, cmap=cmap, xticklabels=xlabels if xlabels is not None else "auto",
                yticklabels=ylabels if ylabels is not None else "auto", cbar=True, vmin=vmin, vmax=vmax,
                cbar_kws={"label": cbar_label})
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    _readable_xticks(ax)
    return fig


def _labels_overlap(ax) -> bool:
    fig = ax.figure
    fig.canvas.draw()  # tick positions and text extents are only known after a draw
    r = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(r) for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]
    return any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def _readable_xticks(ax, wrap: int = 14, min_size: float = 5.0) -> None:
    """Make the x tick labels not overlap, measured on the drawn figure: wrap long labels of a few
    categories onto lines of ``wrap`` characters; if they still collide, turn them vertical, then
    shrink the font down to ``min_size``, then show every k-th label. Tightens the layout."""
    import textwrap

    fig = ax.figure
    texts = [t.get_text() for t in ax.get_xticklabels()]
    if not any(texts):
        fig.tight_layout()
        return
    if len(texts) <= 12 and any(len(t) > wrap for t in texts):
        ax.set_xticks(ax.get_xticks(), [textwrap.fill(t, wrap) for t in texts])
    fig.tight_layout()
    if not _labels_overlap(ax):
        return
    ax.tick_params(axis="x", labelrotation=90)
    size = ax.get_xticklabels()[0].get_fontsize()
    while _labels_overlap(ax) and size > min_size:
        size = max(min_size, size - 1)
        ax.tick_params(axis="x", labelsize=size)
    step = 2
    while _labels_overlap(ax) and step < len(texts):
        for i, t in enumerate(ax.get_xticklabels()):
            t.set_visible(i % step == 0)
        step += 1
    fig.tight_layout()


def _zero_shot_line(ax, zero_shot) -> None:
    """A dashed horizontal reference labelled "zero-shot": a value, or ``(value, lo, hi)`` to shade its CI."""
    if zero_shot is None:
        return
    z = np.atleast_1d(np.asarray(zero_shot, dtype=float))
    if z.size not in (1, 3):
        raise ValueError(f"zero_shot must be a value or (value, lo, hi), got {zero_shot!r}")
    ax.axhline(z[0], ls="--", color="0.25", lw=1.2, label="zero-shot", zorder=3)
    if z.size == 3:
        ax.axhspan(z[1], z[2], color="0.5", alpha=0.15, lw=0, zorder=0)


def _check_interval(df, y: str, lo: str, hi: str) -> None:
    missing = [c for c in (y, lo, hi) if c not in df.columns]
    if missing:
        raise ValueError(f"columns {missing} not in the DataFrame (has {list(df.columns)})")
    v, a, b = (df[c].to_numpy(dtype=float) for c in (y, lo, hi))
    bad = np.isfinite(a) & np.isfinite(b) & ((a > v + 1e-12) | (b < v - 1e-12))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"row {i}: {lo} <= {y} <= {hi} fails ({a[i]:.4g}, {v[i]:.4g}, {b[i]:.4g}); "
                         "pass the interval's lower and upper bounds, not its half-widths")


def comparison_bars(df, x: str, y: str, lo: str, hi: str, *, zero_shot=None, hue: Optional[str] = None,
                    title: str, ylabel: str, ylim=None, xlabel: Optional[str] = None):
    """Bars of ``y`` with their 95 % intervals (``lo``, ``hi`` columns: bounds, e.g. from
    :func:`emolens.cache.result_ci`) as error bars, and a dashed zero-shot reference line.

    Args:
        df: tidy DataFrame, one row per bar (x, optional hue).
        zero_shot: the zero-shot value, or ``(value, lo, hi)`` to shade its interval; None for no line.
    Returns:
        the Figure; x labels rotate when long, the layout is tightened.
    """
    _check_interval(df, y, lo, hi)
    cats = list(dict.fromkeys(df[x].tolist()))
    groups = [None] if hue is None else list(dict.fromkeys(df[hue].tolist()))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(cats) * max(1, len(groups)) ** 0.5 + 2.5), 3.6))
    width = 0.8 / len(groups)
    colors = sns.color_palette(n_colors=len(groups))
    for g, (group, color) in enumerate(zip(groups, colors)):
        sub = df if group is None else df[df[hue] == group]
        sub = sub.drop_duplicates(subset=[x], keep="last").set_index(x).reindex(cats)
        pos = np.arange(len(cats)) - 0.4 + width * (g + 0.5)
        v = sub[y].to_numpy(dtype=float)
        err = np.vstack([v - sub[lo].to_numpy(dtype=float), sub[hi].to_numpy(dtype=float) - v])
        ax.bar(pos, v, width * 0.92, yerr=np.nan_to_num(err), capsize=3, color=color,
               label=None if group is None else str(group), error_kw={"elinewidth": 1, "ecolor": "0.15"})
    ax.set_xticks(np.arange(len(cats)), [str(c) for c in cats])
    _zero_shot_line(ax, zero_shot)
    ax.set_xlabel(xlabel if xlabel is not None else x)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ylim is not None:
        ax.set_ylim(*ylim)
    if hue is not None or zero_shot is not None:
        ax.legend(fontsize=8, title=hue, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _readable_xticks(ax)
    return fig


def sweep_lines(df, x: str, y: str, lo: str, hi: str, hue: Optional[str] = None, *, zero_shot=None,
                title: str = "", ylabel: Optional[str] = None, xlabel: Optional[str] = None, logx: bool = False):
    """A sweep: ``y`` against numeric ``x`` per ``hue`` group, each line with its 95 % interval as a
    shaded band (``lo``/``hi`` columns) and a dashed zero-shot reference line."""
    _check_interval(df, y, lo, hi)
    groups = [None] if hue is None else list(dict.fromkeys(df[hue].tolist()))
    fig, ax = plt.subplots(figsize=(5.8, 3.4))
    for group, color in zip(groups, sns.color_palette(n_colors=len(groups))):
        sub = (df if group is None else df[df[hue] == group]).sort_values(x)
        xs = sub[x].to_numpy(dtype=float)
        ax.plot(xs, sub[y].to_numpy(dtype=float), marker="o", color=color, label=None if group is None else str(group))
        ax.fill_between(xs, sub[lo].to_numpy(dtype=float), sub[hi].to_numpy(dtype=float), color=color, alpha=0.18,
                        lw=0)
    _zero_shot_line(ax, zero_shot)
    if logx:
        ax.set_xscale("symlog", linthresh=min([abs(v) for v in df[x] if v] or [1.0]))
    ax.set_xlabel(xlabel if xlabel is not None else x)
    ax.set_ylabel(ylabel if ylabel is not None else y)
    ax.set_title(title)
    if hue is not None or zero_shot is not None:
        ax.legend(fontsize=8, title=hue, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def bars(df, x: str, y: str, hue: Optional[str] = None, *, title: str = "", ylim=None):
    """Grouped bar chart from a tidy DataFrame (no intervals: comparisons use :func:`comparison_bars`)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    sns.barplot(data=df, x=x, y=y, hue=hue, ax=ax, errorbar=None)
    ax.set_title(title)
    if ylim is not None:
        ax.set_ylim(*ylim)
    for c in ax.containers:
        ax.bar_label(c, fmt="%.2f", fontsize=7)
    _readable_xticks(ax)
    return fig


def lines(df, x: str, y: str, hue: Optional[str] = None, *, title: str = ""):
    """Line plot (sweeps) from a tidy DataFrame (no intervals: sweeps of a metric use :func:`sweep_lines`)."""
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
