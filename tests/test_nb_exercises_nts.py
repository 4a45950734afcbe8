"""Notebooks 01 (NTS) and 02 (STR), issue 14: the helpers their comparison and "What we found" cells
use (``emolens.analysis.wetr``: verdict words, per-sample selection and gamma tables scored against the
world's ground truth, pooled shares with sample-bootstrap intervals, the exercises' check), and the
exercises' collapsed solutions, which must equal the library's Eq. 4, 6 and 9-11.

Hand cases for the pure parts; on the embedded emolens-tiny model, the tables must agree with what
``evaluate`` itself reports (selection precision) and with the method's own per-token records.
"""
from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from emolens.analysis import wetr

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


# =========================================================================== verdict words
@pytest.mark.parametrize("lo, hi, direction, word", [
    (0.01, 0.2, +1, "HELD"), (-0.2, -0.01, +1, "FAILED"), (-0.1, 0.1, +1, "UNRESOLVED"),
    (0.0, 0.1, +1, "UNRESOLVED"),                       # touching 0 is not excluding it
    (-0.2, -0.01, -1, "HELD"), (0.01, 0.2, -1, "FAILED"), (float("nan"), 0.2, +1, "UNRESOLVED"),
])
def test_verdict_follows_the_interval(lo, hi, direction, word):
    assert wetr.verdict(lo, hi, direction) == word


def test_verdict_refuses_a_bad_direction_and_combines():
    with pytest.raises(ValueError, match="direction"):
        wetr.verdict(0.1, 0.2, 2)
    assert wetr.combine_verdicts(["HELD", "HELD"]) == "HELD"
    assert wetr.combine_verdicts(["HELD", "UNRESOLVED"]) == "UNRESOLVED"
    assert wetr.combine_verdicts(["UNRESOLVED", "FAILED", "HELD"]) == "FAILED"
    assert wetr.combine_verdicts([]) == "UNRESOLVED"


# =========================================================================== pooled shares
def test_share_ci_is_the_pooled_share_with_a_sample_bootstrap():
    num, den = np.array([1, 0, 2, 1]), np.array([2, 1, 2, 3])
    v, lo, hi = wetr.share_ci(num, den, n_boot=500, seed=0)
    assert v == pytest.approx(4 / 8)
    assert 0 <= lo <= v <= hi <= 1 and hi > lo
    # the difference to a reference share is paired over the same samples
    d, dlo, dhi = wetr.share_ci(num, den, np.array([0, 0, 1, 0]), np.array([4, 4, 4, 4]), n_boot=500, seed=0)
    assert d == pytest.approx(4 / 8 - 1 / 16)
    assert dlo <= d <= dhi
    # identical shares give exactly 0 in every resample
    assert wetr.share_ci(num, den, num, den, n_boot=50) == (0.0, 0.0, 0.0)
    # an empty denominator is NaN, not a crash
    assert math.isnan(wetr.share_ci([0, 0], [0, 0], n_boot=20)[0])
    with pytest.raises(ValueError, match="per-sample counts"):
        wetr.share_ci([1, 2], [1])


# =========================================================================== the exercises' check
def test_check_exercise_falls_back_to_the_solution_and_catches_a_wrong_attempt():
    ref = np.array([0.0, 0.5, 1.0])
    assert "the solution" in wetr.check_exercise(None, torch.tensor(ref), ref, what="Eq. 4")
    assert "your implementation" in wetr.check_exercise(torch.tensor(ref), None, ref, what="Eq. 4")
    with pytest.raises(AssertionError, match="differs from the library"):
        wetr.check_exercise(torch.tensor([0.0, 0.4, 1.0]), None, ref, what="Eq. 4")
    with pytest.raises(AssertionError, match="shape"):
        wetr.check_exercise(torch.tensor([0.0, 1.0]), None, ref, what="Eq. 4")


def _solutions(name: str) -> dict:
    """The functions defined in a notebook's collapsed solution cells (``jupyter={"source_hidden": true}``)."""
    text = (NOTEBOOKS / name).read_text()
    cells = text.split("# %%")
    src = [c.split("\n", 1)[1] for c in cells if c.startswith(' jupyter={"source_hidden": true}')]
    assert src, f"{name} has no collapsed solution cell"
    ns = {"torch": torch, "math": math, "np": np}
    for s in src:
        ast.parse(s)
        exec(compile(s, name, "exec"), ns)  # noqa: S102 - the project's own notebook source
    return ns


def test_nts_solutions_equal_eq4_and_eq6():
    from emolens.methods.nts import contrastive_utility, top_p

    ns = _solutions("01_nts.py")
    g = torch.Generator().manual_seed(3)
    for n in (1, 7, 128):
        a, b = torch.rand(n, generator=g, dtype=torch.float64), torch.rand(n, generator=g, dtype=torch.float64)
        np.testing.assert_allclose(ns["solution_contrastive_utility"](a, b).numpy(), contrastive_utility(a.numpy(), b.numpy(), "minmax"))
        s = torch.round(torch.rand(n, generator=g, dtype=torch.float64) * 5)   # ties: the earlier index wins
        for p in (0.03, 0.07, 0.2, 0.5, 1.0):
            np.testing.assert_array_equal(ns["solution_top_p"](s, p).numpy(), top_p(s.numpy(), p))
    flat = torch.full((5,), 0.3, dtype=torch.float64)
    assert ns["solution_contrastive_utility"](flat, flat * 0).abs().max() == 0


def test_str_solutions_equal_eq9_to_eq11():
    from emolens.methods.reweight import migration_gamma, normalize, overlap_residual, reconstruction_error

    ns = _solutions("02_str.py")
    g = torch.Generator().manual_seed(5)
    q, k = torch.randn(4, 9, 8, generator=g, dtype=torch.float64), torch.randn(2, 9, 8, generator=g, dtype=torch.float64)
    kk = k.repeat_interleave(2, dim=0)
    for src, tgt in (([0, 1, 2], [5, 6]), ([5, 6], [0, 1, 2]), ([3], [7])):
        got = ns["solution_reconstruction_error"](q[:, src], kk[:, src], kk[:, tgt])
        np.testing.assert_allclose(got.numpy(), reconstruction_error(q, k, src, tgt), rtol=1e-10)
    e, gg = torch.rand(7, generator=g, dtype=torch.float64) * 3, torch.rand(7, generator=g, dtype=torch.float64)
    for delta in (0.0, 1.0, 4.0, 8.0):
        ref = migration_gamma(*overlap_residual(gg.numpy(), normalize(e.numpy())), delta, "clamp0")[0]
        np.testing.assert_allclose(ns["solution_gamma"](e, gg, delta).numpy(), ref, rtol=1e-12)


# =========================================================================== on the embedded model
@pytest.fixture(scope="module")
def runs():
    from emolens.data import load_dataset
    from emolens.evaluate import evaluate
    from emolens.methods import Task
    from emolens.methods.common import fine_prompts
    from emolens.models import TINY_DIR, load_model

    if not (Path(TINY_DIR) / "config.json").is_file():
        pytest.skip("the embedded emolens-tiny checkpoint is missing")
    lm = load_model("emolens-tiny", device="cpu")
    ds = load_dataset("world-mer", split="test", limit=6)   # the manifest's own nuisance (world v2's default)
    samples, task = [ds[i] for i in range(len(ds))], Task.from_dataset(ds)
    out = {m: evaluate(lm, ds, m, {"p_v": 0.1}, progress=False) for m in ("nts", "str", "random-select")}
    layouts = lm.encode(samples, fine_prompts(samples, task, contrastive=True)).layouts
    return out, layouts


def test_selection_table_agrees_with_evaluate(runs):
    out, layouts = runs
    for m in ("nts", "random-select"):
        t = wetr.selection_table(out[m], layouts)
        assert len(t) == len(layouts)
        assert (t["kept_visual"] == [p["extra"]["k_visual"] for p in out[m]["predictions"]]).all()
        assert (t["hit_visual"] <= t["kept_visual"]).all() and (t["hit_visual"] <= t["cue_visual"]).all()
        assert (t["cue_visual"] == [int(x.cue_visual.sum()) for x in layouts]).all()
        per_sample = (t["hit_visual"] / t["kept_visual"]).mean()
        assert per_sample == pytest.approx(out[m]["selection"]["precision"], abs=1e-12)
    with pytest.raises(ValueError, match="layouts"):
        wetr.selection_table(out["nts"], layouts[:-1])


def test_gamma_cue_table_matches_the_str_records(runs):
    out, layouts = runs
    t = wetr.gamma_cue_table(out["str"], layouts)
    sel = wetr.selection_table(out["str"], layouts)
    assert len(t) == int(sel["kept_visual"].sum() + sel["kept_content"].sum())
    for i, p in enumerate(out["str"]["predictions"]):
        st = p["extra"]["nts"][0]["str"]
        got = t[(t["sample"] == i) & (t.modality == "content")]
        np.testing.assert_allclose(got["gamma"], st["gamma_content"])
        assert got["cue"].tolist() == [bool(layouts[i].cue_content[j]) for j in p["extra"]["nts"][0]["kept_content"]]
    assert set(t["weighting"]) <= {"DW", "NEU", "UW"}
    assert (t[t.anchor]["gamma"] >= 1.0).all()
    with pytest.raises(ValueError, match="STR record"):
        wetr.gamma_cue_table(out["nts"], layouts)
