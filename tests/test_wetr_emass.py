"""EMass read honestly (notebook 03, WETR Fig. 6): ``emolens.analysis.wetr.emass_parts``,
``attention_and_mask`` and ``emass_decomposition``.

Hand cases for the arithmetic (the mask alone changes EMass; the evidence removed entirely gives NaN,
not 0), and on the embedded model: the frozen readout equals the existing ``emass_batch`` on a full
capture, a method that drops nothing leaves the restricted readout equal to the frozen one, WETR with both
modules off is the frozen model, NTS keeps ceil(p_v N_v) visual tokens and EMass on its run is undefined
exactly where the mask removed the whole evidence set.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from emolens.analysis import wetr


# =========================================================================== hand cases
def _rows(q_pos, q_neg, answer=None):
    d = {"q_pos": np.asarray(q_pos, float), "q_neg": np.asarray(q_neg, float)}
    if answer is not None:
        d["answer"] = np.asarray(answer, float)
    return d


def test_emass_parts_separates_the_mask_from_reallocation():
    L = 8
    K = np.array([2, 3])
    uni = np.full(L, 1 / L)
    adm = np.array([1, 0, 1, 0, 1, 1, 1, 1], bool)            # the mask drops key 1 and evidence key 3
    # the method's run: q_pos puts half its mass on evidence key 2, q_neg stays uniform over the kept keys
    run_pos = np.where(adm, 0.5 / 5, 0.0)
    run_pos[2] = 0.5
    run_neg = np.where(adm, 1 / 6, 0.0)
    out = wetr.emass_parts(_rows(uni, uni, uni), _rows(run_pos, run_neg, run_pos), adm, K)
    assert out["emass_base"] == pytest.approx(0.5)            # uniform: no preference for K
    assert out["emass_base_kept"] == pytest.approx(0.5)       # restricted uniform is still uniform
    assert out["emass_method"] == pytest.approx(0.5 / (0.5 + 1 / 6))
    assert (out["k_size"], out["k_kept"]) == (2, 1)
    assert out["answer_k_base"] == pytest.approx(2 / 8) and out["answer_k_base_kept"] == pytest.approx(1 / 6)
    assert out["answer_k_method"] == pytest.approx(0.5)
    # the mask alone: frozen attention that favours K under q_pos; dropping non-evidence keys raises M_pos
    # and M_neg and moves EMass although no attention was re-allocated
    fav = np.array([0.3, 0.3, 0.2, 0.0, 0.05, 0.05, 0.05, 0.05])
    adm2 = np.array([1, 0, 1, 1, 1, 1, 1, 1], bool)
    out2 = wetr.emass_parts(_rows(fav, uni), _rows(fav * adm2, uni * adm2), adm2, K)
    assert out2["emass_base_kept"] == pytest.approx(out2["emass_method"])   # same attention, same keys
    assert out2["emass_base_kept"] != pytest.approx(out2["emass_base"])


def test_emass_parts_nan_when_the_mask_removes_all_evidence():
    L = 6
    uni = np.full(L, 1 / L)
    adm = np.array([1, 1, 0, 0, 1, 1], bool)
    run = np.where(adm, 0.25, 0.0)
    out = wetr.emass_parts(_rows(uni, uni), _rows(run, run), adm, np.array([2, 3]))
    assert np.isnan(out["emass_method"]) and np.isnan(out["emass_base_kept"]) and out["emass_base"] == 0.5
    assert out["k_kept"] == 0 and "answer_k_base" not in out


def test_emass_parts_refuses_mismatched_rows():
    uni = np.full(6, 1 / 6)
    with pytest.raises(ValueError, match="evidence has 5 entries"):
        wetr.emass_parts(_rows(uni, uni), _rows(uni, uni), np.ones(6, bool), np.ones(5, bool))
    with pytest.raises(ValueError, match=r"run\['q_neg'\] must be a \[6\] attention row"):
        wetr.emass_parts(_rows(uni, uni), {"q_pos": uni}, np.ones(6, bool), [1])


# =========================================================================== on the embedded model
@pytest.fixture(scope="module")
def env():
    from emolens.data import load_dataset
    from emolens.methods import Task
    from emolens.models import TINY_DIR, load_model

    if not (Path(TINY_DIR) / "config.json").is_file():
        pytest.skip("the embedded emolens-tiny checkpoint is missing")
    lm = load_model("emolens-tiny", device="cpu")
    ds = load_dataset("world-mer", split="test", limit=6)
    return lm, [ds[i] for i in range(len(ds))], Task.from_dataset(ds)


def test_frozen_readout_equals_emass_batch(env):
    from emolens.analysis.usage import method_attention
    from emolens.methods import get_method

    lm, samples, task = env
    m = get_method("wetr")
    prompts = m.prompts(samples, task)
    batch = lm.encode(samples, prompts)
    last = lm.num_layers - 1
    a, adm, _ = wetr.attention_and_mask(lm, batch, samples, None, layer=-1)
    assert adm.all() and a["q_pos"].shape == (len(samples), batch.layouts[0].seq_len)
    np.testing.assert_allclose(a["answer"].sum(-1), 1.0, atol=1e-5)     # one row: a distribution over keys
    b2, caps, _ = method_attention(lm, samples, prompts, None, layers=[last], rows=("q_pos", "q_neg"))
    ref = wetr.emass_batch(caps, last, b2.layouts)
    got = [wetr.emass_parts({r: v[b] for r, v in a.items()}, {r: v[b] for r, v in a.items()}, adm[b],
                            wetr.evidence_set(lay))["emass_base"] for b, lay in enumerate(batch.layouts)]
    np.testing.assert_allclose(got, ref, atol=1e-6)


def test_decomposition_on_the_model(env):
    from emolens.methods import get_method
    from emolens.methods.nts import keep_count

    lm, samples, task = env
    off = wetr.emass_decomposition(lm, samples, task, get_method("wetr", use_nts=False, use_str=False), batch_size=4)
    np.testing.assert_allclose(off.emass_method, off.emass_base, atol=1e-5)       # both modules off: frozen model
    np.testing.assert_array_equal(off.emass_base_kept, off.emass_base)
    st = wetr.emass_decomposition(lm, samples, task, get_method("wetr", use_nts=False), batch_size=4)
    assert (st.k_kept == st.k_size).all() and (st.kept_visual == st.n_visual).all()   # STR drops nothing
    np.testing.assert_array_equal(st.emass_base_kept, st.emass_base)
    nts = wetr.emass_decomposition(lm, samples, task, get_method("wetr", use_str=False, p_v=0.03), batch_size=4)
    assert len(nts) == len(samples) and nts.uid.tolist() == [s.uid for s in samples]
    assert (nts.kept_visual == nts.n_visual.map(lambda n: keep_count(int(n), 0.03))).all()
    assert (nts.k_kept <= nts.k_size).all() and (nts.hit_visual <= np.minimum(nts.kept_visual, nts.cue_visual)).all()
    assert (nts.emass_method.isna() == (nts.k_kept == 0)).all()
    assert (nts.emass_base_kept.isna() == (nts.k_kept == 0)).all()
    for c in ("emass_base", "emass_method", "emass_base_kept", "answer_k_base", "answer_k_method", "answer_k_base_kept"):
        assert nts[c].dropna().between(0, 1).all(), c
    np.testing.assert_allclose(nts.emass_base, off.emass_base, atol=1e-6)        # same frozen readout


def test_attention_and_mask_refuses_a_layer_before_the_last_trigger(env):
    from emolens.methods import get_method

    lm, samples, task = env
    m = get_method("wetr", n_r=2)
    batch = lm.encode(samples[:2], m.prompts(samples[:2], task))
    last = max(m.trigger_layers(lm.num_layers))
    with pytest.raises(ValueError, match=f"last trigger layer {last}"):
        wetr.attention_and_mask(lm, batch, samples[:2], m, layer=last)
    with pytest.raises(ValueError, match="out of range"):
        wetr.attention_and_mask(lm, batch, samples[:2], None, layer=lm.num_layers)
