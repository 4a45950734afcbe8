"""MoSEAR step by step (notebook 05): ``emolens.analysis.mosear``.

* ``head_table`` is Eqs. (5)-(7) (numpy loops as the reference, and ``reallocate``'s own info);
* ``reallocation_report`` is zero on AR's closed form and catches violations;
* ``evaluate_grid`` caches runs and returns the tidy table (on the embedded model).
"""
import numpy as np
import pytest
import torch

from emolens.analysis.mosear import evaluate_grid, head_table, reallocation_report
from emolens.layout import TokenLayout
from emolens.methods.ar import reallocate, reallocate_head
from emolens.models import load_model


@pytest.fixture(scope="module")
def lm():
    return load_model("emolens-tiny", device="cpu")


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
