"""Edge cases of the equation functions that ``make mutation`` (tools/mutation.py) found untested:
each test kills a mutant that survived the module's own tests (listed in the README, "Mutation
testing"). Boundaries of Norm's flat threshold, span_attention's row / batch axes, the one-row case of
Eq. 5's cross term, the layer ratio with a target mass other than 1, a head without target mass in
Eq. 7, and the closed form's input checks at S = 0 and c = 0."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from emolens.methods.ar import biased_heads, layer_ratio, reallocate_head
from emolens.methods.nts import cross_modal_support, normalize_scores, span_attention


def test_norm_flat_threshold_is_inclusive():
    # a range / std of exactly 1e-12 counts as constant (<=): zeros, not a stretched [0, 1]
    np.testing.assert_array_equal(normalize_scores([0.0, 1e-12]), [0.0, 0.0])
    np.testing.assert_array_equal(normalize_scores([-1e-12, 1e-12], "zscore"), [0.0, 0.0])
    np.testing.assert_allclose(normalize_scores([0.0, 1e-9]), [0.0, 1.0])


def test_span_attention_rows_and_batch_axes():
    g = np.random.default_rng(0)
    one = g.random((2, 1, 5))                                       # one row: its head mean
    np.testing.assert_allclose(span_attention(one), one[:, 0].mean(0))
    np.testing.assert_array_equal(span_attention(np.zeros((2, 0, 5))), np.zeros(5))   # no rows: zeros over K
    batched = g.random((3, 2, 4, 6))                               # B=3, H=2, R=4, K=6, no row_valid
    got = span_attention(torch.as_tensor(batched))
    assert got.shape == (3, 6)
    for b in range(3):
        np.testing.assert_allclose(got[b], span_attention(batched[b]))
    valid = np.zeros((3, 4), bool)
    valid[0, 2] = True                                             # one valid row
    valid[1, :3] = True
    got = span_attention(torch.as_tensor(batched), valid)
    np.testing.assert_allclose(got[0], batched[0, :, 2].mean(0))
    np.testing.assert_allclose(got[1], batched[1, :, :3].mean((0, 1)))
    np.testing.assert_array_equal(got[2], np.zeros(6))             # no valid row: zeros


def test_cross_modal_support_with_one_row():
    probs = np.random.default_rng(1).random((2, 1, 6))
    np.testing.assert_allclose(cross_modal_support(probs, [1, 4], raw=True), probs[:, 0].mean(0)[[1, 4]])


def test_layer_ratio_with_target_mass_other_than_one():
    w = torch.tensor([[[0.6, 0.2, 0.2]], [[0.2, 0.3, 0.5]]], dtype=torch.float64)   # [H=2, R=1, K=3]
    src, tgt = torch.tensor([True, False, False]), torch.tensor([False, True, False])
    assert float(layer_ratio(w, src, tgt)[0]) == pytest.approx(0.8 / 0.5)


def test_biased_heads_head_without_target_mass_is_not_biased():
    # head 0 has S_h(V) = 0 (c_h undefined): never biased, although the layer is (c = 0.9 / 0.4 > 1)
    w = torch.tensor([[[0.5, 0.0, 0.5]], [[0.4, 0.4, 0.2]]], dtype=torch.float64)
    src, tgt = torch.tensor([True, False, False]), torch.tensor([False, True, False])
    assert biased_heads(w, src, tgt, 1.0).squeeze().tolist() == [False, False]


def test_reallocate_head_input_checks_at_the_boundaries():
    src, tgt = torch.tensor([True, False, False]), torch.tensor([False, True, False])
    for bad in ([0.0, 0.5, 0.5], [0.5, 0.0, 0.5]):                 # S_h(A) = 0 or S_h(V) = 0 exactly
        with pytest.raises(ValueError, match="S_h"):
            reallocate_head(torch.tensor(bad, dtype=torch.float64), src, tgt, 1.0)
    w = torch.tensor([0.6, 0.2, 0.2], dtype=torch.float64)
    out, d = reallocate_head(w, src, tgt, 0.0)                     # c = 0 is allowed: all of S_h(A) moves
    assert float(d) == pytest.approx(0.6)
    torch.testing.assert_close(out, torch.tensor([0.0, 0.8, 0.2], dtype=torch.float64))
    for bad_c in (-0.5, float("inf")):                              # negative or infinite c: one-line error
        with pytest.raises(ValueError, match="finite and >= 0"):
            reallocate_head(w, src, tgt, bad_c)


def test_sepm_input_checks_at_the_boundaries():
    from emolens.methods.sepm import drop_matrix, refined_visual_set, significance

    A = np.random.default_rng(2).random((4, 6))
    np.testing.assert_allclose(drop_matrix(A, [1], [5]), A[[1]][:, [5]])   # one FoE row, one visual key
    for rows, cols in (([], [0, 1]), ([0], [])):
        with pytest.raises(ValueError, match="at least one text row"):
            drop_matrix(A, rows, cols)
    np.testing.assert_allclose(significance(A[:1]), A[0])           # L_t = 1
    for bad in (np.zeros((0, 3)), np.zeros(3)):
        with pytest.raises(ValueError, match="L_t >= 1"):
            significance(bad)
    assert refined_visual_set(4, [0, 3]).tolist() == [1, 2]         # both ends of the range are valid
    for bad in ([-1, 2], [0, 4], [4]):
        with pytest.raises(ValueError, match="visual tokens"):
            refined_visual_set(4, bad)


def test_weighted_f1_without_true_samples_in_the_labels_is_zero():
    from sklearn.metrics import f1_score

    from emolens.metrics import f1

    # label "b" is only predicted, never true: the weighted mean has no support (sklearn: 0.0)
    expected = f1_score(["a", "a"], ["b", "a"], labels=["b"], average="weighted", zero_division=0)
    assert f1(["a", "a"], ["b", "a"], labels=["b"]) == expected == 0.0


def test_emass_refuses_a_negative_entry_in_either_query():
    from emolens.metrics import emass

    for a_pos, a_neg in (([0.5, -0.1, 0.6], [0.3, 0.3, 0.4]), ([0.3, 0.3, 0.4], [0.5, -0.1, 0.6])):
        with pytest.raises(ValueError, match="non-negative"):
            emass(a_pos, a_neg, [0])
    for a_pos, a_neg in (([0.0, 0.0], [0.3, 0.7]), ([0.3, 0.7], [0.0, 0.0])):   # zero total in either query
        with pytest.raises(ValueError, match="zero total attention"):
            emass(a_pos, a_neg, [0])


def test_emass_is_nan_when_neither_query_attends_the_evidence_set():
    from emolens.metrics import emass

    assert np.isnan(emass([0.0, 0.5, 0.5], [0.0, 0.2, 0.8], [0]))
    np.testing.assert_array_equal(np.isnan(emass([[0.0, 1.0], [0.5, 0.5]], [[0.0, 1.0], [0.5, 0.5]], [0])),
                                  [True, False])


def test_precision_at_k_refuses_k_zero():
    from emolens.metrics import precision_at_k

    assert precision_at_k([0.9, 0.1, 0.5], [True, False, False], 1) == 1.0
    for k in (0, -1):
        with pytest.raises(ValueError, match="k must be positive"):
            precision_at_k([0.9, 0.1, 0.5], [True, False, False], k)


def test_scalar_in_float_out_array_in_array_out():
    from emolens.metrics import deletion_drop, error_propagation

    for fn in (deletion_drop, error_propagation):
        assert type(fn(0.8, 0.6)) is float
        out = fn(np.array([0.8, 0.7]), np.array([0.6, 0.7]))
        assert isinstance(out, np.ndarray) and out.shape == (2,)
    assert deletion_drop(0.8, 0.6) == pytest.approx(0.2) and error_propagation(0.8, 0.6) == pytest.approx(-0.2)


def test_confidence_from_logits_is_stable_for_large_logits():
    from emolens.metrics import confidence_from_logits

    # the log-sum-exp shift by the max keeps exp() finite: p_A = 1, p_B = 0 -> C = 1/4
    assert confidence_from_logits(np.array([800.0, 0.0, -800.0]), 0, 1) == pytest.approx(0.25)


# --------------------------------------------------------------------------- STR (WETR Eq. 9-10)
def test_reconstruction_error_without_targets_is_the_head_mean_key_norm():
    # nothing to reconstruct from (the other modality kept nothing): e_i = ||k_i||, head-averaged, per token
    from emolens.methods.reweight import reconstruction_error

    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(4, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    e = reconstruction_error(q, k, [0, 1, 2], [])
    assert e.shape == (3,)
    np.testing.assert_allclose(e, k[:, :3].norm(dim=-1).mean(0).numpy(), rtol=1e-6)


def test_gate_temperature_zero_is_refused_and_the_flat_threshold_is_inclusive():
    from emolens.methods.reweight import gate

    with pytest.raises(ValueError, match="temp"):
        gate([0.1, 0.5], temp=0.0)
    # a score range of exactly 1e-12 is a constant set (<=): every member is the top token (Norm = 1)
    flat = gate([0.0, 1e-12])
    np.testing.assert_allclose(flat, [1 / (1 + np.exp(-5.0))] * 2)
    np.testing.assert_allclose(gate([0.0, 1e-9]), 1 / (1 + np.exp(-(np.array([0.0, 1.0]) - 0.5) / 0.1)))


def test_reconstruction_error_input_checks_and_empty_source():
    from emolens.methods.reweight import reconstruction_error

    q, k = torch.randn(4, 5, 8), torch.randn(2, 5, 8)
    assert reconstruction_error(q, k, [], [1, 2]).shape == (0,)       # nothing to reconstruct: no errors
    for bad_q, bad_k in ((q[0], k), (q, k[0]), (q[:, :4], k), (q[..., :4], k)):
        with pytest.raises(ValueError, match="q must be"):
            reconstruction_error(bad_q, bad_k, [0], [1])
