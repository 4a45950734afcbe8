"""Notebook 04's reading helpers (``emolens.analysis.sepm``): the restricted branch's
error split and confusion matrices, the shared-scale figures, and ``SepmLab.result`` in evaluate's
result shape (its intervals from ``emolens.cache``)."""
import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from emolens.analysis.sepm import SepmLab, confusion_pair, dropping_grid, restricted_confusion  # noqa: E402
from emolens.layout import TokenLayout  # noqa: E402
from emolens.sample import Sample  # noqa: E402

LABELS = ["amusement", "awe", "anger", "fear"]
VALENCE = {"amusement": "positive", "awe": "positive", "anger": "negative", "fear": "negative"}


def _res(golds, labels, branches=None, coarse=None):
    preds = []
    for i, (g, a) in enumerate(zip(golds, labels)):
        p = {"uid": f"u{i}", "gold": g, "label": a}
        if branches is not None:
            p["extra"] = {"branch": branches[i], "coarse": coarse[i]}
        preds.append(p)
    return {"predictions": preds}


def test_restricted_confusion_splits_the_errors():
    gold = ["amusement", "awe", "anger", "fear", "anger", "awe"]
    # SEPM: sample 1 restricted to the wrong valence (a coarse error), sample 3 within-valence error,
    # sample 5 ambiguous (left out)
    sepm = _res(gold, ["amusement", "anger", "anger", "anger", "anger", "fear"],
                ["positive", "negative", "negative", "negative", "negative", "ambiguous"],
                ["positive", "negative", "negative", "negative", "negative", "positive"])
    zs = _res(gold, ["awe", "awe", "amusement", "fear", "anger", "awe"])
    rc = restricted_confusion(sepm, zs, LABELS, VALENCE)
    assert rc["n"] == 5 and rc["mask"].tolist() == [True] * 5 + [False]
    assert rc["sepm"] == {"correct": 3, "cross_valence": 1, "within_valence": 1}
    assert rc["zero_shot"] == {"correct": 3, "cross_valence": 1, "within_valence": 1}
    assert rc["cm_sepm"].sum() == rc["cm_zero_shot"].sum() == 5
    assert np.trace(rc["cm_sepm"]) == 3
    assert rc["cm_sepm"][LABELS.index("awe"), LABELS.index("anger")] == 1  # gold awe, predicted anger
    assert rc["cm_zero_shot"][LABELS.index("anger"), LABELS.index("amusement")] == 1


def test_restricted_confusion_refuses_unpaired_runs_and_unknown_labels():
    sepm = _res(["awe"], ["awe"], ["positive"], ["positive"])
    with pytest.raises(ValueError, match="same samples"):
        restricted_confusion(sepm, {"predictions": [{"uid": "other", "gold": "awe", "label": "awe"}]}, LABELS, VALENCE)
    with pytest.raises(ValueError, match="no valence group"):
        restricted_confusion(sepm, _res(["awe"], ["awe"]), LABELS, {"anger": "negative"})


def test_confusion_pair_one_scale_one_colourbar_labelled_axes():
    a = np.array([[3, 1, 0, 0], [0, 2, 0, 0], [0, 0, 0, 0], [1, 0, 0, 5]])
    fig = confusion_pair({"A": a, "B": a.T}, LABELS)
    heat = [ax for ax in fig.axes if ax.get_xlabel() == "predicted"]
    assert len(heat) == 2 and all(ax.get_ylabel() == "gold" for ax in heat)
    assert len(fig.axes) == 3  # two heatmaps + one colourbar
    clims = {ax.collections[0].get_clim() for ax in heat}
    assert clims == {(0.0, 1.0)}  # row-normalised, one scale
    texts = [t.get_text() for t in heat[0].texts]
    assert texts[:2] == ["3", "1"]  # counts annotated
    with pytest.raises(ValueError, match="shape"):
        confusion_pair({"A": np.zeros((2, 2))}, LABELS)


def _toy(uid, label, seed):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, size=(1, 8, 8, 3), dtype=np.uint8)
    grid = np.stack(np.meshgrid([0], np.arange(4), np.arange(4), indexing="ij"), -1).reshape(-1, 3)
    cue = np.zeros(16, bool)
    cue[5] = True
    return Sample(uid=uid, frames=frames, label=label), TokenLayout(seq_len=17, visual=np.arange(1, 17),
                                                                    visual_grid=grid, cue_visual=cue)


def test_dropping_grid_shares_one_scale_and_drops_the_argmin():
    (s1, l1), (s2, l2) = _toy("a", "awe", 0), _toy("b", "fear", 1)
    p1 = np.linspace(0.0, 0.5, 16)
    p2 = np.linspace(1.0, 2.0, 16)[::-1]
    fig, dropped = dropping_grid([s1, s2], [l1, l2], [p1, p2], [0.25, 0.5])
    heat = [im for ax in fig.axes for im in ax.images if im.get_gid() == "emolens-overlay"]
    assert len(heat) == 2 and {im.get_clim() for im in heat} == {(0.0, 2.0)}  # one scale over both samples
    assert dropped[0][0].tolist() == [0, 1, 2, 3] and dropped[1][0].tolist() == [12, 13, 14, 15]
    assert [len(d) for d in dropped[0]] == [4, 8]
    assert sum(1 for ax in fig.axes if ax.get_label() == "<colorbar>") == 1
    with pytest.raises(ValueError, match="one layout"):
        dropping_grid([s1], [l1, l2], [p1], [0.2])


def test_sepmlab_result_has_evaluates_shape():
    from emolens.cache import result_ci
    from emolens.data import load_dataset
    from emolens.methods import Task
    from emolens.models import load_model

    lm = load_model("emolens-tiny", device="cpu")
    ds = load_dataset("world-emoset", split="test", limit=6)
    samples = [ds[i] for i in range(len(ds))]
    lab = SepmLab(lm, samples, Task.from_dataset(ds), batch_size=3)
    r = lab.run(beta=0.25)
    res = lab.result(beta=0.25)
    assert [p["uid"] for p in res["predictions"]] == [s.uid for s in samples]
    assert [p["label"] for p in res["predictions"]] == r["label"]
    assert [p["extra"]["dropped"] for p in res["predictions"]] == r["dropped"]
    acc, lo, hi = result_ci(res, "war", n_boot=200)
    assert acc == pytest.approx(r["accuracy"]) and lo <= acc <= hi
