"""Property tests aimed at the mutations that slipped past the suite (issue 18): Eq. 4's sign in
``contrastive_utility``, SEPM's variance (Eq. 4 of seed 001) replaced by a standard deviation, and
``>`` -> ``>=`` in AR's ``biased_heads`` and ``reallocate`` (Eq. 7: a layer is biased iff c > tau,
strictly, and a head iff c_h > c).

The AR strategy draws attention rows whose entries are multiples of 1/64 summing to exactly 1, so
every group mass is exact in float64 and the ratio c = A / V is the same correctly rounded number
wherever it is computed; tau is then drawn from the *observed* ratios (c and every c_h), so the
boundary c == tau occurs in the examples instead of never (the old fixed list of tau).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emolens.methods.ar import biased_heads, reallocate
from emolens.methods.nts import contrastive_utility
from emolens.methods.sepm import coarse_confidence
from emolens.metrics import confidence_variance

DEN = 64


@st.composite
def dyadic_rows(draw, max_heads: int = 4):
    """``w [1, H, 1, K]`` rows of multiples of 1/64 summing to 1, disjoint source / target key masks,
    and tau drawn from the observed ratios."""
    H = draw(st.integers(1, max_heads))
    K = draw(st.integers(3, 10))
    rows = []
    for _ in range(H):
        cuts = sorted(draw(st.lists(st.integers(0, DEN), min_size=K - 1, max_size=K - 1)))
        rows.append(np.diff([0, *cuts, DEN]) / DEN)
    w = np.asarray(rows, np.float64)[None, :, None, :]
    n_src = draw(st.integers(1, K - 2))
    n_tgt = draw(st.integers(1, K - 1 - n_src))
    src = np.zeros(K, bool)
    tgt = np.zeros(K, bool)
    src[:n_src] = True
    tgt[n_src:n_src + n_tgt] = True
    s_a, s_v = (w[0, :, 0] * src).sum(-1), (w[0, :, 0] * tgt).sum(-1)
    ratios = [s_a.sum() / s_v.sum()] if s_v.sum() > 0 else []
    ratios += [a / v for a, v in zip(s_a, s_v) if v > 0]
    tau = draw(st.sampled_from(ratios)) if ratios else draw(st.sampled_from([0.0, 1.0]))
    return w, src, tgt, float(tau)


def ref_eq7(w, src, tgt, tau):
    """Eq. 6-7 in numpy, strict comparisons: ``(layer_biased [1, 1], biased [1, H, 1])``."""
    s_a, s_v = (w * src).sum(-1), (w * tgt).sum(-1)               # [1, H, 1]
    A, V = s_a.sum(1, keepdims=True), s_v.sum(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.where(V > 0, A / np.where(V > 0, V, 1), np.nan)
        c_h = np.where(s_v > 0, s_a / np.where(s_v > 0, s_v, 1), np.nan)
    layer = (V > 0) & (c > tau)
    return layer[:, 0], layer & (s_v > 0) & (c_h > c)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dyadic_rows())
def test_biased_heads_and_reallocate_follow_eq7_at_observed_ratios(case):
    w, src, tgt, tau = case
    layer, biased = ref_eq7(w, src, tgt, tau)
    got = biased_heads(torch.as_tensor(w), torch.as_tensor(src), torch.as_tensor(tgt), tau)
    assert got.numpy().tolist() == biased.tolist()
    out, info = reallocate(torch.as_tensor(w), torch.as_tensor(src)[None], torch.as_tensor(tgt)[None], tau)
    assert info["layer_biased"].numpy().tolist() == layer.tolist()
    assert info["biased"].numpy().tolist() == biased.tolist()
    if not biased.any():                                           # nothing biased: the rows are untouched
        assert torch.equal(out, torch.as_tensor(w))


def test_biased_heads_at_c_equal_tau_exactly():
    """Two heads: c_0 = 2, c_1 = 0.5, c = 0.75 / 0.75 = 1 exactly. At tau = c = 1 the layer is not biased
    (Eq. 7 is strict): no head is biased and reallocate leaves the rows unchanged; just below, head 0 is."""
    w = torch.tensor([[[[0.5, 0.25, 0.25]], [[0.25, 0.5, 0.25]]]], dtype=torch.float64)   # [1, 2, 1, 3]
    src, tgt = torch.tensor([True, False, False]), torch.tensor([False, True, False])
    assert not biased_heads(w, src, tgt, 1.0).any()
    out, info = reallocate(w, src[None], tgt[None], 1.0)
    assert not info["layer_biased"].any() and not info["biased"].any() and torch.equal(out, w)
    assert biased_heads(w, src, tgt, 0.999).squeeze().tolist() == [True, False]
    out, info = reallocate(w, src[None], tgt[None], 0.999)
    assert info["biased"].squeeze().tolist() == [True, False] and not torch.equal(out, w)


def test_a_head_at_the_layer_ratio_is_not_biased():
    """One head: c_h == c always, so c_h > c is never true and no head is biased, whatever tau."""
    w = torch.tensor([[[[0.6, 0.2, 0.2]]]], dtype=torch.float64)
    src, tgt = torch.tensor([True, False, False]), torch.tensor([False, True, False])
    for tau in (0.0, 1.0, 2.9):
        assert not biased_heads(w, src, tgt, tau).any()
        out, info = reallocate(w, src[None], tgt[None], tau)
        assert info["layer_biased"].all() and not info["biased"].any() and torch.equal(out, w)


# --------------------------------------------------------------------------- SEPM's confidence (variance)
probs2 = st.tuples(st.floats(0, 1), st.floats(0, 1)).filter(lambda t: t[0] + t[1] <= 1)


@settings(max_examples=200, deadline=None)
@given(probs2)
def test_confidence_is_the_population_variance_of_the_two_probabilities(p):
    a, b = p
    expected = float(np.var([a, b]))                               # SEPM Eq. 4: a variance, not a std
    assert confidence_variance(a, b) == pytest.approx(expected, abs=1e-15)
    assert coarse_confidence(a, b) == pytest.approx((a - b) ** 2 / 4, abs=1e-15)
    assert 0.0 <= confidence_variance(a, b) <= 0.25


def test_confidence_hand_values():
    assert confidence_variance(1.0, 0.0) == 0.25
    assert confidence_variance(0.6, 0.2) == pytest.approx(0.04)    # a std would give 0.2
    np.testing.assert_allclose(coarse_confidence(np.array([0.9, 0.5]), np.array([0.1, 0.5])), [0.16, 0.0])


# --------------------------------------------------------------------------- Eq. 4's sign
vec = st.lists(st.floats(0, 1), min_size=2, max_size=12)


@settings(max_examples=200, deadline=None)
@given(vec, st.data())
def test_contrastive_utility_ranks_by_a_pos_minus_a_neg(a_pos, data):
    a_neg = data.draw(st.lists(st.floats(0, 1), min_size=len(a_pos), max_size=len(a_pos)))
    diff = np.asarray(a_pos) - np.asarray(a_neg)
    d = contrastive_utility(a_pos, a_neg)
    if np.ptp(diff) <= 1e-9:
        return
    # min-max of (a_pos - a_neg): the token Q_pos attends more than Q_neg is at 1, the opposite at 0
    np.testing.assert_allclose(d, (diff - diff.min()) / np.ptp(diff), atol=1e-9)
    assert d[int(np.argmax(diff))] == pytest.approx(1.0) and d[int(np.argmin(diff))] == pytest.approx(0.0)
