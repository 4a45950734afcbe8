"""Helpers of notebooks 04 (SEPM) and 05 (AR): ``emolens.nbhelpers_sepm_ar``.

* ``SepmLab`` reproduces ``SEPM.predict`` (labels, branches, dropping maps) for every kind of
  configuration (alpha, beta, strategy, CCI/FP/VTA switches), reuses forwards, and with CCI, FP and
  VTA off equals zero-shot;
* ``cue_survival`` and ``occlude`` on hand-made cases;
* ``head_table`` is Eqs. (5)-(7) (numpy loops as the reference, and ``reallocate``'s own info);
* ``reallocation_report`` is zero on AR's closed form and catches violations;
* ``evaluate_grid`` caches runs and returns the tidy table.
"""
import numpy as np
import pytest
import torch

from emolens.data import load_dataset
from emolens.evaluate import evaluate
from emolens.layout import TokenLayout
from emolens.methods import Task, get_method
from emolens.methods.ar import reallocate, reallocate_head
from emolens.models import load_model
from emolens.nbhelpers_sepm_ar import (SepmLab, cue_survival, evaluate_grid, head_table, occlude,
                                       reallocation_report)
from emolens.sample import Sample

N = 20  # two chunks at batch_size 16: exercises the chunking


@pytest.fixture(scope="module")
def lm():
    return load_model("emolens-tiny", device="cpu")


@pytest.fixture(scope="module")
def emoset():
    ds = load_dataset("world-emoset", split="test", limit=N)
    return ds, [ds[i] for i in range(len(ds))], Task.from_dataset(ds)


@pytest.fixture(scope="module")
def lab(lm, emoset):
    _, samples, task = emoset
    return SepmLab(lm, samples, task)


CONFIGS = [{}, {"alpha": 0.0}, {"alpha": 0.3}, {"beta": 0.4}, {"beta": 0.0}, {"strategy": "query"},
           {"strategy": "random", "beta": 0.3, "seed": 3}, {"cci": False}, {"fp": False}, {"vta": False},
           {"cci": False, "vta": False}, {"fp": False, "vta": False}, {"cci": False, "fp": False, "vta": False}]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_sepmlab_reproduces_sepm_predict(lm, emoset, lab, cfg):
    ds, samples, task = emoset
    ref = evaluate(lm, ds, "sepm", cfg, limit=N, progress=False)["predictions"]
    got = lab.run(**cfg)
    assert got["label"] == [q["label"] for q in ref]
    assert got["branch"] == [q["extra"]["branch"] for q in ref]
    assert got["dropped"] == [q["extra"]["dropped"] for q in ref]
    assert got["k"] == [q["extra"]["k"] for q in ref]
    if cfg.get("cci", True):
        assert np.allclose(got["confidence"], [q["extra"]["confidence"] for q in ref])
        assert got["coarse"] == [q["extra"]["coarse"] for q in ref]
    else:
        assert all(c is None for c in got["confidence"])
    assert got["accuracy"] == pytest.approx(np.mean([q["label"] == q["gold"] for q in ref]))
    assert got["gold"] == [s.label for s in samples]


def test_sepmlab_reuses_forwards_and_matches_zero_shot(lm, emoset):
    ds, samples, task = emoset
    lab = SepmLab(lm, samples, task)
    lab.run()
    n = lab.forwards
    assert n == 4                                   # stage 1 + stage 2, two chunks each
    lab.run()
    assert lab.forwards == n                        # identical configuration: all cached
    lab.run(alpha=0.3)                              # every sample ambiguous: stage 1 reused
    assert lab.forwards <= n + 2
    for a in (0.0, 0.05, 0.1, 0.2):                 # both branches of every sample are cached now
        lab.run(alpha=a)
    assert lab.forwards <= n + 4
    zs = evaluate(lm, ds, "zero-shot", limit=N, progress=False)["predictions"]
    assert lab.run(cci=False, fp=False, vta=False)["label"] == [q["label"] for q in zs]


def test_sepmlab_rejects_bad_params(lm, emoset):
    _, samples, task = emoset
    lab = SepmLab(lm, samples[:2], task)
    with pytest.raises(ValueError, match="beta"):
        lab.run(beta=1.5)
    with pytest.raises(ValueError, match="strategy"):
        lab.run(strategy="nope")
    with pytest.raises(ValueError):
        SepmLab(lm, [], task)


def test_cue_survival():
    cue = [np.array([1, 1, 0, 0], bool), np.array([0, 1, 0, 0], bool), None]
    out = cue_survival([[0, 2], [3], [1]], cue)
    assert out["cue_kept"] == pytest.approx((0.5 + 1.0) / 2)
    assert out["dropped_is_cue"] == pytest.approx(1 / 3)
    assert out["cue_rate"] == pytest.approx(3 / 8)
    empty = cue_survival([[], []], cue[:2])
    assert empty["cue_kept"] == 1.0 and np.isnan(empty["dropped_is_cue"])


def test_occlude_paints_exactly_the_dropped_patches():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(2, 8, 8, 3), dtype=np.uint8)
    s = Sample(uid="x", frames=frames)
    grid = np.stack(np.meshgrid(np.arange(2), np.arange(2), np.arange(2), indexing="ij"), -1).reshape(-1, 3)
    lay = TokenLayout(seq_len=9, visual=np.arange(1, 9), visual_grid=grid)
    out = occlude(s, lay, [1, 6], fill=7)
    assert np.array_equal(s.frames, frames)                       # the original is untouched
    changed = np.any(out.frames != frames, axis=-1)
    expect = np.zeros((2, 8, 8), bool)
    expect[0, 0:4, 4:8] = True                                    # token 1 = (frame 0, row 0, col 1)
    expect[1, 4:8, 0:4] = True                                    # token 6 = (frame 1, row 1, col 0)
    assert np.array_equal(out.frames[expect], np.full((expect.sum(), 3), 7))
    assert not changed[~expect].any()


def _random_rows(seed, H=4, K=12):
    rng = np.random.default_rng(seed)
    p = torch.softmax(torch.as_tensor(rng.normal(size=(H, K)) * 2), -1)
    return p


def test_head_table_is_eq5_to_7():
    lay = TokenLayout(seq_len=12, visual=[1, 2, 3, 4, 5], audio=[6, 7], instruction=[0, 8, 9, 10, 11])
    rows = {l: _random_rows(l) for l in range(3)}
    for tau in (0.0, 0.3, 1.0, 5.0):
        t = head_table(rows, lay, tau)
        assert len(t) == 12 and list(t.columns[:2]) == ["layer", "head"]
        for l, w in rows.items():
            w = w.numpy()
            s_a, s_v = w[:, lay.audio].sum(1), w[:, lay.visual].sum(1)
            c = s_a.sum() / s_v.sum()
            sub = t[t["layer"] == l]
            assert np.allclose(sub["c_h"], s_a / s_v) and np.allclose(sub["c"], c)
            assert list(sub["biased"]) == [bool(c > tau and ch > c) for ch in s_a / s_v]
            src = torch.zeros(12, dtype=torch.bool); src[lay.audio] = True
            tgt = torch.zeros(12, dtype=torch.bool); tgt[lay.visual] = True
            _, info = reallocate(rows[l][None, :, None, :], src, tgt, tau)
            assert list(sub["biased"]) == info["biased"][0, :, 0].tolist()


def test_reallocation_report():
    src, tgt = np.array([0, 1]), np.array([2, 3, 4])
    w = torch.tensor([0.3, 0.1, 0.05, 0.1, 0.05, 0.4], dtype=torch.float64)
    c = 0.5
    w2, d = reallocate_head(w, src, tgt, c)
    rep = reallocation_report(w, w2, src, tgt, c)
    for k in ("row_sum", "eq8", "eq9", "eq10", "eq11", "share_A", "share_V", "other"):
        assert rep[k] < 1e-12, (k, rep)
    assert rep["delta"] == pytest.approx(float(d)) and rep["S_A_new"] / rep["S_V_new"] == pytest.approx(c)
    bad = w2.clone()
    bad[2], bad[3] = bad[2] + 0.01, bad[3] - 0.01                   # same totals, shares changed
    rep = reallocation_report(w, bad, src, tgt, c)
    assert rep["eq11"] > 1e-3 and rep["share_V"] > 1e-3 and rep["eq9"] < 1e-12
    bad = w2.clone()
    bad[5] += 0.01                                                  # another key moved
    rep = reallocation_report(w, bad, src, tgt, c)
    assert rep["other"] == pytest.approx(0.01) and rep["row_sum"] == pytest.approx(0.01)


def test_evaluate_grid_caches(lm):
    cfgs = {"zs": {"method": "zero-shot"}, "AR": {"method": "ar", "tau": 1e9}}
    t, cache = evaluate_grid(lm, "world-camer", cfgs, ["video-aligned", "consistent"], limit=4)
    assert list(t.columns) == ["subset", "config", "war", "uar", "avg", "n"] and len(t) == 4
    assert (t["n"] == 4).all() and np.allclose(t["avg"], (t["war"] + t["uar"]) / 2)
    n_runs = len(cache)
    t2, cache = evaluate_grid(lm, "world-camer", {"again": {"method": "ar", "tau": 1e9}}, ["video-aligned"], limit=4,
                              cache=cache)
    assert len(cache) == n_runs and t2["war"].iloc[0] == t[(t["config"] == "AR") & (t["subset"] == "video-aligned")]["war"].iloc[0]
    # AR above every layer ratio is zero-shot
    zs = t[t["config"] == "zs"]["war"].values
    assert np.allclose(zs, t[t["config"] == "AR"]["war"].values)
