"""Notebook 05's study helpers (issue 14): ``emolens.analysis.mosear``'s intervals, verdict rule, middle
third, variant loading and the Fig. 3c token-imbalance study, on the real embedded model."""
import numpy as np
import pytest

from emolens.analysis.mosear import (claim_verdict, evaluate_grid, imbalance_study, load_variants, mean_ci,
                                     middle_third)
from emolens.cache import cached_evaluate
from emolens.data import load_dataset
from emolens.methods import Task
from emolens.methods.ar import uap_profile
from emolens.models import load_model


@pytest.fixture(scope="module")
def lm():
    return load_model("emolens-tiny", device="cpu")


def test_middle_third_is_the_regime_cards_range():
    assert middle_third(8) == [2, 3, 4]          # emolens card: [L//3, 2L//3)
    assert middle_third(32) == list(range(10, 21))
    assert middle_third(1) == [0] and middle_third(2) == [0] and middle_third(3) == [1]
    with pytest.raises(ValueError, match="at least one layer"):
        middle_third(0)


@pytest.mark.parametrize("parts, want", [
    ([(0.05, 0.01, 0.09, +1)], "HELD"),
    ([(-0.05, -0.09, -0.01, -1)], "HELD"),                              # claimed < 0 and it is
    ([(0.05, 0.01, 0.09, +1), (0.0, -0.02, 0.02, +1)], "UNRESOLVED"),   # one interval contains 0
    ([(0.05, 0.01, 0.09, +1), (-0.03, -0.05, -0.01, +1)], "FAILED"),   # one reversed
    ([(0.03, 0.01, 0.05, -1)], "FAILED"),
    ([(0.0, 0.0, 0.0, +1)], "UNRESOLVED"),                              # a method that changed nothing
    ([(0.1, float("nan"), 0.2, +1)], "UNRESOLVED"),
    ([], "UNRESOLVED"),
])
def test_claim_verdict_follows_the_verdict_rules(parts, want):
    assert claim_verdict(parts) == want


def test_claim_verdict_refuses_a_direction_that_is_not_a_sign():
    with pytest.raises(ValueError, match="direction"):
        claim_verdict([(0.1, 0.0, 0.2, 2)])


def test_mean_ci_brackets_the_mean_and_narrows_with_n():
    rng = np.random.default_rng(0)
    small, large = rng.normal(1.0, 1.0, 30), rng.normal(1.0, 1.0, 3000)
    m, lo, hi = mean_ci(small)
    assert m == pytest.approx(small.mean()) and lo < m < hi
    m2, lo2, hi2 = mean_ci(large)
    assert hi2 - lo2 < (hi - lo) / 4 and lo2 < 1.0 < hi2
    assert all(np.isnan(mean_ci([])))


def test_load_variants_reports_what_is_missing():
    loaded, missing = load_variants(["emolens-tiny", "emolens-tiny-audio999"], device="cpu")
    assert list(loaded) == ["emolens-tiny"] and list(missing) == ["emolens-tiny-audio999"]
    assert "\n" not in missing["emolens-tiny-audio999"] and missing["emolens-tiny-audio999"]


def test_evaluate_grid_intervals_and_paired_deltas(lm, tmp_path):
    cfgs = {"zs": {"method": "zero-shot"}, "PAI": {"method": "pai", "alpha": 2.0}}
    t, cache = evaluate_grid(lm, "world-camer", cfgs, ["video-aligned"], limit=12, ci=True, baseline="zs",
                             n_boot=200, cache_dir=tmp_path)
    assert {"war_lo", "war_hi", "avg_lo", "avg_hi", "delta", "delta_lo", "delta_hi"} <= set(t.columns)
    assert (t["war_lo"] <= t["war"]).all() and (t["war"] <= t["war_hi"]).all()
    assert (t["avg_lo"] <= t["avg"]).all() and (t["avg"] <= t["avg_hi"]).all()
    zs = t[t["config"] == "zs"].iloc[0]
    assert zs["delta"] == 0 and zs["delta_lo"] == 0 and zs["delta_hi"] == 0
    pai = t[t["config"] == "PAI"].iloc[0]
    assert pai["delta"] == pytest.approx(pai["war"] - zs["war"])
    # every number is the stored cached evaluation
    direct = cached_evaluate(lm, cache[("data", "video-aligned")], "pai", {"alpha": 2.0}, limit=12, cache_dir=tmp_path)
    assert direct["cache"]["hit"] and direct["metrics"]["war"] == pai["war"]
    with pytest.raises(ValueError, match="baseline"):
        evaluate_grid(lm, "world-camer", cfgs, ["video-aligned"], limit=4, baseline="nope", cache_dir=tmp_path)


def test_imbalance_study_conserves_mass_and_reuses_a_profile(lm, tmp_path):
    n = 10
    kw = dict(n_eval=n, n_attn=n, n_boot=200, cache_dir=tmp_path)
    out = imbalance_study({"tiny": lm}, "world-camer", ["video-aligned", "audio-aligned"], **kw)
    att, war = out["attention"], out["war"]
    assert list(war["subset"]) == ["video-aligned", "audio-aligned"] and (war["n"] == n).all()
    assert (war["war_lo"] <= war["war"]).all() and (war["war"] <= war["war_hi"]).all()
    cfg = lm.model.config
    assert (att["audio_tokens"] == getattr(cfg, "audio_tokens", 1)).all()
    allrow = att[att["samples"] == "all"].iloc[0]
    assert allrow["n"] == n
    # per-token attention x token count = total attention of the group (Eq. 1), for both groups
    assert allrow["per_token_audio"] * allrow["audio_tokens"] == pytest.approx(allrow["total_audio"], rel=1e-9)
    assert allrow["per_token_visual"] * allrow["visual_tokens"] == pytest.approx(allrow["total_visual"], rel=1e-9)
    assert 0 < allrow["total_audio"] + allrow["total_visual"] <= 1
    nfail = att[att["samples"] == "failures"].iloc[0]["n"]
    zs = out["results"][("tiny", "video-aligned")]
    # the failures of the attention forward are the zero-shot run's own failures (same query, same samples)
    assert nfail == sum(q["label"] != q["gold"] for q in zs["predictions"])
    # a profile of the same samples is reused and gives the same table
    ds = load_dataset("world-camer", subset="video-aligned", limit=n)
    prof = uap_profile(lm, [ds[i] for i in range(len(ds))], Task.from_dataset(ds), middle=middle_third(lm.num_layers))
    again = imbalance_study({"tiny": lm}, "world-camer", ["video-aligned", "audio-aligned"], profiles={"tiny": prof}, **kw)
    assert np.allclose(again["attention"].drop(columns=["model", "samples"]).to_numpy(dtype=float),
                       att.drop(columns=["model", "samples"]).to_numpy(dtype=float), equal_nan=True)
    with pytest.raises(ValueError, match="same samples"):
        imbalance_study({"tiny": lm}, "world-camer", ["video-aligned"], profiles={"tiny": prof}, n_eval=4, n_attn=4,
                        cache_dir=tmp_path)
    with pytest.raises(ValueError, match="at least one model"):
        imbalance_study({}, "world-camer", ["video-aligned"], n_eval=4, n_attn=4)
