"""WETR's NTS (Eq. 4-7), STR (Eq. 9-11) and the WETR loop on the embedded model's real attention.

Properties: NTS keeps exactly max(1, ceil(p n)) visual and content tokens and every instruction and
audio token, and the mask really removes the dropped keys from the later layers; the paper's symbols
on hand cases; the cross-modal term for content tokens is exactly 0 in the causal layout; STR with
delta = 0 is the identity; anchors are clamped; negative gamma handling; dropped tokens have no
influence on the answer after the trigger layer (with controls that show the test can fail); WETR
with both modules off is zero-shot; selection precision / recall against the world's ground truth;
one-line errors for out-of-range hyperparameters and for a prompt without the Q_pos / Q_neg spans.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from emolens import prompts as P
from emolens.answers import answer_logits
from emolens.evaluate import evaluate
from emolens.intervene import AfterLayer, Capture, ResidualScale, intervene
from emolens.methods import Task, available, get_method
from emolens.methods.nts import (contrastive_utility, cross_modal_support, keep_count, normalize_scores,
                                 selection_mask, selection_score, span_attention, top_p)
from emolens.methods.reweight import (anchor_clamp, gate, migration_gamma, normalize, overlap_residual,
                                      reconstruction_error)
from emolens.models import load_model
from emolens.world import EmoWorld


def _model_name() -> str:
    from emolens.models import TINY_DIR

    if (Path(TINY_DIR) / "config.json").is_file():
        return "emolens-tiny"
    env = os.environ.get("EMOLENS_TEST_MODEL")
    if env:
        return env
    pytest.skip("the embedded emolens-tiny checkpoint is missing (set EMOLENS_TEST_MODEL to a tiny checkpoint)")


@pytest.fixture(scope="module")
def lm():
    return load_model(_model_name(), device="cpu")


@pytest.fixture(scope="module")
def data(lm):
    w0, w4 = EmoWorld("mer", eps=0.0), EmoWorld("mer", eps=4.0)
    # different subtitle lengths -> a left-padded batch
    samples = [w0.sample("test", i) for i in range(3)] + [w4.sample("test", 3)]
    task = Task(labels=w0.labels, valence_groups=w0.valence_groups)
    prompts = [P.fine_query(task.labels) for _ in samples]
    batch = lm.encode(samples, prompts)
    assert len({l.pad for l in batch.layouts}) > 1
    return samples, task, batch


@pytest.fixture(scope="module")
def zero_shot(lm, data):
    return answer_logits(lm.model, data[2])


def one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


# =========================================================================== the paper's symbols, hand cases
def test_norm_hand_cases():
    np.testing.assert_allclose(normalize_scores([1.0, 2.0, 3.0]), [0.0, 0.5, 1.0])
    np.testing.assert_allclose(normalize_scores([2.0, 2.0, 2.0]), [0.0, 0.0, 0.0])     # constant -> 0
    np.testing.assert_allclose(normalize_scores([1.0, 3.0], "zscore"), [-1.0, 1.0])
    np.testing.assert_allclose(normalize_scores([5.0, -1.0], "none"), [5.0, -1.0])
    assert normalize_scores([], "minmax").size == 0
    with pytest.raises(ValueError, match="norm"):
        normalize_scores([1.0], "l2")


def test_contrastive_utility_and_score_hand_cases():
    # d = Norm(a_pos - a_neg): [0.4, 0.0, -0.1] -> [1, 0.2, 0]
    d = contrastive_utility([0.5, 0.2, 0.3], [0.1, 0.2, 0.4])
    np.testing.assert_allclose(d, [1.0, 0.2, 0.0])
    # the shared (query-independent) part cancels: adding the same bias to both changes nothing
    np.testing.assert_allclose(contrastive_utility(np.array([0.5, 0.2, 0.3]) + 7, np.array([0.1, 0.2, 0.4]) + 7), d)
    np.testing.assert_allclose(selection_score(d, [0.0, 1.0, 0.5]), [1.0, 1.2, 0.5])
    np.testing.assert_allclose(selection_score(d), d)
    # a_{I->i}: mean over heads and rows
    probs = np.zeros((2, 2, 3))
    probs[0, 0] = [1, 0, 0]
    probs[0, 1] = [0, 1, 0]
    probs[1, 0] = [0, 0, 1]
    probs[1, 1] = [0, 0, 1]
    np.testing.assert_allclose(span_attention(probs), [0.25, 0.25, 0.5])
    batched = torch.zeros(1, 2, 3, 3, dtype=torch.float64)
    batched[0, :, :2] = torch.as_tensor(probs)
    batched[0, :, 2] = 99.0                                            # an invalid padding row
    np.testing.assert_allclose(span_attention(batched, torch.tensor([[True, True, False]]))[0], [0.25, 0.25, 0.5])
    # Eq. 5's cross term: rows of the other modality to this modality's keys, normalised
    np.testing.assert_allclose(cross_modal_support(probs, [0, 2], raw=True), [0.25, 0.5])
    np.testing.assert_allclose(cross_modal_support(probs, [0, 2]), [0.0, 1.0])
    np.testing.assert_allclose(cross_modal_support(np.zeros((2, 0, 3)), [0, 1]), [0.0, 0.0])  # no rows


def test_top_p_hand_cases():
    s = np.arange(32, dtype=float)
    assert top_p(s, 0.03).tolist() == [31]                        # ceil(0.03 * 32) = ceil(0.96) = 1
    assert keep_count(10, 0.2) == 2
    assert keep_count(100, 0.07) == 7                             # 0.07 * 100 = 7.000000000000001 -> 7, not 8
    assert keep_count(10, 0.3) == 3
    assert keep_count(6, 0.25) == 2                               # ceil(1.5)
    assert keep_count(3, 0.01) == 1                               # at least one
    assert keep_count(0, 0.5) == 0
    assert keep_count(2, 0.2, n_ref=6) == 2 and keep_count(1, 0.03, n_ref=32) == 1  # repeated selection
    assert top_p([0.1, 0.9, 0.5, 0.9], 0.5).tolist() == [1, 3]    # returned in position order
    assert top_p([0.7, 0.7, 0.7], 0.3).tolist() == [0]            # ties: earlier position wins
    assert top_p([0.2, 0.1], 1.0).tolist() == [0, 1]
    for bad in (0, -0.1, 1.5):
        with pytest.raises(ValueError) as e:
            top_p(s, bad)
        assert "p = " in one_line(e) and "(0, 1]" in str(e.value)


def test_selection_mask_keeps_everything_outside_the_candidates(data):
    lay = data[2].layouts[0]
    m = selection_mask(lay, lay.visual[[3]], lay.content[[0, 2]])
    assert m[lay.instruction].all() and m[lay.audio].all() and m[: lay.pad].all()
    assert m[lay.visual].sum() == 1 and m[lay.visual[3]]
    assert m[lay.content].tolist() == [i in (0, 2) for i in range(lay.content.size)]
    earlier = np.ones(lay.seq_len, bool)
    earlier[lay.content[0]] = False
    assert not selection_mask(lay, lay.visual[[3]], lay.content[[0, 2]], admitted=earlier)[lay.content[0]]
    with pytest.raises(ValueError, match="kept_visual"):
        selection_mask(lay, lay.content[:1], lay.content[:1])


def test_str_symbols_hand_cases():
    # Eq. 9, one head, one target: alpha = 1, e = ||k_i - k_j||
    k = torch.tensor([[[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]]])
    q = torch.ones(1, 3, 2)
    np.testing.assert_allclose(reconstruction_error(q, k, [0], [1]), [5.0])
    # a target set containing k_i with a very sharp softmax reconstructs it exactly
    qs = torch.tensor([[[30.0, 40.0], [0.0, 0.0], [0.0, 0.0]]])
    k2 = torch.tensor([[[3.0, 4.0], [3.0, 4.0], [-3.0, -4.0]]])
    np.testing.assert_allclose(reconstruction_error(qs, k2, [0], [1, 2], scaling=1.0), [0.0], atol=1e-9)
    # empty target set: nothing predicts it -> ||k_i||
    np.testing.assert_allclose(reconstruction_error(q, k, [0], []), [5.0])
    # GQA: 4 query heads, 2 kv heads; head h uses kv head h // 2; e = mean over the 4 query heads
    g = torch.Generator().manual_seed(0)
    q4, k2h = torch.randn(4, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    src, tgt = [0, 1], [2, 3, 4]
    ref = []
    for h in range(4):
        kk = k2h[h // 2]
        a = torch.softmax(q4[h, src] @ kk[tgt].T / math.sqrt(8), -1)
        ref.append((kk[src] - a @ kk[tgt]).norm(dim=-1))
    np.testing.assert_allclose(reconstruction_error(q4, k2h, src, tgt), torch.stack(ref).mean(0).numpy(), rtol=1e-6)
    np.testing.assert_allclose(normalize([2.0, 4.0, 3.0]), [0.0, 1.0, 0.5])
    # gate: literal sigmoid of the min-max Norm -> [0.5, 0.731]
    np.testing.assert_allclose(gate([0.0, 1.0, 2.0], center=0.0, temp=1.0), 1 / (1 + np.exp(-np.array([0.0, 0.5, 1.0]))))
    np.testing.assert_allclose(gate([0.0, 2.0], center=0.5, temp=0.1), 1 / (1 + np.exp(-np.array([-5.0, 5.0]))))
    # Eq. 10: agreement (high g, low e) gives small r and c
    r, c = overlap_residual([0.9, 0.2, 0.8], [0.0, 0.1, 1.0])
    np.testing.assert_allclose(r, [0.1, 0.72, 0.0])
    np.testing.assert_allclose(c, [0.0, 0.02, 0.8])
    gam, b = migration_gamma(r, c, delta=4.0)
    np.testing.assert_allclose(b, [-0.1, -0.7, 0.8])
    np.testing.assert_allclose(gam, [0.6, 0.0, 4.2])               # 1 - 2.8 < 0 -> clamped at 0
    gam_keep, _ = migration_gamma(r, c, delta=4.0, negative="keep")
    np.testing.assert_allclose(gam_keep, [0.6, -1.8, 4.2])
    np.testing.assert_allclose(migration_gamma(r, c, delta=0.0)[0], [1.0, 1.0, 1.0])
    # anchors: top p_anc by NTS score, gamma >= gamma_anc
    ga, m = anchor_clamp([0.0, 3.0, 0.5, 0.2], [0.9, 0.1, 0.5, 0.8], 0.5, 1.2)
    assert m.tolist() == [True, False, False, True]
    np.testing.assert_allclose(ga, [1.2, 3.0, 0.5, 1.2])
    assert not anchor_clamp([0.0, 0.5], [1.0, 0.0], 0.0, 1.0)[1].any()   # p_anc = 0: no anchors


# =========================================================================== NTS on the model
@pytest.mark.parametrize("p_v,p_t", [(0.03, 0.2), (0.25, 0.5)])
def test_nts_keeps_ceil_p_n_and_every_instruction_and_audio_token(lm, data, p_v, p_t):
    samples, task, batch = data
    m = get_method("nts", p_v=p_v, p_t=p_t)
    l = m.trigger_layers(lm.num_layers)[0]
    assert l == 2                                                  # auto: round(8 * 9/36)
    # also capture the answer row one layer after the trigger: dropped keys get exactly 0 attention
    _, trace = m.forward(lm, batch, samples, extra_ops=[Capture(layers=[l, l + 1], rows="answer", name="ans")])
    adm = trace.decisions["admitted"]
    for b, lay in enumerate(batch.layouts):
        nv, nc = lay.visual.size, lay.content.size
        assert adm[b, lay.visual].sum() == max(1, math.ceil(p_v * nv - 1e-9))
        assert adm[b, lay.content].sum() == max(1, math.ceil(p_t * nc - 1e-9))
        assert adm[b, lay.instruction].all() and adm[b, lay.audio].all() and adm[b, : lay.pad].all()
        dropped = ~adm[b]
        after = trace.get("ans", l + 1).probs[b, :, 0]             # [H, K]
        before = trace.get("ans", l).probs[b, :, 0]
        assert (after[:, torch.from_numpy(dropped)] == 0).all()
        assert (before[:, torch.from_numpy(dropped)] > 0).any()    # layer l itself is untouched
    if p_v == 0.03:  # the paper's p_v on the default model's 128 visual tokens: ceil(3.84) = 4 (a floor would give 3)
        assert all(lay.visual.size == 128 and adm[b, lay.visual].sum() == 4 for b, lay in enumerate(batch.layouts))
    preds = m.predict(lm, samples, task)
    for b, (p, lay) in enumerate(zip(preds, batch.layouts)):
        assert p.selected_visual == adm[b, lay.visual].tolist()
        assert p.selected_content == adm[b, lay.content].tolist()


def test_keep_everything_equals_zero_shot(lm, data, zero_shot):
    samples, _, batch = data
    logits, trace = get_method("nts", p_v=1.0, p_t=1.0).forward(lm, batch, samples)
    assert trace.decisions["admitted"].all()
    torch.testing.assert_close(logits, zero_shot, atol=1e-6, rtol=0)


def test_cross_modal_term_for_content_tokens_is_exactly_zero(lm, data):
    samples, task, batch = data
    m = get_method("nts")
    l = m.trigger_layers(lm.num_layers)[0]
    _, trace = m.forward(lm, batch, samples)
    vc = trace.get("vc", l)
    for b, lay in enumerate(batch.layouts):
        probs = vc.sample(b)
        pos = vc.positions[b][vc.row_valid[b]].numpy()
        rows_v, rows_c = np.isin(pos, lay.visual), np.isin(pos, lay.content)
        raw_c = cross_modal_support(probs[:, rows_v], lay.content, raw=True)   # visual rows -> content keys
        assert raw_c.size == lay.content.size and (raw_c == 0.0).all()         # exactly zero: causal
        assert (cross_modal_support(probs[:, rows_v], lay.content) == 0.0).all()
        raw_v = cross_modal_support(probs[:, rows_c], lay.visual, raw=True)    # content rows -> visual keys
        assert raw_v.max() > 0                                                 # the visual term is real
    for p in m.predict(lm, samples, task):
        assert p.extra["nts"][0]["cross_content_max"] == 0.0
        assert p.extra["nts"][0]["cross_visual_max"] > 0.0


def test_dropped_tokens_have_no_influence_after_the_trigger_layer(lm, data, zero_shot):
    """After NTS at layer l, rescale the dropped tokens' hidden states at layer l's output by random
    factors in [0.2, 5] (an extra callback at the same layer, after NTS's): the answer logits must not
    move. Controls show the test can fail: the same perturbation of the *kept* tokens moves them, and
    perturbing the same tokens without the mask moves them too."""
    samples, _, batch = data
    m = get_method("nts")
    l = m.trigger_layers(lm.num_layers)[0]
    base, trace = m.forward(lm, batch, samples)
    adm = trace.decisions["admitted"]
    rng = np.random.default_rng(0)
    cand = np.zeros_like(adm)
    for b, lay in enumerate(batch.layouts):
        cand[b, lay.visual] = True
        cand[b, lay.content] = True

    def perturb(which):
        def fn(ctx):
            a = ctx.decisions["admitted"]
            target = (~a) if which == "dropped" else (a & cand)
            g = np.ones(a.shape, np.float32)
            g[target] = rng.uniform(0.2, 5.0, int(target.sum()))
            ctx.scale_residual(g, layer=ctx.layer)
        return fn

    out, _ = m.forward(lm, batch, samples, extra_ops=[AfterLayer(l, perturb("dropped"))])
    torch.testing.assert_close(out, base, atol=1e-5, rtol=0)
    out_kept, _ = m.forward(lm, batch, samples, extra_ops=[AfterLayer(l, perturb("kept"))])
    assert (out_kept - base).abs().max() > 1e-3
    g = np.ones(adm.shape, np.float32)
    g[~adm] = rng.uniform(0.2, 5.0, int((~adm).sum()))
    with intervene(lm.model, batch.layouts, [ResidualScale(layer=l, gamma=g)]):
        unmasked = answer_logits(lm.model, batch)
    assert (unmasked - zero_shot).abs().max() > 1e-3


def test_selection_precision_recall_against_ground_truth(lm):
    """evaluate's selection precision / recall equal sklearn's precision_score / recall_score of the
    kept visual tokens, read from an independent forward's mask (``trace.decisions["admitted"]``, not
    the predictions evaluate averages), against the world's ground-truth cue tokens; and they tell
    NTS's selection from its complement (a wrong selection scores differently). The world is version 2
    (the default model's world-mer: 64-px frames, 2 x 8 x 8 = 128 visual tokens), whose cue mask is at
    the model's resolution."""
    from sklearn.metrics import precision_score, recall_score

    w = EmoWorld("mer", eps=0.0, version=2)

    class Listed(list):
        name, labels, valence_groups, modalities = "world-mer", w.labels, w.valence_groups, ("visual", "audio", "text")

    ds = Listed([w.sample("test", i) for i in range(6)])
    m = get_method("nts", p_v=0.25)
    res = evaluate(lm, ds, m, batch_size=6, progress=False)
    batch = lm.encode(list(ds), [P.fine_query(w.labels) for _ in ds])
    _, trace = m.forward(lm, batch, list(ds))
    adm = trace.decisions["admitted"]
    prec, rec, prec_comp = [], [], []
    for b, lay in enumerate(batch.layouts):
        truth = np.asarray(lay.cue_visual, bool).astype(int)
        kept = adm[b, lay.visual].astype(int)
        assert truth.size == lay.visual.size == 128
        assert 0 < truth.sum() < truth.size and kept.sum() == math.ceil(0.25 * lay.visual.size)
        prec.append(precision_score(truth, kept, zero_division=0))
        rec.append(recall_score(truth, kept, zero_division=0))
        prec_comp.append(precision_score(truth, 1 - kept, zero_division=0))
    assert res["selection"]["n"] == len(ds)
    assert res["selection"]["precision"] == pytest.approx(np.mean(prec), abs=1e-12)
    assert res["selection"]["recall"] == pytest.approx(np.mean(rec), abs=1e-12)
    assert abs(np.mean(prec) - np.mean(prec_comp)) > 0.05             # the score separates the two selections
    for p in res["predictions"]:
        assert "_cue_visual" not in p["extra"]                       # consumed by evaluate, not written out


def test_random_select_is_seeded_per_sample_not_per_batch(lm, data):
    samples, task, _ = data
    m = get_method("random-select")
    full = m.predict(lm, samples, task)
    part = m.predict(lm, samples[2:], task)
    assert [p.selected_visual for p in full[2:]] == [p.selected_visual for p in part]
    assert {"nts", "str", "wetr", "random-select", "query-select", "qpos-select"} <= set(available())


# =========================================================================== STR
def test_str_with_delta_zero_is_the_identity(lm, data):
    samples, _, batch = data
    nts, _ = get_method("nts").forward(lm, batch, samples)
    same, tr = get_method("str", delta=0.0).forward(lm, batch, samples)
    torch.testing.assert_close(same, nts, atol=1e-6, rtol=0)
    assert all((g == 1).all() for g in tr.decisions["gamma"].values())
    moved, tr4 = get_method("str").forward(lm, batch, samples)
    assert (moved - nts).abs().max() > 1e-4                         # delta = 4 acts
    assert tr4.decisions["admitted"].tolist() == tr.decisions["admitted"].tolist()  # same selection


def test_str_anchors_are_clamped(lm, data):
    samples, task, _ = data
    preds = get_method("str", gamma_anc=1.5, p_v_anc=1.0, p_t_anc=0.5).predict(lm, samples, task)
    for p, lay in zip(preds, data[2].layouts):
        n_visual = lay.visual.size                                    # 128 on the default model: 4 kept
        st = p.extra["nts"][0]["str"]
        gv, gc = np.array(st["gamma_visual"]), np.array(st["gamma_content"])
        av, ac = np.array(st["anchor_visual"]), np.array(st["anchor_content"])
        assert av.all() and av.size == keep_count(n_visual, 0.03)     # p_v = 0.03: every kept visual token
        assert ac.sum() == keep_count(gc.size, 0.5)
        assert (gv[av] >= 1.5 - 1e-6).all() and (gc[ac] >= 1.5 - 1e-6).all()
    for p in get_method("str", anchors=False).predict(lm, samples, task):
        assert p.extra["nts"][0]["str"]["n_anchor"] == 0


def test_str_negative_gamma_handling(lm, data):
    samples, task, batch = data
    kw = {"anchors": False, "p_v": 0.5, "p_t": 0.5}   # several kept tokens per modality, so some have low g
    a, tc = get_method("str", **kw).forward(lm, batch, samples)
    b, tk = get_method("str", negative="keep", **kw).forward(lm, batch, samples)
    n_neg = 0
    for rc, rk in zip(tc.decisions["triggers"][0]["samples"], tk.decisions["triggers"][0]["samples"]):
        sc, sk = rc["str"], rk["str"]
        gc = np.array(sc["gamma_visual"] + sc["gamma_content"])
        gk = np.array(sk["gamma_visual"] + sk["gamma_content"])
        assert (gc >= 0).all()
        assert sc["n_negative"] == sk["n_negative"] == int((gk < 0).sum())
        np.testing.assert_allclose(gc, np.maximum(gk, 0.0), atol=1e-6)
        if sc["n_negative"]:
            assert sc["dw"]["n"] >= 1
        n_neg += sc["n_negative"]
    assert n_neg > 0                                                  # Eq. 11 does go negative at delta = 4
    assert (a - b).abs().max() > 1e-5


# =========================================================================== WETR
def test_wetr_trigger_layers():
    assert get_method("wetr").trigger_layers(8) == [2, 4, 6]
    assert get_method("wetr", include_layer0=True).trigger_layers(8) == [0, 2, 4, 6]
    assert get_method("wetr", n_r=1).trigger_layers(8) == [1, 2, 3, 4, 5, 6]     # never the last layer
    assert get_method("wetr", n_r=9).trigger_layers(36) == [9, 18, 27]
    with pytest.raises(ValueError) as e:
        get_method("wetr", n_r=7).trigger_layers(8)
    assert "n_r" in one_line(e)
    assert get_method("wetr", n_r=7, include_layer0=True).trigger_layers(8) == [0]


def test_wetr_without_modules_is_zero_shot(lm, data, zero_shot):
    samples, task, batch = data
    logits, trace = get_method("wetr", use_nts=False, use_str=False).forward(lm, batch, samples)
    assert [t["layer"] for t in trace.decisions["triggers"]] == [2, 4, 6]       # the callbacks did run
    torch.testing.assert_close(logits, zero_shot, atol=1e-6, rtol=0)
    preds = get_method("wetr", use_nts=False, use_str=False).predict(lm, samples, task)
    assert all(p.selected_visual is None for p in preds)


def test_wetr_modules(lm, data):
    samples, task, batch = data
    nts, tn = get_method("nts").forward(lm, batch, samples)
    only_nts, tw = get_method("wetr", use_str=False).forward(lm, batch, samples)
    torch.testing.assert_close(only_nts, nts, atol=1e-6, rtol=0)          # later triggers re-select the same set
    assert tw.decisions["admitted"].tolist() == tn.decisions["admitted"].tolist()
    preds = get_method("wetr").predict(lm, samples, task)
    for p, lay in zip(preds, batch.layouts):
        assert p.extra["triggers"] == [2, 4, 6] and len(p.extra["nts"]) == 3
        assert all("str" in t for t in p.extra["nts"])
        assert p.extra["k_visual"] == keep_count(lay.visual.size, 0.03)   # ceil(0.03 * 128) = 4 on the default
    _, ts = get_method("wetr", use_nts=False).forward(lm, batch, samples)     # STR alone keeps every token
    assert ts.decisions["admitted"].all() and set(ts.decisions["gamma"]) == {2, 4, 6}


def test_wetr_selection_noise_swaps_within_modalities(lm, data):
    samples, _, batch = data
    _, clean = get_method("wetr", use_str=False).forward(lm, batch, samples)
    _, noisy = get_method("wetr", use_str=False, noise_r=1.0).forward(lm, batch, samples)
    a, n = clean.decisions["admitted"], noisy.decisions["admitted"]
    for b, lay in enumerate(batch.layouts):
        for grp in (lay.visual, lay.content):
            assert a[b, grp].sum() == n[b, grp].sum()               # sizes unchanged
            k = int(a[b, grp].sum())
            swapped = min(k, grp.size - k)
            assert int((a[b, grp] & ~n[b, grp]).sum()) == swapped   # r = 1: every kept token swapped (if possible)
    _, base = get_method("wetr", use_nts=False, use_str=False, noise_r=0.5).forward(lm, batch, samples)
    for b, lay in enumerate(batch.layouts):                         # the Table 5 baseline row: random drop
        n = lay.visual.size                                         # round(0.5 * n) dropped: 64 of 128
        assert base.decisions["admitted"][b, lay.visual].sum() == n - int(np.floor(0.5 * n + 0.5))


# =========================================================================== errors
@pytest.mark.parametrize("method,kw,name", [
    ("nts", {"p_v": 0}, "p_v"), ("nts", {"p_v": 1.5}, "p_v"), ("nts", {"p_t": 0.0}, "p_t"),
    ("nts", {"p_t": -0.2}, "p_t"), ("nts", {"norm": "l2"}, "norm"), ("nts", {"scoring": "foo"}, "scoring"),
    ("random-select", {"p_v": 0}, "p_v"), ("qpos-select", {"p_t": 2}, "p_t"), ("query-select", {"p_v": -1}, "p_v"),
    ("str", {"delta": -1}, "delta"), ("str", {"gamma_anc": 0.5}, "gamma_anc"), ("str", {"p_v_anc": 1.5}, "p_v_anc"),
    ("str", {"negative": "abs"}, "negative"),
    ("wetr", {"n_r": 0}, "n_r"), ("wetr", {"n_r": -3}, "n_r"), ("wetr", {"delta": -0.5}, "delta"),
    ("wetr", {"gamma_anc": 0.99}, "gamma_anc"), ("wetr", {"p_v": 2}, "p_v"), ("wetr", {"p_t": 0}, "p_t"),
    ("wetr", {"noise_r": 1.5}, "noise_r"),
])
def test_out_of_range_hyperparameters(method, kw, name):
    with pytest.raises(ValueError) as e:
        get_method(method, **kw)
    assert name in one_line(e)


def test_out_of_range_at_predict_time_and_in_the_functions(lm, data):
    samples, task, _ = data
    with pytest.raises(ValueError) as e:
        get_method("nts", layer=7).predict(lm, samples, task)        # the mask needs a later layer
    assert "layer" in one_line(e)
    with pytest.raises(ValueError) as e:
        get_method("wetr", n_r=7).predict(lm, samples, task)
    assert "n_r" in one_line(e)
    with pytest.raises(ValueError) as e:
        migration_gamma([0.1], [0.2], delta=-1)
    assert "delta" in one_line(e)
    with pytest.raises(ValueError) as e:
        anchor_clamp([1.0], [1.0], 0.5, gamma_anc=0.5)
    assert "gamma_anc" in one_line(e)


@pytest.mark.parametrize("method", ["nts", "qpos-select", "str", "wetr"])
def test_prompt_without_contrastive_spans(lm, data, method):
    samples, task, _ = data
    prompts = [P.fine_query(task.labels, contrastive=False) for _ in samples]
    with pytest.raises(ValueError) as e:
        get_method(method).predict(lm, samples, task, prompts=prompts)
    msg = one_line(e)
    assert "q_pos" in msg and "span" in msg
    if method == "nts":  # random selection reads no span
        assert len(get_method("random-select").predict(lm, samples, task, prompts=prompts)) == len(samples)
