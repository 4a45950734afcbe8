"""emolens.plots: the figures the walkthroughs compare methods with (intervals, a zero-shot line, shared
colour scales, labelled axes, tick labels that do not overlap), checked on the returned Figures."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.container import ErrorbarContainer  # noqa: E402

from emolens import plots  # noqa: E402


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def real():
    """One sample of the world, its layout from the real emolens-tiny processor."""
    from emolens.data import load_dataset
    from emolens.methods import Task
    from emolens.methods.common import fine_prompts
    from emolens.models import load_model

    lm = load_model("emolens-tiny", device="cpu")
    ds = load_dataset("world-mer", limit=1)
    s = ds[0]
    lay = lm.encode([s], fine_prompts([s], Task.from_dataset(ds))).layouts[0]
    return s, lay


def _colorbars(fig):
    return [a for a in fig.axes if a.get_label() == "<colorbar>"]


def _zero_lines(ax, y):
    return [ln for ln in ax.get_lines() if ln.get_label() == "zero-shot" and np.allclose(ln.get_ydata(), y)
            and ln.get_linestyle() == "--"]


def _no_overlap(fig, labels):
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(r) for t in labels if t.get_text()]
    return all(not a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def _table():
    methods = ["zero-shot CoT (Kojima)", "NTS (noise-suppressed selection)", "STR state reweighting",
               "WETR = NTS + STR", "SEPM coarse-to-fine", "AR reallocation"]
    rows = []
    for d, shift in (("world-mer", 0.0), ("world-camer", -0.1)):
        for i, m in enumerate(methods):
            v = 0.5 + 0.05 * i + shift
            rows.append({"method": m, "dataset": d, "WAR": v, "lo": v - 0.04, "hi": v + 0.03})
    return pd.DataFrame(rows)


def test_comparison_bars_intervals_zero_shot_line_and_readable_labels():
    df = _table()
    fig = plots.comparison_bars(df, "method", "WAR", "lo", "hi", zero_shot=0.55, hue="dataset",
                                title="WAR per method", ylabel="WAR")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "method" and ax.get_ylabel() == "WAR" and ax.get_title()
    assert len(_zero_lines(ax, 0.55)) == 1
    errs = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(errs) == 2  # one per hue group
    # the error bars span exactly [lo, hi] of each row, in the order of the bars
    for c, d in zip(errs, ["world-mer", "world-camer"]):
        segs = np.array([s[:, 1] for s in c.lines[2][0].get_segments()])
        sub = df[df.dataset == d]
        assert np.allclose(np.sort(segs, axis=1), sub[["lo", "hi"]].to_numpy())
    assert _no_overlap(fig, ax.get_xticklabels())
    assert "zero-shot" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_comparison_bars_zero_shot_interval_and_bad_intervals():
    df = _table()[lambda d: d.dataset == "world-mer"]
    fig = plots.comparison_bars(df, "method", "WAR", "lo", "hi", zero_shot=(0.5, 0.46, 0.54), title="t", ylabel="WAR")
    ax = fig.axes[0]
    assert len(_zero_lines(ax, 0.5)) == 1
    band = [p for p in ax.patches if type(p).__name__ == "Rectangle" and np.isclose(p.get_height(), 0.08)]
    assert band, "the zero-shot interval is shaded"
    with pytest.raises(ValueError, match="hi <= WAR <= lo fails"):
        plots.comparison_bars(df.assign(lo=0.01), "method", "WAR", "hi", "lo", title="t", ylabel="WAR")
    with pytest.raises(ValueError, match=r"columns \['ci_lo'\]"):
        plots.comparison_bars(df, "method", "WAR", "ci_lo", "hi", title="t", ylabel="WAR")


def test_sweep_lines_bands_and_zero_shot():
    eps = np.arange(8.0)
    df = pd.concat([pd.DataFrame({"eps": eps, "WAR": 0.8 - 0.05 * eps + off, "method": m})
                    for m, off in (("NTS", 0.02), ("WETR", 0.04))])
    df = df.assign(lo=df.WAR - 0.03, hi=df.WAR + 0.03)
    fig = plots.sweep_lines(df, "eps", "WAR", "lo", "hi", "method", zero_shot=0.6, title="noise sweep", ylabel="WAR")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "eps" and ax.get_ylabel() == "WAR"
    assert len(_zero_lines(ax, 0.6)) == 1
    data_lines = [ln for ln in ax.get_lines() if ln.get_label() in ("NTS", "WETR")]
    assert len(data_lines) == 2 and all(len(ln.get_xdata()) == 8 for ln in data_lines)
    bands = ax.collections
    assert len(bands) == 2
    ys = np.concatenate([b.get_paths()[0].vertices[:, 1] for b in bands])
    assert ys.min() >= df.lo.min() - 1e-9 and ys.max() <= df.hi.max() + 1e-9


def test_overlay_one_scale_across_frames_and_one_colorbar(real):
    s, lay = real
    nv = len(lay.visual_grid)
    vals = np.where(lay.visual_grid[:, 0] == 0, 0.1, 5.0) + np.linspace(0, 0.5, nv)  # frame 1 is much hotter
    fig = plots.overlay_tokens(s, lay, values=vals, title="a_pos", cbar_label="attention")
    ims = [im for ax in fig.axes for im in ax.get_images() if im.get_gid() == "emolens-overlay"]
    assert len(ims) == s.frames.shape[0]
    assert [im.get_clim() for im in ims] == [pytest.approx((vals.min(), vals.max()))] * len(ims)
    cbs = _colorbars(fig)
    assert len(cbs) == 1 and cbs[0].get_ylabel() == "attention"
    # inside a caller's grid: no colourbar of its own, the caller's limits
    fig2, axes = plt.subplots(1, s.frames.shape[0])
    plots.overlay_tokens(s, lay, values=vals, ax_row=axes, vmin=-1.0, vmax=10.0)
    assert not _colorbars(fig2)
    assert {im.get_clim() for ax in axes for im in ax.get_images() if im.get_gid()} == {(-1.0, 10.0)}
    with pytest.raises(ValueError, match="values has 3 entries but the layout has"):
        plots.overlay_tokens(s, lay, values=np.zeros(3))


def test_small_multiples_share_one_norm_and_one_colorbar(real):
    s, lay = real
    nv = len(lay.visual_grid)
    score = np.random.default_rng(0).random(nv)
    ratios = {"p_v=0.03": 0.03, "p_v=0.25": 0.25, "p_v=0.5": 0.5}
    kept = {k: score >= np.quantile(score, 1 - r) for k, r in ratios.items()}
    values = {k: np.where(m, score, np.nan) * (i + 1) for i, (k, m) in enumerate(kept.items())}  # rows differ in range
    fig = plots.small_multiples(s, lay, values, selected_by_title=kept, cbar_label="s_i", suptitle="WETR Fig. 3")
    T = s.frames.shape[0]
    panels = [a for a in fig.axes if a.get_label() != "<colorbar>"]
    assert len(panels) == 3 * T
    ims = [im for a in panels for im in a.get_images() if im.get_gid() == "emolens-overlay"]
    assert len(ims) == 3 * T
    finite = np.concatenate([v[np.isfinite(v)] for v in values.values()])
    assert [im.get_clim() for im in ims] == [pytest.approx((finite.min(), finite.max()))] * len(ims)
    assert {(im.norm.vmin, im.norm.vmax) for im in ims} == {ims[0].get_clim()}
    assert len(_colorbars(fig)) == 1 and _colorbars(fig)[0].get_ylabel() == "s_i"
    # the kept tokens of each row are outlined: one lime box per kept token
    for r, name in enumerate(ratios):
        boxes = sum(1 for a in panels[r * T:(r + 1) * T] for p in a.patches
                    if matplotlib.colors.same_color(p.get_edgecolor(), "lime"))
        assert boxes == int(kept[name].sum()) > 0
    with pytest.raises(ValueError, match="values_by_title lacks"):
        plots.small_multiples(s, lay, {"a": score}, selected_by_title={"b": kept["p_v=0.5"]})


def test_attention_heatmap_labelled_axes_and_colorbar():
    m = np.random.default_rng(1).random((8, 40))
    fig = plots.attention_heatmap(m, xlabels=[f"token_{j}" for j in range(40)], title="answer row")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "key token" and ax.get_ylabel() == "layer"
    cbs = _colorbars(fig)
    assert len(cbs) == 1 and cbs[0].get_ylabel() == "attention"
    assert _no_overlap(fig, ax.get_xticklabels())
    fig = plots.attention_heatmap(m[:, :4], xlabel="head", ylabel="layer", cbar_label="log10 mass", vmin=0, vmax=1)
    assert fig.axes[0].get_xlabel() == "head" and _colorbars(fig)[0].get_ylabel() == "log10 mass"
    with pytest.raises(ValueError, match="non-empty xlabel"):
        plots.attention_heatmap(m, xlabel="")
